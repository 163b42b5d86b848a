"""Certificates for the TLS tests, made with certs/strait-ca.sh (the openssl CLI underneath).

make_root(dir) makes a mesh root CA; make_workload(ca_dir, out_dir, ns, sa) issues a SPIFFE workload
certificate (out_dir/cert-chain.pem, key.pem, root-cert.pem); cert_info(path) reads a certificate back.
Standard library only.
"""

from __future__ import annotations

import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

CA_SCRIPT = Path(__file__).resolve().parent.parent.parent / "certs" / "strait-ca.sh"


def _run(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def ca_tool(*args: str) -> str:
    """Runs certs/strait-ca.sh with `args`; returns its stdout, raises RuntimeError when it fails."""
    return _run(["bash", str(CA_SCRIPT), *[str(a) for a in args]])


def make_root(dir: str | Path, trust_domain: str = "cluster.local", *, days: int | None = None,
              rsa: bool = False) -> Path:
    """Makes a root CA in `dir` (root-cert.pem, root-key.pem); returns the path of root-cert.pem."""
    args = ["root", "--dir", str(dir), "--trust-domain", trust_domain]
    if days is not None:
        args += ["--days", str(days)]
    if rsa:
        args.append("--rsa")
    ca_tool(*args)
    return Path(dir) / "root-cert.pem"


def make_intermediate(ca_dir: str | Path, out_dir: str | Path, *, days: int | None = None) -> Path:
    """Makes an intermediate CA signed by the root in `ca_dir`; returns `out_dir`."""
    args = ["intermediate", "--dir", str(ca_dir), "--out", str(out_dir)]
    if days is not None:
        args += ["--days", str(days)]
    ca_tool(*args)
    return Path(out_dir)


def make_workload(ca_dir: str | Path, out_dir: str | Path, ns: str, sa: str, trust_domain: str | None = None,
                  seconds: int | None = None, days: int | None = None, not_before_offset: int | None = None,
                  rsa: bool = False, dns: list[str] | None = None,
                  intermediate_dir: str | Path | None = None) -> dict[str, Path]:
    """Issues spiffe://TD/ns/NS/sa/SA for a workload into `out_dir`, signed by the root in `ca_dir` (or by
    the intermediate in `intermediate_dir`). trust_domain defaults to the root's. Returns the paths:
    {"cert": cert-chain.pem, "key": key.pem, "root": root-cert.pem}."""
    args = ["workload", "--dir", str(ca_dir), "--out", str(out_dir), "--ns", ns, "--sa", sa]
    if trust_domain is not None:
        args += ["--trust-domain", trust_domain]
    if seconds is not None:
        args += ["--seconds", str(seconds)]
    if days is not None:
        args += ["--days", str(days)]
    if not_before_offset is not None:
        args += ["--not-before-offset-seconds", str(not_before_offset)]
    if rsa:
        args.append("--rsa")
    for name in dns or []:
        args += ["--dns", name]
    if intermediate_dir is not None:
        args += ["--ca-dir", str(intermediate_dir)]
    ca_tool(*args)
    out = Path(out_dir)
    return {"cert": out / "cert-chain.pem", "key": out / "key.pem", "root": out / "root-cert.pem"}


def make_pki(base: str | Path, **workloads: tuple[str, str]) -> dict:
    """A mesh root in base/ca and one workload certificate per keyword (name=(namespace, service account)),
    issued into base/<name>. Returns {"root": root-cert path, name: make_workload's paths, ...}."""
    base = Path(base)
    out: dict = {"root": make_root(base / "ca")}
    for name, (ns, sa) in workloads.items():
        out[name] = make_workload(base / "ca", base / name, ns, sa)
    return out


UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def upstream_mtls(root: str | Path, workload: dict, peer_uri: str) -> dict:
    """A cluster's transport_socket: mTLS with `workload`'s certificate, the peer checked against `root` and
    its URI SAN `peer_uri`."""
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": UPSTREAM_TLS, "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(workload["cert"])},
                                  "private_key": {"filename": str(workload["key"])}}],
            "validation_context": {"trusted_ca": {"filename": str(root)},
                                   "match_typed_subject_alt_names": [
                                       {"san_type": "URI", "matcher": {"exact": peer_uri}}]}}}}


def _openssl_time(text: str) -> datetime:
    # openssl's default form: "Dec  3 08:04:33 2026 GMT"
    return datetime.strptime(text.strip(), "%b %d %H:%M:%S %Y GMT").replace(tzinfo=timezone.utc)


def cert_info(path: str | Path) -> dict:
    """The first certificate in `path`: {"serial": lower-case hex as `openssl x509 -serial` prints it,
    "sans": [URI SANs], "dns_sans": [DNS SANs], "subject": RFC 2253 string, "not_before": datetime,
    "not_after": datetime} (datetimes in UTC, timezone-aware)."""
    out = _run(["openssl", "x509", "-in", str(path), "-noout", "-nameopt", "RFC2253", "-subject", "-serial",
                "-startdate", "-enddate", "-ext", "subjectAltName"])
    info: dict = {"sans": [], "dns_sans": []}
    for line in out.splitlines():
        if line.startswith("subject="):
            info["subject"] = line[len("subject="):].strip()
        elif line.startswith("serial="):
            info["serial"] = line[len("serial="):].strip().lower()
        elif line.startswith("notBefore="):
            info["not_before"] = _openssl_time(line[len("notBefore="):])
        elif line.startswith("notAfter="):
            info["not_after"] = _openssl_time(line[len("notAfter="):])
        elif line.startswith(" "):  # the SAN values under "X509v3 Subject Alternative Name:"
            for entry in re.split(r",\s*", line.strip()):
                if entry.startswith("URI:"):
                    info["sans"].append(entry[len("URI:"):])
                elif entry.startswith("DNS:"):
                    info["dns_sans"].append(entry[len("DNS:"):])
    return info


def verify(root: str | Path, cert: str | Path, untrusted: str | Path | None = None) -> tuple[bool, str]:
    """`openssl verify -CAfile root [-untrusted chain] cert`: (ok, output)."""
    args = ["openssl", "verify", "-CAfile", str(root)]
    if untrusted is not None:
        args += ["-untrusted", str(untrusted)]
    done = subprocess.run([*args, str(cert)], capture_output=True, text=True, timeout=60)
    return done.returncode == 0, done.stdout + done.stderr


def key_matches_cert(key: str | Path, cert: str | Path) -> bool:
    """True when the private key in `key` belongs to the first certificate in `cert`."""
    cert_pub = _run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"])
    key_pub = _run(["openssl", "pkey", "-in", str(key), "-pubout"])
    return cert_pub == key_pub
