"""Checks shared by the CPU kernel tests (tests/test_*_kernel.py): the kernels must be built
under CI, kernel against reference values and gradients, and runs on simulated CPU devices."""

import json
import os
import string
import subprocess
import sys
import textwrap

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


_SHARDED = string.Template(r'''
import json
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxmia import sharding
from jaxmia.kernels import library, $module

assert jax.device_count() == 4 and library.available()
mesh = sharding.model_mesh()  # the library's own mesh (automatic axes)
$setup
kernel, reference = $module.$kernel, $module.reference
on_mesh = [jax.device_put(a, NamedSharding(mesh, P("model"))) for a in args]
over = (0,) * len(args)
def per_model(fn):
    return jax.vmap(lambda *a: fn(*a, 0.2))
want = per_model(reference)(*args)
partitioned = jax.jit(per_model(kernel))(*on_mesh)
explicit = jax.jit(sharding.over_models(per_model(kernel), mesh, over))(*on_mesh)
def grad(fn):  # d/d argument $grad_arg of each model, per device as the training loop runs it
    g = jax.vmap(jax.grad(lambda *a: jnp.sum(fn(*a, 0.2) ** 2), $grad_arg))
    return jax.jit(sharding.over_models(g, mesh, over))
want_grad = grad(reference)(*on_mesh)
print(json.dumps({"jit": float(jnp.max(jnp.abs(partitioned - want))),
                  "shard_map": float(jnp.max(jnp.abs(explicit - want))),
                  "grad": float(jnp.max(jnp.abs(grad(kernel)(*on_mesh) - want_grad))
                                / jnp.max(jnp.abs(want_grad)))}))
''')


def assert_sharded_matches_reference(module: str, kernel: str, setup: str, grad_arg: int):
    """On 4 simulated CPU devices, four models split over the library's mesh: ``module.kernel``
    under ``jit`` partitioning and per device (``sharding.over_models``), and its gradient in
    argument ``grad_arg`` per device, equal ``module.reference``. ``setup`` is code that defines
    ``args``: the kernel's arrays with a leading axis of 4 models, then their dropout keys (the
    rate is 0.2)."""
    code = _SHARDED.substitute(module=module, kernel=kernel, setup=textwrap.dedent(setup),
                               grad_arg=grad_arg)
    errors = run_on_cpu_devices(code)
    assert set(errors) == {"jit", "shard_map", "grad"}
    assert max(errors.values()) < 1e-5, errors
