"""Atomic writes (a result file is either absent or complete, never half-written) and the
workdir lock (one run at a time in a workdir)."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile

import jax
import numpy as np

from jaxmia.errors import UserError

LOCK_NAME = ".lock"
_claimed: dict[str, object] = {}  # workdir -> its open, locked .lock file (held until exit)


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


def claim_workdir(workdir: str) -> None:
    """Creates ``workdir`` and holds an exclusive ``flock`` on its ``.lock`` for the rest of the
    process, so a second run started on the same folder is refused instead of interleaving its
    checkpoints and results with this one's; the lock goes with the process, however it ends.
    In a multi-process run only JAX process 0 takes it (the others write into the same workdir
    as part of the same run). Claiming a workdir this process holds again is a no-op.

    Raises:
      UserError: another process holds the lock.
    """
    path = os.path.abspath(workdir)
    if jax.process_index() != 0 or path in _claimed:
        return
    os.makedirs(path, exist_ok=True)
    lock = open(os.path.join(path, LOCK_NAME), "a")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UserError(f"workdir {workdir} is in use by another run (it holds {LOCK_NAME}); "
                        "wait for that run to finish or pass another --workdir") from None
    _claimed[path] = lock
