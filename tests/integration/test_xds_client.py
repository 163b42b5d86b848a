"""The test xDS management server (tests/xds_server/server.js) against a python3-grpcio ADS client.

The server is what the end-to-end xDS tests of the strait binary drive, so its protocol behaviour is
checked here on its own: SotW and delta subscriptions, ACK/NACK bookkeeping, pushes on change, stale
nonces, stream kills, raw responses, held types, and the control API's errors. Messages are encoded with
Python classes that protoc generates at test time from our own xds/api protos, which also checks that
what the server encodes with Envoy's real protos decodes with our subset.

Skips (with the reason) when node/npm or protoc are missing.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "xds_server"))

import xds_control  # noqa: E402
from xds_control import CDS, EDS, LDS, RDS, XdsServer, XdsServerError  # noqa: E402

grpc = pytest.importorskip("grpc")

SOTW_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
TIMEOUT = 10


def cluster(name: str, timeout: str = "1s", **extra) -> dict:
    return {"@type": CDS, "name": name, "connect_timeout": timeout, **extra}


def listener(name: str, port: int = 10000) -> dict:
    return {"@type": LDS, "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def cla(name: str, port: int) -> dict:
    return {"@type": EDS, "cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}


# ---------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """Python modules generated from xds/api by Debian's protoc."""
    protoc = shutil.which("protoc")
    if protoc is None:
        pytest.skip("protoc not found (protobuf-compiler)")
    out = tmp_path_factory.mktemp("xds_pb")
    api = REPO_ROOT / "xds" / "api"
    protos = sorted(str(p.relative_to(api)) for p in api.rglob("*.proto"))
    subprocess.run([protoc, f"-I{api}", "-I/usr/include", f"--python_out={out}", *protos], check=True, cwd=api)
    sys.path.insert(0, str(out))
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    class PB:
        pass

    PB.discovery = discovery_pb2
    PB.cluster = cluster_pb2
    PB.listener = listener_pb2
    PB.endpoint = endpoint_pb2
    return PB


@pytest.fixture
def xds(tmp_path):
    if not xds_control.node_available():
        pytest.skip("node/npm not found (deploy/install-deps.sh test)")
    server = XdsServer(tmp_path / "xds")
    try:
        server.start()
    except (XdsServerError, subprocess.CalledProcessError) as e:
        pytest.fail(f"test xDS server failed to start: {e}")
    yield server
    server.stop()


