#!/usr/bin/python3
"""Writes the seed corpora of tests/fuzz/corpus/<target>/ (README.md here says what each target reads).

The seeds come from the project's own tests and guide: the HTTP/1.1 requests and upstream responses of
tests/integration (test_http_hardening.py, peers/origin.py), the rows of the hardening guide, frames like
the ones tests/integration's raw HTTP/2 peers send (python3-h2's hpack and hyperframe), the bootstraps of
the unit tests and the embedded default, xDS resources in the shapes the tests push (encoded with protoc
from text format), and TLS ClientHellos made by Python's ssl module. Run it from anywhere with Debian's
python3; it rewrites the seeds it owns (files named seed-*) and leaves other files (kept finds) alone.
"""
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile

import yaml
from hpack import Encoder
from hyperframe import frame as hf

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def clear(target):
    d = os.path.join(CORPUS, target)
    if os.path.isdir(d):
        for n in os.listdir(d):
            if n.startswith("seed-"):
                os.remove(os.path.join(d, n))


# ---- HTTP/1.1 ---------------------------------------------------------------------------------------

SMUGGLE_TAIL = b"GET /smuggled HTTP/1.1\r\nHost: example.test\r\n\r\n"


def req(lines, body=b"", method="POST", target="/attack"):
    head = [f"{method} {target} HTTP/1.1", "Host: example.test"] + lines
    return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body


H1_REQUESTS = {
    "get": b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: test\r\n\r\n",
    "pipelined": b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
    "http10": b"GET / HTTP/1.0\r\n\r\n",
    "chunked-trailers": b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    "content-length": b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789",
    "expect-continue": b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    "absolute-form": b"GET http://Example.com:8080/a/b?c=d HTTP/1.1\r\nHost: ignored\r\n\r\n",
    "connect": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\ntunnel",
    "websocket": b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x05hello",
    "head": b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n",
    "keep-alive-close": b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    "cl-and-te": req(["Content-Length: 5", "Transfer-Encoding: chunked"], b"0\r\n\r\n" + SMUGGLE_TAIL),
    "te-leading-comma": req(["Transfer-Encoding: ,chunked"], b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLE_TAIL),
    "te-space-before-colon": req(["Transfer-Encoding : chunked"], b"5\r\nhello\r\n0\r\n\r\n"),
    "te-not-final": req(["Transfer-Encoding: chunked, gzip"], b"5\r\nhello\r\n0\r\n\r\n"),
    "cl-plus": req(["Content-Length: +1"], b"x"),
    "cl-dup": req(["Content-Length: 1", "Content-Length: 2"], b"xx"),
    "cl-list": req(["Content-Length: 1, 2"], b"xx"),
    "chunk-hex-prefix": req(["Transfer-Encoding: chunked"], b"0x1\r\nA\r\n0\r\n\r\n"),
    "chunk-bare-cr-ext": req(["Transfer-Encoding: chunked"], b"1;ext=a\rb\r\nA\r\n0\r\n\r\n"),
    "chunk-bare-lf": req(["Transfer-Encoding: chunked"], b"1\nA\r\n0\r\n\r\n"),
    "chunk-overflow": req(["Transfer-Encoding: chunked"], b"fffffffffffffffffffff\r\nA\r\n0\r\n\r\n"),
    "obs-fold": req(["X-Folded: a", "  continued"], method="GET"),
    "nul-in-value": req(["X-A: a\x00b"], method="GET"),
    "empty-name": req([": a"], method="GET"),
    "many-headers": req([f"X-H{i}: v" for i in range(40)], method="GET"),
    "dot-segments": b"GET /public/../admin/secret HTTP/1.1\r\nHost: h\r\n\r\n",
    "escaped-slash": b"GET /public/..%2Fadmin/secret HTTP/1.1\r\nHost: h\r\n\r\n",
}

# Upstream responses (tests/integration/peers/origin.py's RAW_RESPONSES and ordinary ones).
H1_RESPONSES = {
    "ok-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
    "chunked-trailers": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n",
    "close-delimited": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close",
    "http10": b"HTTP/1.0 200 OK\r\n\r\nold",
    "continue-then-ok": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    "early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "keep-alive-two": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    "switching": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi",
    "connect-ok": b"HTTP/1.1 200 Connection Established\r\n\r\ntunnel bytes",
    "304": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Folded: a\r\n  b\r\n\r\nhello",
    "bad-cl": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    "dup-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "bad-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Bad: a\x00b\r\n\r\nhello",
}


