"""Hot restart when the listeners come from LDS (the sidecar's real case): epoch 0 takes an HTTP
listener (RDS) and two EDS clusters over ADS from the project's test control plane
(tests/xds_server); epoch 1 starts against the same control plane under a steady bounded load through
that listener. The child takes the parent's very sockets for the LDS listener (from its xDS thread),
accepts nothing and does not tell the parent to drain before it is initialised (first CDS, EDS, LDS and
RDS applied, the listener bound: Envoy's init manager), so no request fails and no connection is
refused; counters carry over exactly; LDS moving the listener afterwards leaves no socket accepting on
its old port. When the control plane withholds one type's answer from the child (LDS, EDS or RDS), or
cannot be reached, the parent keeps serving and is not told to drain until the child is initialised.

The load helper is test_hot_restart.Load; the control plane, its resources and the probes are
test_xds_e2e's (env fixture). Skips when node/npm are missing."""

from __future__ import annotations

import time

import pytest

import harness
from test_hot_restart import _BASE_IDS, Load, _hot
from test_xds_e2e import (EDS, LDS, LISTENER, MODES, NODE_ID, RDS, ROUTES, STAT_PREFIX, ads_bootstrap_ex,  # noqa: F401
                          env, http_listener, mode, wait_origin, wait_refused)

HELD = {"eds": EDS, "lds": LDS, "rds": RDS}


def _start_parent(env, base: int) -> harness.StraitProcess:
    """Epoch 0 on the standard resources (EDS clusters a and b, RDS listener on env.port); waits until
    traffic flows through the LDS listener."""
    env.xds.set_resources(env.standard_resources())
    env.proc = env.fleet.start(env.bootstrap(), concurrency=2, drain_time_s=2, log_level="info", extra=_hot(base, 0))
    env.wait_converged()
    return env.proc


def _start_child(env, base: int, **bootstrap_kw) -> harness.StraitProcess:
    child = env.fleet.start(env.bootstrap(**bootstrap_kw), concurrency=2, drain_time_s=2, log_level="info",
                            extra=_hot(base, 1), wait_ready=False)
    child.wait_admin()
    return child


def _rq_total(proc) -> int:
    return harness.stat(proc.stats(), f"http.{STAT_PREFIX}.downstream_rq_total")


def _assert_before(log: str, first: str, then: str) -> None:
    i, j = log.find(first), log.find(then)
    assert i >= 0, f"{first!r} not in the log:\n{log[-4000:]}"
    assert j >= 0, f"{then!r} not in the log:\n{log[-4000:]}"
    assert i < j, f"{then!r} came before {first!r}:\n{log[-4000:]}"


def _assert_initialised_before_drain(child_log: str) -> None:
    # Every type's first response applied and the listener bound on the parent's sockets, before the
    # child accepted and told the parent to drain.
    for what in ("applied Cluster ", "applied ClusterLoadAssignment ", "applied Listener ",
                 "applied RouteConfiguration ", f"listener '{LISTENER}' on "):
        _assert_before(child_log, what, "hot restart: initialised; accepting")
    _assert_before(child_log, "hot restart: initialised; accepting", "hot restart: ready; the parent (epoch 0) drains")


@pytest.mark.parametrize("mode", MODES)
def test_hot_restart_with_lds_listener_loses_nothing(env, mode):
    base = next(_BASE_IDS)
    parent = _start_parent(env, base)
    port = env.port
    rq_start = _rq_total(parent)
    cx_start = harness.stat(parent.stats(), f"listener.{harness.LOOPBACK}_{port}.downstream_cx_total")
    load = Load(port, max_seconds=25).start()
    try:
        time.sleep(1.5)
        assert load.ok > 50, f"the load did not get going: {load.ok} ok, failures {load.failures[:5]}"
        child_started = time.monotonic()
        child = _start_child(env, base)
        code = parent.wait_exit(timeout=20)
        parent_exited = time.monotonic()
        assert code == 0, f"the parent did not exit by itself within 20 s of the child's start (exit {code})"
        child.wait_ready(5)
        time.sleep(1.0)  # the child serves alone for a while
    finally:
        load.finish()
    assert not load.failures, (f"{len(load.failures)} failed requests across the restart "
                               f"(of {load.ok + len(load.failures)}): {load.failures[:10]}")
    assert load.ok_between(child_started, parent_exited) > 0, "no request was made during the hand-over"
    served_by_child_alone = load.ok_between(parent_exited, time.monotonic())
    assert served_by_child_alone > 20, f"only {served_by_child_alone} requests after the parent exited"

    child_log = child.log_path.read_text()
    # The LDS listener is on the parent's very sockets (both workers'), not bound anew.
    assert (f"hot restart: listener '{LISTENER}' on {harness.LOOPBACK}:{port}: 2 socket(s) from the parent"
            in child_log), child_log[-4000:]
    _assert_initialised_before_drain(child_log)
    assert "hot restart: the parent (epoch 0) has exited" in child_log
    assert child.listener_port(LISTENER) == port
    after = child.stats()
    rq_after = harness.stat(after, f"http.{STAT_PREFIX}.downstream_rq_total")
    print(f"LDS hot restart: {load.ok} requests answered, 0 failed, "
          f"{load.ok_between(child_started, parent_exited)} during the hand-over ({parent_exited - child_started:.1f} s); "
          f"downstream_rq_total {rq_start} before the load, {rq_after} after")
    # The counters of the LDS listener carried over: every request of the load is counted exactly once.
    assert rq_after - rq_start == load.ok, (f"downstream_rq_total went {rq_start} -> {rq_after}, "
                                            f"{load.ok} requests answered")
    assert harness.stat(after, f"listener.{harness.LOOPBACK}_{port}.downstream_cx_total") > cx_start
    assert after.get("server.live") == 1

    # LDS moves the listener in the child: its new port serves, and the old one (whose socket came from
    # the parent) refuses: no copy of it is left accepting.
    new_port = harness.free_port()
    env.xds.set_resources([http_listener(LISTENER, new_port, rds_name=ROUTES, stat_prefix=STAT_PREFIX)])
    wait_origin(new_port, "/a", "a", timeout=5)
    wait_refused(port, timeout=5)


