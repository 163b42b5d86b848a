"""certs/strait-ca.sh end to end: a root, workload certificates that `openssl verify` accepts, the SPIFFE
URI SAN, lifetimes in seconds (and already-expired certificates), RSA keys, an intermediate, `show`."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest

import tlsutil


def _text(path) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-text"], capture_output=True,
                          text=True, check=True).stdout


def _cert_count(path) -> int:
    return path.read_text().count("-----BEGIN CERTIFICATE-----")


@pytest.fixture
def root(tmp_path):
    ca = tmp_path / "ca"
    tlsutil.make_root(ca)
    return ca


def test_root_is_a_p256_ca(root):
    text = _text(root / "root-cert.pem")
    assert "CA:TRUE" in text
    assert "Certificate Sign, CRL Sign" in text
    assert "NIST CURVE: P-256" in text
    assert stat.S_IMODE(os.stat(root / "root-key.pem").st_mode) == 0o600
    ok, out = tlsutil.verify(root / "root-cert.pem", root / "root-cert.pem")
    assert ok, out
    # An existing root is not replaced by accident.
    with pytest.raises(RuntimeError, match="exists"):
        tlsutil.make_root(root)


def test_workload_cert_verifies_and_carries_the_spiffe_id(root, tmp_path):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    paths = tlsutil.make_workload(root, tmp_path / "w", "default", "sleep")
    ok, out = tlsutil.verify(paths["root"], paths["cert"])
    assert ok, out
    assert paths["root"].read_bytes() == (root / "root-cert.pem").read_bytes()
    assert _cert_count(paths["cert"]) == 1
    assert tlsutil.key_matches_cert(paths["key"], paths["cert"])
    assert stat.S_IMODE(os.stat(paths["key"]).st_mode) == 0o600

    info = tlsutil.cert_info(paths["cert"])
    assert info["sans"] == ["spiffe://cluster.local/ns/default/sa/sleep"]
    assert info["dns_sans"] == []
    assert info["subject"] == "O=strait"
    assert re.fullmatch(r"[0-9a-f]+", info["serial"]), info["serial"]
    # Default lifetime: one day from now.
    assert info["not_after"] - info["not_before"] == timedelta(days=1)
    assert before <= info["not_before"] <= datetime.now(timezone.utc) + timedelta(seconds=1)

    text = _text(paths["cert"])
    assert "CA:FALSE" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "Digital Signature" in text and "Key Encipherment" not in text
    assert "NIST CURVE: P-256" in text
    # Nothing of the temporary directory is left behind.
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["cert-chain.pem", "key.pem", "root-cert.pem"]


def test_serials_are_random_and_reissue_replaces_the_pair(root, tmp_path):
    first = tlsutil.make_workload(root, tmp_path / "w", "ns1", "sa1")
    serial1 = tlsutil.cert_info(first["cert"])["serial"]
    second = tlsutil.make_workload(root, tmp_path / "w", "ns1", "sa2")
    info2 = tlsutil.cert_info(second["cert"])
    assert info2["serial"] != serial1
    assert info2["sans"] == ["spiffe://cluster.local/ns/ns1/sa/sa2"]
    assert tlsutil.key_matches_cert(second["key"], second["cert"])


def test_trust_domain_and_dns_sans(tmp_path):
    ca = tmp_path / "ca"
    tlsutil.make_root(ca, trust_domain="example.org")
    w = tlsutil.make_workload(ca, tmp_path / "w1", "prod", "api", dns=["api.prod.svc", "*.api.example"])
    info = tlsutil.cert_info(w["cert"])
    assert info["sans"] == ["spiffe://example.org/ns/prod/sa/api"]  # the root's trust domain by default
    assert info["dns_sans"] == ["api.prod.svc", "*.api.example"]
    w = tlsutil.make_workload(ca, tmp_path / "w2", "prod", "api", trust_domain="other.test")
    assert tlsutil.cert_info(w["cert"])["sans"] == ["spiffe://other.test/ns/prod/sa/api"]


def test_seconds_lifetime_expires(root, tmp_path):
    w = tlsutil.make_workload(root, tmp_path / "w", "ns", "sa", seconds=2)
    info = tlsutil.cert_info(w["cert"])
    assert info["not_after"] - info["not_before"] == timedelta(seconds=2)
    ok, out = tlsutil.verify(w["root"], w["cert"])
    assert ok, out
    time.sleep(max(0.0, (info["not_after"] - datetime.now(timezone.utc)).total_seconds()) + 1.5)
    ok, out = tlsutil.verify(w["root"], w["cert"])
    assert not ok
    assert "certificate has expired" in out


def test_already_expired_cert(root, tmp_path):
    w = tlsutil.make_workload(root, tmp_path / "w", "ns", "sa", seconds=3600, not_before_offset=-7200)
    info = tlsutil.cert_info(w["cert"])
    now = datetime.now(timezone.utc)
    assert info["not_after"] < now - timedelta(minutes=59)
    assert info["not_after"] - info["not_before"] == timedelta(hours=1)
    ok, out = tlsutil.verify(w["root"], w["cert"])
    assert not ok
    assert "certificate has expired" in out


def test_not_yet_valid_cert(root, tmp_path):
    w = tlsutil.make_workload(root, tmp_path / "w", "ns", "sa", days=1, not_before_offset=3600)
    ok, out = tlsutil.verify(w["root"], w["cert"])
    assert not ok
    assert "not yet valid" in out


def test_rsa_workload(root, tmp_path):
    w = tlsutil.make_workload(root, tmp_path / "w", "ns", "sa", rsa=True, days=3)
    ok, out = tlsutil.verify(w["root"], w["cert"])
    assert ok, out
    text = _text(w["cert"])
    assert "rsaEncryption" in text and "Public-Key: (2048 bit)" in text
    assert "Digital Signature, Key Encipherment" in text
    assert tlsutil.key_matches_cert(w["key"], w["cert"])
    info = tlsutil.cert_info(w["cert"])
    assert info["not_after"] - info["not_before"] == timedelta(days=3)
    assert info["sans"] == ["spiffe://cluster.local/ns/ns/sa/sa"]


def test_rsa_root(tmp_path):
    ca = tmp_path / "ca"
    tlsutil.make_root(ca, rsa=True)
    assert "rsaEncryption" in _text(ca / "root-cert.pem")
    w = tlsutil.make_workload(ca, tmp_path / "w", "ns", "sa")
    ok, out = tlsutil.verify(w["root"], w["cert"])
    assert ok, out


def test_intermediate_chain(root, tmp_path):
    inter = tlsutil.make_intermediate(root, tmp_path / "int")
    assert _cert_count(inter / "cert-chain.pem") == 2
    assert "pathlen:0" in _text(inter / "ca-cert.pem")
    w = tlsutil.make_workload(root, tmp_path / "w", "ns", "sa", intermediate_dir=inter)
    assert _cert_count(w["cert"]) == 2  # leaf + intermediate, not the root
    ok, out = tlsutil.verify(w["root"], w["cert"], untrusted=w["cert"])
    assert ok, out
    ok, _ = tlsutil.verify(w["root"], w["cert"])  # without the intermediate: no path to the root
    assert not ok
    assert tlsutil.key_matches_cert(w["key"], w["cert"])


def test_show(root, tmp_path):
    w = tlsutil.make_workload(root, tmp_path / "w", "default", "web", dns=["web.local"])
    out = tlsutil.ca_tool("show", str(w["cert"]))
    info = tlsutil.cert_info(w["cert"])
    assert "subject=O=strait" in out
    assert f"serial={info['serial'].upper()}" in out
    assert "notBefore=" in out and "notAfter=" in out
    assert "uri_san=spiffe://cluster.local/ns/default/sa/web" in out
    assert "dns_san=web.local" in out


@pytest.mark.parametrize("args, needle", [
    (["--seconds", "5", "--days", "1"], "not both"),
    (["--seconds", "0"], "--seconds"),
    (["--not-before-offset-seconds", "soon"], "integer"),
    (["--dns", "bad name"], "invalid DNS name"),
])
def test_workload_rejects_bad_arguments(root, tmp_path, args, needle):
    with pytest.raises(RuntimeError, match=needle):
        tlsutil.ca_tool("workload", "--dir", str(root), "--out", str(tmp_path / "w"), "--ns", "a", "--sa", "b",
                        *args)
    assert not (tmp_path / "w" / "key.pem").exists()


def test_workload_rejects_bad_identity(root, tmp_path):
    with pytest.raises(RuntimeError, match="invalid"):
        tlsutil.make_workload(root, tmp_path / "w", "a/b", "sa")
    with pytest.raises(RuntimeError, match="no root CA"):
        tlsutil.make_workload(tmp_path / "nowhere", tmp_path / "w", "ns", "sa")