def h1_seeds():
    modes = [0x00, 0x49, 0x4a, 0x53, 0x5c, 0x61, 0x0b, 0x12]
    clear("h1_server_fuzz")
    for i, (name, data) in enumerate(sorted(H1_REQUESTS.items())):
        write("h1_server_fuzz", name, bytes([modes[i % len(modes)], (i * 37) & 0xff]) + data)
    clear("h1_client_fuzz")
    for i, (name, data) in enumerate(sorted(H1_RESPONSES.items())):
        shapes = {"switching": 5, "connect-ok": 4}.get(name, i % 4)
        write("h1_client_fuzz", name, bytes([shapes | (shapes << 3), (i * 53) & 0xff]) + data)


# The framing shapes the differential target (h1_differential_fuzz) compares across the proxy, beside the
# requests above: bodies of every framing, pipelined after each other, and the tolerated edge cases.
H1_DIFFERENTIAL = {
    "pipelined-bodies": req(["Content-Length: 3"], b"abc") + req(["Transfer-Encoding: chunked"],
                                                                   b"2;a=b\r\nde\r\n0\r\n\r\n") + SMUGGLE_TAIL,
    "zero-cl": req(["Content-Length: 0"]) + SMUGGLE_TAIL,
    "zero-chunked": req(["Transfer-Encoding: chunked"], b"0\r\n\r\n") + SMUGGLE_TAIL,
    "chunk-ext-quoted": req(["Transfer-Encoding: chunked"], b'3 ; name="v;x" ;n2\r\nabc\r\n0\r\n\r\n'),
    "chunk-upper-hex": req(["Transfer-Encoding: CHUNKED"], b"A\r\n0123456789\r\n0000\r\nT: 1\r\n\r\n"),
    "chunk-large-size": req(["Transfer-Encoding: chunked"], b"7fffffffffffffff\r\nabc"),
    "cl-dup-same": req(["Content-Length: 3", "Content-Length: 3"], b"abc") + SMUGGLE_TAIL,
    "te-twice": req(["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"], b"3\r\nabc\r\n0\r\n\r\n"),
    "te-http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + SMUGGLE_TAIL,
    "leading-crlf": b"\r\n" + req([], method="GET") + SMUGGLE_TAIL,
    "bare-lf-headers": b"GET / HTTP/1.1\nHost: h\n\n" + SMUGGLE_TAIL,
    "get-with-body": req(["Content-Length: 4"], b"body", method="GET") + SMUGGLE_TAIL,
    "connection-te": req(["Connection: close, Content-Length", "Content-Length: 2"], b"ab") + SMUGGLE_TAIL,
    "h2c-upgrade-body": req(["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAAP__",
                             "Content-Length: 2"], b"ab") + SMUGGLE_TAIL,
}


def h1_differential_seeds():
    clear("h1_differential_fuzz")
    shapes = dict(H1_REQUESTS)
    shapes.update(H1_DIFFERENTIAL)
    for i, (name, data) in enumerate(sorted(shapes.items())):
        write("h1_differential_fuzz", name, bytes([(i * 41) & 0xff]) + data)


# ---- HTTP/2 -----------------------------------------------------------------------------------------


def ser(*frames):
    return b"".join(f.serialize() for f in frames)


def headers(sid, pairs, end_stream=True, enc=None):
    enc = enc or Encoder()
    f = hf.HeadersFrame(sid)
    f.data = enc.encode(pairs)
    f.flags.add("END_HEADERS")
    if end_stream:
        f.flags.add("END_STREAM")
    return f


def data(sid, payload, end_stream=True):
    f = hf.DataFrame(sid)
    f.data = payload
    if end_stream:
        f.flags.add("END_STREAM")
    return f


def settings_ack():
    f = hf.SettingsFrame(0)
    f.flags.add("ACK")
    return f


REQ = [(":method", "GET"), (":scheme", "http"), (":path", "/index.html?q=1"), (":authority", "example.com"),
       ("user-agent", "test")]