@pytest.mark.parametrize("held", ["lds", "eds", "rds"])
def test_child_waiting_for_control_plane_leaves_parent_serving(env, held):
    """The control plane answers the child's CDS/LDS/EDS/RDS except `held` (the parent's stream has all
    of it): the child stays uninitialised (initial_fetch_timeout 0s, Istio's setting: no bound), accepts
    nothing and does not tell the parent to drain; the parent serves on. Once the answer comes, the
    hand-over completes with nothing lost."""
    base = next(_BASE_IDS)
    parent = _start_parent(env, base)
    port = env.port
    xds = env.xds
    load = Load(port, max_seconds=30).start()
    try:
        time.sleep(1.0)
        assert load.ok > 30, f"the load did not get going: {load.ok} ok, failures {load.failures[:5]}"
        xds.settings(hold_types=[held])
        child = _start_child(env, base, initial_fetch_timeout="0s")
        # The child asked for the held type on its own stream (the newest one).
        streams = xds.wait_streams(2)
        child_stream = max(s["id"] for s in streams)
        xds.wait_request(lambda r: r["stream"] == child_stream and r["type_url"] == HELD[held], timeout=10)
        hold_start = time.monotonic()
        time.sleep(3.0)
        hold_end = time.monotonic()
        assert parent.alive(), "the parent exited while the child waited for the control plane"
        assert "stopped accepting" not in parent.log_path.read_text(), "the parent was told to drain"
        child_log = child.log_path.read_text()
        assert "hot restart: ready; the parent" not in child_log, child_log[-3000:]
        ready = child.get("/ready", timeout=2)
        assert ready.status == 503, f"the child's /ready while it waits: {ready!r}"
        during = load.ok_between(hold_start, hold_end)
        assert during > 30, f"only {during} requests answered in the 3 s the child waited"
        assert not load.failures, f"requests failed while the child waited: {load.failures[:10]}"

        # The answer comes (the parent gets the same resources again, as a new version).
        xds.settings(hold_types=[])
        xds.set_resources([r for r in env.standard_resources() if r["@type"] == HELD[held]])
        code = parent.wait_exit(timeout=20)
        parent_exited = time.monotonic()
        assert code == 0, f"the parent did not exit by itself after the child got its answer (exit {code})"
        child.wait_ready(5)
        time.sleep(1.0)
    finally:
        xds.settings(hold_types=[])
        load.finish()
    assert not load.failures, (f"{len(load.failures)} failed requests across the restart "
                               f"(of {load.ok + len(load.failures)}): {load.failures[:10]}")
    served_by_child_alone = load.ok_between(parent_exited, time.monotonic())
    assert served_by_child_alone > 20, f"only {served_by_child_alone} requests after the parent exited"
    child_log = child.log_path.read_text()
    _assert_initialised_before_drain(child_log)
    # The listener is on the parent's sockets (with EDS held, the child held them, not accepting, while
    # it waited; with LDS or RDS held, it took them once the listener could be built).
    assert f"hot restart: listener '{LISTENER}' on {harness.LOOPBACK}:{port}: 2 socket(s) from the parent" in child_log
    assert child.listener_port(LISTENER) == port


def test_child_without_control_plane_leaves_parent_serving(env):
    """The child's control plane is unreachable (initial_fetch_timeout 0s: it waits): the parent serves
    on and is not told to drain; a child stopped while it waits leaves the parent whole (its admin
    answers again)."""
    base = next(_BASE_IDS)
    parent = _start_parent(env, base)
    load = Load(env.port, ka=1, fresh=1, max_seconds=20).start()
    try:
        time.sleep(1.0)
        unreachable = ads_bootstrap_ex(harness.closed_port(), node_id=NODE_ID, initial_fetch_timeout="0s")
        child = env.fleet.start(unreachable, concurrency=2, drain_time_s=1, log_level="info", extra=_hot(base, 1),
                                wait_ready=False)
        child.wait_admin()
        wait_start = time.monotonic()
        time.sleep(3.0)
        wait_end = time.monotonic()
        assert parent.alive(), "the parent exited while the child had no control plane"
        assert "stopped accepting" not in parent.log_path.read_text(), "the parent was told to drain"
        assert child.get("/ready", timeout=2).status == 503
        assert load.ok_between(wait_start, wait_end) > 20
        child.signal(15)  # SIGTERM
        assert child.wait_exit(timeout=10) == 0
        # The parent takes its admin socket back and goes on.
        harness.assert_ready(parent)
        time.sleep(0.5)
    finally:
        load.finish()
    assert not load.failures, f"requests failed while the child had no control plane: {load.failures[:10]}"
    assert "before it was ready: serving on" in parent.log_path.read_text()
