"""Checks shared by the CPU kernel tests (tests/test_*_kernel.py): the kernels must be built
under CI, kernel against reference values and gradients, and runs on simulated CPU devices."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia.kernels import library
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def cpu_kernels():
    """Skips a test module without a C++ compiler; fails it under CI, which must build them."""
    if not library.available():
        if os.environ.get("CI"):
            pytest.fail("CI needs the CPU kernels: a C++ compiler (c++ or $CXX)")
        pytest.skip("CPU kernels not built (no C++ compiler)")


def assert_matches_reference(kernel, reference, args, cotangent, rtol=1e-5, atol=1e-5,
                             grad_rtol=1e-4, grad_atol=1e-4):
    """``jit(kernel)(*args)`` equals ``reference(*args)``, and so do the gradients of
    ``sum(f(*args) * cotangent)`` with respect to every argument."""
    np.testing.assert_allclose(jax.jit(kernel)(*args), reference(*args), rtol=rtol, atol=atol)
    argnums = tuple(range(len(args)))

    def loss(fn):
        return lambda *a: jnp.sum(fn(*a) * cotangent)

    got = jax.jit(jax.grad(loss(kernel), argnums))(*args)
    want = jax.grad(loss(reference), argnums)(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=grad_rtol, atol=grad_atol)


def run_on_cpu_devices(code: str, devices: int = 4) -> dict:
    """Runs ``code`` in a fresh Python with ``devices`` simulated CPU devices; returns the JSON
    object it prints last."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
