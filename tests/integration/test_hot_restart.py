"""Hot restart (--restart-epoch, --base-id), Envoy's shape: the new process takes the old one's
listening sockets and counters over a unix socket, tells it to drain once ready, and the old one exits
by itself. Under a steady load through both, no request fails and no connection is refused or reset."""

from __future__ import annotations

import http.client
import itertools
import os
import socket
import threading
import time

import pytest

import harness
from peers.origin import Origin

_BASE_IDS = itertools.count(600000 + os.getpid() % 300000)
PREFIX = "hr_http"


def _hot(base_id: int, epoch: int) -> list[str]:
    return ["--restart-epoch", str(epoch), "--base-id", str(base_id)]


class Load:
    """Clients that keep sending through `port` until stopped (bounded by count and time): `ka` of them
    on one keep-alive connection each (reconnecting when told `Connection: close`), `fresh` of them on
    a new connection per request. Every failure (refused, reset, closed without answer, not 200) is
    recorded with its time."""

    def __init__(self, port: int, ka: int = 2, fresh: int = 2, max_seconds: float = 12.0, max_each: int = 6000):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.ok_times: list[float] = []
        self.failures: list[tuple[float, str]] = []
        self.deadline = time.monotonic() + max_seconds
        self.max_each = max_each
        self.threads = [threading.Thread(target=self._run, args=(True,), daemon=True) for _ in range(ka)]
        self.threads += [threading.Thread(target=self._run, args=(False,), daemon=True) for _ in range(fresh)]

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)
        assert not any(t.is_alive() for t in self.threads), "a load client did not stop"

    def _record(self, error: str | None) -> None:
        now = time.monotonic()
        with self.lock:
            if error is None:
                self.ok += 1
                self.ok_times.append(now)
            else:
                self.failures.append((now, error))

    def _run(self, keep_alive: bool) -> None:
        conn = None
        for i in range(self.max_each):
            if self.stop.is_set() or time.monotonic() > self.deadline:
                break
            try:
                if conn is None or not keep_alive:
                    conn = http.client.HTTPConnection(harness.LOOPBACK, self.port, timeout=5)
                headers = {} if keep_alive else {"connection": "close"}
                conn.request("GET", f"/{'ka' if keep_alive else 'new'}/{i}", headers=headers)
                resp = conn.getresponse()
                resp.read()
                self._record(None if resp.status == 200 else f"status {resp.status}")
                if not keep_alive:
                    conn.close()
            except (OSError, http.client.HTTPException) as err:
                self._record(f"{type(err).__name__}: {err}")
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.002)
        if conn is not None:
            conn.close()

    def ok_between(self, start: float, end: float) -> int:
        with self.lock:
            return sum(1 for t in self.ok_times if start <= t < end)


def _status_ready(port: int) -> int:
    return harness.http_request(f"http://{harness.LOOPBACK}:{port}", "/healthz/ready", timeout=5).status


def _listener_cx(stats: dict[str, int], port: int) -> int:
    return harness.stat(stats, f"listener.{harness.LOOPBACK}_{port}.downstream_cx_total")


@pytest.mark.parametrize("parent_workers,child_workers", [(2, 2), (2, 1), (1, 2)])
def test_hot_restart_under_load_loses_nothing(fleet, parent_workers, child_workers):
    origin = harness.track(fleet, Origin("hr-origin"))
    port = harness.free_port()
    config = harness.simple_http_config(origin.port, listener_port=port, stat_prefix=PREFIX)
    base = next(_BASE_IDS)
    status_port = harness.free_port()
    parent = fleet.start(config, concurrency=parent_workers, drain_time_s=2, log_level="info",
                         extra=_hot(base, 0) + ["--status-port", str(status_port)])
    load = Load(port).start()
    try:
        time.sleep(1.5)
        assert load.ok > 50, f"the load did not get going: {load.ok} ok, failures {load.failures[:5]}"
        before = parent.stats()
        rq_before = harness.stat(before, f"http.{PREFIX}.downstream_rq_total")
        cx_before = _listener_cx(before, port)
        child_started = time.monotonic()
        child = fleet.start(config, concurrency=child_workers, drain_time_s=2, log_level="info",
                            extra=_hot(base, 1) + ["--status-port", str(status_port)])
        # The child took the admin socket: the same port answers, from the child now.
        assert child.admin_url == parent.admin_url, "the child did not take the parent's admin socket"
        code = parent.wait_exit(timeout=12)
        parent_exited = time.monotonic()
        assert code == 0, f"the parent did not exit by itself within 12 s after the child was ready (exit {code})"
        time.sleep(1.0)  # the child serves alone for a while
    finally:
        load.finish()
    assert not load.failures, (f"{len(load.failures)} failed requests across the restart "
                               f"(of {load.ok + len(load.failures)}): {load.failures[:10]}")
    served_by_child_alone = load.ok_between(parent_exited, time.monotonic())
    assert served_by_child_alone > 20, f"only {served_by_child_alone} requests after the parent exited"
    assert load.ok_between(child_started, parent_exited) > 0, "no request was made during the hand-over"

    after = child.stats()
    rq_after = harness.stat(after, f"http.{PREFIX}.downstream_rq_total")
    print(f"hot restart {parent_workers}->{child_workers} workers: {load.ok} requests answered, "
          f"{len(load.failures)} failed; {load.ok_between(child_started, parent_exited)} during the hand-over "
          f"({parent_exited - child_started:.1f} s); downstream_rq_total {rq_before} before, {rq_after} after")
    # Continuous counters: the child started from the parent's and took its final counts as it exited,
    # so every request of the test is counted exactly once.
    assert rq_after >= rq_before, f"downstream_rq_total went back: {rq_before} -> {rq_after}"
    assert rq_after == load.ok, f"downstream_rq_total {rq_after} after the restart, {load.ok} requests answered"
    assert _listener_cx(after, port) >= cx_before
    assert after.get("server.live") == 1
    assert "hot restart: the parent (epoch 0) has exited" in child.log_path.read_text()
    parent_log = parent.log_path.read_text()
    assert "stopped accepting" in parent_log, parent_log[-3000:]
    # The child serves the admin and the status port alone now (it could not have bound either anew:
    # they are not SO_REUSEPORT, and the parent held them).
    assert child.get("/ready").status == 200
    assert _status_ready(status_port) == 200


