"""Glue between the `fleet` fixture and the peers: peers the fleet closes at teardown, a one-route proxy,
and bystander connections (opened before an attack, checked after it)."""

from __future__ import annotations

import hashlib
import itertools
from types import SimpleNamespace

import pytest

import harness
from peers import h1, h2peers, nginx as nginx_peer
from peers.origin import Origin

_nginx_ids = itertools.count(1)


def origin(fleet, name: str = "origin", **kw) -> Origin:
    return harness.track(fleet, Origin(name, **kw))


def h2origin(fleet, name: str = "h2origin", **kw) -> h2peers.H2Origin:
    return harness.track(fleet, h2peers.H2Origin(name, **kw))


def nginx(fleet, h2: bool = False) -> nginx_peer.Nginx:
    if not nginx_peer.available():
        pytest.fail(f"nginx not found at {nginx_peer.NGINX}: run deploy/install-deps.sh test", pytrace=False)
    return harness.track(fleet, nginx_peer.Nginx(fleet.workdir / f"nginx{next(_nginx_ids)}", h2=h2))


def simple(fleet, upstream=None, *, h2_upstream: bool = False, start_kw: dict | None = None, **cfg):
    """strait with one HCM listener (vhost `*`, prefix `/`) to one upstream (default: a new Origin).
    Returns a namespace with proc, port (the listener's), upstream and url."""
    if upstream is None:
        upstream = h2origin(fleet) if h2_upstream else origin(fleet)
    up_port = upstream if isinstance(upstream, int) else upstream.port
    proc = fleet.start(harness.simple_http_config(up_port, h2_upstream=h2_upstream, **cfg), **(start_kw or {}))
    port = proc.listener_port(cfg.get("listener", "http"))
    return SimpleNamespace(proc=proc, port=port, upstream=upstream, origin=upstream,
                           url=f"http://127.0.0.1:{port}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Bystander:
    """A well-behaved HTTP/1.1 keep-alive connection opened (and used once) before an attack."""

    def __init__(self, port: int, path: str = "/bystander"):
        self.path = path
        self.client = h1.Client(port, timeout=10)
        resp = self.client.request("GET", f"{path}/before")
        assert resp.status == 200 and resp.complete, f"bystander's first request failed: {resp!r}"

    def check(self) -> None:
        try:
            resp = self.client.request("GET", f"{self.path}/after", timeout=10)
        except (OSError, h1.NoResponse) as err:
            raise AssertionError(f"the connection opened before the attack broke: {err!r}") from err
        assert resp.status == 200 and resp.complete, f"bystander after the attack: {resp!r}"

    def close(self) -> None:
        self.client.close()


class H2Bystander:
    """A well-behaved HTTP/2 connection opened (and used once) before an attack."""

    def __init__(self, port: int, path: str = "/h2bystander"):
        self.path = path
        self.client = h2peers.H2Client(port, timeout=10)
        st = self.client.get(f"{path}/before")
        assert st.status == 200 and st.ended, f"h2 bystander's first request failed: {st!r}"

    def check(self) -> None:
        st = self.client.get(f"{self.path}/after")
        assert st.status == 200 and st.ended, \
            f"the h2 connection opened before the attack broke: {st!r} ({self.client.closed_how}, " \
            f"goaway {self.client.goaway})"

    def close(self) -> None:
        self.client.close()


def survived(proc, *bystanders) -> None:
    """After an attack: every bystander still works and strait is alive and ready."""
    for b in bystanders:
        b.check()
    harness.assert_ready(proc)
