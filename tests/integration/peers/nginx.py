"""Debian's nginx as an upstream: a generated config in a temporary directory, bound to 127.0.0.1 on a
free port (HTTP/1.1) and optionally a second one (h2c, prior knowledge), run in the foreground and
stopped by its PID.

Locations: `/` -> 200 "nginx ok\\n"; `/files/<name>` -> files written with add_file();
`/status/404`, `/status/503` -> that status.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """\
{user}worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} reuseport;
{h2_listen}
        location = / {{ return 200 "nginx ok\\n"; }}
        location /files/ {{ alias {dir}/www/; }}
        location = /status/404 {{ return 404 "status 404\\n"; }}
        location = /status/503 {{ return 503 "status 503\\n"; }}
    }}
}}
"""


def available() -> bool:
    return os.path.isfile(NGINX) and os.access(NGINX, os.X_OK)


class Nginx:
    def __init__(self, workdir: Path, h2: bool = False, start_timeout: float = 10.0):
        self.dir = Path(workdir)
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.dir / "www").mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        last_err = ""
        for _ in range(3):  # a free port can be taken between the probe and nginx's bind: retry
            self.port = harness.free_port()
            self.h2_port = harness.free_port() if h2 else None
            h2_listen = f"        listen 127.0.0.1:{self.h2_port} http2;" if h2 else ""
            conf = self.dir / "nginx.conf"
            # As root, nginx's workers would run as nobody and could not read a 0700 temporary directory.
            user = "user root;\n" if os.geteuid() == 0 else ""
            conf.write_text(CONFIG.format(dir=self.dir, port=self.port, h2_listen=h2_listen, user=user))
            self.log = open(self.dir / "stderr.log", "ab")
            self.proc = subprocess.Popen([NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"),
                                          "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=self.log,
                                         stderr=self.log)
            deadline = time.monotonic() + start_timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if harness.is_listening(self.port) and (not h2 or harness.is_listening(self.h2_port)):
                    return
                time.sleep(0.05)
            last_err = self.error_log()
            self.close()
        raise RuntimeError(f"nginx did not start: {last_err}")

    def add_file(self, name: str, data: bytes) -> str:
        (self.dir / "www" / name).write_bytes(data)
        return f"/files/{name}"

    def error_log(self) -> str:
        out = ""
        for name in ("error.log", "stderr.log"):
            try:
                out += (self.dir / name).read_text(errors="replace")[-4000:]
            except OSError:
                pass
        return out

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # nginx's master stops its workers on SIGTERM; SIGKILL only the master's PID as a last resort
            # (its worker then exits on its own when it sees the master gone).
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                workers = harness.child_pids(self.proc.pid)
                self.proc.kill()
                self.proc.wait(timeout=5)
                for pid in workers:
                    harness.kill_pid(pid)
        try:
            self.log.close()
        except (AttributeError, OSError):
            pass


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        n = Nginx(Path(d), h2=True)
        print(f"nginx on 127.0.0.1:{n.port} (h2c on {n.h2_port})")
        with socket.create_connection(("127.0.0.1", n.port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            print(s.recv(1000))
        n.close()
