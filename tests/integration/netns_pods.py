"""Two "pods" as Linux network namespaces joined by a veth pair, for the traffic-capture tests.

Imported by test_netns_e2e.py (the real strait binary) and test_capture_rules.py (a Python stand-in
proxy, so the capture scripts are checked even without a build). Run as a script, it plays the
processes that live inside the namespaces:

    netns_pods.py echo-server PORT [--hello] [--log]
                                                  TCP echo on 0.0.0.0 and [::]; --hello first sends
                                                  "peer=<client address>\\n"; --log prints
                                                  "CONN peer=A:P" per accepted connection and
                                                  "DONE peer=A:P bytes=N sha256=HEX" at its end
    netns_pods.py client HOST PORT IN OUT         send the file IN, half-close, write what comes back to OUT
    netns_pods.py probe HOST PORT                 connect, send a line, print a JSON account of what happened
    netns_pods.py capture-standin PORT...         a minimal transparent proxy: accepts on each PORT
                                                  (0.0.0.0 and [::]), recovers the original destination
                                                  with SO_ORIGINAL_DST and forwards there

Everything a PodPair starts is killed, and its namespaces deleted, when it closes. All traffic stays
inside the namespaces it creates (addresses 10.200.0.0/24 and fd00:200::/64 exist only there).
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEPLOY = os.path.join(REPO, "deploy")
PROXY_UID = 1337
PROXY_GID = 1337

A_ADDR4, B_ADDR4 = "10.200.0.1", "10.200.0.2"
A_ADDR6, B_ADDR6 = "fd00:200::1", "fd00:200::2"


# ---------------------------------------------------------------------------------------------------
# The pytest side.

def unavailable_reason():
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables): run as root, e.g. sudo /usr/bin/python3 -m pytest"
    for tool in ("ip", "setpriv"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (Debian: iproute2, util-linux)"
    name = f"strait-probe-{os.getpid()}"
    try:
        r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"'ip netns' is unavailable: {e}"
    if r.returncode != 0:
        return f"'ip netns add' failed here (no permission to create network namespaces?): {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return None


def capture_tool_missing(backend):
    """None when the backend's command line tool is here, else why not."""
    tool = {"iptables": "iptables", "nftables": "nft"}[backend]
    if shutil.which(tool) is None:
        return f"'{tool}' is not installed (deploy/install-deps.sh test installs it)"
    return None


def readable_by(path, uid, gid):
    """True when uid/gid can read (and, for an executable, run) path: every parent directory must be
    searchable. Checked by actually trying as that user."""
    r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "test", "-r", path],
                       capture_output=True, timeout=10)
    return r.returncode == 0


def exposed_copy(path, tmpdirs):
    """A copy of path in a fresh world-readable directory, for a program run as the proxy's uid when
    the repository itself is not readable by that uid (e.g. under /root)."""
    d = tempfile.mkdtemp(prefix="strait-netns-")
    tmpdirs.append(d)
    os.chmod(d, 0o755)
    dst = os.path.join(d, os.path.basename(path))
    shutil.copy2(path, dst)
    os.chmod(dst, 0o755)
    return dst


