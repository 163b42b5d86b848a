"""Crashes the fuzz targets found (tests/fuzz, perf/results/2026-12-07-fuzz-long.md), reproduced through the
real binary of the normal build, so the suite catches them where clang and libFuzzer are not installed.
(The HTTP/1.1 framing finding is a case of test_h1_differential.py.)"""

from __future__ import annotations

import harness

# bootstrap_fuzz: a mapping key that is not a scalar made yaml-cpp throw out of the YAML -> JSON step, and
# strait died of std::terminate (SIGABRT) instead of refusing the file.
NON_SCALAR_KEYS = [
    "? [a, b]\n: c\nnode: {id: n}\n",
    "node: {id: n}\nadmin: {{x: 1}: y}\n",
]


def test_bootstrap_with_a_non_scalar_key_is_refused_not_a_crash(tmp_path):
    for i, text in enumerate(NON_SCALAR_KEYS):
        path = tmp_path / f"bootstrap{i}.yaml"
        path.write_text(text)
        done = harness.run_strait(["--mode", "validate", "-c", str(path)])
        assert done.returncode > 0, f"{text!r}: exit {done.returncode} (negative: killed by a signal), {done.stderr!r}"
        assert "terminate" not in done.stderr and "line" in done.stderr, f"{text!r}: {done.stderr!r}"


def test_config_yaml_with_a_non_scalar_key_is_refused_not_a_crash(tmp_path):
    path = tmp_path / "bootstrap.yaml"
    path.write_text("node: {id: n}\n")
    done = harness.run_strait(["--mode", "validate", "-c", str(path), "--config-yaml", "{? [a]: b}"])
    assert done.returncode > 0, f"exit {done.returncode} (negative: killed by a signal), {done.stderr!r}"
    assert "--config-yaml" in done.stderr and "terminate" not in done.stderr, done.stderr
