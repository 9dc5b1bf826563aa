"""absl flags that every experiment script shares: where the models run (CPU devices, processes).

Each script calls :func:`define_device_flags` next to its own flags and hands its work to
:func:`run`, which sets the devices up first (before any JAX computation) and turns a
``UserError`` into the one-line ``error:`` message and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags, logging

from jaxmia import sharding
from jaxmia.errors import UserError


def define_device_flags() -> None:
    flags.DEFINE_string("coordinator", None, "multi-host: process 0's HOST:PORT (every process "
                        "runs the same command), or 'auto' to read the cluster's environment")
    flags.DEFINE_integer("num_processes", None, "multi-host: how many processes")
    flags.DEFINE_integer("process_id", None,
                         "multi-host: this process's rank in [0, num_processes)")
    flags.DEFINE_integer("cpu_devices", None, "on CPU, expose this many devices (e.g. the "
                         "number of cores): the models are split over them (default: JAX's, one)")


def start_devices() -> None:
    """Applies --cpu_devices and joins the multi-process run of --coordinator, if any."""
    f = flags.FLAGS
    sharding.set_cpu_devices(f.cpu_devices)
    sharding.start_processes(f.coordinator, f.num_processes, f.process_id)


def run(body: Callable[[], tuple[str, str]], argv=None) -> None:
    """Refuses leftover command-line arguments (``argv`` past the program name) and silences
    Orbax's INFO logs (it logs every save), calls :func:`start_devices`, then ``body() ->
    (table, results path)`` and prints both; a ``UserError`` prints ``error: <message>`` on
    stderr and exits with status 2."""
    if argv is not None and len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    try:
        start_devices()
        table, path = body()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(table)
    print(f"\nresults: {path}")

