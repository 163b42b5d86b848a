"""STRICT_DNS and LOGICAL_DNS clusters through the real binary, resolved against a tiny DNS server run
here (UDP on 127.0.0.1, A/AAAA answers from a table the test changes, a TTL per name, SERVFAIL or
silence on demand, queries counted) that the clusters name in typed_dns_resolver_config.

Upstreams listen on several loopback addresses (127.0.0.2, 127.0.0.3, ...) on one port, so a name's
answer decides where traffic goes. Covered:
  1. STRICT_DNS: every address of the name is a host; requests spread over both.
  2. A changed answer moves traffic after the refresh, without a config update.
  3. respect_dns_ttl: a long TTL means no query before it expires, a short one re-queries; without it
     the refresh rate applies whatever the TTL (queries counted, generous bounds).
  4. SERVFAIL and a server that never answers keep the last good hosts serving; resolution recovers.
  5. LOGICAL_DNS: the first address only; a new first address takes new connections while an open
     tcp_proxy connection to the old one keeps working.
  6. A name that does not resolve (NXDOMAIN, or no answer at all) does not hold up start-up: /ready is
     200, its route answers 503 while other routes work, and it serves once the name appears.
  7. Over xDS: a CDS STRICT_DNS cluster resolves and serves, and survives a CDS update.
Every loop is bounded by a deadline; everything listens on loopback; processes are stopped by PID.
"""

from __future__ import annotations

import collections
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import harness
from peers import h1
from peers.origin import Origin

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "xds_server"))

import xds_control  # noqa: E402
from xds_control import CDS, LDS, XdsServer, XdsServerError, ads_bootstrap  # noqa: E402

CARES = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"


# ---------------------------------------------------------------------------------------------------
# A tiny DNS server


