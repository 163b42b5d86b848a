"""Helpers for Strait's integration tests: bootstrap files, the strait process, its admin API,
and small upstream servers running in threads.

Only the standard library is used here (pytest is imported for pytest.fail). Every loop is bounded by
a deadline, every socket has a timeout, and every process started here is tracked and killed by PID.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------------
# Locations


def strait_bin_path() -> Path:
    env = os.environ.get("STRAIT_BIN")
    return Path(env) if env else REPO_ROOT / "build" / "proxy" / "strait"


def strait_bin() -> str:
    """The binary under test; fails the calling test (never skips) when it is missing."""
    path = strait_bin_path()
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"strait binary not found or not executable at {path}; build it "
            f"(cmake -S {REPO_ROOT} -B {REPO_ROOT / 'build'} && cmake --build {REPO_ROOT / 'build'}) "
            f"or point STRAIT_BIN at it",
            pytrace=False,
        )
    return str(path)


def shared_dir() -> Path:
    env = os.environ.get("STRAIT_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


# ---------------------------------------------------------------------------------------------------
# A small YAML emitter (block style; every string double-quoted, which YAML reads as JSON strings)

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _yaml_key(key: str) -> str:
    if _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML_WORDS:
        return key
    return json.dumps(key)


def _yaml_scalar(value) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"cannot write {type(value).__name__} to YAML")


def _yaml_lines(obj, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            k = _yaml_key(str(key))
            if isinstance(value, (dict, list)) and value:
                lines.append(f"{pad}{k}:")
                lines.extend(_yaml_lines(value, indent + 2))
            elif isinstance(value, dict):
                lines.append(f"{pad}{k}: {{}}")
            elif isinstance(value, list):
                lines.append(f"{pad}{k}: []")
            else:
                lines.append(f"{pad}{k}: {_yaml_scalar(value)}")
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                sub = _yaml_lines(item, indent + 2)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines.extend(sub[1:])
            elif isinstance(item, dict):
                lines.append(f"{pad}- {{}}")
            elif isinstance(item, list):
                lines.append(f"{pad}- []")
            else:
                lines.append(f"{pad}- {_yaml_scalar(item)}")
    else:
        lines.append(f"{pad}{_yaml_scalar(obj)}")
    return lines


def to_yaml(obj) -> str:
    return "\n".join(_yaml_lines(obj, 0)) + "\n"


# ---------------------------------------------------------------------------------------------------
# Bootstrap builders (Envoy v3 bootstrap shape)


def socket_address(port: int, address: str = LOOPBACK) -> dict:
    return {"socket_address": {"address": address, "port_value": port}}


def tcp_proxy_listener(name: str, cluster: str, stat_prefix: str | None = None,
                       idle_timeout: str | None = None, port: int = 0,
                       address: str = LOOPBACK) -> dict:
    proxy = {"@type": TCP_PROXY_TYPE, "stat_prefix": stat_prefix or name, "cluster": cluster}
    if idle_timeout is not None:
        proxy["idle_timeout"] = idle_timeout
    return {
        "name": name,
        "address": socket_address(port, address),
        "filter_chains": [{"filters": [{"name": TCP_PROXY_FILTER, "typed_config": proxy}]}],
    }


def static_cluster(name: str, ports: Iterable[int], connect_timeout: str = "1s",
                   lb_policy: str = "ROUND_ROBIN", address: str = LOOPBACK) -> dict:
    endpoints = [{"endpoint": {"address": socket_address(p, address)}} for p in ports]
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "lb_policy": lb_policy,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    }


def bootstrap(listeners: list[dict], clusters: list[dict], node_id: str = "strait-it",
              node_cluster: str = "strait-tests", admin_port: int = 0) -> dict:
    return {
        "node": {"id": node_id, "cluster": node_cluster},
        "admin": {"address": socket_address(admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def write_bootstrap(directory: Path, config: dict, name: str = "bootstrap.yaml") -> Path:
    """Writes `config` as YAML (or as JSON when `name` ends in .json) and returns the path."""
    path = Path(directory) / name
    text = json.dumps(config, indent=2) + "\n" if name.endswith(".json") else to_yaml(config)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------------
# Admin client


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AdminResponse:
    def __init__(self, status: int, body: bytes, headers):
        self.status = status
        self.body = body
        self.headers = headers

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"AdminResponse({self.status}, {self.text[:200]!r})"


def http_request(base_url: str, path: str, method: str = "GET", timeout: float = 5.0) -> AdminResponse:
    """GET/POST base_url+path; returns the status and body for any HTTP status (no exception on 4xx)."""
    data = b"" if method == "POST" else None
    req = urllib.request.Request(base_url + path, data=data, method=method)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return AdminResponse(resp.status, resp.read(), resp.headers)
    except urllib.error.HTTPError as err:
        body = err.read() if err.fp is not None else b""
        return AdminResponse(err.code, body, err.headers)


def parse_stats(text: str) -> dict[str, int]:
    """`name: value` lines into a dict; lines whose value is not an integer are left out."""
    stats: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if not sep:
            continue
        try:
            stats[name.strip()] = int(value.strip())
        except ValueError:
            continue
    return stats


def parse_host_port(text: str) -> tuple[str, int]:
    text = text.strip()
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ValueError(f"not host:port: {text!r}")
    return host, int(port)


# ---------------------------------------------------------------------------------------------------
# The strait process

_LIVE_PIDS: dict[int, subprocess.Popen] = {}
_LIVE_LOCK = threading.Lock()


def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE_PIDS.values())
    for proc in procs:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


atexit.register(_kill_leftovers)


class StraitProcess:
    """One strait process. Its stdout/stderr go to files under `workdir`."""

    _counter = 0

    def __init__(self, workdir: Path, args: list[str], tag: str = "strait"):
        StraitProcess._counter += 1
        self.workdir = Path(workdir)
        self.tag = f"{tag}-{StraitProcess._counter}"
        self.args = args
        self.log_path = self.workdir / f"{self.tag}.stderr.log"
        self.out_path = self.workdir / f"{self.tag}.stdout.log"
        self.admin_path: Path | None = None
        self.admin_url: str | None = None
        self.expected_exit = False
        self.signalled = False
        self.started_at = time.monotonic()
        with open(self.log_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         cwd=str(self.workdir))
        with _LIVE_LOCK:
            _LIVE_PIDS[self.proc.pid] = self.proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def logs(self, limit: int = 40000) -> str:
        parts = []
        paths = [("stdout", self.out_path), ("stderr", self.log_path)]
        paths += [("sanitizer report", f) for f in sanitizer_report_files(self.pid)]
        for label, path in paths:
            try:
                data = path.read_bytes()
            except OSError:
                data = b""
            text = data.decode("utf-8", errors="replace")
            if len(text) > limit:
                text = f"... ({len(text) - limit} chars cut) ...\n" + text[-limit:]
            parts.append(f"----- {self.tag} {label} ({path}) -----\n{text}")
        return "\n".join(parts)

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\ncommand: {' '.join(self.args)}\n{self.logs()}", pytrace=False)

    # --- startup -----------------------------------------------------------------------------------

    def wait_admin(self, timeout: float = 15.0) -> str:
        """Waits for the admin address file and returns the admin base URL."""
        assert self.admin_path is not None, "started without --admin-address-path"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                self.fail(f"strait exited with {self.proc.returncode} before writing {self.admin_path}")
            try:
                host, port = parse_host_port(self.admin_path.read_text())
            except (OSError, ValueError):
                time.sleep(0.02)
                continue
            if ":" in host:
                host = f"[{host}]"
            self.admin_url = f"http://{host}:{port}"
            return self.admin_url
        self.fail(f"no admin address in {self.admin_path} after {timeout}s")
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        if self.admin_url is None:
            self.wait_admin(timeout)
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                self.fail(f"strait exited with {self.proc.returncode} before /ready answered 200")
            try:
                last = self.get("/ready", timeout=1.0)
                if last.status == 200:
                    return
            except OSError as err:
                last = err
            time.sleep(0.05)
        self.fail(f"/ready not 200 after {timeout}s (last: {last!r})")

    # --- admin -------------------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 5.0) -> AdminResponse:
        assert self.admin_url, "admin address not known yet"
        return http_request(self.admin_url, path, "GET", timeout)

    def post(self, path: str, timeout: float = 5.0) -> AdminResponse:
        assert self.admin_url, "admin address not known yet"
        return http_request(self.admin_url, path, "POST", timeout)

    def stats(self, filter_re: str | None = None) -> dict[str, int]:
        path = "/stats" if filter_re is None else "/stats?filter=" + urllib.request.quote(filter_re)
        resp = self.get(path)
        assert resp.status == 200, f"GET {path}: {resp!r}"
        return parse_stats(resp.text)

    def wait_stats(self, predicate: Callable[[dict[str, int]], bool], timeout: float = 5.0) -> dict[str, int]:
        """Polls /stats until predicate(stats) holds; returns the last stats either way."""
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while not predicate(stats) and time.monotonic() < deadline:
            time.sleep(0.05)
            stats = self.stats()
        return stats

    def listener_statuses(self) -> list[dict]:
        resp = self.get("/listeners?format=json")
        assert resp.status == 200, f"GET /listeners?format=json: {resp!r}"
        return resp.json().get("listener_statuses", [])

    def listener_port(self, name: str) -> int:
        for status in self.listener_statuses():
            if status.get("name") == name:
                return int(status["local_address"]["socket_address"]["port_value"])
        self.fail(f"listener {name!r} not in /listeners?format=json")
        raise AssertionError("unreachable")

    # --- process -----------------------------------------------------------------------------------

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc/PID/status")

    def signal(self, sig: int) -> None:
        self.signalled = True
        self.expected_exit = True
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        """Waits for the process to exit; returns its exit code, or None if it is still running."""
        self.expected_exit = True
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit code."""
        if self.alive():
            self.signalled = True
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        with _LIVE_LOCK:
            _LIVE_PIDS.pop(self.proc.pid, None)
        return self.proc.returncode


