"""Access logs through the real binary: Envoy's command operators in text and JSON lines, the response
flags produced by real situations (no route, no endpoints, refused connections, circuit breaker,
timeouts, hang-ups, fault injection), filters, Istio's default format, tcp_proxy sessions, reopening
after logrotate (POST /reopen_logs and SIGUSR1), and bad formats refused naming the field."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path

import harness
import test_xds_edge_cases as xe
from harness import route_to, virtual_host
from peers import env, h1
from test_xds_edge_cases import env as xds_env, mode  # noqa: F401  (fixtures of the xDS tests)

FILE_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"

# Istio's default text format (meshConfig.accessLogFormat unset), as istiod sends it.
ISTIO_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    '%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% '
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% '
    '%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n')


def _file_log(path: Path, text: str | None = None, json_format: dict | None = None, flt: dict | None = None,
              **fmt_extra) -> dict:
    cfg: dict = {"@type": FILE_TYPE, "path": str(path)}
    if text is not None:
        cfg["log_format"] = {"text_format_source": {"inline_string": text}, **fmt_extra}
    elif json_format is not None:
        cfg["log_format"] = {"json_format": json_format, **fmt_extra}
    log = {"name": "envoy.access_loggers.file", "typed_config": cfg}
    if flt is not None:
        log["filter"] = flt
    return log


def _read_lines(path: Path, n: int, timeout: float = 5.0) -> list[str]:
    """Waits until `path` holds at least n lines (the writer thread writes them a moment later)."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{path}: {len(lines)} lines after {timeout}s, wanted {n}: {lines!r}")


def _start(fleet, logs: list[dict], routes: list[dict], clusters: list[dict], http_filters=None, **hcm):
    vh = virtual_host("all", ["*"], routes)
    listener = harness.http_listener("http", "ingress_http", [vh], access_log=logs,
                                     **({"http_filters": http_filters} if http_filters else {}), **hcm)
    proc = fleet.start(harness.bootstrap([listener], clusters))
    return proc, proc.listener_port("http")


def _route(prefix: str, cluster: str, name: str | None = None, **action) -> dict:
    r = route_to(cluster, prefix, **action)
    if name:
        r["name"] = name
    return r


# ---------------------------------------------------------------------------------------------------
# Operators


OPERATORS = [
    "%START_TIME(%Y-%m-%dT%H:%M:%S.%3f)%", "%START_TIME%", "%REQ(:METHOD)%", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "%REQ(USER-AGENT):5%", "%RESP(X-ORIGIN)%", "%TRAILER(X-TRAILER-ONE)%", "%RESPONSE_CODE%", "%RESPONSE_FLAGS%",
    "%RESPONSE_FLAGS_LONG%", "%RESPONSE_CODE_DETAILS%", "%CONNECTION_TERMINATION_DETAILS%", "%DURATION%",
    "%REQUEST_DURATION%", "%RESPONSE_DURATION%", "%BYTES_RECEIVED%", "%BYTES_SENT%", "%PROTOCOL%",
    "%UPSTREAM_HOST%", "%UPSTREAM_CLUSTER%", "%UPSTREAM_LOCAL_ADDRESS%", "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "%DOWNSTREAM_REMOTE_ADDRESS%", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "%DOWNSTREAM_LOCAL_ADDRESS%",
    "%DOWNSTREAM_PEER_URI_SAN%", "%DOWNSTREAM_LOCAL_URI_SAN%", "%REQUESTED_SERVER_NAME%", "%ROUTE_NAME%",
    "%HOSTNAME%", "100%%", "%REQ(X-MISSING)%",
]