class PodPair:
    """Namespaces A (10.200.0.1, fd00:200::1) and B (10.200.0.2, fd00:200::2), one veth between them.

    Use as a context manager: leaving it kills every process started through it (and anything else
    left in its namespaces, which only it created) and deletes both namespaces."""

    def __init__(self, tag):
        pid = os.getpid()
        self.a = f"strait-{tag}-a-{pid}"
        self.b = f"strait-{tag}-b-{pid}"
        self.procs = []
        self.tmpdirs = []
        self.logdir = tempfile.mkdtemp(prefix=f"strait-{tag}-logs-")
        self._created = []

    # -- setup and teardown ------------------------------------------------------------------------
    def __enter__(self):
        try:
            for ns in (self.a, self.b):
                self.sh(["ip", "netns", "add", ns])
                self._created.append(ns)
            # The veth is created inside A with its peer moved straight into B: it never appears in
            # the machine's own namespace.
            self.sh(["ip", "-n", self.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                     "netns", self.b])
            for ns, a4, a6 in ((self.a, A_ADDR4, A_ADDR6), (self.b, B_ADDR4, B_ADDR6)):
                self.sh(["ip", "-n", ns, "link", "set", "lo", "up"])
                self.sh(["ip", "-n", ns, "addr", "add", f"{a4}/24", "dev", "eth0"])
                self.sh(["ip", "-n", ns, "-6", "addr", "add", f"{a6}/64", "dev", "eth0", "nodad"])
                self.sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # each was started in its own session
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for ns in self._created:
            # Anything still inside a namespace this object created was started by this test.
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._created = []
        for d in self.tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
        self.tmpdirs = []

    # -- running things ----------------------------------------------------------------------------
    @staticmethod
    def sh(cmd, timeout=30, check=True):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
        return r

    def run(self, ns, cmd, timeout=30, check=True):
        return self.sh(["ip", "netns", "exec", ns, *cmd], timeout=timeout, check=check)

    def spawn(self, ns, cmd, name, as_proxy=False):
        """Start cmd in ns, stdout and stderr to <logdir>/<name>.log; as_proxy runs it as 1337:1337."""
        prefix = ["ip", "netns", "exec", ns]
        if as_proxy:
            prefix += ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_GID}", "--clear-groups"]
        log_path = os.path.join(self.logdir, f"{name}.log")
        log = open(log_path, "wb")
        p = subprocess.Popen(prefix + cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        log.close()
        p.log_path = log_path
        p.name = name
        self.procs.append(p)
        return p

    def log_of(self, p):
        with open(p.log_path, "r", errors="replace") as f:
            return f.read()

    def wait_log(self, p, needle, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_of(p)
            if needle in text:
                return text
            if p.poll() is not None:
                raise AssertionError(f"{p.name} exited {p.returncode} before printing {needle!r}:\n{text}")
            time.sleep(0.05)
        raise AssertionError(f"{p.name} did not print {needle!r} within {timeout}s:\n{self.log_of(p)}")

    def helper(self):
        """Path of this file, readable by the proxy's uid."""
        me = os.path.abspath(__file__)
        if readable_by(me, PROXY_UID, PROXY_GID):
            return me
        return exposed_copy(me, self.tmpdirs)

    def capture(self, ns, backend, *args):
        script = os.path.join(DEPLOY, {"iptables": "strait-iptables.sh", "nftables": "strait-nftables.sh"}[backend])
        return self.run(ns, [script, *args])

    def echo_server(self, ns, port, hello=False, log=False):
        p = self.spawn(ns, [sys.executable, self.helper(), "echo-server", str(port)] + (["--hello"] if hello else [])
                       + (["--log"] if log else []), f"echo-{ns}-{port}")
        self.wait_log(p, "READY")
        return p

    def echo_connections(self, p):
        """For an echo server started with log=True: ([peer of each accepted connection],
        [{"peer", "bytes", "sha256"} of each finished one])."""
        conns, done = [], []
        for line in self.log_of(p).splitlines():
            if line.startswith("CONN "):
                conns.append(line.split("peer=", 1)[1].strip())
            elif line.startswith("DONE "):
                f = dict(kv.split("=", 1) for kv in line.split()[1:])
                done.append({"peer": f["peer"], "bytes": int(f["bytes"]), "sha256": f["sha256"]})
        return conns, done

    def client(self, ns, host, port, payload, timeout=60, as_proxy=False):
        """Send payload from ns to host:port with a half-close; return what came back."""
        d = tempfile.mkdtemp(prefix="strait-client-")
        self.tmpdirs.append(d)
        os.chmod(d, 0o777)
        src, dst = os.path.join(d, "in"), os.path.join(d, "out")
        with open(src, "wb") as f:
            f.write(payload)
        os.chmod(src, 0o644)
        cmd = ["ip", "netns", "exec", ns]
        if as_proxy:
            cmd += ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_GID}", "--clear-groups"]
        cmd += [sys.executable, self.helper(), "client", host, str(port), src, dst]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"client {host}:{port} from {ns} failed ({r.returncode}): {r.stdout}{r.stderr}")
        with open(dst, "rb") as f:
            return f.read()

    def probe(self, ns, host, port, timeout=20):
        r = self.run(ns, [sys.executable, self.helper(), "probe", host, str(port)], timeout=timeout)
        return json.loads(r.stdout)