def h2_server_seeds():
    out = {}
    out["get"] = ser(settings_ack(), headers(1, REQ))
    enc = Encoder()
    out["two-streams-dynamic-table"] = ser(headers(1, REQ + [("x-custom", "value")], enc=enc),
                                           headers(3, REQ + [("x-custom", "value")], enc=enc))
    post = [(":method", "POST"), (":scheme", "http"), (":path", "/upload"), (":authority", "h"),
            ("content-type", "application/grpc"), ("te", "trailers")]
    enc = Encoder()
    out["post-data-trailers"] = ser(headers(1, post, end_stream=False, enc=enc), data(1, b"\x00\x00\x00\x00\x05hello", False),
                                    headers(1, [("grpc-timeout", "1S")], enc=enc))
    block = Encoder().encode(REQ + [("x-long", "v" * 200)])
    h = hf.HeadersFrame(1)
    h.data = block[:20]
    h.flags.add("END_STREAM")
    c1 = hf.ContinuationFrame(1)
    c1.data = block[20:60]
    c2 = hf.ContinuationFrame(1)
    c2.data = block[60:]
    c2.flags.add("END_HEADERS")
    out["continuation"] = ser(h, c1, c2)
    conts = [h] + [hf.ContinuationFrame(1, data=b"\x40\x01a\x01b") for _ in range(20)]
    out["continuation-flood"] = ser(*conts)
    rst = hf.RstStreamFrame(1)
    rst.error_code = 8
    out["rapid-reset"] = ser(headers(1, REQ), rst, headers(3, REQ), hf.RstStreamFrame(3, error_code=8),
                             headers(5, REQ), hf.RstStreamFrame(5, error_code=8))
    out["ping-flood"] = ser(*[hf.PingFrame(0, opaque_data=bytes([i] * 8)) for i in range(12)])
    out["settings-flood"] = ser(*[hf.SettingsFrame(0, settings={4: 65535 + i}) for i in range(6)])
    out["window-update"] = ser(headers(1, post, end_stream=False), hf.WindowUpdateFrame(0, window_increment=1 << 20),
                               hf.WindowUpdateFrame(1, window_increment=100), data(1, b"x" * 100))
    out["priority"] = ser(hf.PriorityFrame(1, depends_on=0, stream_weight=200), headers(1, REQ))
    out["goaway"] = ser(headers(1, REQ), hf.GoAwayFrame(0, last_stream_id=1, error_code=0, additional_data=b"bye"))
    # HPACK bomb: one large entry in the dynamic table, referenced many times.
    enc = Encoder()
    big = REQ + [("x-bomb", "b" * 3000)]
    first = enc.encode(big)
    again = enc.encode(big + [("x-bomb", "b" * 3000)] * 10)
    hh = hf.HeadersFrame(1, data=first)
    hh.flags.add("END_HEADERS"); hh.flags.add("END_STREAM")
    h3 = hf.HeadersFrame(3, data=again)
    h3.flags.add("END_HEADERS"); h3.flags.add("END_STREAM")
    out["hpack-bomb"] = ser(hh, h3)
    out["bad-pseudo"] = ser(headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                        (":authority", "h"), (":bogus", "x")]))
    out["uppercase-name"] = ser(headers(1, REQ + [("X-Upper", "v")]))
    out["connection-header"] = ser(headers(1, REQ + [("connection", "keep-alive")]))
    out["crlf-in-value"] = ser(headers(1, REQ + [("x-a", "a\r\nb")]))
    out["extended-connect"] = ser(headers(1, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                              (":path", "/ws"), (":authority", "h")], end_stream=False), data(1, b"ws", False))
    out["connect"] = ser(headers(1, [(":method", "CONNECT"), (":authority", "example.com:443")], end_stream=False),
                         data(1, b"tunnel", True))
    out["too-many-streams"] = ser(*[headers(1 + 2 * i, REQ) for i in range(8)])
    out["expect-continue"] = ser(headers(1, [(":method", "POST"), (":scheme", "http"), (":path", "/e"),
                                             (":authority", "h"), ("expect", "100-continue")], end_stream=False),
                                 data(1, b"abc"))
    clear("h2_server_fuzz")
    modes = [0x00, 0x49, 0x4a, 0x53, 0x5c, 0x61, 0x0b, 0x12]
    for i, (name, d) in enumerate(sorted(out.items())):
        write("h2_server_fuzz", name, bytes([modes[i % len(modes)], (i * 41) & 0xff]) + d)


