"""The traffic-capture scripts (deploy/strait-iptables.sh, deploy/strait-nftables.sh), checked without
strait itself: two network-namespace "pods", the script in each, and a small Python transparent proxy
(netns_pods.py capture-standin, run as uid 1337 like strait) on 15001/15006 that recovers the original
destination with SO_ORIGINAL_DST. The counts of connections it saw show exactly which connections were
captured, and a capture loop would show up as extra or refused connections.

The dry-run and flag tests need nothing; the namespace tests need root and `ip netns` (skipped otherwise).
"""

import os
import re
import subprocess
import sys

import pytest

import netns_pods as np_
from netns_pods import A_ADDR4, B_ADDR4, B_ADDR6

SCRIPTS = {"iptables": "strait-iptables.sh", "nftables": "strait-nftables.sh"}
B_EXTRA_EXCLUDED = 8081  # B excludes this inbound port on top of the defaults


def script(backend):
    return os.path.join(np_.DEPLOY, SCRIPTS[backend])


def run_script(backend, *args, env=None):
    e = dict(os.environ)
    for k in list(e):
        if k.startswith("STRAIT_"):
            del e[k]
    e.update(env or {})
    return subprocess.run([script(backend), *args], capture_output=True, text=True, timeout=30, env=e)


# ---------------------------------------------------------------------------------------------------
# No privileges needed.

@pytest.mark.parametrize("backend", SCRIPTS)
def test_help_documents_every_flag(backend):
    r = run_script(backend, "--help")
    assert r.returncode == 0, r.stderr
    for flag in ("-p,", "-z,", "-u,", "-g,", "-b,", "-d,", "-i,", "-x,", "-o,", "-q,", "--ipv6", "--dry-run",
                 "--clean", "STRAIT_PROXY_UID", "STRAIT_INBOUND_CAPTURE_PORT"):
        assert flag in r.stdout, f"--help does not mention {flag}"


