"""Fixtures for Strait's integration tests (see harness.py for the helpers themselves)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


class Fleet:
    """Starts strait processes and upstream servers, and tears all of them down (by PID / by socket)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.procs: list[harness.StraitProcess] = []
        self.servers: list[harness.TcpServer] = []

    # --- upstreams ---------------------------------------------------------------------------------

    def _track(self, server):
        self.servers.append(server)
        return server

    def echo(self, **kw) -> harness.EchoServer:
        return self._track(harness.EchoServer(**kw))

    def sink(self, **kw) -> harness.SinkServer:
        return self._track(harness.SinkServer(**kw))

    def reset(self, **kw) -> harness.ResetServer:
        return self._track(harness.ResetServer(**kw))

    def hold(self, **kw) -> harness.HoldServer:
        return self._track(harness.HoldServer(**kw))

    # --- strait ------------------------------------------------------------------------------------

    def start(self, config: dict | Path | None, *, concurrency: int | None = 2, drain_time_s: int | None = 1,
              log_level: str | None = "debug", extra: list[str] | None = None, wait_ready: bool = True,
              file_name: str = "bootstrap.yaml", ready_timeout: float = 15.0) -> harness.StraitProcess:
        """Writes `config` (a dict) to a file, starts strait on it and waits for /ready 200."""
        n = len(self.procs) + 1
        rundir = self.workdir / f"strait{n}"
        rundir.mkdir(parents=True, exist_ok=True)
        if isinstance(config, dict):
            path = harness.write_bootstrap(rundir, config, file_name)
        else:
            path = config
        admin_path = rundir / "admin-address"
        args = harness.strait_args(path, admin_path, concurrency=concurrency, drain_time_s=drain_time_s,
                                   log_level=log_level, extra=extra)
        proc = harness.StraitProcess(rundir, args)
        proc.admin_path = admin_path
        self.procs.append(proc)
        if wait_ready:
            proc.wait_ready(ready_timeout)
        return proc

    def close(self) -> list[str]:
        """Stops everything; returns complaints about processes that died on their own or that a sanitizer
        reported on (tests/run-sanitized.sh)."""
        problems = []
        for proc in self.procs:
            died_alone = not proc.alive() and not proc.expected_exit
            code = proc.stop(grace=5.0)
            print(proc.logs())
            if died_alone:
                problems.append(f"{proc.tag} (pid {proc.pid}) exited on its own with {code} during the test")
            if harness.sanitizer_report(proc.pid):
                problems.append(f"{proc.tag} (pid {proc.pid}): sanitizer report (in the log above)")
        for server in self.servers:
            server.close()
        return problems


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    problems = f.close()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)



# --- sanitized runs (tests/run-sanitized.sh sets STRAIT_SANITIZED=1) ---------------------------------------


def pytest_collection_modifyitems(config, items):
    """Under ASan/UBSan, tests marked `unsanitized` (memory, CPU or timing figures the sanitizers distort:
    shadow memory and the free quarantine in RSS, no mallinfo2 heap, 2-3x slower code) are skipped."""
    if os.environ.get("STRAIT_SANITIZED") != "1":
        return
    for item in items:
        mark = item.get_closest_marker("unsanitized")
        if mark is not None:
            why = mark.args[0] if mark.args else "measures memory, CPU or timing"
            item.add_marker(pytest.mark.skip(reason=f"sanitized build (STRAIT_SANITIZED=1): {why}"))


@pytest.fixture(autouse=True)
def _no_sanitizer_reports():
    """Fails the test during which any strait process (started through the fleet or not: validate runs,
    hot-restart children, pods in network namespaces) wrote a sanitizer report. The reports go to
    files under STRAIT_SANITIZER_LOG_DIR (log_path in ASAN_OPTIONS/UBSAN_OPTIONS); the fleet fixture is torn
    down before this one, so leaks reported when strait exits count for the test that ran it."""
    before = set(harness.sanitizer_report_files())
    yield
    new = [f for f in harness.sanitizer_report_files() if f not in before]
    if new:
        text = "\n".join(f"----- {f} -----\n{f.read_text(errors='replace')[:20000]}" for f in sorted(new))
        pytest.fail(f"sanitizer report(s) from strait during this test:\n{text}", pytrace=False)