def _bad_field_config(config: dict) -> dict:
    bad = dict(config)
    bad["static_resources"] = dict(config["static_resources"], not_a_field=1)
    return bad


def _port_held_exclusively() -> tuple[socket.socket, int]:
    """A loopback port bound and listening without SO_REUSEPORT: Strait cannot bind it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((harness.LOOPBACK, 0))
    s.listen(1)
    return s, s.getsockname()[1]


@pytest.mark.parametrize("failure", ["bad_config", "bind_fails_after_taking_admin"])
def test_failed_child_leaves_the_parent_serving(fleet, failure):
    origin = harness.track(fleet, Origin("hr-origin"))
    port = harness.free_port()
    config = harness.simple_http_config(origin.port, listener_port=port, stat_prefix=PREFIX)
    base = next(_BASE_IDS)
    status = ["--status-port", str(harness.free_port())]
    parent = fleet.start(config, concurrency=2, drain_time_s=2, log_level="info", extra=_hot(base, 0) + status)
    holder = None
    if failure == "bad_config":
        child_config = _bad_field_config(config)
        expect = "not_a_field"
    else:
        # A valid config whose second listener's port is taken: the child fails after it has taken the
        # admin socket and the first listener's sockets from the parent.
        holder, taken = _port_held_exclusively()
        child_config = harness.simple_http_config(origin.port, listener_port=port, stat_prefix=PREFIX)
        extra_listener = dict(child_config["static_resources"]["listeners"][0], name="taken",
                              address=harness.socket_address(taken))
        child_config["static_resources"]["listeners"].append(extra_listener)
        expect = "Address already in use"
    load = Load(port, ka=1, fresh=1).start()
    try:
        time.sleep(0.5)
        child = fleet.start(child_config, concurrency=2, drain_time_s=2, log_level="info",
                            extra=_hot(base, 1) + status, wait_ready=False)
        code = child.wait_exit(timeout=15)
        assert code not in (None, 0), f"the child should have failed to start (exit {code})"
        assert expect in child.log_path.read_text()
        time.sleep(1.0)
        assert parent.alive(), "the parent exited although the child failed"
        # The parent serves its admin again (it resumes on the socket it kept) and its listener.
        harness.assert_ready(parent)
        assert _status_ready(int(status[1])) == 200
        assert parent.stats().get("server.state", 0) == 0, "the parent began draining"
    finally:
        load.finish()
        if holder is not None:
            holder.close()
    assert not load.failures, f"requests failed while the child failed: {load.failures[:10]}"
    assert load.ok > 20
    parent_log = parent.log_path.read_text()
    if failure == "bad_config":
        # Refused before it ever connected: the parent saw nothing.
        assert "epoch 1 connected" not in parent_log
    else:
        assert "before it was ready: serving on" in parent_log


def test_restart_flags_are_checked():
    for args, flag in ((["--restart-epoch", "-1"], "--restart-epoch"), (["--base-id", "x"], "--base-id"),
                       (["--parent-shutdown-time-s", "0"], "--parent-shutdown-time-s")):
        res = harness.run_strait(args + ["--mode", "validate"])
        assert res.returncode == 1 and flag in res.stderr, (args, res.stderr)