@pytest.mark.parametrize("args,message", [
    (["--bogus"], "unknown option '--bogus'"),
    (["-p"], "option '-p' needs a value"),
    (["-p", "0"], "not a port number"),
    (["-z", "65536"], "not a port number"),
    (["-p", "15006"], "must differ"),
    (["-u", ""], "must not be empty"),
    (["-u", "root"], "not a numeric uid"),
    (["-d", "15000,http"], "'http' is not a port number"),
    (["-i", "10.0.0.0/33"], "not an IPv4 or IPv6"),
    (["-x", "*"], "not an IPv4 or IPv6"),
    (["--ipv6=yes"], "takes no value"),
    (["stray"], "unexpected argument 'stray'"),
])
@pytest.mark.parametrize("backend", SCRIPTS)
def test_bad_flags_exit_2_with_a_message(backend, args, message):
    r = run_script(backend, "--dry-run", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("backend", SCRIPTS)
def test_bad_environment_value_is_an_error(backend):
    r = run_script(backend, "--dry-run", env={"STRAIT_PROXY_UID": "x"})
    assert r.returncode == 2 and "not a numeric uid" in r.stderr


def test_iptables_dry_run_defaults():
    r = run_script("iptables", "--dry-run")
    assert r.returncode == 0, r.stderr
    rules = [l for l in r.stdout.splitlines() if " -A " in l]
    expect = [
        "iptables -w 5 -t nat -A STRAIT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "iptables -w 5 -t nat -A STRAIT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        *[f"iptables -w 5 -t nat -A STRAIT_INBOUND -p tcp --dport {p} -j RETURN"
          for p in (15000, 15001, 15006, 15021, 15090)],
        "iptables -w 5 -t nat -A STRAIT_INBOUND -p tcp -j STRAIT_IN_REDIRECT",
        "iptables -w 5 -t nat -A PREROUTING -p tcp -j STRAIT_INBOUND",
        "iptables -w 5 -t nat -A STRAIT_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "iptables -w 5 -t nat -A STRAIT_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "iptables -w 5 -t nat -A STRAIT_OUTPUT -o lo -j RETURN",
        "iptables -w 5 -t nat -A STRAIT_OUTPUT -d 127.0.0.0/8 -j RETURN",
        "iptables -w 5 -t nat -A STRAIT_OUTPUT -j STRAIT_REDIRECT",
        "iptables -w 5 -t nat -A OUTPUT -p tcp -j STRAIT_OUTPUT",
    ]
    assert rules == expect
    assert "ip6tables" not in r.stdout
    assert "port 22" not in r.stdout and "--dport 22 " not in r.stdout


def test_iptables_dry_run_options_and_environment():
    r = run_script("iptables", "--dry-run", "-b", "8080,9090,15006", "-i", "10.0.0.0/8,fd00::/8",
                   "-x", "10.96.0.1/32", "-o", "25", "-q", "443", "-g", "", "--ipv6",
                   env={"STRAIT_OUTBOUND_CAPTURE_PORT": "16001", "STRAIT_PROXY_UID": "2000,2001"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "-A STRAIT_REDIRECT -p tcp -j REDIRECT --to-ports 16001" in out
    assert "iptables -w 5 -t nat -A STRAIT_INBOUND -p tcp --dport 8080 -j STRAIT_IN_REDIRECT" in out
    assert "--dport 15006 -j STRAIT_IN_REDIRECT" not in out  # a capture port is never captured
    assert "--uid-owner 2001 -j RETURN" in out and "--gid-owner" not in out
    assert "iptables -w 5 -t nat -A STRAIT_OUTPUT -d 10.0.0.0/8 -j STRAIT_REDIRECT" in out
    assert "ip6tables -w 5 -t nat -A STRAIT_OUTPUT -d fd00::/8 -j STRAIT_REDIRECT" in out
    assert "iptables -w 5 -t nat -A STRAIT_OUTPUT -d fd00::/8" not in out
    assert "ip6tables -w 5 -t nat -A STRAIT_OUTPUT -d ::1/128 -j RETURN" in out
    # Order inside STRAIT_OUTPUT: own uid, loopback, port exclusions, port inclusions, CIDRs.
    v4 = [l for l in out.splitlines() if l.startswith("iptables") and "-A STRAIT_OUTPUT" in l]
    keys = ["--uid-owner 2000", "-o lo", "--dport 25", "--dport 443", "-d 10.96.0.1/32", "-d 10.0.0.0/8"]
    idx = [next(i for i, l in enumerate(v4) if k in l) for k in keys]
    assert idx == sorted(idx), v4


def test_nftables_dry_run_is_one_atomic_table():
    r = run_script("nftables", "--dry-run", "-d", "15000,15001,15006,9000", "-x", "169.254.169.254")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "table inet strait\ndelete table inet strait\ntable inet strait {" in out
    assert "tcp dport { 15000, 15001, 15006, 9000 } return" in out
    assert "meta skuid { 1337 } return" in out and "meta skgid { 1337 } return" in out
    assert "ip daddr { 169.254.169.254 } return" in out
    assert out.count("meta nfproto ipv6 return") == 2  # IPv6 off by default
    assert "redirect to :15001" in out and "redirect to :15006" in out
    r6 = run_script("nftables", "--dry-run", "--ipv6")
    assert "meta nfproto ipv6 return" not in r6.stdout


# ---------------------------------------------------------------------------------------------------
# Real rules in real namespaces, with the stand-in proxy.

REASON = None


def _skip_reason():
    global REASON
    if REASON is None:
        REASON = np_.unavailable_reason() or ""
    return REASON


def count(pods, proc, kind, lport=None, orig=None):
    n = 0
    for line in pods.log_of(proc).splitlines():
        if not line.startswith(kind + " "):
            continue
        if lport is not None and f"lport={lport} " not in line:
            continue
        if orig is not None and not line.endswith(f"orig={orig}"):
            continue
        n += 1
    return n


class Env:
    pass


@pytest.fixture(scope="module", params=list(SCRIPTS))
def pods(request):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    backend = request.param
    missing = np_.capture_tool_missing(backend)
    if missing:
        pytest.skip(missing)
    with np_.PodPair(f"cap{backend[:3]}") as p:
        env = Env()
        env.p, env.backend = p, backend
        p.capture(p.a, backend, "--ipv6")
        p.capture(p.b, backend, "--ipv6", "-d", f"15000,15001,15006,15021,15090,{B_EXTRA_EXCLUDED}")
        env.proxy_a = p.spawn(p.a, [sys.executable, p.helper(), "capture-standin", "15001", "15006"],
                              "standin-a", as_proxy=True)
        env.proxy_b = p.spawn(p.b, [sys.executable, p.helper(), "capture-standin", "15001", "15006"],
                              "standin-b", as_proxy=True)
        for proc in (env.proxy_a, env.proxy_b):
            assert "uid=1337 gid=1337" in p.wait_log(proc, "READY")
        p.echo_server(p.b, 8080)
        p.echo_server(p.b, B_EXTRA_EXCLUDED, hello=True)
        yield env
        for proc in (env.proxy_a, env.proxy_b):
            assert count(p, proc, "REFUSED") == 0, p.log_of(proc)
            assert count(p, proc, "NOORIG") == 0, p.log_of(proc)


def snapshot(env):
    p = env.p
    return {
        "a_out": count(p, env.proxy_a, "ACCEPT", lport=15001),
        "a_in": count(p, env.proxy_a, "ACCEPT", lport=15006),
        "b_out": count(p, env.proxy_b, "ACCEPT", lport=15001),
        "b_in": count(p, env.proxy_b, "ACCEPT", lport=15006),
    }


def delta(env, before):
    after = snapshot(env)
    return {k: after[k] - before[k] for k in after}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_pod_to_pod_goes_through_both_proxies(pods, family):
    p = pods.p
    dst = B_ADDR4 if family == "ipv4" else B_ADDR6
    before = snapshot(pods)
    payload = os.urandom(1 << 20)
    got = p.client(p.a, dst, 8080, payload)
    assert got == payload
    # Exactly one connection on each side: A's outbound listener, then B's inbound listener. A loop
    # (the proxy's own upstream connection captured again) would add more, or REFUSED lines.
    assert delta(pods, before) == {"a_out": 1, "a_in": 0, "b_out": 0, "b_in": 1}
    assert count(p, pods.proxy_a, "ACCEPT", lport=15001, orig=f"{dst}:8080") >= 1
    assert count(p, pods.proxy_b, "ACCEPT", lport=15006, orig=f"{dst}:8080") >= 1


def test_excluded_inbound_port_is_not_redirected(pods):
    p = pods.p
    before = snapshot(pods)
    r = p.probe(p.a, B_ADDR4, B_EXTRA_EXCLUDED)
    # Captured leaving A, but B leaves it alone: the server sees A's address, not B's own proxy.
    assert r["data"] == f"peer={A_ADDR4}\nprobe\n", r
    assert delta(pods, before) == {"a_out": 1, "a_in": 0, "b_out": 0, "b_in": 0}


def test_proxy_uid_traffic_is_never_captured_outbound(pods):
    p = pods.p
    before = snapshot(pods)
    payload = b"from uid 1337\n" * 100
    assert p.client(p.a, B_ADDR4, 8080, payload, as_proxy=True) == payload
    assert delta(pods, before) == {"a_out": 0, "a_in": 0, "b_out": 0, "b_in": 1}


def test_admin_port_of_the_other_pod_is_not_captured_inbound(pods):
    p = pods.p
    before = snapshot(pods)
    r = p.probe(p.a, B_ADDR4, 15000)
    # A's stand-in takes the connection and fails to reach B:15000 (nothing listens there, and B
    # does not redirect it): no data comes back.
    assert r["data"] == "", r
    assert delta(pods, before) == {"a_out": 1, "a_in": 0, "b_out": 0, "b_in": 0}
    assert "CONNECT_FAIL orig=10.200.0.2:15000" in p.log_of(pods.proxy_a)


@pytest.mark.parametrize("dst", ["127.0.0.1", B_ADDR4, "::1", B_ADDR6])
def test_loopback_and_own_pod_ip_are_left_alone(pods, dst):
    p = pods.p
    before = snapshot(pods)
    payload = b"self\n" * 1000
    assert p.client(p.b, dst, 8080, payload) == payload
    r = p.probe(p.b, dst, B_EXTRA_EXCLUDED)
    assert r["data"] == f"peer={dst}\nprobe\n", r  # straight to the server, from the pod itself
    assert delta(pods, before) == {"a_out": 0, "a_in": 0, "b_out": 0, "b_in": 0}


def _ruleset(p, ns, backend):
    if backend == "iptables":
        out = p.run(ns, ["iptables-save", "-t", "nat"]).stdout + p.run(ns, ["ip6tables-save", "-t", "nat"]).stdout
        return "\n".join(l for l in out.splitlines() if not l.startswith("#") and not l.startswith(":"))
    return p.run(ns, ["nft", "list", "ruleset"]).stdout


@pytest.mark.parametrize("backend", SCRIPTS)
def test_rerun_does_not_duplicate_and_clean_removes(backend):
    reason = _skip_reason() or np_.capture_tool_missing(backend)
    if reason:
        pytest.skip(reason)
    with np_.PodPair(f"idem{backend[:3]}") as p:
        p.capture(p.a, backend, "--ipv6")
        first = _ruleset(p, p.a, backend)
        assert "STRAIT_OUTPUT" in first
        p.capture(p.a, backend, "--ipv6")
        assert _ruleset(p, p.a, backend) == first
        # A narrower run replaces the rules rather than adding to them.
        p.capture(p.a, backend, "-b", "8080")
        narrower = _ruleset(p, p.a, backend)
        assert narrower != first
        assert len(re.findall(r"15021", narrower)) == 0
        if backend == "iptables":
            assert narrower.count("-A PREROUTING -p tcp -j STRAIT_INBOUND") == 1
            assert "ip6tables" not in narrower and narrower.count("STRAIT_OUTPUT -m owner --uid-owner 1337") == 1
        p.capture(p.a, backend, "--clean")
        p.capture(p.a, backend, "--clean")  # twice is fine
        assert "STRAIT" not in _ruleset(p, p.a, backend)
        # With no rules, A's connections go straight to B.
        p.echo_server(p.b, 8080, hello=True)
        assert p.probe(p.a, B_ADDR4, 8080)["data"] == f"peer={A_ADDR4}\nprobe\n"