def sanitizer_report_files(pid: int | None = None) -> list[Path]:
    """The report files ASan/UBSan wrote (tests/run-sanitized.sh points their log_path at
    STRAIT_SANITIZER_LOG_DIR/report, so each process writes report.<pid>); all of them, or one process's."""
    where = os.environ.get("STRAIT_SANITIZER_LOG_DIR")
    if not where:
        return []
    pattern = f"report.{pid}" if pid is not None else "report.*"
    return sorted(p for p in Path(where).glob(pattern) if p.stat().st_size > 0)


def sanitizer_report(pid: int) -> str:
    """What the sanitizers reported about process `pid` (empty when nothing, or not a sanitized run)."""
    return "".join(p.read_text(errors="replace") for p in sanitizer_report_files(pid))


def strait_args(config: Path | None, admin_path: Path | None, concurrency: int | None = 2,
                drain_time_s: int | None = 1, log_level: str | None = "debug",
                extra: list[str] | None = None) -> list[str]:
    args = [strait_bin()]
    if config is not None:
        args += ["-c", str(config)]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    if admin_path is not None:
        args += ["--admin-address-path", str(admin_path)]
    if drain_time_s is not None:
        args += ["--drain-time-s", str(drain_time_s)]
    if log_level is not None:
        args += ["-l", log_level]
    return args + list(extra or [])