def h2_client_seeds():
    out = {}
    enc = Encoder()
    out["ok-data"] = ser(settings_ack(), headers(1, [(":status", "200"), ("content-length", "5")], False, enc), data(1, b"hello"))
    out["trailers"] = ser(headers(1, [(":status", "200"), ("content-type", "application/grpc")], False),
                          data(1, b"\x00\x00\x00\x00\x00", False), headers(1, [("grpc-status", "0")]))
    out["informational"] = ser(headers(1, [(":status", "100")], False), headers(1, [(":status", "204")]))
    out["reset"] = ser(headers(1, [(":status", "200")], False), hf.RstStreamFrame(1, error_code=2))
    out["refused"] = ser(hf.RstStreamFrame(1, error_code=7))
    out["goaway"] = ser(hf.GoAwayFrame(0, last_stream_id=0, error_code=0))
    out["settings-max-streams"] = ser(hf.SettingsFrame(0, settings={3: 1, 4: 10, 5: 16384, 1: 0}),
                                      headers(1, [(":status", "200")]))
    out["push-promise"] = ser(hf.PushPromiseFrame(1, promised_stream_id=2, data=Encoder().encode(REQ), flags=["END_HEADERS"]))
    out["bad-status"] = ser(headers(1, [(":status", "2000")]))
    out["no-status"] = ser(headers(1, [("x-a", "b")]))
    out["connect-ok"] = ser(headers(1, [(":status", "200")], False), data(1, b"tunnel", False))
    out["ping-window"] = ser(hf.PingFrame(0, opaque_data=b"12345678"), hf.WindowUpdateFrame(0, window_increment=1000),
                             hf.WindowUpdateFrame(1, window_increment=1000))
    out["content-length-mismatch"] = ser(headers(1, [(":status", "200"), ("content-length", "3")], False), data(1, b"hello"))
    clear("h2_client_fuzz")
    for i, (name, d) in enumerate(sorted(out.items())):
        shapes = {"connect-ok": 4 | (4 << 3)}.get(name, (i % 4) | ((i % 3) << 3) | ((i % 3) << 6))
        write("h2_client_fuzz", name, bytes([shapes, (i * 29) & 0xff]) + d)


# ---- bootstraps -------------------------------------------------------------------------------------


def cpp_raw_strings(path, name_re):
    text = open(path, encoding="utf-8").read()
    return re.findall(name_re + r'(?:\[\])?\s*=\s*R"\((.*?)\)"', text, re.S)


def bootstrap_seeds():
    clear("bootstrap_fuzz")
    texts = {}
    texts["default"] = cpp_raw_strings(os.path.join(ROOT, "proxy/config/default_bootstrap.h"), r"kDefaultBootstrapYaml")[0]
    texts["unit-good"] = cpp_raw_strings(os.path.join(ROOT, "tests/unit/config/bootstrap_test.cc"), r"kGood")[0]
    texts["xds-fixed"] = cpp_raw_strings(os.path.join(HERE, "xds_fuzz.cc"), r"kBootstrap")[0]
    # corpus/bootstrap_fuzz/example-*.yaml: the shared examples (HTTP routes, tcp_proxy, ADS), copied in
    # as they are; they get a JSON twin here.
    seed_dir = os.path.join(CORPUS, "bootstrap_fuzz")
    for n in sorted(os.listdir(seed_dir)):
        if n.startswith("example-") and n.endswith(".yaml"):
            t = open(os.path.join(seed_dir, n), encoding="utf-8").read()
            write("bootstrap_fuzz", n[:-5] + ".json", json.dumps(yaml.safe_load(t)).encode())
    for name, t in texts.items():
        write("bootstrap_fuzz", name + ".yaml", t.encode())
        try:
            write("bootstrap_fuzz", name + ".json", json.dumps(yaml.safe_load(t)).encode())
        except yaml.YAMLError:
            pass


# ---- xDS resources (protoc --encode from text format) -------------------------------------------------

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TLS_DOWN = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TLS_UP = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"

SA = 'socket_address {{ address: "{}" port_value: {} }}'