class AdsStream:
    """One ADS stream: requests go in through a queue, responses come out through another."""

    def __init__(self, target: str, pb, delta: bool = False):
        self.pb = pb
        self.delta = delta
        self.channel = grpc.insecure_channel(target)
        d = pb.discovery
        req_cls = d.DeltaDiscoveryRequest if delta else d.DiscoveryRequest
        resp_cls = d.DeltaDiscoveryResponse if delta else d.DiscoveryResponse
        call = self.channel.stream_stream(DELTA_METHOD if delta else SOTW_METHOD,
                                          request_serializer=req_cls.SerializeToString,
                                          response_deserializer=resp_cls.FromString)
        self._out: queue.Queue = queue.Queue()
        self._in: queue.Queue = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.call = call(self._requests(), timeout=60)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self):
        while True:
            item = self._out.get()
            if item is None:
                return
            yield item

    def _read(self):
        try:
            for resp in self.call:
                self._in.put(resp)
        except grpc.RpcError as e:
            self.error = e
        self._in.put(None)

    def send(self, **fields):
        d = self.pb.discovery
        req = (d.DeltaDiscoveryRequest if self.delta else d.DiscoveryRequest)(**fields)
        self._out.put(req)

    def recv(self, timeout: float = TIMEOUT):
        try:
            resp = self._in.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no response in {timeout} s")
        if resp is None:
            pytest.fail(f"stream ended: {self.error}")
        return resp

    def expect_nothing(self, wait: float = 0.5):
        try:
            resp = self._in.get(timeout=wait)
        except queue.Empty:
            return
        pytest.fail(f"unexpected response: {resp}")

    def wait_end(self, timeout: float = TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._in.get(timeout=0.1) is None:
                    return self.error
            except queue.Empty:
                pass
        pytest.fail("stream did not end")

    def close(self):
        self._out.put(None)
        self.call.cancel()
        self.channel.close()


def names_of(resp, pb, cls):
    out = []
    for any_ in resp.resources:
        msg = cls()
        assert any_.Unpack(msg), any_.type_url
        out.append(msg.cluster_name if cls is pb.endpoint.ClusterLoadAssignment else msg.name)
    return out


def node(pb, node_id="sidecar~10.0.0.5~a.ns~ns.svc.cluster.local"):
    from envoy.config.core.v3 import base_pb2  # generated in the pb fixture's folder

    n = base_pb2.Node(id=node_id, cluster="a.ns")
    n.metadata.update({"NAMESPACE": "ns", "LABELS": {"app": "a"}})
    return n


# ---------------------------------------------------------------------------------------------------
# State of the world


def test_sotw_subscribe_ack_nack_push_and_kill(xds, pb):
    xds.set_resources([cluster("c1", "1.5s"), cluster("c2"), listener("l1")])
    s = AdsStream(xds.ads_address, pb)
    try:
        s.send(node=node(pb), type_url=CDS)
        r1 = s.recv()
        assert r1.type_url == CDS
        assert sorted(names_of(r1, pb, pb.cluster.Cluster)) == ["c1", "c2"]
        c1 = next(c for c in (pb.cluster.Cluster.FromString(a.value) for a in r1.resources) if c.name == "c1")
        assert (c1.connect_timeout.seconds, c1.connect_timeout.nanos) == (1, 500_000_000)
        assert r1.version_info and r1.nonce

        s.send(type_url=CDS, version_info=r1.version_info, response_nonce=r1.nonce)
        ack = xds.wait_request(lambda r: r["kind"] == "ack" and r["type_url"] == CDS)
        assert ack["version_info"] == r1.version_info and ack["response_nonce"] == r1.nonce
        first = xds.requests(type_url=CDS)[0]
        assert first["has_node"] and first["node"]["id"] == "sidecar~10.0.0.5~a.ns~ns.svc.cluster.local"
        assert first["node"]["metadata"] == {"NAMESPACE": "ns", "LABELS": {"app": "a"}}
        assert first["kind"] == "request" and first["resource_names"] == []

        # A change is pushed (full set for a wildcard type).
        xds.set_resources([cluster("c3")])
        r2 = s.recv()
        assert sorted(names_of(r2, pb, pb.cluster.Cluster)) == ["c1", "c2", "c3"]
        assert r2.version_info != r1.version_info and r2.nonce != r1.nonce
        # NACK: recorded with its error; nothing is resent.
        s.send(type_url=CDS, version_info=r1.version_info, response_nonce=r2.nonce,
               error_detail={"code": 3, "message": "cluster 'c3': bad"})
        nack = xds.wait_request(lambda r: r["kind"] == "nack")
        assert nack["error_detail"] == {"code": 3, "message": "cluster 'c3': bad"}
        assert nack["version_info"] == r1.version_info
        s.expect_nothing()
        # A stale nonce is recorded as such and ignored, even with new names in it.
        s.send(type_url=CDS, version_info=r1.version_info, response_nonce=r1.nonce)
        xds.wait_request(lambda r: r["kind"] == "stale")
        s.expect_nothing()
        # Removal: the next full set lacks it.
        xds.remove(CDS, ["c2"])
        assert sorted(names_of(s.recv(), pb, pb.cluster.Cluster)) == ["c1", "c3"]

        # Named types: only the names asked for, and a change of names is answered.
        s.send(type_url=EDS, resource_names=["c1"])
        e1 = s.recv()
        assert e1.type_url == EDS and names_of(e1, pb, pb.endpoint.ClusterLoadAssignment) == []
        xds.set_resources([cla("c1", 8080), cla("other", 8081)])
        e2 = s.recv()
        assert names_of(e2, pb, pb.endpoint.ClusterLoadAssignment) == ["c1"]
        s.send(type_url=EDS, resource_names=["c1", "other"], version_info=e2.version_info, response_nonce=e2.nonce)
        e3 = s.recv()
        assert sorted(names_of(e3, pb, pb.endpoint.ClusterLoadAssignment)) == ["c1", "other"]

        streams = xds.streams()
        assert len(streams) == 1 and streams[0]["open"] and streams[0]["api"] == "sotw"
        assert streams[0]["types"][EDS]["names"] == ["c1", "other"]
        assert streams[0]["types"][CDS]["wildcard"] is True

        assert xds.kill() == [streams[0]["id"]]
        err = s.wait_end()
        assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
        assert xds.streams()[0]["open"] is False
    finally:
        s.close()


def test_sotw_raw_push_hold_and_resend_on_nack(xds, pb):
    xds.set_resources([listener("l1")])
    xds.settings(hold_types=["lds"])
    s = AdsStream(xds.ads_address, pb)
    try:
        s.send(node=node(pb), type_url=LDS)
        xds.wait_request(lambda r: r["type_url"] == LDS)
        s.expect_nothing()  # held: recorded, not answered
        xds.settings(hold_types=[])

        # A raw response, duplicates and all, exactly as given.
        sent = xds.push_raw({"type_url": "lds", "version_info": "dup", "nonce": "n-dup",
                             "resources": [listener("l1"), listener("l1")]})
        assert sent["sent"] and sent["sent"][0]["nonce"] == "n-dup"
        r = s.recv()
        assert r.nonce == "n-dup" and r.version_info == "dup"
        assert names_of(r, pb, pb.listener.Listener) == ["l1", "l1"]

        # resend_on_nack: every NACK is answered with the same resources (a NACK-loop server).
        xds.settings(resend_on_nack=True)
        s.send(type_url=LDS, response_nonce="n-dup", error_detail={"code": 3, "message": "duplicate"})
        again = s.recv()
        assert again.nonce != "n-dup" and names_of(again, pb, pb.listener.Listener) == ["l1", "l1"]
        xds.settings(resend_on_nack=False)
        s.send(type_url=LDS, response_nonce=again.nonce, error_detail={"code": 3, "message": "duplicate"})
        s.expect_nothing()
        responses = xds.responses(type_url=LDS)
        assert [x["nonce"] for x in responses][-2:] == ["n-dup", again.nonce]
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------------
# Delta


def test_delta_wildcard_initial_versions_and_removal(xds, pb):
    v = xds.set_resources([cluster("a"), cluster("b")])["version"]
    s = AdsStream(xds.ads_address, pb, delta=True)
    try:
        # The client already holds a at the current version: only b comes.
        s.send(node=node(pb), type_url=CDS, resource_names_subscribe=["*"], initial_resource_versions={"a": v, "gone": "1"})
        r1 = s.recv()
        assert [x.name for x in r1.resources] == ["b"]
        assert r1.resources[0].version == v
        assert pb.cluster.Cluster.FromString(r1.resources[0].resource.value).name == "b"
        assert list(r1.removed_resources) == ["gone"]
        s.send(type_url=CDS, response_nonce=r1.nonce)
        xds.wait_request(lambda r: r["kind"] == "ack" and r["response_nonce"] == r1.nonce)
        first = xds.requests()[0]
        assert first["initial_resource_versions"] == {"a": v, "gone": "1"}
        assert first["resource_names_subscribe"] == ["*"] and first["has_node"]

        xds.remove(CDS, ["a"])
        r2 = s.recv()
        assert list(r2.removed_resources) == ["a"] and len(r2.resources) == 0
        xds.set_resources([cluster("b", "2s")])
        r3 = s.recv()
        assert [x.name for x in r3.resources] == ["b"] and r3.resources[0].version != v

        # Named: a subscription to a name that does not exist is answered with its removal.
        s.send(type_url=EDS, resource_names_subscribe=["x", "y"])
        r4 = s.recv()
        assert r4.type_url == EDS and sorted(r4.removed_resources) == ["x", "y"]
        xds.set_resources([cla("x", 9000)])
        r5 = s.recv()
        assert [x.name for x in r5.resources] == ["x"]
        # Unsubscribed names are not pushed.
        s.send(type_url=EDS, resource_names_unsubscribe=["x"])
        xds.wait_request(lambda r: r["resource_names_unsubscribe"] == ["x"] if r["api"] == "delta" else False)
        xds.set_resources([cla("x", 9001)])
        s.expect_nothing()
        st = xds.streams()[0]
        assert st["api"] == "delta" and st["types"][EDS]["names"] == ["y"]
    finally:
        s.close()


def test_refused_streams_and_unix_socket(tmp_path, pb):
    if not xds_control.node_available():
        pytest.skip("node/npm not found (deploy/install-deps.sh test)")
    sock = str(tmp_path / "xds.sock")
    with XdsServer(tmp_path / "xds", unix=sock, resources=[cluster("boot")]) as xds:
        s = AdsStream(f"unix:{sock}", pb)
        try:
            s.send(node=node(pb), type_url=CDS)
            assert names_of(s.recv(), pb, pb.cluster.Cluster) == ["boot"]  # --resources preloads
        finally:
            s.close()
        xds.settings(refuse_streams=True)
        s2 = AdsStream(xds.ads_address, pb)
        try:
            s2.send(node=node(pb), type_url=CDS)
            err = s2.wait_end()
            assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            s2.close()


def test_control_api_errors_name_the_field(xds):
    with pytest.raises(XdsServerError) as e:
        xds.set_resources([{"@type": CDS, "name": "c", "conect_timeout": "1s"}])
    assert "conect_timeout" in str(e.value) and "400" in str(e.value)
    with pytest.raises(XdsServerError) as e:
        xds.set_resources([{"@type": CDS, "name": "c", "lb_policy": "NOPE"}])
    assert "lb_policy" in str(e.value)
    with pytest.raises(XdsServerError) as e:
        xds.set_resources([{"@type": "type.googleapis.com/envoy.nothing.v3.Thing", "name": "c"}])
    assert "unknown message type" in str(e.value)
    with pytest.raises(XdsServerError) as e:
        xds.call("POST", "/nope", {})
    assert "404" in str(e.value)
    # Nested Any, Struct, wrappers and durations all convert; JSON names in either spelling.
    out = xds.set_resources([listener("l9"), {
        "@type": RDS, "name": "r1",
        "virtualHosts": [{"name": "vh", "domains": ["*"], "routes": [{
            "match": {"prefix": "/"},
            "route": {"cluster": "c1", "timeout": "0.25s", "retry_policy": {"num_retries": 2}}}]}]}])
    assert set(out["changed"]) == {LDS, RDS}
    got = xds.resources(RDS)[RDS]["resources"][0]
    assert got["name"] == "r1"
