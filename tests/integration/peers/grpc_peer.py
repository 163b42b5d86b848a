"""A gRPC server and client with Debian's python3-grpcio, no protoc: generic handlers whose messages are
raw bytes (no serializers).

Service `strait.test.Echo`:
  Unary(bytes) -> the same bytes. Initial metadata: x-initial: i1 plus every request metadata entry
      whose key starts with x-echo-; trailing metadata: x-trailing: t1 and x-request-count: <n>.
  Bidi(stream bytes) -> stream bytes: each message echoed as it arrives (prefixed with nothing).
  Fail(bytes) -> aborts NOT_FOUND with details "not found: <request>", trailing metadata
      x-fail-reason: custom and x-fail-bin (binary key) = b"\\x00\\x01\\xff".
  Big(ascii size) -> `size` bytes of patterns.data (large responses).
  Size(bytes) -> ascii "<len> <sha256>" of the request (large requests).
"""

from __future__ import annotations

import hashlib
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peers import patterns  # noqa: E402

SERVICE = "strait.test.Echo"
MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.enable_retries", 0),
]


class GrpcServer:
    def __init__(self, workers: int = 16):
        self.count = 0
        self.lock = threading.Lock()
        self.metadata_seen: list[list[tuple[str, str]]] = []
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(self._fail),
            "Big": grpc.unary_unary_rpc_method_handler(self._big),
            "Size": grpc.unary_unary_rpc_method_handler(self._size),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=[
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ])
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        if not self.port:
            raise OSError("grpc server could not bind 127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(grace=0).wait(5)

    def _note(self, context) -> int:
        md = [(k, v if isinstance(v, str) else repr(v)) for k, v in context.invocation_metadata()]
        with self.lock:
            self.count += 1
            self.metadata_seen.append(md)
            return self.count

    def _unary(self, request: bytes, context) -> bytes:
        n = self._note(context)
        echo = [(k, v) for k, v in context.invocation_metadata() if k.startswith("x-echo-")]
        context.send_initial_metadata([("x-initial", "i1")] + echo)
        context.set_trailing_metadata([("x-trailing", "t1"), ("x-request-count", str(n))])
        return request

    def _bidi(self, request_iterator, context):
        self._note(context)
        for msg in request_iterator:
            yield msg

    def _fail(self, request: bytes, context):
        self._note(context)
        context.set_trailing_metadata([("x-fail-reason", "custom"), ("x-fail-bin", b"\x00\x01\xff")])
        context.abort(grpc.StatusCode.NOT_FOUND, "not found: " + request.decode("utf-8", "replace"))

    def _big(self, request: bytes, context) -> bytes:
        self._note(context)
        return patterns.data(int(request))

    def _size(self, request: bytes, context) -> bytes:
        self._note(context)
        return f"{len(request)} {hashlib.sha256(request).hexdigest()}".encode()


class GrpcClient:
    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.channel = grpc.insecure_channel(f"{host}:{port}", options=CHANNEL_OPTIONS)
        self.unary = self.channel.unary_unary(f"/{SERVICE}/Unary")
        self.bidi = self.channel.stream_stream(f"/{SERVICE}/Bidi")
        self.fail = self.channel.unary_unary(f"/{SERVICE}/Fail")
        self.big = self.channel.unary_unary(f"/{SERVICE}/Big")
        self.size = self.channel.unary_unary(f"/{SERVICE}/Size")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float = 5.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)


if __name__ == "__main__":
    import time

    srv = GrpcServer()
    print(f"gRPC server on 127.0.0.1:{srv.port}", flush=True)
    with GrpcClient(srv.port) as c:
        resp, call = c.unary.with_call(b"ping", metadata=[("x-echo-a", "1")], timeout=5)
        print("unary:", resp, call.initial_metadata(), call.trailing_metadata())
        print("bidi:", len(list(c.bidi(iter([b"m%d" % i for i in range(100)]), timeout=10))))
        try:
            c.fail(b"thing", timeout=5)
        except grpc.RpcError as err:
            print("fail:", err.code(), err.details(), err.trailing_metadata())
        print("big:", len(c.big(b"%d" % (4 * 1024 * 1024), timeout=10)))
    if "--serve" in sys.argv:
        time.sleep(300)
    srv.close()