XDS = {
    "xds_listener_fuzz": ("envoy.config.listener.v3.Listener", {
        "rds": f'''name: "l_rds" address {{ {SA.format("127.0.0.1", 15002)} }}
filter_chains {{ filters {{ name: "hcm" typed_config {{ [{HCM}] {{ stat_prefix: "in"
  rds {{ route_config_name: "dyn_r" config_source {{ ads {{}} resource_api_version: V3 }} }}
  http_filters {{ name: "router" typed_config {{ [{ROUTER}] {{}} }} }} }} }} }} }}''',
        "tcp": f'''name: "l_tcp" address {{ {SA.format("0.0.0.0", 15003)} }}
filter_chains {{ filter_chain_match {{ destination_port {{ value: 443 }} server_names: "*.example.com" transport_protocol: "tls" application_protocols: "h2" }}
  filters {{ name: "tcp" typed_config {{ [{TCP}] {{ stat_prefix: "t" cluster: "dyn_c" }} }} }} }}
filter_chains {{ filters {{ name: "tcp" typed_config {{ [{TCP}] {{ stat_prefix: "u" cluster: "dyn_eds" }} }} }} }}''',
        "inline-routes": f'''name: "l_inline" address {{ {SA.format("127.0.0.1", 15004)} }}
filter_chains {{ filters {{ name: "hcm" typed_config {{ [{HCM}] {{ stat_prefix: "in" codec_type: AUTO
  route_config {{ name: "local" virtual_hosts {{ name: "vh" domains: "*" routes {{ match {{ prefix: "/" }} route {{ cluster: "dyn_c" timeout {{ seconds: 5 }} }} }} }} }}
  http_filters {{ name: "rbac" typed_config {{ [{RBAC}] {{ }} }} }}
  http_filters {{ name: "router" typed_config {{ [{ROUTER}] {{}} }} }} }} }} }} }}''',
        "tls": f'''name: "l_tls" address {{ {SA.format("127.0.0.1", 15005)} }}
filter_chains {{ transport_socket {{ name: "tls" typed_config {{ [{TLS_DOWN}] {{ common_tls_context {{ tls_certificate_sds_secret_configs {{ name: "cert" sds_config {{ ads {{}} }} }} }} }} }} }}
  filters {{ name: "tcp" typed_config {{ [{TCP}] {{ stat_prefix: "t" cluster: "dyn_c" }} }} }} }}''',
    }),
    "xds_route_fuzz": ("envoy.config.route.v3.RouteConfiguration", {
        "simple": 'name: "dyn_r" virtual_hosts { name: "vh" domains: "*" routes { match { prefix: "/" } route { cluster: "dyn_c" } } }',
        "many": '''name: "dyn_r" virtual_hosts { name: "a" domains: "a.example.com" domains: "*.b.example.com" domains: "c.*"
  routes { match { path: "/exact" } route { cluster: "dyn_c" prefix_rewrite: "/x" } }
  routes { match { safe_regex { regex: "/re/[0-9]+" } } route { cluster: "dyn_eds" regex_rewrite { pattern { regex: "^/re/(.*)$" } substitution: "/\\\\1" } } }
  routes { match { prefix: "/h" headers { name: "x-env" string_match { exact: "prod" } } query_parameters { name: "q" present_match: true } } route { cluster: "dyn_c" } }
  routes { match { prefix: "/w" } route { weighted_clusters { clusters { name: "dyn_c" weight { value: 1 } } clusters { name: "dyn_eds" weight { value: 3 } } } } }
  routes { match { prefix: "/r" } redirect { https_redirect: true } }
  routes { match { prefix: "/d" } direct_response { status: 418 body { inline_string: "teapot" } } } }
virtual_hosts { name: "tls" domains: "secure" require_tls: ALL routes { match { prefix: "/" } route { cluster: "dyn_c" retry_policy { retry_on: "5xx,reset" num_retries { value: 2 } } } } }''',
    }),
    "xds_cluster_fuzz": ("envoy.config.cluster.v3.Cluster", {
        "eds": 'name: "c_eds" type: EDS connect_timeout { seconds: 1 } eds_cluster_config { eds_config { ads {} resource_api_version: V3 } } lb_policy: LEAST_REQUEST',
        "static": f'''name: "c_static" type: STATIC connect_timeout {{ nanos: 250000000 }} lb_policy: RING_HASH
load_assignment {{ cluster_name: "c_static" endpoints {{ lb_endpoints {{ endpoint {{ address {{ {SA.format("127.0.0.1", 9001)} }} }} load_balancing_weight {{ value: 2 }} }}
  lb_endpoints {{ endpoint {{ address {{ {SA.format("::1", 9002)} }} }} }} }} }}
circuit_breakers {{ thresholds {{ max_connections {{ value: 10 }} max_pending_requests {{ value: 5 }} }} }}
outlier_detection {{ consecutive_5xx {{ value: 3 }} }}''',
        "strict-dns": f'''name: "c_dns" type: STRICT_DNS connect_timeout {{ seconds: 1 }} dns_lookup_family: V4_ONLY
load_assignment {{ cluster_name: "c_dns" endpoints {{ lb_endpoints {{ endpoint {{ address {{ {SA.format("localhost", 80)} }} }} }} }} }}''',
        "original-dst": 'name: "c_orig" type: ORIGINAL_DST lb_policy: CLUSTER_PROVIDED connect_timeout { seconds: 1 }',
        "tls": f'''name: "c_tls" type: EDS connect_timeout {{ seconds: 1 }} eds_cluster_config {{ eds_config {{ ads {{}} }} }}
transport_socket {{ name: "tls" typed_config {{ [{TLS_UP}] {{ sni: "up.example.com" common_tls_context {{ alpn_protocols: "h2" }} }} }} }}''',
    }),
    "xds_endpoint_fuzz": ("envoy.config.endpoint.v3.ClusterLoadAssignment", {
        "two": f'''cluster_name: "dyn_eds" endpoints {{ locality {{ zone: "z1" }} lb_endpoints {{ endpoint {{ address {{ {SA.format("127.0.0.3", 9000)} }} }} health_status: HEALTHY }}
  lb_endpoints {{ endpoint {{ address {{ {SA.format("127.0.0.4", 9000)} }} }} health_status: DRAINING }} load_balancing_weight {{ value: 10 }} priority: 0 }}
endpoints {{ priority: 1 lb_endpoints {{ endpoint {{ address {{ {SA.format("::1", 9001)} }} }} }} }}''',
        "empty": 'cluster_name: "dyn_eds"',
        "policy": f'''cluster_name: "dyn_eds" endpoints {{ lb_endpoints {{ endpoint {{ address {{ {SA.format("127.0.0.5", 1)} }} }} load_balancing_weight {{ value: 1 }} }} }}
policy {{ overprovisioning_factor {{ value: 140 }} }}''',
    }),
    "xds_secret_fuzz": ("envoy.extensions.transport_sockets.tls.v3.Secret", {
        "validation": 'name: "ca" validation_context { trusted_ca { inline_string: "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n" } match_typed_subject_alt_names { san_type: URI matcher { prefix: "spiffe://cluster.local/" } } }',
        "certificate": 'name: "cert" tls_certificate { certificate_chain { inline_string: "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n" } private_key { inline_string: "-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----\\n" } }',
    }),
}