# ---------------------------------------------------------------------------------------------------
# The processes inside the namespaces.

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same number on SOL_IPV6


def _listen(port):
    socks = []
    for fam, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(128)
        socks.append(s)
    return socks


def _serve(socks, handler):
    for s in socks:
        threading.Thread(target=_accept_loop, args=(s, handler), daemon=True).start()


def _accept_loop(sock, handler):
    while True:
        conn, peer = sock.accept()
        threading.Thread(target=handler, args=(conn, peer, sock), daemon=True).start()


_print_lock = threading.Lock()


def _log_line(line):
    with _print_lock:
        print(line, flush=True)


def _echo(conn, peer, _lsock, hello, log=False):
    who = f"{peer[0]}:{peer[1]}"
    if log:
        _log_line(f"CONN peer={who}")
    digest, count = hashlib.sha256(), 0
    try:
        with conn:
            if hello:
                conn.sendall(f"peer={peer[0]}\n".encode())
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                if log:
                    digest.update(data)
                    count += len(data)
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
    finally:
        if log:
            _log_line(f"DONE peer={who} bytes={count} sha256={digest.hexdigest()}")


def original_dst(conn):
    if conn.family == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack("!H", raw[2:4])[0]
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]


def _pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Standin:
    """Transparent forwarding, like strait's passthrough clusters. Logs one line per connection. It
    refuses connections whose original destination is one of its own ports (a direct connection to a
    capture port, or a capture loop) and stops accepting after 200 connections, so a broken rule set
    shows up as wrong counts rather than a runaway."""

    def __init__(self, ports):
        self.ports = set(ports)
        self.count = 0
        self.lock = threading.Lock()

    def log(self, line):
        with self.lock:
            print(line, flush=True)

    def handle(self, conn, peer, lsock):
        lport = lsock.getsockname()[1]
        with self.lock:
            self.count += 1
            n = self.count
        try:
            host, port = original_dst(conn)
        except OSError as e:
            self.log(f"NOORIG lport={lport} peer={peer[0]}:{peer[1]} err={e}")
            conn.close()
            return
        if n > 200 or port in self.ports:
            self.log(f"REFUSED lport={lport} peer={peer[0]}:{peer[1]} orig={host}:{port}")
            conn.close()
            return
        self.log(f"ACCEPT lport={lport} peer={peer[0]}:{peer[1]} orig={host}:{port}")
        try:
            up = socket.create_connection((host, port), timeout=5)
            up.settimeout(None)
        except OSError as e:
            self.log(f"CONNECT_FAIL orig={host}:{port} err={e}")
            conn.close()
            return
        t = threading.Thread(target=_pump, args=(up, conn), daemon=True)
        t.start()
        _pump(conn, up)
        t.join()
        conn.close()
        up.close()


