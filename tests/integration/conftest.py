"""Fixtures for Strait's integration tests (see harness.py for the helpers themselves)."""

from __future__ import annotations

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
        """Stops everything; returns complaints about processes that died on their own."""
        problems = []
        for proc in self.procs:
            died_alone = not proc.alive() and not proc.expected_exit
            code = proc.stop(grace=5.0)
            print(proc.logs())
            if died_alone:
                problems.append(f"{proc.tag} (pid {proc.pid}) exited on its own with {code} during the test")
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

