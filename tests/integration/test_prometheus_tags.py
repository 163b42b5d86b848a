"""/stats/prometheus as Envoy renders it: Envoy's default tag extraction (response codes and classes, the
cluster name, the whole listener address with its port, the HCM prefix), a `# HELP` and one `# TYPE` per
family, every family with one label set, and the whole page read by a strict parser (python3's
prometheus_client). Also the counters that feed it: http_inspector's http10_found / http11_found, and
cluster.<name>.upstream_cx_rx_bytes_total / upstream_cx_tx_bytes_total moved by HTTP upstream
connections (not only tcp_proxy's)."""

from __future__ import annotations

import re
import socket

import pytest

import harness
from peers import env, h1
from test_protocol_detection import _env as detection_env

CLUSTER = "backend.default.svc"  # a dotted name stays whole in envoy_cluster_name
PREFIX = "ingress_http"


def _families(text: str):
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        pytest.skip("python3-prometheus-client is not installed (deploy/install-deps.sh test)")
    return list(text_string_to_metric_families(text))


def _check_exposition(text: str) -> dict[str, str]:
    """The page's own structure, stricter than the parser: HELP then TYPE once per family, the samples of
    a family together right after them, and one set of label names per family. Returns name -> type."""
    types: dict[str, str] = {}
    labelsets: dict[str, set] = {}
    current = None
    help_for = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            help_for = line.split(" ", 3)[2]
            assert len(line.split(" ", 3)) == 4 and line.split(" ", 3)[3].strip(), f"empty HELP: {line}"
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            assert name not in types, f"family {name} has two TYPE lines"
            assert help_for == name, f"no # HELP right before # TYPE {name}"
            types[name] = typ
            current = name
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        assert m, f"not a sample line: {line!r}"
        name, labels = m.group(1), m.group(3) or ""
        assert current is not None
        allowed = {current} | ({current + s for s in ("_bucket", "_sum", "_count")}
                               if types[current] == "histogram" else set())
        assert name in allowed, f"sample {name} outside its family (current {current})"
        keys = frozenset(k for k in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', labels) if k != "le")
        labelsets.setdefault(current, set()).add(keys)
    mixed = {n: s for n, s in labelsets.items() if len(s) > 1}
    assert not mixed, f"families with more than one label set: {mixed}"
    return types


def _value(families, sample_name: str, labels: dict[str, str]) -> float:
    for fam in families:
        for s in fam.samples:
            if s.name == sample_name and s.labels == labels:
                return s.value
    near = sorted({(s.name, tuple(sorted(s.labels.items()))) for f in families for s in f.samples
                   if s.name.startswith(sample_name.rsplit("_", 1)[0])})[:20]
    raise AssertionError(f"no sample {sample_name}{labels}; near: {near}")


def test_prometheus_tags_help_and_a_strict_parse(fleet):
    listener_port = harness.free_port()
    e = env.simple(fleet, cluster=CLUSTER, stat_prefix=PREFIX, listener_port=listener_port)
    for _ in range(2):
        assert h1.get(e.port, "/ok").status == 200
    assert h1.get(e.port, "/_/status?code=503").status == 503
    e.proc.wait_stats(lambda s: s.get(f"cluster.{CLUSTER}.upstream_rq_5xx", 0) >= 1
                      and s.get(f"http.{PREFIX}.downstream_rq_5xx", 0) >= 1)
    resp = e.proc.get("/stats/prometheus")
    assert resp.status == 200, resp
    text = resp.text
    types = _check_exposition(text)
    families = _families(text)
    assert families, "the parser found no family"

    # cluster.<name>.upstream_rq_2xx -> envoy_cluster_upstream_rq_xx{envoy_cluster_name, envoy_response_code_class}
    assert types["envoy_cluster_upstream_rq_xx"] == "counter"
    # (the parser names counter samples with _total, as OpenMetrics does)
    rq = "envoy_cluster_upstream_rq_xx_total"
    assert _value(families, rq, {"envoy_cluster_name": CLUSTER, "envoy_response_code_class": "2"}) == 2
    assert _value(families, rq, {"envoy_cluster_name": CLUSTER, "envoy_response_code_class": "5"}) == 1
    assert _value(families, "envoy_cluster_upstream_rq_total", {"envoy_cluster_name": CLUSTER}) == 3
    # cluster.<name>.upstream_rq_200 (a counter per code seen, as Envoy makes them) ->
    # envoy_cluster_upstream_rq{envoy_cluster_name, envoy_response_code}: beside upstream_rq_total's family,
    # as in Envoy's output.
    assert types["envoy_cluster_upstream_rq"] == "counter"
    assert _value(families, "envoy_cluster_upstream_rq_total", {"envoy_cluster_name": CLUSTER, "envoy_response_code": "200"}) == 2
    assert _value(families, "envoy_cluster_upstream_rq_total", {"envoy_cluster_name": CLUSTER, "envoy_response_code": "503"}) == 1
    stats = e.proc.stats()
    assert stats.get(f"cluster.{CLUSTER}.upstream_rq_200") == 2 and stats.get(f"cluster.{CLUSTER}.upstream_rq_503") == 1, \
        {k: v for k, v in stats.items() if k.startswith(f"cluster.{CLUSTER}.upstream_rq_")}
    assert f"cluster.{CLUSTER}.upstream_rq_404" not in stats  # only codes that occurred
    # http.<prefix>.downstream_rq_2xx -> envoy_http_downstream_rq_xx{..., envoy_response_code_class="2"}
    xx = "envoy_http_downstream_rq_xx_total"
    assert _value(families, xx, {"envoy_http_conn_manager_prefix": PREFIX, "envoy_response_code_class": "2"}) == 2
    assert _value(families, xx, {"envoy_http_conn_manager_prefix": PREFIX, "envoy_response_code_class": "5"}) == 1
    # listener.<address>.<stat> -> the whole address with its port
    assert _value(families, "envoy_listener_downstream_cx_total",
                  {"envoy_listener_address": f"127.0.0.1_{listener_port}"}) >= 1
    # A histogram keeps its tags on every bucket.
    assert types["envoy_http_downstream_rq_time"] == "histogram"
    assert _value(families, "envoy_http_downstream_rq_time_count", {"envoy_http_conn_manager_prefix": PREFIX}) == 3
    # HELP names the Envoy stat behind the family.
    assert re.search(r"^# HELP envoy_cluster_upstream_rq_xx counter "
                     r"cluster\.\{envoy_cluster_name\}\.upstream_rq_\{envoy_response_code_class\}xx$", text, re.M), \
        [l for l in text.splitlines() if l.startswith("# HELP envoy_cluster_upstream_rq_xx ")]
    # The untagged names are gone.
    assert "upstream_rq_2xx" not in text and "downstream_rq_2xx" not in text and "upstream_rq_200" not in text


@pytest.mark.parametrize("h2_upstream", [False, True], ids=["http1", "http2"])
def test_http_upstream_connections_count_bytes(fleet, h2_upstream):
    e = env.simple(fleet, cluster=CLUSTER, h2_upstream=h2_upstream)
    size = 200_000
    with h1.Client(e.port) as c:
        for _ in range(2):  # one connection upstream, reused: bytes per connection, not per request
            r = c.request("GET", f"/_/body?size={size}")
            assert r.status == 200 and r.body_len == size, r
    p = f"cluster.{CLUSTER}."
    s = e.proc.wait_stats(lambda s: s.get(p + "upstream_cx_rx_bytes_total", 0) >= 2 * size)
    rx, tx = s[p + "upstream_cx_rx_bytes_total"], s[p + "upstream_cx_tx_bytes_total"]
    assert 2 * size <= rx < 2 * size + 4096, f"rx {rx} for two {size}-byte bodies"
    assert 2 * len("/_/body") < tx < 4096, f"tx {tx} for two small requests"
    assert s[p + "upstream_cx_total"] == 1, s[p + "upstream_cx_total"]


def test_http_inspector_counts_http10_and_http11(fleet):
    e = detection_env(fleet)
    assert h1.get(e.port, "/one").status == 200
    # (this listener's HTTP chain asks for http/1.1 or h2c, so HTTP/1.0 takes the tcp_proxy chain to an
    # echo server: what counts here is that the inspector saw HTTP/1.0)
    request = b"GET /ten HTTP/1.0\r\nHost: x\r\n\r\n"
    with harness.connect(e.port) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        assert harness.recv_until_eof(sock, timeout=10) == request
    s = e.proc.wait_stats(lambda s: s.get(e.scope + "http_inspector.http10_found", 0) >= 1)
    assert s[e.scope + "http_inspector.http10_found"] == 1
    assert s[e.scope + "http_inspector.http11_found"] == 1
    assert e.scope + "http_inspector.http1_found" not in s, "Envoy has no http1_found"