def _main(argv):
    role = argv[0]
    if role == "echo-server":
        hello = "--hello" in argv[2:]
        log = "--log" in argv[2:]
        _serve(_listen(int(argv[1])), lambda c, p, s: _echo(c, p, s, hello, log))
        print("READY", flush=True)
        threading.Event().wait()
    elif role == "capture-standin":
        ports = [int(x) for x in argv[1:]]
        st = _Standin(ports)
        for port in ports:
            _serve(_listen(port), st.handle)
        print(f"READY uid={os.getuid()} gid={os.getgid()}", flush=True)
        threading.Event().wait()
    elif role == "client":
        host, port, src, dst = argv[1], int(argv[2]), argv[3], argv[4]
        with open(src, "rb") as f:
            payload = f.read()
        s = socket.create_connection((host, port), timeout=30)
        s.settimeout(30)

        def send():
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=send, daemon=True)
        t.start()
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
        t.join(30)
        s.close()
        with open(dst, "wb") as f:
            f.write(b"".join(chunks))
        print(f"sent {len(payload)} received {sum(map(len, chunks))}")
    elif role == "probe":
        host, port = argv[1], int(argv[2])
        out = {"connected": False, "data": "", "error": None}
        try:
            s = socket.create_connection((host, port), timeout=5)
            out["connected"] = True
            s.settimeout(10)
            s.sendall(b"probe\n")
            s.shutdown(socket.SHUT_WR)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            out["data"] = data.decode(errors="replace")
            s.close()
        except OSError as e:
            out["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(out))
    else:
        sys.exit(f"unknown role {role!r}")


if __name__ == "__main__":
    _main(sys.argv[1:])


# ---------------------------------------------------------------------------------------------------
# The admin of the strait in a pod (both netns end-to-end tests use these).

def admin(p, ns, path, timeout=5, method="GET"):
    """(status, body) of the admin of the strait in ns."""
    r = p.run(ns, ["curl", "-sS", "-m", str(timeout), "-X", method, "-o", "-", "-w", "\n%{http_code}",
                   f"http://127.0.0.1:15000{path}"], timeout=timeout + 5, check=False)
    if r.returncode != 0:
        return 0, r.stderr
    body, _, code = r.stdout.rpartition("\n")
    return int(code), body


def stats(p, ns):
    code, body = admin(p, ns, "/stats")
    assert code == 200, f"GET /stats in {ns}: {code} {body}"
    out = {}
    for line in body.splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.strip().lstrip("-").isdigit():
            out[name.strip()] = int(value)
    return out


def wait_stats(p, ns, check, what, timeout=10.0):
    """Poll /stats until check(stats) holds; fail naming what and showing the relevant stats."""
    deadline = time.monotonic() + timeout
    s = {}
    while time.monotonic() < deadline:
        s = stats(p, ns)
        if check(s):
            return s
        time.sleep(0.1)
    shown = "\n".join(f"  {k}: {v}" for k, v in sorted(s.items()) if k.startswith(("listener.", "cluster.")))
    raise AssertionError(f"{ns}: {what} did not hold within {timeout}s; listener/cluster stats:\n{shown}")


def http_server(p, ns, port, ident):
    """A python http.server in ns on `port` serving /id -> `ident`; returns its process once it answers
    on the pod's loopback (never captured: the rules return -o lo)."""
    d = tempfile.mkdtemp(prefix="strait-pod-http-")
    p.tmpdirs.append(d)
    os.chmod(d, 0o755)
    with open(os.path.join(d, "id"), "w") as f:
        f.write(ident)
    os.chmod(os.path.join(d, "id"), 0o644)
    proc = p.spawn(ns, [sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0", "--directory", d],
                   f"http-{ns}-{port}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = p.run(ns, ["curl", "-sS", "-m", "2", f"http://127.0.0.1:{port}/id"], check=False)
        if r.returncode == 0 and r.stdout == ident:
            return proc
        time.sleep(0.1)
    raise AssertionError(f"http server {ident} in {ns} not ready:\n{p.log_of(proc)}")


def wait_admin_ready(p, ns, proc, timeout=20.0):
    """Wait until the admin of the strait `proc` (started in ns) answers /ready 200; fail with its log
    when it exits or stays unready."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"strait in {ns} exited {proc.returncode}:\n{p.log_of(proc)}")
        last = admin(p, ns, "/ready", timeout=2)
        if last[0] == 200:
            return proc
        time.sleep(0.1)
    raise AssertionError(f"strait in {ns} not ready within {timeout}s (last /ready: {last}):\n{p.log_of(proc)}")
