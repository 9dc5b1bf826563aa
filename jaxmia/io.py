"""Atomic writes: a result file is either absent or complete, never half-written."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np


def _atomic(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are for people to read.
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj) -> None:
    _atomic(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()))


def write_npz(path: str, **arrays) -> None:
    _atomic(path, lambda f: np.savez_compressed(f, **arrays))


def write_bytes(path: str, payload: bytes) -> None:
    _atomic(path, lambda f: f.write(payload))