def protoc_encode(message, text):
    api = os.path.join(ROOT, "xds/api")
    protos = [os.path.relpath(os.path.join(d, f), api) for d, _, fs in os.walk(api) for f in fs if f.endswith(".proto")]
    r = subprocess.run(["protoc", f"-I{api}", "-I/usr/include", f"--encode={message}"] + sorted(protos),
                       input=text.encode(), capture_output=True, cwd=api)
    if r.returncode != 0:
        sys.exit(f"protoc --encode={message}: {r.stderr.decode()}\n{text}")
    return r.stdout


def xds_seeds():
    for target, (message, texts) in XDS.items():
        clear(target)
        for name, text in texts.items():
            write(target, name, protoc_encode(message, text))


# ---- route matcher, path normaliser ----------------------------------------------------------------

PATHS = ["/", "/index.html?q=1", "/public/../admin/secret", "/public/./../admin/secret", "//admin/secret",
         "/admin%2Fsecret", "/admin%2fsecret", "/public/..%2Fadmin/secret", "/admin%5Csecret",
         "/a/b/c/./../../g", "/%7Euser/%41%42", "/a#frag?x", "/q?a=%2F&b=../", "/bad%zz", "/nul%00",
         "/a\\b\\..\\c", "/.././../x", "/a//b///c/"]


