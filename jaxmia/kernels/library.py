"""Builds, caches and loads the hand-written XLA:CPU kernels (``*.cc`` here, one shared library)
and registers their XLA FFI targets.

The library is compiled on first use with ``$CXX`` (default ``c++``) against JAX's FFI headers,
into ``$JAXMIA_KERNEL_CACHE`` (default ``~/.cache/jaxmia/kernels``), under a name that hashes the
sources, the flags, the JAX version and the CPU's feature flags; the file is written atomically.
With no compiler, or ``JAXMIA_KERNELS=0``, :func:`available` is False and every kernel module
runs its pure-JAX reference instead.

Every kernel module follows one convention, which :func:`call` relies on: ``reference(*arrays,
dropout_key, rate, *static)`` is the pure-JAX function, and ``kernel(*arrays, seeds, rate,
use_dropout, *static)`` its custom-call twin, drawing the dropout mask from ``seeds`` (the key's
two ``fastrand.seed_words``) exactly as ``fastrand.dropout`` does.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxmia import fastrand

HERE = Path(__file__).parent
SOURCES = (HERE / "attention.cc", HERE / "layernorm.cc", HERE / "gelu.cc")
HEADERS = (HERE / "common.h",)
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC", "-w")
# XLA FFI target name -> exported handler symbol.
TARGETS = {
    "jaxmia_attention_forward": "JaxmiaAttentionForward",
    "jaxmia_attention_backward": "JaxmiaAttentionBackward",
    "jaxmia_add_layernorm_forward": "JaxmiaAddLayerNormForward",
    "jaxmia_add_layernorm_backward": "JaxmiaAddLayerNormBackward",
    "jaxmia_bias_gelu_dropout_forward": "JaxmiaBiasGeluDropoutForward",
    "jaxmia_bias_gelu_dropout_backward": "JaxmiaBiasGeluDropoutBackward",
}


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line for line in text.splitlines() if line.startswith("flags")), "")


def library_path() -> Path:
    """Where the library for these sources, flags, JAX and CPU is cached."""
    texts = [p.read_text() for p in (*SOURCES, *HEADERS)]
    key = hashlib.sha256("\0".join([*texts, *FLAGS, jax.__version__,
                                    _cpu_flags()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("JAXMIA_KERNEL_CACHE",
                                Path.home() / ".cache" / "jaxmia" / "kernels"))
    return cache / f"jaxmia-kernels-{key}.so"


def _run(commands) -> None:
    """Runs the compiler commands at once; raises CalledProcessError for the first that fails."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    outputs = [p.communicate() for p in procs]
    for command, proc, (out, err) in zip(commands, procs, outputs):
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, command, out, err)


def _build(path: Path) -> None:
    """Compiles each source (in parallel) and links them into ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        objects = [os.path.join(tmp, f"{src.stem}.o") for src in SOURCES]
        _run([[compiler, *FLAGS, "-c", f"-I{jax.ffi.include_dir()}", f"-I{HERE}", str(src),
               "-o", obj] for src, obj in zip(SOURCES, objects)])
        linked = os.path.join(tmp, "kernels.so")
        _run([[compiler, *FLAGS, *objects, "-o", linked]])
        os.replace(linked, path)


def open_library(path: Path | None = None) -> ctypes.CDLL | None:
    """Builds the kernel library at ``path`` when it is missing (default:
    :func:`library_path`) and opens it. A cached file that does not open (e.g. corrupt) is
    rebuilt once. None, with one logged warning naming the cause, when it cannot be built."""
    path = path or library_path()
    try:
        if not path.exists():
            _build(path)
        try:
            return ctypes.cdll.LoadLibrary(str(path))
        except OSError:
            _build(path)
            return ctypes.cdll.LoadLibrary(str(path))
    except (OSError, subprocess.CalledProcessError) as err:
        lines = (getattr(err, "stderr", None) or str(err)).strip().splitlines()
        logging.warning("jaxmia CPU kernels unavailable (%s); using their pure-JAX versions "
                        "(install a C++ compiler, or set CXX, to build them)",
                        lines[-1] if lines else type(err).__name__)
        return None


@functools.cache
def available() -> bool:
    """Whether the CPU kernels are built and registered with XLA (building them on the first
    call): False with ``JAXMIA_KERNELS=0`` or when they cannot be built."""
    if os.environ.get("JAXMIA_KERNELS", "1") == "0":
        return False
    lib = open_library()
    if lib is None:
        return False
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
    return True


def result(shape, like, dtype=jnp.float32):
    """A result type of ``shape`` that varies over the same manual (``shard_map``) axes as
    ``like``."""
    return jax.typeof(like).update(shape=tuple(shape), dtype=jnp.dtype(dtype))


def dropout_attrs(rate: float, use_dropout: bool) -> dict:
    """The FFI attributes every kernel reads for its dropout (see ``common.h``'s KeepFactors)."""
    return {"keep": np.float32(1.0 - rate), "inv_keep": np.float32(1.0 / (1.0 - rate)),
            "use_dropout": np.int32(use_dropout)}


def call(kernel, reference, arrays, dropout_key, rate: float, *static):
    """``kernel`` on CPU when the library is :func:`available`, ``reference`` on other
    platforms or without it (both in the module convention above; the caller has checked the
    kernel's ``supported``). The two compute the same function, dropout mask included."""
    if not available():
        return reference(*arrays, dropout_key, rate, *static)
    use_dropout = dropout_key is not None
    seeds = fastrand.seed_words(dropout_key) if use_dropout else jnp.zeros((2,), jnp.uint32)

    def on_cpu(*args):
        return kernel(*args, float(rate), use_dropout, *static)

    def elsewhere(*args):
        return reference(*args[:-1], dropout_key, rate, *static)

    return jax.lax.platform_dependent(*arrays, seeds, cpu=on_cpu, default=elsewhere)
