"""Bootstrap loading: --mode validate, field-named errors, no port bound on a bad config,
--config-yaml layering and the embedded default bootstrap."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

import harness
from harness import bootstrap, static_cluster, tcp_proxy_listener, to_yaml


# Examples whose features are not built yet: each is expected to fail validation, naming the
# unsupported field, until the issue that builds it lands (then the xfail turns into a failure, strict).
_NOT_YET = {
}


def _examples() -> list:
    found = sorted(harness.shared_dir().glob("examples/*.yaml"))
    if not found:
        return [pytest.param(None, id="no-examples-found")]
    out = []
    for p in found:
        marks = [pytest.mark.xfail(reason=_NOT_YET[p.name], strict=True)] if p.name in _NOT_YET else []
        out.append(pytest.param(p, id=p.name, marks=marks))
    return out


def _valid_config(port: int = 0) -> dict:
    return bootstrap([tcp_proxy_listener("tcp_main", "backend", "main_tcp", port=port)],
                     [static_cluster("backend", [harness.closed_port()])], node_id="config-test")


def _validate(path: Path) -> tuple[int, str]:
    done = harness.run_strait(["--mode", "validate", "-c", str(path)])
    return done.returncode, done.stdout + done.stderr


def _expect_invalid(path: Path, *needles: str) -> str:
    code, out = _validate(path)
    assert code == 1, f"validate exit {code} for an invalid file; output:\n{out}"
    assert str(path) in out, f"error does not name the file {path}:\n{out}"
    for needle in needles:
        assert needle in out, f"error does not mention {needle!r}:\n{out}"
    return out


# --- validate --------------------------------------------------------------------------------------


@pytest.mark.parametrize("example", _examples())
def test_validate_accepts_shared_examples(example):
    assert example is not None, f"no examples under {harness.shared_dir() / 'examples'} (set STRAIT_SHARED)"
    code, out = _validate(example)
    assert code == 0, f"validate rejected {example.name}:\n{out}"
    assert "OK" in out, out


def test_validate_accepts_generated_yaml(tmp_path):
    path = harness.write_bootstrap(tmp_path, _valid_config())
    code, out = _validate(path)
    assert code == 0, out
    assert f"configuration '{path}' OK" in out, out


def test_validate_accepts_json_bootstrap(tmp_path):
    path = harness.write_bootstrap(tmp_path, _valid_config(), "bootstrap.json")
    json.loads(path.read_text())  # really JSON
    code, out = _validate(path)
    assert code == 0, f"JSON bootstrap rejected:\n{out}"


def test_unknown_field_is_named(tmp_path):
    text = to_yaml(_valid_config())
    assert "\n  listeners:\n" in text
    path = tmp_path / "typo.yaml"
    path.write_text(text.replace("\n  listeners:\n", "\n  listners:\n"))
    _expect_invalid(path, "listners")


def test_port_out_of_range_is_named(tmp_path):
    path = harness.write_bootstrap(tmp_path, _valid_config(port=70000))
    _expect_invalid(path, "port_value")


def test_tcp_proxy_unknown_cluster_is_named(tmp_path):
    config = bootstrap([tcp_proxy_listener("tcp_main", "no_such_cluster", "main_tcp")],
                       [static_cluster("backend", [harness.closed_port()])])
    path = harness.write_bootstrap(tmp_path, config)
    _expect_invalid(path, "no_such_cluster")


def test_duplicate_listener_names(tmp_path):
    config = bootstrap([tcp_proxy_listener("dup_listener", "backend", "a"),
                        tcp_proxy_listener("dup_listener", "backend", "b")],
                       [static_cluster("backend", [harness.closed_port()])])
    path = harness.write_bootstrap(tmp_path, config)
    _expect_invalid(path, "dup_listener")


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "malformed.yaml"
    path.write_text(
        "node: {id: bad-yaml, cluster: tests}\n"
        "static_resources:\n"
        "  clusters:\n"
        "  - name: backend\n"
        "    type: STATIC: nope\n"  # line 5: a second ':' in a plain scalar
        "    connect_timeout: 1s\n")
    out = _expect_invalid(path)
    assert re.search(r"line\s*:?\s*5\b|:5(:|,|\s)", out), f"error does not name line 5:\n{out}"


def test_missing_file(tmp_path):
    path = tmp_path / "does-not-exist.yaml"
    _expect_invalid(path)


# --- serve mode with a bad file ----------------------------------------------------------------------


def _bad_serve_configs(listen_port: int, second_port: int, admin_port: int) -> dict:
    return {
        "unknown_cluster": bootstrap(
            [tcp_proxy_listener("tcp_main", "no_such_cluster", "main_tcp", port=listen_port)],
            [static_cluster("backend", [harness.closed_port()])], admin_port=admin_port),
        "duplicate_listener": bootstrap(
            [tcp_proxy_listener("dup", "backend", "a", port=listen_port),
             tcp_proxy_listener("dup", "backend", "b", port=second_port)],
            [static_cluster("backend", [harness.closed_port()])], admin_port=admin_port),
    }


@pytest.mark.parametrize("kind", ["unknown_cluster", "duplicate_listener"])
def test_serve_invalid_config_never_binds(tmp_path, kind):
    ports = [harness.free_port() for _ in range(3)]
    config = _bad_serve_configs(*ports)[kind]
    path = harness.write_bootstrap(tmp_path, config)
    args = harness.strait_args(path, tmp_path / "admin-address", concurrency=2)
    proc = harness.StraitProcess(tmp_path, args)
    try:
        listened = []
        deadline = time.monotonic() + 10
        while proc.alive() and time.monotonic() < deadline:
            for p in ports:
                if harness.is_listening(p, timeout=0.2):
                    listened.append(p)
            time.sleep(0.005)
        code = proc.wait_exit(timeout=0.1)
        if code is None:
            proc.fail("strait kept running on an invalid bootstrap for 10 s")
        assert code > 0, f"exit code {code} (expected a non-zero exit, not a signal)\n{proc.logs()}"
        assert not listened, f"ports {sorted(set(listened))} were listening while strait ran on an invalid file"
        for p in ports:
            assert harness.port_is_free(p), f"port {p} is not free after strait exited"
        assert not (tmp_path / "admin-address").exists() or not (tmp_path / "admin-address").read_text().strip(), \
            "admin address written for an invalid config"
    finally:
        proc.stop()


def _ptrace_usable() -> bool:
    strace = shutil.which("strace")
    if not strace:
        return False
    try:
        r = subprocess.run([strace, "-f", "-qq", "-e", "trace=none", "/bin/true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@pytest.mark.unsanitized("runs strait under strace; LeakSanitizer cannot work under ptrace")
def test_serve_invalid_config_makes_no_bind_or_listen_call(tmp_path):
    """Stronger than probing the ports: trace the syscalls and require no listen() at all and no
    bind() to a configured port before strait exits."""
    if not _ptrace_usable():
        pytest.skip("strace/ptrace not usable here; test_serve_invalid_config_never_binds covers the port check")
    ports = [harness.free_port() for _ in range(3)]
    path = harness.write_bootstrap(tmp_path, _bad_serve_configs(*ports)["unknown_cluster"])
    trace = tmp_path / "strace.txt"
    args = harness.strait_args(path, None, concurrency=2)
    out_path = tmp_path / "output.txt"
    with open(out_path, "wb") as out:
        tracer = subprocess.Popen([shutil.which("strace"), "-f", "-qq", "-e", "trace=bind,listen", "-o", str(trace)]
                                  + args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        code = tracer.wait(timeout=60)
    except subprocess.TimeoutExpired:
        # Kill the traced strait (by PID) as well as strace itself.
        for pid in harness.child_pids(tracer.pid):
            harness.kill_pid(pid)
        tracer.kill()
        tracer.wait(timeout=10)
        pytest.fail("strait under strace did not exit within 60 s on an invalid config")
    calls = trace.read_text()
    output = out_path.read_text(errors="replace")
    assert code > 0, f"exit {code}:\n{output}"
    assert not re.search(r"\blisten\(", calls), f"listen() called on an invalid config:\n{calls}"
    for p in ports:
        assert f"htons({p})" not in calls, f"bind() to configured port {p} on an invalid config:\n{calls}"


# --- layering and defaults ---------------------------------------------------------------------------


def test_config_yaml_overrides_node_id(fleet):
    echo = fleet.echo()
    config = bootstrap([tcp_proxy_listener("tcp_main", "backend")], [static_cluster("backend", [echo.port])],
                       node_id="file-node", node_cluster="file-cluster")
    proc = fleet.start(config, extra=["--config-yaml", "node: {id: layered-node}"])
    info = proc.get("/server_info").json()
    assert info["node"]["id"] == "layered-node"
    assert info["node"]["cluster"] == "file-cluster", "maps must merge key by key, not replace"
    port = proc.listener_port("tcp_main")
    with harness.connect(port) as s:
        s.sendall(b"layered")
        assert harness.recv_exact(s, 7) == b"layered"


def _port_free_everywhere(port: int) -> bool:
    if not harness.port_is_free(port, "0.0.0.0"):
        return False
    if socket.has_ipv6:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(("::", port))
            except OSError as err:
                if err.errno not in (97, 99):  # no IPv6 here: nothing can hold the port on it
                    return False
    return True


def test_embedded_default_bootstrap(fleet):
    busy = [p for p in (15000, 15001, 15006) if not _port_free_everywhere(p)]
    if busy:
        pytest.skip(f"ports {busy} are in use on this machine")
    proc = fleet.start(None, concurrency=1)
    ports = {int(s["local_address"]["socket_address"]["port_value"]) for s in proc.listener_statuses()}
    assert {15001, 15006} <= ports, f"default listeners: {ports}"
    assert proc.get("/ready").status == 200


def test_second_strait_on_the_same_admin_port_fails_instead_of_sharing_it(fleet, tmp_path):
    """Listeners use SO_REUSEPORT (one socket per worker); the admin must not, or a second Strait
    started by mistake would silently answer half of the admin requests."""
    admin_port = harness.free_port()
    cfg = _valid_config()
    cfg["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}}
    first = fleet.start(cfg)
    assert first.alive()
    (tmp_path / "second").mkdir()
    path = harness.write_bootstrap(tmp_path / "second", cfg)
    done = harness.run_strait(["-c", str(path), "--concurrency", "1"])
    out = done.stdout + done.stderr
    assert done.returncode != 0, f"a second strait started on admin port {admin_port}:\n{out}"
    assert "admin" in out and str(admin_port) in out, out
    assert first.alive(), "the first strait died"
