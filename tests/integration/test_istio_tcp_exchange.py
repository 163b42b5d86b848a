"""Istio's TCP metadata exchange ("istio-peer-exchange") through the real binary: two Strait sidecars on
loopback with mTLS between them, in Istio's shapes (the server's inbound chain has istio.metadata_exchange
in front of istio.stats and tcp_proxy, and its TLS offers ALPN istio-peer-exchange; the client's cluster
offers ALPN istio-peer-exchange,istio and carries the exchange as an upstream filter in istiod's TypedStruct).
Raw TCP goes through both to an echo server. Checked: the bytes come back intact (neither side's frame
reaches the application), and both sides' istio_tcp_* series name the peer's workload, app, version and
cluster (not only its namespace); a python TLS client standing in for an Istio sidecar, with its own
protobuf encoding, reads Strait's frame and has its own read, split across reads, or falls back when it
sends no frame; without the ALPN negotiated nothing is exchanged and the labels stay "unknown"."""

from __future__ import annotations

import socket
import ssl
import struct
import time

import pytest

import harness
from harness import bootstrap, static_cluster, tcp_proxy_listener
from test_istio_metrics import (CLIENT_SA, COMMON_DEST, COMMON_SOURCE, SERVER_SA, SVC, TCP_CLUSTER_OUT, STATS,  # noqa: F401
                                labels_of, node, pki, scrape, value, with_node)
from test_tls import downstream_tls, tls_cluster, upstream_tls

struct_pb2 = pytest.importorskip("google.protobuf.struct_pb2", reason="python3-protobuf is not installed")
any_pb2 = pytest.importorskip("google.protobuf.any_pb2", reason="python3-protobuf is not installed")

MX_TYPE = "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"
MAGIC = 0x3D230467
# The inbound chain's filter, typed directly; the cluster's as istiod sends it (a TypedStruct).
MX_NET = {"name": "istio.metadata_exchange", "typed_config": {"@type": MX_TYPE, "protocol": "istio-peer-exchange"}}
MX_CLUSTER = {"name": "istio.metadata_exchange", "typed_config": {
    "@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": MX_TYPE,
    "value": {"protocol": "istio-peer-exchange", "enable_discovery": True}}}
SERVER_ALPN_MX = ["istio-peer-exchange", "h2", "http/1.1"]  # Istio's ALPNDownstreamWithMxc
SERVER_ALPN_PLAIN = ["h2", "http/1.1"]
CLIENT_ALPN = ["istio-peer-exchange", "istio"]  # Istio's ALPNInMeshWithMxc
SERVER_NODE_ID = "sidecar~127.0.0.1~ratings-v2.bookinfo~bookinfo.svc.cluster.local"


def start_pair(fleet, pki, server_alpn):
    """The server sidecar (ratings-v2, inbound) and the client sidecar (productpage-v1, outbound)."""
    echo = fleet.echo()
    in_tcp = tcp_proxy_listener("in_tcp", "inbound|7000||", stat_prefix="inbound|7000||")
    in_tcp["traffic_direction"] = "INBOUND"
    chain = in_tcp["filter_chains"][0]
    chain["transport_socket"] = downstream_tls(pki["server"], pki["root"], require_client=True, sans=[CLIENT_SA],
                                               alpn=server_alpn)
    chain["filters"][:0] = [MX_NET, STATS]
    server = fleet.start(with_node(bootstrap([in_tcp], [static_cluster("inbound|7000||", [echo.port])]),
                                   node("ratings-v2", "bookinfo", "ratings", "v2")))
    to_server = upstream_tls(pki["root"], pki["client"], sans=[SERVER_SA])
    to_server["typed_config"]["common_tls_context"]["alpn_protocols"] = CLIENT_ALPN
    cluster = tls_cluster(TCP_CLUSTER_OUT, [server.listener_port("in_tcp")], to_server)
    cluster["filters"] = [MX_CLUSTER]
    out_tcp = tcp_proxy_listener("out_tcp", TCP_CLUSTER_OUT)
    out_tcp["filter_chains"][0]["filters"].insert(0, STATS)
    client = fleet.start(with_node(bootstrap([out_tcp], [cluster]), node("productpage-v1", "front", "productpage", "v1")))
    return client, server