def test_text_operators_each_checked(fleet, tmp_path):
    log = tmp_path / "access.log"
    origin = env.origin(fleet)
    proc, port = _start(fleet, [_file_log(log, "|".join(OPERATORS) + "\n")],
                        [_route("/", "backend", name="main_route")], [harness.static_cluster("backend", [origin.port])])
    body = b"x" * 123
    before = time.time()
    r = h1.request(port, "POST", "/_/chunked?chunks=2&size=50&trailers=1",
                   [("User-Agent", "curl-like/1.0"), ("TE", "trailers")], body)
    assert r.status == 200, r
    (line,) = _read_lines(log, 1)
    f = line.split("|")
    assert len(f) == len(OPERATORS), f
    v = dict(zip(OPERATORS, f))
    t = time.mktime(time.strptime(v["%START_TIME(%Y-%m-%dT%H:%M:%S.%3f)%"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(t - before) < 5 and re.fullmatch(r".*\.\d{3}", v["%START_TIME(%Y-%m-%dT%H:%M:%S.%3f)%"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", v["%START_TIME%"]), v["%START_TIME%"]
    assert v["%REQ(:METHOD)%"] == "POST"
    assert v["%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"] == "/_/chunked?chunks=2&size=50&trailers=1"  # the alternative
    assert v["%REQ(USER-AGENT):5%"] == "curl-"  # cut to 5 bytes
    assert v["%RESP(X-ORIGIN)%"] == "origin"
    assert v["%TRAILER(X-TRAILER-ONE)%"] == "t1"
    assert v["%RESPONSE_CODE%"] == "200"
    assert v["%RESPONSE_FLAGS%"] == "-" and v["%RESPONSE_FLAGS_LONG%"] == "-"
    assert v["%RESPONSE_CODE_DETAILS%"] == "via_upstream"
    assert v["%CONNECTION_TERMINATION_DETAILS%"] == "-"
    assert 0 <= int(v["%REQUEST_DURATION%"]) <= int(v["%RESPONSE_DURATION%"]) <= int(v["%DURATION%"]) < 5000
    assert v["%BYTES_RECEIVED%"] == "123"
    assert v["%BYTES_SENT%"] == "100"
    assert v["%PROTOCOL%"] == "HTTP/1.1"
    assert v["%UPSTREAM_HOST%"] == f"127.0.0.1:{origin.port}"
    assert v["%UPSTREAM_CLUSTER%"] == "backend"
    assert v["%UPSTREAM_LOCAL_ADDRESS%"] == "-"  # not known to the HTTP router (see the report)
    assert v["%UPSTREAM_TRANSPORT_FAILURE_REASON%"] == "-"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", v["%DOWNSTREAM_REMOTE_ADDRESS%"])
    assert v["%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"] == "127.0.0.1"
    assert v["%DOWNSTREAM_LOCAL_ADDRESS%"] == f"127.0.0.1:{port}"
    assert v["%DOWNSTREAM_PEER_URI_SAN%"] == "-" and v["%DOWNSTREAM_LOCAL_URI_SAN%"] == "-"  # plaintext
    assert v["%REQUESTED_SERVER_NAME%"] == "-"
    assert v["%ROUTE_NAME%"] == "main_route"
    assert v["%HOSTNAME%"] == socket.gethostname()
    assert v["100%%"] == "100%"
    assert v["%REQ(X-MISSING)%"] == "-"


def test_json_format_typed_and_escaped(fleet, tmp_path):
    log = tmp_path / "access.json"
    origin = env.origin(fleet)
    fmt = {"code": "%RESPONSE_CODE%", "method": "%REQ(:METHOD)%", "ua": "%REQ(USER-AGENT)%",
           "missing": "%REQ(X-NOPE)%", "mixed": "code=%RESPONSE_CODE% nope=%REQ(X-NOPE)%",
           "bytes": "%BYTES_SENT%", "flags": "%RESPONSE_FLAGS%", "literal": 7, "on": True,
           "nested": {"cluster": "%UPSTREAM_CLUSTER%", "dur": "%DURATION%"}}
    omit_log = tmp_path / "omit.json"
    proc, port = _start(fleet, [_file_log(log, json_format=fmt),
                                _file_log(omit_log, json_format={"m": "%REQ(:METHOD)%", "x": "%REQ(X-NOPE)%"},
                                          omit_empty_values=True)],
                        [_route("/", "backend")], [harness.static_cluster("backend", [origin.port])])
    ua = 'quote" back\\slash\ttab'
    assert h1.get(port, "/_/status?code=201", [("User-Agent", ua)]).status == 201
    (line,) = _read_lines(log, 1)
    d = json.loads(line)
    assert d["code"] == 201 and isinstance(d["code"], int)
    assert d["method"] == "GET"
    assert d["ua"] == ua  # escaped on the way out, equal after json.loads
    assert d["missing"] is None
    assert d["mixed"] == "code=201 nope=-"
    assert isinstance(d["bytes"], int) and d["bytes"] > 0
    assert d["flags"] == "-"
    assert d["literal"] == 7 and d["on"] is True
    assert d["nested"]["cluster"] == "backend" and isinstance(d["nested"]["dur"], int)
    (omit,) = _read_lines(omit_log, 1)
    assert json.loads(omit) == {"m": "GET"}


def test_default_format_and_stdout_logger(fleet, tmp_path):
    log = tmp_path / "default.log"
    origin = env.origin(fleet)
    stdout_log = {"name": "envoy.access_loggers.stdout", "typed_config": {
        "@type": STDOUT_TYPE, "log_format": {"text_format": "STDOUT-LINE %REQ(:PATH)% %RESPONSE_CODE%\n"}}}
    proc, port = _start(fleet, [_file_log(log), stdout_log], [_route("/", "backend")],
                        [harness.static_cluster("backend", [origin.port])])
    assert h1.get(port, "/dflt", [("User-Agent", "ua1"), ("X-Request-Id", "rid-1")]).status == 200
    (line,) = _read_lines(log, 1)
    m = re.fullmatch(r'\[(\S+)\] "GET /dflt HTTP/1.1" 200 - 0 (\d+) (\d+) - "-" "ua1" "rid-1" "example.test" '
                     rf'"127.0.0.1:{origin.port}"', line)
    assert m, line
    deadline = time.monotonic() + 5
    while "STDOUT-LINE /dflt 200" not in proc.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "STDOUT-LINE /dflt 200" in proc.logs()


def test_istio_default_format_accepted(fleet, tmp_path):
    log = tmp_path / "istio.log"
    origin = env.origin(fleet)
    proc, port = _start(fleet, [_file_log(log, ISTIO_FORMAT)], [_route("/", "outbound|80||backend.ns.svc", name="default")],
                        [harness.static_cluster("outbound|80||backend.ns.svc", [origin.port])])
    assert h1.get(port, "/istio?a=1", [("User-Agent", "istio-test"), ("X-Forwarded-For", "10.1.2.3")]).status == 200
    (line,) = _read_lines(log, 1)
    m = re.fullmatch(
        r'\[\S+Z\] "GET /istio\?a=1 HTTP/1.1" 200 - via_upstream - "-" 0 (\d+) (\d+) - "10\.1\.2\.3" "istio-test" '
        rf'"[0-9a-f-]{{36}}" "example.test" "127.0.0.1:{origin.port}" outbound\|80\|\|backend\.ns\.svc - '
        rf'127.0.0.1:{port} 127.0.0.1:\d+ - default', line)
    assert m, line


# ---------------------------------------------------------------------------------------------------
# Response flags from real situations


def test_response_flags_from_real_situations(fleet, tmp_path):
    log = tmp_path / "flags.log"
    origin = env.origin(fleet)
    dead = harness.closed_port()
    clusters = [
        harness.static_cluster("backend", [origin.port]),
        {"name": "empty", "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": "empty", "endpoints": []}},
        harness.static_cluster("dead", [dead], connect_timeout="0.5s"),
        {**harness.static_cluster("full", [origin.port]),
         "circuit_breakers": {"thresholds": [{"max_requests": 0}]}},
    ]
    routes = [
        _route("/uh", "empty"),
        _route("/uf", "dead", retry_policy={"retry_on": "connect-failure", "num_retries": 1}),
        _route("/uo", "full"),
        _route("/_/never", "backend", timeout="0.3s"),
        _route("/_/", "backend"),
        _route("/fault", "backend"),
    ]
    fault = {"name": "envoy.filters.http.fault", "typed_config": {
        "@type": FAULT_TYPE, "delay": {"header_delay": {}, "percentage": {"numerator": 100}},
        "abort": {"header_abort": {}, "percentage": {"numerator": 100}}}}
    proc, port = _start(fleet, [_file_log(log, "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
                                                "%UPSTREAM_TRANSPORT_FAILURE_REASON%\n")],
                        routes, clusters, http_filters=[fault, harness.router_filter()])
    expect = {}

    def check(path, status, headers=None):
        r = h1.get(port, path, headers)
        assert r.status == status, (path, r)

    check("/nothing", 404); expect["/nothing"] = ("404", "NR")
    check("/uh", 503); expect["/uh"] = ("503", "UH")
    check("/uf", 503); expect["/uf"] = ("503", "UF,URX")
    check("/uo", 503); expect["/uo"] = ("503", "UO")
    check("/_/never", 504); expect["/_/never"] = ("504", "UT")
    check("/fault/abort", 418, [("x-envoy-fault-abort-request", "418")]); expect["/fault/abort"] = ("418", "FI")
    check("/fault/delay", 200, [("x-envoy-fault-delay-request", "50")]); expect["/fault/delay"] = ("200", "DI")
    # The upstream closes mid-body: the client sees the connection end, the log says UC.
    try:
        h1.get(port, "/_/close-mid-body?size=1000&send=10", timeout=5)
    except (ConnectionError, OSError):
        pass
    expect["/_/close-mid-body?size=1000&send=10"] = ("200", "UC")
    # The client hangs up after the response headers: DC.
    s = harness.connect(port)
    s.sendall(b"GET /_/body?size=16000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close: RST
    s.close()
    expect["/_/body?size=16000000"] = ("200", "DC")

    lines = _read_lines(log, len(expect), timeout=8)
    got = {}
    for line in lines:
        parts = line.split(" ")
        got[parts[0]] = parts
    for path, (code, flags) in expect.items():
        assert path in got, (path, lines)
        assert got[path][1] == code and got[path][2] == flags, (path, got[path])
    assert got["/uf"][4] == "connection_failure"
    assert got["/nothing"][3] == "route_not_found"
    assert got["/uh"][3] == "no_healthy_upstream"


# ---------------------------------------------------------------------------------------------------
# Filters


def test_filters_select_lines(fleet, tmp_path):
    errors, slow, not_hc, flagged = (tmp_path / n for n in ("errors.log", "slow.log", "nothc.log", "flagged.log"))
    origin = env.origin(fleet)
    fmt = "%REQ(:PATH)% %RESPONSE_CODE%\n"
    logs = [
        _file_log(errors, fmt, flt={"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 400}}}}),
        _file_log(slow, fmt, flt={"duration_filter": {"comparison": {"op": "GE", "value": {"default_value": 300}}}}),
        _file_log(not_hc, fmt, flt={"and_filter": {"filters": [{"not_health_check_filter": {}},
                                                                {"runtime_filter": {"runtime_key": "k",
                                                                                    "percent_sampled": {"numerator": 100}}}]}}),
        _file_log(flagged, fmt, flt={"response_flag_filter": {"flags": ["NR"]}}),
    ]
    proc, port = _start(fleet, logs, [_route("/_/", "backend"), _route("/ok", "backend")],
                        [harness.static_cluster("backend", [origin.port])])
    assert h1.get(port, "/ok").status == 200
    assert h1.get(port, "/missing").status == 404
    assert h1.get(port, "/_/status?code=503").status == 503
    assert h1.get(port, "/_/slow?delay=0.4").status == 200
    assert h1.get(port, "/ok/hc", [("User-Agent", "Envoy/HC")]).status == 200
    time.sleep(0.5)
    # Each request is a connection of its own and may land on either worker; lines from different workers
    # reach the writer thread in no fixed order (seen swapped under the sanitizers), so compare them sorted.
    assert sorted(l.split()[0] for l in _read_lines(errors, 2)) == sorted(["/missing", "/_/status?code=503"])
    assert [l.split()[0] for l in _read_lines(slow, 1)] == ["/_/slow?delay=0.4"]
    assert sorted(l.split()[0] for l in _read_lines(not_hc, 4)) == \
        sorted(["/ok", "/missing", "/_/status?code=503", "/_/slow?delay=0.4"])
    assert [l.split()[0] for l in _read_lines(flagged, 1)] == ["/missing"]


# ---------------------------------------------------------------------------------------------------
# tcp_proxy


def test_tcp_proxy_sessions_logged_with_bytes(fleet, tmp_path):
    log = tmp_path / "tcp.log"
    echo = harness.track(fleet, harness.EchoServer())
    dead = harness.closed_port()
    fmt = "%UPSTREAM_CLUSTER% %UPSTREAM_HOST% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS% %PROTOCOL% %DURATION% " \
          "%UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n"
    listeners = []
    for name, cluster in (("tcp", "echo"), ("tcpdead", "dead")):
        l = harness.tcp_proxy_listener(name, cluster)
        l["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = [_file_log(log, fmt)]
        listeners.append(l)
    proc = fleet.start(harness.bootstrap(listeners, [harness.static_cluster("echo", [echo.port]),
                                                     harness.static_cluster("dead", [dead], connect_timeout="0.5s")]))
    s = harness.connect(proc.listener_port("tcp"))
    s.sendall(b"a" * 1000)
    assert harness.recv_exact(s, 1000) == b"a" * 1000
    s.close()
    (line,) = _read_lines(log, 1)
    f = line.split(" ")
    assert f[0] == "echo" and f[1] == f"127.0.0.1:{echo.port}"
    assert f[2] == "1000" and f[3] == "1000" and f[4] == "-" and f[5] == "-"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", f[7]) and f[8] == "-"
    d = harness.connect(proc.listener_port("tcpdead"))
    harness.wait_closed(d, 5)
    lines = _read_lines(log, 2)
    f = lines[1].split(" ")
    assert f[0] == "dead" and f[4] == "UF" and f[8] == "connection_failure", lines[1]


# ---------------------------------------------------------------------------------------------------
# Reopen (logrotate)


def test_reopen_on_admin_and_sigusr1(fleet, tmp_path):
    log = tmp_path / "rot.log"
    origin = env.origin(fleet)
    proc, port = _start(fleet, [_file_log(log, "%REQ(:PATH)%\n")], [_route("/", "backend")],
                        [harness.static_cluster("backend", [origin.port])])
    assert h1.get(port, "/one").status == 200
    assert _read_lines(log, 1) == ["/one"]
    log.rename(tmp_path / "rot.log.1")
    assert proc.post("/reopen_logs").status == 200
    assert h1.get(port, "/two").status == 200
    assert _read_lines(log, 1) == ["/two"]
    assert (tmp_path / "rot.log.1").read_text().splitlines() == ["/one"]
    log.rename(tmp_path / "rot.log.2")
    proc.signal(signal.SIGUSR1)
    time.sleep(0.3)  # the signal is handled on the main loop
    assert h1.get(port, "/three").status == 200
    assert _read_lines(log, 1) == ["/three"]
    assert (tmp_path / "rot.log.2").read_text().splitlines() == ["/two"]
    st = proc.stats()
    assert st.get("filesystem.reopen_failed", 0) == 0 and st.get("filesystem.write_completed", 0) >= 3
    assert st.get("access_log.dropped", 0) == 0


# ---------------------------------------------------------------------------------------------------
# Bad config


def test_unknown_operator_refused_naming_the_field(tmp_path):
    vh = virtual_host("all", ["*"], [route_to("backend")])
    listener = harness.http_listener("http", "ingress_http", [vh],
                                     access_log=[_file_log(tmp_path / "x.log", "%START_TIME% %NOT_AN_OPERATOR%\n")])
    path = harness.write_bootstrap(tmp_path, harness.bootstrap([listener], [harness.static_cluster("backend", [1])]))
    r = harness.run_strait(["--mode", "validate", "-c", str(path)])
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "access_log[0].typed_config.log_format.text_format_source.inline_string" in out, out
    assert "NOT_AN_OPERATOR" in out, out
    # Serving: exits non-zero before binding.
    r = harness.run_strait(["-c", str(path), "--concurrency", "1"])
    assert r.returncode != 0 and "NOT_AN_OPERATOR" in r.stdout + r.stderr


def test_bad_format_over_xds_is_nacked_and_old_config_serves(xds_env, tmp_path):
    log = tmp_path / "xds.log"
    xds = xds_env.xds
    origin = xds_env.origin("a")
    port = harness.free_port()

    def listener(fmt: str) -> dict:
        l = xe.http_listener("l-log", port, cluster="c1")
        l["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = [_file_log(log, fmt)]
        return l

    good = listener("GOOD %REQ(:PATH)%\n")
    xds.set_resources([xe.static_cluster("c1", origin.port), good])
    xds_env.start()
    xe.wait_get(port, (200, "a"), path="/first")
    assert _read_lines(log, 1) == ["GOOD /first"]
    xe.expect_ack(xds, xe.LDS)
    bad = listener("BAD %REQ(:PATH)% %NO_SUCH_OPERATOR%\n")
    nonce = xds_env.push(xe.LDS, [(None, bad)], version="bad-format")
    xe.expect_nack(xds, xe.LDS, ["l-log", "access_log[0].typed_config.log_format", "NO_SUCH_OPERATOR"], nonce=nonce)
    xe.wait_get(port, (200, "a"), path="/second")
    assert _read_lines(log, 2) == ["GOOD /first", "GOOD /second"]


def test_listener_access_log_for_connections_no_chain_takes(fleet, tmp_path):
    log = tmp_path / "listener.log"
    echo = harness.track(fleet, harness.EchoServer())
    l = harness.tcp_proxy_listener("nochain", "echo")
    l["filter_chains"][0]["filter_chain_match"] = {"destination_port": 1}  # never this listener's port
    l["access_log"] = [_file_log(log, "%RESPONSE_FLAGS% %DOWNSTREAM_LOCAL_ADDRESS% %BYTES_RECEIVED%\n")]
    proc = fleet.start(harness.bootstrap([l], [harness.static_cluster("echo", [echo.port])]))
    port = proc.listener_port("nochain")
    s = harness.connect(port)
    assert harness.wait_closed(s, 5)[0] in ("eof", "reset")
    assert _read_lines(log, 1) == [f"NR 127.0.0.1:{port} 0"]
