"""Our .proto subset against the real Envoy protos: every field we declare must have Envoy's name,
number, type and label (xds/tools/check_field_compat.js). The real protos come from the npm package
@grpc/grpc-js-xds that the test xDS server pins (tests/xds_server/package-lock.json)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "xds_server"))

import xds_control  # noqa: E402


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_every_declared_field_matches_envoy():
    xds_control.ensure_node_modules()
    deps = REPO / "tests" / "xds_server" / "node_modules" / "@grpc" / "grpc-js-xds" / "deps"
    assert deps.is_dir(), f"real Envoy protos not found at {deps}"
    done = subprocess.run(["node", str(REPO / "xds" / "tools" / "check_field_compat.js"), str(deps)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failed" in done.stdout, done.stdout