def route_seeds():
    clear("path_fuzz")
    for i, p in enumerate(PATHS):
        write("path_fuzz", f"{i:02d}", bytes([i % 16]) + p.encode())
    clear("route_fuzz")
    reqs = [
        (0, "GET", "api.example.com", "/h/exact", ["X-Env:PROD"]),
        (1, "POST", "api.example.com:8443", "/h/method", []),
        (0, "GET", "API.EXAMPLE.COM", "/sep/x?y=1", []),
        (0, "GET", "api.example.com", "/re/123", []),
        (0, "GET", "api.example.com", "/q?lang=en-US&v=2", []),
        (0, "POST", "api.example.com", "/pkg.Service/Method", ["content-type:application/grpc+proto"]),
        (0, "GET", "api.example.com", "/w/x", []),
        (0, "GET", "api.example.com", "/ch", ["x-cluster:b"]),
        (0, "GET", "api.example.com", "/rx/a/b?c", []),
        (0, "GET", "api.example.com", "/old/x?strip=1", []),
        (0, "GET", "a.example.com", "/s", []),
        (0, "GET", "x-svc.example.org", "/", []),
        (0, "GET", "www.anything", "/", []),
        (0, "GET", "secure.example.net", "/", ["x-forwarded-proto:http"]),
        (8, "GET", "secure.example.net", "/", []),
        (0, "GET", "api.example.com", "/h/range", ["x-n:15"]),
        (0, "GET", "api.example.com", "/public/..%2Fh/exact", ["x-env:prod"]),
        (6, "GET", "api.example.com", "//h//present", ["x-debug:1", "x-host:other.example"]),
    ]
    for i, (flags, method, host, path, hdrs) in enumerate(reqs):
        text = "\n".join([method, host, path] + hdrs)
        write("route_fuzz", f"{i:02d}", bytes([flags, i * 17 & 0xff]) + text.encode())


# ---- TLS ClientHello ------------------------------------------------------------------------------


def client_hello(sni, alpn, tls13=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def tls_seeds():
    clear("tls_inspector_fuzz")
    hellos = {
        "sni-alpn": client_hello("api.example.com", ["h2", "http/1.1"]),
        "sni-only": client_hello("a.b.example.com", None),
        "tls12": client_hello("legacy.example.com", ["http/1.1"], tls13=False),
        "istio-alpn": client_hello("outbound_.8080_._.svc.cluster.local", ["istio-peer-exchange", "istio", "h2"]),
        "no-sni": client_hello(None, ["h2"]),
        "plaintext": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    }
    h = hellos["sni-alpn"]
    # The same hello split into two handshake records (the parser reassembles them).
    body = h[5:]
    hellos["two-records"] = b"\x16\x03\x01" + (40).to_bytes(2, "big") + body[:40] + \
        b"\x16\x03\x01" + (len(body) - 40).to_bytes(2, "big") + body[40:]
    for i, (name, data) in enumerate(sorted(hellos.items())):
        write("tls_inspector_fuzz", name, bytes([i * 61 & 0xff]) + data)


def http_inspector_seeds():
    clear("http_inspector_fuzz")
    firsts = {
        "h1": H1_REQUESTS["get"],
        "h10": H1_REQUESTS["http10"],
        "h10-headers": b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nab",
        "connect": H1_REQUESTS["connect"],
        "options-star": b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
        "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        "h2-preface-short": b"PRI * HTTP/2.0\r\n\r\n",
        "unknown-method": b"PROPFIND /dav HTTP/1.1\r\nHost: h\r\n\r\n",
        "leading-crlf": b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        "server-first": b"",
        "tls": client_hello("api.example.com", ["h2", "http/1.1"]),
        "long-line-h10": b"GET /" + b"a" * 3000 + b" HTTP/1.0\r\n\r\n",
    }
    for i, (name, data) in enumerate(sorted(firsts.items())):
        write("http_inspector_fuzz", name, bytes([i * 29 & 0xff]) + data)


def main():
    h1_seeds()
    h1_differential_seeds()
    h2_server_seeds()
    h2_client_seeds()
    bootstrap_seeds()
    xds_seeds()
    route_seeds()
    tls_seeds()
    http_inspector_seeds()


if __name__ == "__main__":
    main()
