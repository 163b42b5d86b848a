"""The admin's live service map through the real binary: /graph?format=json against known traffic (HTTP
with 5xx, TCP bytes, mTLS identities across two sidecars set up as test_istio_metrics.py does), the
server-sent event stream /graph/events (successive snapshots, the client cap, drain), and the "/" page in
a real browser (Debian's headless Chromium: the DOM after the script ran, and a screenshot)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

import harness
import tlsutil
from harness import bootstrap, http_listener, route_to, static_cluster, tcp_proxy_listener, virtual_host
from peers import env as peers_env
from test_tls import downstream_tls, tls_cluster, upstream_tls

CLIENT_SA = "spiffe://cluster.local/ns/front/sa/productpage"
SERVER_SA = "spiffe://cluster.local/ns/bookinfo/sa/ratings"
HTTP_OUT = "outbound|9080||ratings.bookinfo.svc.cluster.local"
TCP_OUT = "outbound|7000||ratings.bookinfo.svc.cluster.local"
N_OK, N_5XX = 5, 2
PAYLOAD = bytes(range(256)) * 6  # 1536 bytes echoed through the TCP edge


def graph(proc) -> dict:
    r = proc.get("/graph?format=json")
    assert r.status == 200, r
    assert r.headers.get("content-type") == "application/json"
    return r.json()


def edges_by(g: dict) -> dict:
    return {(e["direction"], e["protocol"], e["peer"]): e for e in g["edges"]}


def wait_graph(proc, done, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        g = graph(proc)
        if done(g) or time.monotonic() > deadline:
            return g
        time.sleep(0.05)


def send_http(port: int, host: str = "ratings") -> None:
    for i in range(N_OK + N_5XX):
        path = "/_/status?code=503" if i < N_5XX else f"/ok/{i}"
        r = harness.curl(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {host}",
                          f"http://127.0.0.1:{port}{path}"])
        assert r.stdout.decode() == ("503" if i < N_5XX else "200"), r


def send_tcp(port: int) -> None:
    with harness.connect(port) as s:
        s.sendall(PAYLOAD)
        assert harness.recv_exact(s, len(PAYLOAD)) == PAYLOAD
        s.shutdown(socket.SHUT_WR)
        assert harness.recv_until_eof(s) == b""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("live-graph-pki")
    out = {"root": tlsutil.make_root(base / "ca")}
    for name, ns, sa in (("server", "bookinfo", "ratings"), ("client", "front", "productpage")):
        out[name] = tlsutil.make_workload(base / "ca", base / name, ns, sa)
    return out


@pytest.fixture
def mesh(fleet, pki):
    """Two sidecars: the client's OUTBOUND listeners (plaintext in, mTLS out) and the server's INBOUND ones
    (mTLS in, only the client's identity accepted)."""
    origin = peers_env.origin(fleet, "ratings-app")
    echo = fleet.echo()
    mtls = downstream_tls(pki["server"], pki["root"], require_client=True, sans=[CLIENT_SA])
    in_http = http_listener("in_http", "inbound_0.0.0.0_9080", [virtual_host("in", ["*"], [route_to("inbound|9080||")])])
    in_tcp = tcp_proxy_listener("in_tcp", "inbound|7000||")
    for listener in (in_http, in_tcp):
        listener["traffic_direction"] = "INBOUND"
        listener["filter_chains"][0]["transport_socket"] = mtls
    server = fleet.start(bootstrap([in_http, in_tcp], [static_cluster("inbound|9080||", [origin.port]),
                                                       static_cluster("inbound|7000||", [echo.port])],
                                   node_id="ratings-v2.bookinfo"))
    to_server = upstream_tls(pki["root"], pki["client"], sans=[SERVER_SA])
    out_http = http_listener("out_http", "outbound_0.0.0.0_9080", [virtual_host("out", ["*"], [route_to(HTTP_OUT)])],
                             listener_extra={"traffic_direction": "OUTBOUND"})
    out_tcp = tcp_proxy_listener("out_tcp", TCP_OUT)
    out_tcp["traffic_direction"] = "OUTBOUND"
    client = fleet.start(bootstrap(
        [out_http, out_tcp], [tls_cluster(HTTP_OUT, [server.listener_port("in_http")], to_server),
                              tls_cluster(TCP_OUT, [server.listener_port("in_tcp")], to_server)],
        node_id="productpage-v1.front"))
    return {"client": client, "server": server, "http": client.listener_port("out_http"),
            "tcp": client.listener_port("out_tcp")}


def test_graph_json_matches_the_traffic_by_identity_on_both_sidecars(mesh):
    send_http(mesh["http"])
    send_tcp(mesh["tcp"])
    total = N_OK + N_5XX
    want = {"client": {("outbound", "http", HTTP_OUT): SERVER_SA, ("outbound", "tcp", TCP_OUT): SERVER_SA},
            "server": {("inbound", "http", CLIENT_SA): "", ("inbound", "tcp", CLIENT_SA): ""}}
    for side, edges in want.items():
        proc = mesh[side]
        g = wait_graph(proc, lambda g: sum(e["connections"] for e in g["edges"]) >= 1 and
                       sum(e["requests"] for e in g["edges"]) >= total)
        assert g["window_seconds"] == 60 and g["enabled"] is True
        assert abs(g["timestamp_ms"] / 1000 - time.time()) < 30
        got = edges_by(g)
        assert set(got) == set(edges), (side, g)
        for key, identity in edges.items():
            e = got[key]
            assert e["identity"] == identity, (side, e)
            direction, protocol, peer = key
            node = f"caller:{peer}" if direction == "inbound" else f"callee:{peer}|{identity}"
            assert (e["from"], e["to"]) == ((node, "self") if direction == "inbound" else ("self", node))
            assert any(n["id"] == node and n["label"] == peer for n in g["nodes"]), g["nodes"]
            if protocol == "http":
                assert (e["requests"], e["errors"], e["connections"]) == (total, N_5XX, 0), (side, e)
                assert e["error_rate"] == round(N_5XX / total, 3)
                assert e["rps"] == round(total / 60, 3)
                assert 0 < e["p50_ms"] <= e["p99_ms"] < 5000, e
            else:
                # Inbound: in = from the caller; outbound: out = to the callee. The echo returns all.
                assert (e["connections"], e["errors"], e["requests"]) == (1, 0, 0), (side, e)
                assert (e["bytes_in"], e["bytes_out"]) == (len(PAYLOAD), len(PAYLOAD)), (side, e)
                assert e["p50_ms"] is None
        errors = g["recent_errors"]
        assert len(errors) == N_5XX and all(r["code"] == 503 for r in errors), errors
        assert {r["edge"] for r in errors} == {f"callee:{HTTP_OUT}|{SERVER_SA}" if side == "client"
                                              else f"caller:{CLIENT_SA}"}


def plain(fleet, **start_kw):
    """One strait, a listener with no traffic_direction (both edges: caller by IP, and the cluster)."""
    origin = peers_env.origin(fleet)
    cfg = bootstrap([http_listener("http", "ingress", [virtual_host("all", ["*"], [route_to("backend")])])],
                    [static_cluster("backend", [origin.port])], node_id="plain-proxy")
    proc = fleet.start(cfg, **start_kw)
    return proc, proc.listener_port("http")


class EventStream:
    """A raw /graph/events client: the response head, then one JSON object per `data:` event."""

    def __init__(self, proc, query: str = ""):
        host, port = proc.admin_url.rsplit("/", 1)[1].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.sock.sendall(f"GET /graph/events{query} HTTP/1.1\r\nHost: admin\r\nAccept: text/event-stream\r\n\r\n".encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._read()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode("latin-1").lower()

    def _read(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def next(self) -> dict | None:
        """The next event's JSON; None at the end of the stream."""
        while True:
            while b"\n\n" not in self.buf:
                if not self._read():
                    return None
            event, self.buf = self.buf.split(b"\n\n", 1)
            data = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
            if data:
                return json.loads(b"".join(data))

    def close(self) -> None:
        self.sock.close()


def test_event_stream_sends_a_snapshot_a_second_that_follows_new_traffic(fleet):
    proc, port = plain(fleet)
    stream = EventStream(proc)
    try:
        assert stream.head.startswith("http/1.1 200"), stream.head
        assert "content-type: text/event-stream" in stream.head and "content-length" not in stream.head
        first = stream.next()
        assert first["edges"] == [], first
        send_http(port, host="backend")
        seen, stamps = None, [first["timestamp_ms"]]
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            ev = stream.next()
            stamps.append(ev["timestamp_ms"])
            got = edges_by(ev)
            if ("outbound", "http", "backend") in got and got[("outbound", "http", "backend")]["requests"] == N_OK + N_5XX:
                seen = got
                break
        assert seen is not None, "the stream never showed the requests"
        assert all(b - a >= 500 for a, b in zip(stamps, stamps[1:])), stamps  # about one a second
        assert seen[("inbound", "http", "127.0.0.1")]["errors"] == N_5XX
        assert seen[("outbound", "http", "backend")]["errors"] == N_5XX
        # More traffic: a later event counts it too.
        send_http(port, host="backend")
        for _ in range(5):
            ev = stream.next()
            if edges_by(ev)[("outbound", "http", "backend")]["requests"] == 2 * (N_OK + N_5XX):
                break
        else:
            pytest.fail(f"later events did not follow the traffic: {ev}")
    finally:
        stream.close()
    # ?count=N: N events, then the end of the stream.
    counted = EventStream(proc, "?count=2")
    try:
        assert counted.next() is not None and counted.next() is not None
        assert counted.next() is None
    finally:
        counted.close()
    assert proc.get("/graph/events?count=x").status == 400


def test_event_streams_are_capped_freed_when_clients_leave_and_end_on_drain(fleet):
    proc, _ = plain(fleet, drain_time_s=2)
    streams = [EventStream(proc) for _ in range(8)]
    extra = EventStream(proc)
    assert extra.head.startswith("http/1.1 503"), extra.head
    extra.close()
    assert proc.get("/graph?format=json").status == 200, "the admin still answers with the streams open"
    for s in streams[:4]:
        s.close()
    time.sleep(1.5)  # the next tick notices they left
    again = [EventStream(proc) for _ in range(4)]
    assert all(s.head.startswith("http/1.1 200") for s in again), [s.head for s in again]
    streams = streams[4:] + again
    proc.expected_exit = True
    assert proc.post("/quitquitquit").status == 200
    deadline = time.monotonic() + 5
    for s in streams:
        while s.next() is not None:  # events until the end of the stream
            assert time.monotonic() < deadline, "a stream outlived the drain"
        s.close()
    assert proc.wait_exit(timeout=5) == 0


def test_page_is_the_live_map_and_help_keeps_the_plain_list(fleet):
    proc, _ = plain(fleet)
    page = proc.get("/")
    assert page.status == 200 and page.headers.get("content-type", "").startswith("text/html")
    text = page.text
    assert "/graph/events" in text and "<svg" in text and "<script>" in text
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), "no external asset"
    help_text = proc.get("/help").text
    assert help_text.startswith("admin commands are:\n")
    for path in ("/stats/prometheus", "/graph", "/graph/events", "/clusters", "/help"):
        assert f"  {path}: " in help_text
        assert f'href="{path}"' in text, path


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


def run_chromium(binary: str, args: list[str], workdir: Path) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--disable-extensions", f"--user-data-dir={workdir / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, timeout=90, cwd=workdir)


def test_page_draws_the_edges_in_headless_chromium(mesh, tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    send_http(mesh["http"])
    send_tcp(mesh["tcp"])
    proc = mesh["client"]
    wait_graph(proc, lambda g: len(g["edges"]) == 2)
    # ?events=3: the page takes three events from /graph/events and stops (headless Chromium waits for
    # open requests to end before it dumps).
    url = proc.admin_url + "/?events=3"
    dom = run_chromium(binary, ["--virtual-time-budget=4000", "--timeout=15000", "--dump-dom", url], tmp_path)
    if dom.returncode != 0 and not dom.stdout:
        pytest.skip(f"chromium cannot run here: {dom.stderr.decode(errors='replace')[-400:]}")
    html = dom.stdout.decode()
    (tmp_path / "live_graph_dom.html").write_text(html)
    total = N_OK + N_5XX
    # The script drew one <g class="edge ..."> per edge, labelled with its figures.
    assert f'data-peer="{HTTP_OUT}"' in html and f'data-peer="{TCP_OUT}"' in html, html[-3000:]
    assert f'data-requests="{total}"' in html and f'data-errors="{N_5XX}"' in html
    assert f"{total / 60:.2f} rps · {100 * N_5XX / total:.0f}% err" in html
    assert f"· {total} req" in html and "p50 " in html and "p99 " in html
    assert "1 cx · in 1.5 KiB · out 1.5 KiB" in html
    assert 'class="node self"' in html and "productpage-v1.front" in html
    assert SERVER_SA in html  # the callee's identity under its name
    assert "/stats/prometheus" in html  # the endpoint list
    shot = tmp_path / "live_graph.png"
    r = run_chromium(binary, ["--virtual-time-budget=4000", "--timeout=15000", "--window-size=1200,900",
                              f"--screenshot={shot}", url], tmp_path)
    assert shot.exists() and shot.stat().st_size > 10000, r.stderr.decode(errors="replace")[-400:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The server side: the same traffic as callers (by SPIFFE identity) on the left.
    server_shot = tmp_path / "live_graph_server.png"
    dom = run_chromium(binary, ["--virtual-time-budget=4000", "--timeout=15000", "--window-size=1200,900",
                                f"--screenshot={server_shot}", "--dump-dom", mesh["server"].admin_url + "/?events=2"],
                       tmp_path)
    html = dom.stdout.decode()
    assert html.count(f'data-peer="{CLIENT_SA}"') == 2 and 'data-direction="inbound"' in html, html[-3000:]
    assert 'class="node caller"' in html and 'class="node callee"' not in html
    print(f"screenshots: {shot} {server_shot}")
