"""Joining a multi-process JAX job (`jax.distributed`) before anything touches a device.

JAX finds the coordinator, the process count and this process's index itself under SLURM, Open MPI, on
TPU pods and on GKE. Elsewhere the environment says them: JAX_COORDINATOR_ADDRESS (host:port of process 0;
JAX reads it), JAX_NUM_PROCESSES and JAX_PROCESS_ID (read here).
"""

from __future__ import annotations

import os

import jax


def join() -> None:
    """Connects this process to the others; afterwards `jax.devices()` lists the devices of all of them."""
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    try:
        jax.distributed.initialize(num_processes=int(count) if count else None,
                                   process_id=int(index) if index else None)
    except ValueError as error:
        raise ValueError(f"--distributed could not find its job ({error}): set JAX_COORDINATOR_ADDRESS=host:port "
                         "(process 0's), JAX_NUM_PROCESSES and JAX_PROCESS_ID, or run under SLURM, Open MPI or "
                         "on a TPU pod") from None
