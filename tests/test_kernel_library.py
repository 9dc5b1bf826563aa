"""Building and loading the CPU kernel library: a corrupt cached file is rebuilt, a missing
compiler falls back to pure JAX with nothing half-written, and ``JAXMIA_KERNELS=0`` turns the
kernels off."""

import os
import subprocess
import sys

import pytest

from jaxmia.kernels import library
from tests.conftest import ROOT


def test_a_corrupt_cached_library_is_rebuilt(tmp_path):
    path = tmp_path / "kernels.so"
    path.write_bytes(b"not a shared library")
    lib = library.open_library(path)
    if lib is None and not os.environ.get("CI"):
        pytest.skip("no C++ compiler here")
    assert lib is not None, "CI needs the CPU kernels: a C++ compiler (c++ or $CXX)"
    for symbol in library.TARGETS.values():
        assert hasattr(lib, symbol), symbol
    assert path.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernels.so"]  # no leftovers


def test_a_missing_compiler_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert library.open_library(tmp_path / "kernels.so") is None
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_compile_error_falls_back_with_the_compiler_message(tmp_path, monkeypatch, caplog):
    fake = tmp_path / "fake-cxx"
    fake.write_text("#!/bin/sh\necho 'layernorm.cc:1: error: broken' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    out = tmp_path / "cache"
    assert library.open_library(out / "kernels.so") is None
    assert "error: broken" in caplog.text
    assert not list(out.iterdir())


def test_the_environment_switch_turns_the_kernels_off():
    code = "from jaxmia.kernels import library; print(library.available())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "JAXMIA_KERNELS": "0"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