class DnsServer:
    """Answers A and AAAA queries on 127.0.0.1:<port> (UDP) from `table` (name -> (addresses, ttl)).
    Names not in the table get NXDOMAIN; a name in `modes` gets SERVFAIL ("servfail") or no answer at
    all ("drop"). Every query is counted by (name, type)."""

    def __init__(self, lifetime: float = 300.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((harness.LOOPBACK, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.table: dict[str, tuple[list[str], int]] = {}
        self.modes: dict[str, str] = {}
        self.queries: collections.Counter = collections.Counter()
        self.stopped = threading.Event()
        self.deadline = time.monotonic() + lifetime
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def set(self, name: str, addresses: list[str], ttl: int = 30) -> None:
        with self.lock:
            self.table[name] = (list(addresses), ttl)

    def mode(self, name: str, mode: str | None) -> None:
        with self.lock:
            if mode is None:
                self.modes.pop(name, None)
            else:
                self.modes[name] = mode

    def count(self, name: str, qtype: str | None = None) -> int:
        with self.lock:
            return sum(n for (q, t), n in self.queries.items() if q == name and (qtype is None or t == qtype))

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=2)
        self.sock.close()

    def _loop(self) -> None:
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            reply = self._answer(data)
            if reply is not None:
                try:
                    self.sock.sendto(reply, peer)
                except OSError:
                    pass

    def _answer(self, data: bytes) -> bytes | None:
        if len(data) < 12:
            return None
        qid, flags, qdcount = struct.unpack("!HHH", data[:6])
        if qdcount != 1:
            return None
        pos, labels = 12, []
        while pos < len(data):
            n = data[pos]
            pos += 1
            if n == 0:
                break
            if n & 0xC0:
                return None
            labels.append(data[pos:pos + n].decode("ascii", "replace").lower())
            pos += n
        if pos + 4 > len(data):
            return None
        qtype, _qclass = struct.unpack("!HH", data[pos:pos + 4])
        question = data[12:pos + 4]
        name = ".".join(labels)
        kind = {1: "A", 28: "AAAA"}.get(qtype, str(qtype))
        with self.lock:
            self.queries[(name, kind)] += 1
            mode = self.modes.get(name)
            entry = self.table.get(name)
        if mode == "drop":
            return None
        rcode, answers = 0, []
        if mode == "servfail":
            rcode = 2
        elif entry is None:
            rcode = 3  # NXDOMAIN
        else:
            addresses, ttl = entry
            for ip in addresses:
                if qtype == 1 and ":" not in ip:
                    rdata, rtype = socket.inet_pton(socket.AF_INET, ip), 1
                elif qtype == 28 and ":" in ip:
                    rdata, rtype = socket.inet_pton(socket.AF_INET6, ip), 28
                else:
                    continue
                answers.append(b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata)
        out_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode  # QR AA RD(copied) RA rcode
        return struct.pack("!HHHHHH", qid, out_flags, 1, len(answers), 0, 0) + question + b"".join(answers)


@pytest.fixture
def dns():
    server = DnsServer()
    yield server
    server.close()


# ---------------------------------------------------------------------------------------------------
# Helpers


def dns_cluster(name: str, hostname: str, port: int, dns_port: int, *, type_: str = "STRICT_DNS",
                family: str | None = "V4_ONLY", **extra) -> dict:
    c = {
        "name": name, "type": type_, "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
        "typed_dns_resolver_config": {"name": "envoy.network.dns_resolver.cares", "typed_config": {
            "@type": CARES, "resolvers": [harness.socket_address(dns_port)],
            "dns_resolver_options": {"no_default_search_domain": True}}},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": harness.socket_address(port, hostname)}}]}]},
    }
    if family is not None:
        c["dns_lookup_family"] = family
    c.update(extra)
    return c


def one_route_config(cluster: dict, *others: dict) -> dict:
    vh = harness.virtual_host("all", ["*"], [harness.route_to(cluster["name"])])
    return harness.bootstrap([harness.http_listener("http", "ingress_http", [vh])], [cluster, *others])


def servers_on_one_port(fleet, hosts: list[str], make) -> tuple[int, list]:
    """One server per loopback address in `hosts`, all on the same port (make(host=, port=))."""
    for _ in range(20):
        first = make(host=hosts[0], port=0)
        made, port = [first], first.port
        try:
            for h in hosts[1:]:
                made.append(make(host=h, port=port))
        except OSError:
            for s in made:
                s.close()
            continue
        for s in made:
            harness.track(fleet, s)
        return port, made
    pytest.fail(f"no port free on all of {hosts}")


def origins(fleet, hosts: list[str]) -> tuple[int, dict[str, Origin]]:
    port, made = servers_on_one_port(fleet, hosts, lambda host, port: Origin(host, host=host, port=port))
    return port, {o.name: o for o in made}


def spread(port: int, n: int, path: str = "/") -> collections.Counter:
    """n requests on new connections: Counter of (status, x-origin)."""
    out = collections.Counter()
    for i in range(n):
        r = h1.get(port, f"{path}?i={i}", timeout=5)
        out[(r.status, r.header("x-origin") or "")] += 1
    return out


def wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(0.05)
    msg = f"timed out after {timeout}s waiting for {what}"
    if proc is not None:
        proc.fail(msg)
    pytest.fail(msg)


def cluster_addresses(proc, cluster: str) -> set[str]:
    """The host addresses /clusters lists for `cluster`."""
    out = set()
    for line in proc.get("/clusters").text.splitlines():
        parts = line.split("::")
        if len(parts) >= 4 and parts[0] == cluster and parts[2] == "cx_total":
            out.add(parts[1])
    return out


# ---------------------------------------------------------------------------------------------------
# 1-2. STRICT_DNS: every address; a changed answer moves traffic


def test_strict_dns_spreads_requests_over_every_address(fleet, dns):
    port, os_ = origins(fleet, ["127.0.0.2", "127.0.0.3"])
    dns.set("svc.strait.test", ["127.0.0.2", "127.0.0.3"])
    proc = fleet.start(one_route_config(dns_cluster("dns", "svc.strait.test", port, dns.port)))
    proc.wait_stats(lambda s: s.get("cluster.dns.membership_total") == 2, timeout=10)
    assert cluster_addresses(proc, "dns") == {f"127.0.0.2:{port}", f"127.0.0.3:{port}"}
    got = spread(proc.listener_port("http"), 20)
    assert got[(200, "127.0.0.2")] >= 5 and got[(200, "127.0.0.3")] >= 5, got
    assert sum(got.values()) == got[(200, "127.0.0.2")] + got[(200, "127.0.0.3")], got
    s = proc.stats()
    assert harness.stat(s, "cluster.dns.update_attempt") >= 1
    assert harness.stat(s, "cluster.dns.update_success") >= 1
    assert harness.stat(s, "cluster.dns.update_failure") == 0
    assert dns.count("svc.strait.test", "A") >= 1
    assert dns.count("svc.strait.test", "AAAA") == 0  # V4_ONLY asks for A only


def test_changed_answer_moves_traffic_after_the_refresh(fleet, dns):
    port, os_ = origins(fleet, ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    dns.set("move.strait.test", ["127.0.0.2"])
    proc = fleet.start(one_route_config(
        dns_cluster("dns", "move.strait.test", port, dns.port, dns_refresh_rate="0.3s")))
    proc.wait_stats(lambda s: s.get("cluster.dns.membership_total") == 1, timeout=10)
    lport = proc.listener_port("http")
    assert spread(lport, 6) == {(200, "127.0.0.2"): 6}
    # A keep-alive client connection stays usable across the change and follows it.
    client = h1.Client(lport, timeout=5)
    assert client.request("GET", "/before").header("x-origin") == "127.0.0.2"
    dns.set("move.strait.test", ["127.0.0.3", "127.0.0.4"])
    want = {f"127.0.0.3:{port}", f"127.0.0.4:{port}"}
    wait_for(lambda: cluster_addresses(proc, "dns") == want, 10, "the new answer in /clusters", proc)
    got = spread(lport, 12)
    assert got[(200, "127.0.0.3")] >= 3 and got[(200, "127.0.0.4")] >= 3, got
    assert got[(200, "127.0.0.3")] + got[(200, "127.0.0.4")] == 12, got
    r = client.request("GET", "/after")
    assert r.status == 200 and r.header("x-origin") in ("127.0.0.3", "127.0.0.4"), r
    client.close()
    n2 = os_["127.0.0.2"].request_count()
    spread(lport, 4)
    assert os_["127.0.0.2"].request_count() == n2  # nothing goes to the old address any more
    s = proc.stats()
    assert harness.stat(s, "cluster.dns.membership_total") == 2
    assert harness.stat(s, "cluster.dns.membership_change") >= 2


# ---------------------------------------------------------------------------------------------------
# 3. TTLs


def test_respect_dns_ttl_long_ttl_waits_short_ttl_requeries(fleet, dns):
    port, _ = origins(fleet, ["127.0.0.2"])
    dns.set("long.strait.test", ["127.0.0.2"], ttl=60)
    dns.set("short.strait.test", ["127.0.0.2"], ttl=1)
    dns.set("ignored.strait.test", ["127.0.0.2"], ttl=60)
    fast = {"dns_refresh_rate": "0.2s"}
    config = one_route_config(
        dns_cluster("long", "long.strait.test", port, dns.port, respect_dns_ttl=True, **fast),
        dns_cluster("short", "short.strait.test", port, dns.port, respect_dns_ttl=True, **fast),
        # Without respect_dns_ttl the refresh rate applies, whatever the TTL says.
        dns_cluster("ignored", "ignored.strait.test", port, dns.port, dns_refresh_rate="0.4s"))
    proc = fleet.start(config)
    proc.wait_stats(lambda s: all(s.get(f"cluster.{c}.update_success", 0) >= 1 for c in ("long", "short", "ignored")),
                    timeout=10)
    before = {n: dns.count(f"{n}.strait.test") for n in ("long", "short", "ignored")}
    time.sleep(4.0)
    after = {n: dns.count(f"{n}.strait.test") for n in ("long", "short", "ignored")}
    delta = {n: after[n] - before[n] for n in before}
    # Long TTL (60 s): no query in 4 s, although the refresh rate alone would ask 20 times.
    assert before["long"] == 1 and delta["long"] == 0, (before, after)
    # TTL 1 s: about one query a second (4 expected).
    assert 2 <= delta["short"] <= 8, (before, after)
    # Refresh 0.4 s, TTL ignored: about 10 expected.
    assert delta["ignored"] >= 5, (before, after)
    assert harness.stat(proc.stats(), "cluster.short.update_success") >= 3


# ---------------------------------------------------------------------------------------------------
# 4. Failures keep the last good hosts


def test_servfail_and_silence_keep_the_last_good_hosts(fleet, dns):
    port, os_ = origins(fleet, ["127.0.0.2", "127.0.0.3"])
    name = "flaky.strait.test"
    dns.set(name, ["127.0.0.2", "127.0.0.3"])
    proc = fleet.start(one_route_config(dns_cluster(
        "dns", name, port, dns.port, dns_refresh_rate="0.3s",
        dns_failure_refresh_rate={"base_interval": "0.2s", "max_interval": "0.5s"})))
    proc.wait_stats(lambda s: s.get("cluster.dns.membership_total") == 2, timeout=10)
    lport = proc.listener_port("http")

    dns.mode(name, "servfail")
    proc.wait_stats(lambda s: s.get("cluster.dns.update_failure", 0) >= 3, timeout=10)
    got = spread(lport, 12)
    assert got[(200, "127.0.0.2")] >= 3 and got[(200, "127.0.0.3")] >= 3, got
    assert got[(200, "127.0.0.2")] + got[(200, "127.0.0.3")] == 12, got
    s = proc.stats()
    assert harness.stat(s, "cluster.dns.membership_total") == 2
    assert cluster_addresses(proc, "dns") == {f"127.0.0.2:{port}", f"127.0.0.3:{port}"}

    # Answers again (a different one): resolution recovers and traffic follows.
    dns.set(name, ["127.0.0.3"])
    dns.mode(name, None)
    wait_for(lambda: cluster_addresses(proc, "dns") == {f"127.0.0.3:{port}"}, 10, "recovery after SERVFAIL", proc)
    assert spread(lport, 6) == {(200, "127.0.0.3"): 6}

    # The server goes silent (queries time out): the hosts stay and keep serving meanwhile.
    dns.mode(name, "drop")
    asked = dns.count(name)
    wait_for(lambda: dns.count(name) > asked, 5, "a query to the silent server", proc)
    deadline = time.monotonic() + 2.0
    sent = 0
    while time.monotonic() < deadline and sent < 40:
        r = h1.get(lport, f"/silent?{sent}", timeout=5)
        assert r.status == 200 and r.header("x-origin") == "127.0.0.3", r
        sent += 1
        time.sleep(0.05)
    assert sent >= 5
    assert harness.stat(proc.stats(), "cluster.dns.membership_total") == 1


# ---------------------------------------------------------------------------------------------------
# 5. LOGICAL_DNS


def test_logical_dns_uses_the_first_address_and_keeps_open_connections(fleet, dns):
    port, (e2, e3) = servers_on_one_port(fleet, ["127.0.0.2", "127.0.0.3"],
                                         lambda host, port: harness.EchoServer(host=host, port=port))
    name = "logical.strait.test"
    dns.set(name, ["127.0.0.3", "127.0.0.2"])
    # Default lookup family (AUTO): AAAA has nothing, so the IPv4 answer is used.
    cluster = dns_cluster("logical", name, port, dns.port, type_="LOGICAL_DNS", family=None, dns_refresh_rate="0.3s")
    proc = fleet.start(harness.bootstrap([harness.tcp_proxy_listener("tcp", "logical")], [cluster]))
    proc.wait_stats(lambda s: s.get("cluster.logical.membership_total") == 1, timeout=10)
    assert cluster_addresses(proc, "logical") == {f"127.0.0.3:{port}"}
    assert dns.count(name, "AAAA") >= 1  # AUTO asked for both families
    lport = proc.listener_port("tcp")
    old = harness.connect(lport)
    old.sendall(b"first")
    assert harness.recv_exact(old, 5) == b"first"
    assert e3.wait_accepts(1) == 1 and e2.accept_count() == 0

    dns.set(name, ["127.0.0.2", "127.0.0.3"])  # the first address is now .2
    wait_for(lambda: cluster_addresses(proc, "logical") == {f"127.0.0.2:{port}"}, 10, "the new first address", proc)
    new = harness.connect(lport)
    new.sendall(b"second")
    assert harness.recv_exact(new, 6) == b"second"
    assert e2.wait_accepts(1) == 1
    assert e3.accept_count() == 1
    # The connection opened before the change still works, to the old address.
    old.sendall(b"still")
    assert harness.recv_exact(old, 5) == b"still"
    old.close()
    new.close()


# ---------------------------------------------------------------------------------------------------
# 6. Names that do not resolve at start-up


def test_unresolved_name_does_not_block_start_up_and_answers_503(fleet, dns):
    port, _ = origins(fleet, ["127.0.0.2"])
    ok = harness.track(fleet, Origin("static"))
    dns.mode("silent.strait.test", "drop")  # never answers
    # "late.strait.test" is not in the table yet: NXDOMAIN
    vh = harness.virtual_host("all", ["*"], [
        harness.route_to("late", prefix="/late"), harness.route_to("silent", prefix="/silent"),
        harness.route_to("static", prefix="/")])
    config = harness.bootstrap([harness.http_listener("http", "ingress_http", [vh])], [
        dns_cluster("late", "late.strait.test", port, dns.port, dns_refresh_rate="0.3s"),
        dns_cluster("silent", "silent.strait.test", port, dns.port),
        harness.static_cluster("static", [ok.port])])
    started = time.monotonic()
    proc = fleet.start(config)  # waits for /ready 200
    assert time.monotonic() - started < 10
    lport = proc.listener_port("http")
    t0 = time.monotonic()
    r = h1.get(lport, "/silent/x", timeout=5)
    assert r.status == 503, r
    assert time.monotonic() - t0 < 2.0  # answered at once, not after a DNS timeout
    assert h1.get(lport, "/late/x", timeout=5).status == 503
    r = h1.get(lport, "/x", timeout=5)
    assert r.status == 200 and r.header("x-origin") == "static", r
    assert proc.get("/ready").status == 200

    dns.set("late.strait.test", ["127.0.0.2"])
    def late_ok():
        r = h1.get(lport, "/late/y", timeout=5)
        return r.status == 200 and r.header("x-origin") == "127.0.0.2"
    wait_for(late_ok, 10, "the late name to serve", proc)
    assert h1.get(lport, "/silent/y", timeout=5).status == 503
    s = proc.stats()
    assert harness.stat(s, "cluster.silent.update_attempt") >= 1
    assert harness.stat(s, "cluster.silent.update_success") == 0
    assert harness.stat(s, "cluster.late.update_empty") >= 1  # NXDOMAIN: resolved to nothing


# ---------------------------------------------------------------------------------------------------
# 7. Over xDS


def test_cds_strict_dns_cluster_resolves_and_survives_an_update(fleet, dns, tmp_path):
    if not xds_control.node_available():
        pytest.skip("node/npm not found (deploy/install-deps.sh test)")
    port, _ = origins(fleet, ["127.0.0.2", "127.0.0.3"])
    dns.set("cds.strait.test", ["127.0.0.2", "127.0.0.3"])
    server = XdsServer(tmp_path / "xds")
    try:
        server.start()
    except (XdsServerError, subprocess.CalledProcessError, OSError) as err:
        pytest.fail(f"test xDS server failed to start: {err}", pytrace=False)
    try:
        lport = harness.free_port()
        cluster = {"@type": CDS, **dns_cluster("cds-dns", "cds.strait.test", port, dns.port, dns_refresh_rate="0.3s")}
        vh = harness.virtual_host("all", ["*"], [harness.route_to("cds-dns")])
        listener = {"@type": LDS, **harness.http_listener("l-dns", "dns_http", [vh], port=lport)}
        server.set_resources([cluster, listener])
        b = ads_bootstrap(server.ads_port)
        for key in ("lds_config", "cds_config"):
            b["dynamic_resources"][key]["initial_fetch_timeout"] = "5s"
        proc = fleet.start(b, wait_ready=False)
        proc.wait_admin()
        proc.wait_ready(15)
        proc.wait_stats(lambda s: s.get("cluster.cds-dns.membership_total") == 2, timeout=10)
        got = spread(lport, 12)
        assert got[(200, "127.0.0.2")] >= 3 and got[(200, "127.0.0.3")] >= 3, got
        # A CDS update of the cluster (same names): it serves from the hosts it has, no new warming.
        attempts = harness.stat(proc.stats(), "cluster_manager.cds.update_success")
        cluster2 = dict(cluster, connect_timeout="2s")
        server.set_resources([cluster2, listener])
        proc.wait_stats(lambda s: s.get("cluster_manager.cds.update_success", 0) > attempts, timeout=10)
        got = spread(lport, 8)
        assert got[(200, "127.0.0.2")] + got[(200, "127.0.0.3")] == 8, got
        # And the answer still drives it.
        dns.set("cds.strait.test", ["127.0.0.3"])
        wait_for(lambda: cluster_addresses(proc, "cds-dns") == {f"127.0.0.3:{port}"}, 10, "the new answer", proc)
        assert spread(lport, 4) == {(200, "127.0.0.3"): 4}
    finally:
        server.stop()