def run_strait(args: list[str], timeout: float = 20.0, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs strait to completion (e.g. --mode validate); output is text, stdout and stderr apart."""
    try:
        return subprocess.run([strait_bin()] + args, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, cwd=str(cwd) if cwd else None)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"strait {' '.join(args)} did not exit within {timeout}s "
                    f"(stdout: {err.stdout!r}, stderr: {err.stderr!r})", pytrace=False)
        raise


# ---------------------------------------------------------------------------------------------------
# Ports and client sockets


def free_port() -> int:
    """A port that was free a moment ago (bind to port 0, then close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port with no listener (connects are refused)."""
    return free_port()


def port_is_free(port: int, address: str = LOOPBACK) -> bool:
    """True if a listener could bind the port now (SO_REUSEADDR, as servers set it, so that
    TIME_WAIT leftovers of earlier connections do not count as use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
            return True
        except OSError:
            return False


def is_listening(port: int, address: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def connect(port: int, timeout: float = 10.0, address: str = LOOPBACK) -> socket.socket:
    s = socket.create_connection((address, port), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_exact(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    chunks = []
    got = 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"received {got} of {n} bytes in {timeout}s")
        sock.settimeout(left)
        data = sock.recv(min(n - got, 1 << 20))
        if not data:
            raise ConnectionError(f"EOF after {got} of {n} bytes")
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def recv_until_eof(sock: socket.socket, timeout: float = 10.0, limit: int = 256 * MIB) -> bytes:
    """Reads until EOF (raises TimeoutError at the deadline, ConnectionResetError on RST)."""
    deadline = time.monotonic() + timeout
    chunks = []
    got = 0
    while got <= limit:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no EOF within {timeout}s ({got} bytes read)")
        sock.settimeout(left)
        data = sock.recv(1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        got += len(data)
    raise AssertionError(f"more than {limit} bytes before EOF")


def wait_closed(sock: socket.socket, timeout: float) -> tuple[str, float]:
    """Waits until the peer closes or resets `sock`, discarding data. Returns (how, seconds), where
    how is 'eof', 'reset' or 'timeout'."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout", time.monotonic() - start
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return "timeout", time.monotonic() - start
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            return "reset", time.monotonic() - start
        if not data:
            return "eof", time.monotonic() - start


class StreamSender(threading.Thread):
    """Sends `total` pseudo-random bytes (in `chunk`-sized pieces, optionally throttled to `rate`
    bytes/s), hashes them, then shuts down the write side. Progress is in `.sent`."""

    def __init__(self, sock: socket.socket, total: int, chunk: int = 256 * 1024,
                 rate: float | None = None, timeout: float = 120.0, shutdown: bool = True,
                 seed: bytes | None = None):
        super().__init__(daemon=True)
        self.sock = sock
        self.total = total
        self.chunk = chunk
        self.rate = rate
        self.timeout = timeout
        self.do_shutdown = shutdown
        self.sha = hashlib.sha256()
        self.sent = 0
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._block = os.urandom(1 * MIB) if seed is None else seed

    def _piece(self, offset: int, size: int) -> bytes:
        # Pseudo-random stream: a random 1 MiB block rotated by a per-MiB offset, so that no two MiB
        # of the stream are equal and any misordering or loss changes the hash.
        block = self._block
        mib, pos = divmod(offset, MIB)
        rot = (mib * 7919) % len(block)
        rotated_start = (rot + pos) % len(block)
        out = bytearray()
        while len(out) < size:
            take = min(size - len(out), len(block) - rotated_start)
            out += block[rotated_start:rotated_start + take]
            rotated_start = 0
        return bytes(out)

    def run(self) -> None:
        start = time.monotonic()
        deadline = start + self.timeout
        try:
            while self.sent < self.total:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sent only {self.sent} of {self.total} bytes in {self.timeout}s")
                # Never cross a MiB boundary within one piece (keeps _piece simple and exact).
                size = min(self.chunk, self.total - self.sent, MIB - self.sent % MIB)
                data = self._piece(self.sent, size)
                view = memoryview(data)
                while view:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"sent only {self.sent} of {self.total} bytes in {self.timeout}s")
                    self.sock.settimeout(min(left, 1.0))
                    try:
                        n = self.sock.send(view)
                    except socket.timeout:
                        continue
                    self.sha.update(view[:n])
                    self.sent += n
                    view = view[n:]
                if self.rate:
                    ahead = self.sent / self.rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(min(ahead, 1.0))
            if self.do_shutdown:
                self.sock.shutdown(socket.SHUT_WR)
        except BaseException as err:  # reported to the test through .error
            self.error = err
        finally:
            self.done.set()

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def roundtrip_echo(port: int, total: int, timeout: float = 60.0) -> tuple[int, str, int, str]:
    """Sends `total` bytes through `port` to an echo upstream with a sender thread while this thread
    reads; returns (sent, sent_sha, received, received_sha)."""
    sock = connect(port, timeout=timeout)
    try:
        sender = StreamSender(sock, total, timeout=timeout)
        sender.start()
        sha = hashlib.sha256()
        received = 0
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"received {received} of {total} bytes in {timeout}s")
            sock.settimeout(left)
            data = sock.recv(1 << 20)
            if not data:
                break
            sha.update(data)
            received += len(data)
        sender.join(timeout=max(0.0, deadline - time.monotonic()) + 1)
        if sender.error:
            raise sender.error
        return sender.sent, sender.hexdigest(), received, sha.hexdigest()
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------------
# Upstream test servers (threads)


class TcpServer:
    """A loopback TCP server; each accepted connection is handled in its own thread by handle().
    Lives at most `lifetime` seconds; close() stops it and shuts every connection down."""

    def __init__(self, lifetime: float = 300.0, rcvbuf: int | None = None, backlog: int = 128,
                 host: str = LOOPBACK, port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf is not None:
            # Set before listen() so that accepted sockets inherit it (and skip autotuning).
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            self.sock.bind((host, port))  # host: any 127.0.0.0/8 address (DNS tests use several)
        except OSError:
            self.sock.close()
            raise
        self.host = host
        self.sock.listen(backlog)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.lifetime = lifetime
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.accepts = 0
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        deadline = time.monotonic() + self.lifetime
        while not self.stopped.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            conn.settimeout(self.lifetime)
            with self.lock:
                self.accepts += 1
                self.conns.append(conn)
                t = threading.Thread(target=self._run_handler, args=(conn,), daemon=True)
                self.threads.append(t)
            t.start()

    def _run_handler(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except (OSError, ValueError) as err:
            if not self.stopped.is_set():
                with self.lock:
                    self.errors.append(err)
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def accept_count(self) -> int:
        with self.lock:
            return self.accepts

    def wait_accepts(self, n: int, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while self.accept_count() < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.accept_count()

    def close(self) -> None:
        self.stopped.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
            threads = list(self.threads)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._acceptor.join(timeout=2)
        for t in threads:
            t.join(timeout=2)


class EchoServer(TcpServer):
    """Echoes everything back; closes its side after the client's EOF."""

    def handle(self, conn: socket.socket) -> None:
        while not self.stopped.is_set():
            data = conn.recv(1 << 18)
            if not data:
                conn.shutdown(socket.SHUT_WR)
                return
            conn.sendall(data)


class SinkResult:
    def __init__(self):
        self.received = 0
        self.sha = hashlib.sha256()
        self.data = bytearray()
        self.eof = threading.Event()
        self.eof_at: float | None = None

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


class SinkServer(TcpServer):
    """Reads until EOF (recording a byte count and sha256 per connection), then answers and closes.

    reply: bytes, or a function of the SinkResult returning bytes (default: b"<count> <sha256>\n").
    gate: if given, nothing is read until the event is set (an upstream that stops reading).
    read_chunk/read_delay: read at most read_chunk bytes per recv and sleep read_delay between reads.
    """

    def __init__(self, reply=None, gate: threading.Event | None = None, read_chunk: int = 1 << 18,
                 read_delay: float = 0.0, keep_data: bool = False, **kw):
        self.reply = reply
        self.gate = gate
        self.read_chunk = read_chunk
        self.read_delay = read_delay
        self.keep_data = keep_data
        self.results: list[SinkResult] = []
        super().__init__(**kw)

    def handle(self, conn: socket.socket) -> None:
        result = SinkResult()
        with self.lock:
            self.results.append(result)
        if self.gate is not None:
            deadline = time.monotonic() + self.lifetime
            while not self.gate.wait(0.1):
                if self.stopped.is_set() or time.monotonic() > deadline:
                    return
        while not self.stopped.is_set():
            data = conn.recv(self.read_chunk)
            if not data:
                break
            result.received += len(data)
            result.sha.update(data)
            if self.keep_data:
                result.data += data
            if self.read_delay:
                time.sleep(self.read_delay)
        else:
            return
        result.eof_at = time.monotonic()
        result.eof.set()
        if callable(self.reply):
            answer = self.reply(result)
        elif self.reply is not None:
            answer = self.reply
        else:
            answer = f"{result.received} {result.hexdigest()}\n".encode()
        if answer:
            conn.sendall(answer)
        conn.shutdown(socket.SHUT_WR)

    def result(self, index: int = 0, timeout: float = 5.0) -> SinkResult:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.results) > index:
                    return self.results[index]
            time.sleep(0.01)
        raise AssertionError(f"sink never got connection #{index}")


class ResetServer(TcpServer):
    """Accepts, then closes with SO_LINGER {on, 0}: the peer gets an RST."""

    def handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


class HoldServer(TcpServer):
    """Accepts and keeps the connection open, reading and discarding, until the peer closes."""

    def handle(self, conn: socket.socket) -> None:
        while not self.stopped.is_set():
            if not conn.recv(65536):
                return


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc/PID/task/*/children)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def rss_limit_kib(default_mib: int) -> int:
    return int(os.environ.get("STRAIT_TEST_RSS_LIMIT_MIB", default_mib)) * 1024


# ---------------------------------------------------------------------------------------------------
# HTTP: bootstrap builders for the HTTP connection manager, and small helpers for the HTTP tests
# (test_http*.py, test_grpc.py, test_websocket.py, test_protocol_detection.py; peers in peers/).

HCM_FILTER = "envoy.filters.network.http_connection_manager"
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
ROUTER_FILTER = "envoy.filters.http.router"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_PROTOCOL_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_INSPECTOR = "envoy.filters.listener.http_inspector"
HTTP_INSPECTOR_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TLS_INSPECTOR_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"


def router_filter() -> dict:
    return {"name": ROUTER_FILTER, "typed_config": {"@type": ROUTER_TYPE}}


def route_to(cluster: str, prefix: str = "/", **action) -> dict:
    """A route matching `prefix` that sends to `cluster`; extra RouteAction fields as keywords."""
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, **action}}


def virtual_host(name: str, domains: list[str], routes: list[dict], **extra) -> dict:
    return {"name": name, "domains": list(domains), "routes": list(routes), **extra}


def http_connection_manager(stat_prefix: str, virtual_hosts: list[dict], *, codec_type: str = "AUTO",
                            route_config_name: str = "local_routes", http_filters: list[dict] | None = None,
                            **extra) -> dict:
    """The HCM's typed_config (Envoy v3 shape) with an inline route_config; extra HCM fields as keywords."""
    return {
        "@type": HCM_TYPE,
        "stat_prefix": stat_prefix,
        "codec_type": codec_type,
        "route_config": {"name": route_config_name, "virtual_hosts": virtual_hosts},
        "http_filters": http_filters if http_filters is not None else [router_filter()],
        **extra,
    }


def hcm_filter(typed_config: dict) -> dict:
    return {"name": HCM_FILTER, "typed_config": typed_config}


def http_listener(name: str, stat_prefix: str, virtual_hosts: list[dict], *, port: int = 0,
                  address: str = LOOPBACK, listener_extra: dict | None = None, **hcm_extra) -> dict:
    return {
        "name": name,
        "address": socket_address(port, address),
        "filter_chains": [{"filters": [hcm_filter(http_connection_manager(stat_prefix, virtual_hosts,
                                                                          **hcm_extra))]}],
        **(listener_extra or {}),
    }


def http2_cluster(name: str, ports: Iterable[int], *, http2_options: dict | None = None, **kw) -> dict:
    """A STATIC cluster whose upstream protocol is HTTP/2 (explicit_http_config.http2_protocol_options)."""
    cluster = static_cluster(name, ports, **kw)
    cluster["typed_extension_protocol_options"] = {
        HTTP_PROTOCOL_OPTIONS: {
            "@type": HTTP_PROTOCOL_OPTIONS_TYPE,
            "explicit_http_config": {"http2_protocol_options": dict(http2_options or {})},
        }
    }
    return cluster


def simple_http_config(upstream_port: int, *, cluster: str = "backend", listener: str = "http",
                       stat_prefix: str = "ingress_http", h2_upstream: bool = False,
                       route_action: dict | None = None, connect_timeout: str = "1s",
                       listener_port: int = 0, **hcm_extra) -> dict:
    """One HCM listener, one virtual host `*`, prefix `/` to one cluster of one endpoint."""
    make = http2_cluster if h2_upstream else static_cluster
    vh = virtual_host("all", ["*"], [route_to(cluster, **(route_action or {}))])
    return bootstrap([http_listener(listener, stat_prefix, [vh], port=listener_port, **hcm_extra)],
                     [make(cluster, [upstream_port], connect_timeout=connect_timeout)])


def track(fleet, server):
    """Has the fleet close `server` (anything with close()) at teardown."""
    fleet.servers.append(server)
    return server


def proc_status_kib(pid: int, field: str = "VmHWM") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def run_tool(args: list[str], timeout: float = 60.0, input: bytes | None = None) -> subprocess.CompletedProcess:
    """Runs a client tool (curl, nghttp, h2load, wrk) to completion; fails the test if it hangs (the
    child is killed by subprocess.run on timeout)."""
    try:
        return subprocess.run(args, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{' '.join(args)} did not finish within {timeout}s (stdout: {err.stdout!r:.2000}, "
                    f"stderr: {err.stderr!r:.2000})", pytrace=False)
        raise


def curl(args: list[str], timeout: float = 30.0, input: bytes | None = None) -> subprocess.CompletedProcess:
    """Debian's curl, never through a proxy from the environment."""
    return run_tool(["curl", "-sS", "--noproxy", "*", "--max-time", str(int(timeout))] + list(args),
                    timeout=timeout + 5, input=input)


def stat(stats: dict[str, int], name: str) -> int:
    """A stat's value; fails with the similar names when it is missing."""
    if name in stats:
        return stats[name]
    stem = name.rsplit(".", 1)[0]
    near = sorted(k for k in stats if k.startswith(stem))[:40]
    raise AssertionError(f"stat {name!r} missing; present under {stem!r}: {near}")


def assert_ready(proc) -> None:
    """strait is alive and /ready answers 200."""
    assert proc.alive(), f"strait exited with {proc.proc.returncode}"
    resp = proc.get("/ready", timeout=5)
    assert resp.status == 200, f"/ready: {resp!r}"
