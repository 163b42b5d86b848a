"""WebSocket through strait: an HTTP/1.1 Upgrade allowed by the HCM's upgrade_configs, then frames both
ways until close (peers/websocket.py: stdlib handshake and framing)."""

from __future__ import annotations

import os
import threading

import harness
from peers import h1, websocket
from peers.websocket import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT


def _env(fleet, upgrade: bool = True, **cfg):
    server = harness.track(fleet, websocket.WsEchoServer())
    extra = {"upgrade_configs": [{"upgrade_type": "websocket"}]} if upgrade else {}
    proc = fleet.start(harness.simple_http_config(server.port, **extra, **cfg))
    return proc, server, proc.listener_port("http")


def test_upgrade_returns_101_then_frames_echo_both_ways_then_close(fleet):
    proc, server, port = _env(fleet)
    ws = websocket.WsClient(port, "/chat")
    try:
        assert ws.response.status == 101, ws.response
        assert ws.accepted, f"bad Sec-WebSocket-Accept: {ws.response!r}"
        assert (ws.response.header("upgrade") or "").lower() == "websocket"
        messages = ["hello", "second message", "ü-nicode ✓"]
        for m in messages:
            ws.send(m)
            assert ws.recv() == (OP_TEXT, m.encode())
        for size in (1, 125, 126, 65535, 65536, 300_000):
            data = os.urandom(size)
            ws.send(data)
            assert ws.recv() == (OP_BINARY, data), f"binary frame of {size} bytes not echoed intact"
        ws.send(b"are you there", opcode=OP_PING)
        assert ws.recv() == (OP_PONG, b"are you there")
        closing = ws.close(1000)
        assert closing is not None and closing[0] == OP_CLOSE and closing[1][:2] == b"\x03\xe8", closing
        assert ws.client.wait_closed(3) in ("eof", "reset"), "connection not closed after the close handshake"
    finally:
        ws.shutdown()
    assert server.unmasked_frames == 0, "client frames reached the server unmasked"


def test_upgrade_request_headers_reach_the_origin(fleet):
    proc, server, port = _env(fleet)
    ws = websocket.WsClient(port, "/hs", extra_headers=[("Sec-WebSocket-Protocol", "chat")])
    try:
        assert ws.accepted, ws.response
    finally:
        ws.shutdown()
    hs = server.handshakes[-1]
    assert (h1.header_get(hs, "upgrade") or "").lower() == "websocket"
    assert "upgrade" in h1.connection_tokens(hs)
    assert h1.header_get(hs, "sec-websocket-key") == ws.key
    assert h1.header_get(hs, "sec-websocket-version") == "13"
    assert h1.header_get(hs, "sec-websocket-protocol") == "chat"


def test_upgrade_without_upgrade_config_is_refused(fleet):
    # Envoy answers 403 to an Upgrade the HCM (or route) does not allow; it never switches protocols.
    proc, server, port = _env(fleet, upgrade=False)
    ws = websocket.WsClient(port, "/nope")
    try:
        assert ws.response.status == 403, ws.response
    finally:
        ws.shutdown()


def test_many_websockets_in_parallel(fleet):
    proc, server, port = _env(fleet)
    errors: list[str] = []

    def one(n):
        ws = None
        try:
            ws = websocket.WsClient(port, f"/p{n}")
            if not ws.accepted:
                errors.append(f"#{n}: {ws.response!r}")
                return
            for i in range(20):
                msg = f"{n}:{i}:" + "x" * (i * 50)
                ws.send(msg)
                if ws.recv() != (OP_TEXT, msg.encode()):
                    errors.append(f"#{n}: message {i} not echoed")
                    return
            if ws.close() is None:
                errors.append(f"#{n}: no close frame back")
        except Exception as err:  # collected and reported below
            errors.append(f"#{n}: {err!r}")
        finally:
            if ws is not None:
                ws.shutdown()

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "some websocket clients did not finish in 30 s"
    assert not errors, errors
    harness.assert_ready(proc)


def test_server_close_reaches_client(fleet):
    proc, server, port = _env(fleet)
    ws = websocket.WsClient(port, "/srvclose")
    try:
        assert ws.accepted
        ws.send("before")
        assert ws.recv() == (OP_TEXT, b"before")
        server.close()  # the origin goes away: strait must close the client side too
        assert ws.client.wait_closed(5) in ("eof", "reset")
    finally:
        ws.shutdown()