def echo_through(port: int, payload: bytes) -> None:
    with harness.connect(port) as s:
        s.sendall(payload)
        got = harness.recv_exact(s, len(payload))
        s.shutdown(socket.SHUT_WR)
        rest = harness.recv_until_eof(s)
    assert got == payload and rest == b"", f"echoed {len(got) + len(rest)} bytes for {len(payload)}; bytes differ"


def closed_series(proc, **labels) -> dict:
    """The families once a connection matching `labels` is counted closed (or after 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        fams = scrape(proc)
        if value(fams, "istio_tcp_connections_closed_total", **labels) == 1 or time.monotonic() > deadline:
            return fams
        time.sleep(0.05)


def tcp_labels(reporter: str, peer_known: bool) -> dict:
    source = dict(COMMON_SOURCE)
    dest = dict(COMMON_DEST)
    if reporter == "destination":
        dest.update(destination_service="unknown", destination_service_name="unknown",
                    destination_service_namespace="unknown")
    peer = source if reporter == "destination" else dest
    if not peer_known:  # only the namespace, from the SPIFFE id
        side = "source" if reporter == "destination" else "destination"
        peer.update({f"{side}_workload": "unknown", f"{side}_app": "unknown", f"{side}_version": "unknown",
                     f"{side}_cluster": "unknown"})
    return {"reporter": reporter, **source, **dest, "source_principal": CLIENT_SA, "destination_principal": SERVER_SA,
            "request_protocol": "tcp", "response_flags": "-",
            "connection_security_policy": "mutual_tls" if reporter == "destination" else "unknown"}


def check_both_sides(client, server, payload: bytes, peer_known: bool) -> None:
    for proc, reporter in ((client, "source"), (server, "destination")):
        want = tcp_labels(reporter, peer_known)
        fams = closed_series(proc, **want)
        assert labels_of(fams, "istio_tcp_connections_opened_total") == want, reporter
        assert value(fams, "istio_tcp_connections_opened_total", **want) == 1, reporter
        assert value(fams, "istio_tcp_connections_closed_total", **want) == 1, reporter
        # Application bytes only: the exchange frames are not counted.
        assert value(fams, "istio_tcp_sent_bytes_total", **want) == len(payload), reporter
        assert value(fams, "istio_tcp_received_bytes_total", **want) == len(payload), reporter


def test_two_sidecars_exchange_workloads_and_label_tcp_metrics(fleet, pki):
    client, server = start_pair(fleet, pki, SERVER_ALPN_MX)
    payload = bytes(range(256)) * 300 + b"\x3d\x23\x04\x67"  # the magic in the data is just data
    echo_through(client.listener_port("out_tcp"), payload)
    check_both_sides(client, server, payload, peer_known=True)
    for proc in (client, server):
        s = proc.stats()
        assert s.get("metadata_exchange.alpn_protocol_found") == 1, s
        assert s.get("metadata_exchange.metadata_added") == 1
        assert s.get("metadata_exchange.initial_header_not_found", 0) == 0
        assert s.get("metadata_exchange.header_not_found", 0) == 0
    # Neither frame reached the echo app or was counted as its traffic.
    s = server.stats()
    assert s["tcp.inbound|7000||.downstream_cx_rx_bytes_total"] == len(payload)
    assert s["cluster.inbound|7000||.upstream_cx_tx_bytes_total"] == len(payload)
    assert s.get("istio_inert.metadata_exchange.cx_total", 0) == 0


def frame_of(workload: str, app: str, version: str, node_id: str) -> bytes:
    """An Istio sidecar's frame, encoded by python's protobuf (not by Strait)."""
    data = struct_pb2.Struct()
    data.update({"x-envoy-peer-metadata": {"NAME": f"{workload}-abc", "NAMESPACE": "front", "WORKLOAD_NAME": workload,
                                           "CLUSTER_ID": "Kubernetes", "LABELS": {"app": app, "version": version}},
                 "x-envoy-peer-metadata-id": node_id})
    packed = any_pb2.Any()
    packed.Pack(data)
    payload = packed.SerializeToString()
    return struct.pack(">II", MAGIC, len(payload)) + payload


def istio_like_client(pki, port: int):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(pki["root"]))
    ctx.load_cert_chain(str(pki["client"]["cert"]), str(pki["client"]["key"]))
    ctx.set_alpn_protocols(CLIENT_ALPN)
    s = ctx.wrap_socket(harness.connect(port), server_hostname="ratings.bookinfo")
    assert s.selected_alpn_protocol() == "istio-peer-exchange"
    return s


def read_strait_frame(s) -> struct_pb2.Struct:
    magic, length = struct.unpack(">II", harness.recv_exact(s, 8))
    assert magic == MAGIC and 0 < length < 65536, (hex(magic), length)
    packed = any_pb2.Any()
    packed.ParseFromString(harness.recv_exact(s, length))
    assert packed.type_url == "type.googleapis.com/google.protobuf.Struct"
    data = struct_pb2.Struct()
    assert packed.Unpack(data)
    return data


def test_an_istio_peer_reads_straits_frame_and_is_read_when_split(fleet, pki):
    _, server = start_pair(fleet, pki, SERVER_ALPN_MX)
    port = server.listener_port("in_tcp")
    app = b"application bytes after the frame \x00\xff" * 50
    frame = frame_of("legacy-client", "legacy", "v9", "sidecar~10.0.0.9~legacy.front~front.svc.cluster.local")
    with istio_like_client(pki, port) as s:
        # Strait writes first, without waiting for ours.
        data = read_strait_frame(s)
        assert data["x-envoy-peer-metadata-id"] == SERVER_NODE_ID
        md = data["x-envoy-peer-metadata"]
        assert (md["WORKLOAD_NAME"], md["NAMESPACE"], md["LABELS"]["app"], md["LABELS"]["version"]) == (
            "ratings-v2", "bookinfo", "ratings", "v2")
        assert "STRAIT_ISTIO_METRICS" not in md, "only Istio's exchanged keys are sent"
        # Ours, split inside the header, inside the payload, and ending in the same read as app bytes.
        for piece in (frame[:3], frame[3:11], frame[11:40], frame[40:] + app[:7], app[7:]):
            s.sendall(piece)
            time.sleep(0.05)
        assert harness.recv_exact(s, len(app)) == app
    want = {"reporter": "destination", "source_workload": "legacy-client", "source_workload_namespace": "front",
            "source_app": "legacy", "source_version": "v9", "source_cluster": "Kubernetes",
            "source_principal": CLIENT_SA, "destination_workload": "ratings-v2"}
    fams = closed_series(server, **want)
    assert value(fams, "istio_tcp_connections_opened_total", **want) == 1
    assert value(fams, "istio_tcp_received_bytes_total", **want) == len(app)

    # A peer that negotiated the ALPN but sends no frame: its bytes go on as they are (Istio's way).
    plain = b"no frame here, just bytes"
    with istio_like_client(pki, port) as s:
        read_strait_frame(s)
        s.sendall(plain)
        assert harness.recv_exact(s, len(plain)) == plain
    st = server.wait_stats(lambda st: st.get("metadata_exchange.initial_header_not_found") == 1)
    assert st["metadata_exchange.alpn_protocol_found"] == 2


def test_without_the_alpn_nothing_is_exchanged_and_labels_stay_unknown(fleet, pki):
    client, server = start_pair(fleet, pki, SERVER_ALPN_PLAIN)
    payload = b"plain mesh tcp " * 1000
    echo_through(client.listener_port("out_tcp"), payload)
    check_both_sides(client, server, payload, peer_known=False)
    for proc in (client, server):
        s = proc.stats()
        assert s.get("metadata_exchange.alpn_protocol_not_found") == 1, s
        assert s.get("metadata_exchange.alpn_protocol_found", 0) == 0
        assert s.get("metadata_exchange.metadata_added", 0) == 0
    assert server.stats().get("istio_inert.metadata_exchange.cx_total") == 1
