"""The processes of one launch (``accelerate launch`` / torchrun): the main process decides,
every process agrees.

:func:`on_main` runs a step on the main process only (rank 0: the one that writes a stage's
shared files) and hands its result, or its error, to every process. An error on the main process
is raised on all of them, so none is left waiting at a barrier. Used by extraction (which shards
a re-run keeps), sampling (the plan) and the output lock. Without torch.distributed running (one
process) it is just ``fn()``.

:func:`launch_state` is the one place a process's accelerate state (a shared singleton) is made:
it gives a stage the device it asks for even when an earlier stage of the same process made the
state for another one, sets how long a process waits for the others (``timeout_s``), and refuses
a launch that asked for several processes but started one.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from typing import Any

from rcdm.errors import InvalidInput

__all__ = ["launch_state", "on_all", "on_main", "processes", "set_timeout"]

# The environment an MPI launcher gives its processes (accelerate reads the world size from them)
_MPI_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launch_state(device: str = "auto", timeout_s: float | None = None) -> Any:
    """accelerate's ``PartialState`` of this launch (rank, world size, device; one process when not
    launched), as every stage makes it: on the CPU (gloo) when ``device`` is "cpu" or there is no
    CUDA, since a CPU-only launch needs ``cpu=True`` to see the other processes.

    accelerate keeps one state per process, fixed by the first caller. A state an earlier stage
    made for the other device (extraction with ``device=cpu``, then training on the GPU) is made
    anew here in a single process; with several processes, whose process group was set up for
    that device, it is refused in one line. ``timeout_s``: how long a collective (all-reduce,
    barrier, broadcast) waits for the other processes before it fails, for the group made here or
    already made (None: torch's default, or what was set before)."""
    import torch
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    shared = PartialState._shared_state
    if shared and shared.get("_cpu") != cpu:
        _reset_for(cpu)
    kwargs = {}
    if timeout_s is not None:
        from datetime import timedelta

        from accelerate.utils import InitProcessGroupKwargs

        kwargs = InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s)).to_kwargs()
    state = PartialState(cpu=cpu, **kwargs)
    if timeout_s is not None:
        set_timeout(timeout_s)  # a group made before this call (by the lock, another stage)
    _check_started(state.num_processes)
    return state


def processes(n: int) -> str:
    """ "1 process" / "N processes": how a stage's first line names its launch."""
    return f"{n} processes" if n > 1 else "1 process"


def _reset_for(cpu: bool) -> None:
    """Forget accelerate's state made for the other device (one process), or refuse (several)."""
    from accelerate.state import AcceleratorState

    if _group() is not None:
        want, had = ("the CPU", "a GPU") if cpu else ("a GPU", "the CPU")
        raise InvalidInput(
            f"this stage runs on {want} but an earlier stage in the same processes set the launch up for {had} "
            "(its process group cannot change device); run the stages as separate commands"
        )
    AcceleratorState._reset_state(reset_partial_state=True)


def set_timeout(timeout_s: float) -> None:
    """How long every later collective of this launch's process group waits for the other
    processes (nothing without a group of several processes)."""
    dist = _group()
    if dist is None:
        return
    from datetime import timedelta

    setter = getattr(dist, "set_timeout", None)  # torch >= 2.6; before it, the private name
    if setter is None:
        from torch.distributed import distributed_c10d

        setter = distributed_c10d._set_pg_timeout
    setter(timedelta(seconds=timeout_s))


def _check_started(world: int) -> None:
    """Refuse a launch that asked for several processes and started one: ``accelerate launch
    --num_processes N`` without GPUs (with or without ``--cpu``) runs the script once, in one
    process, setting MASTER_ADDR as for several but none of WORLD_SIZE / RANK."""
    env = os.environ
    if world > 1 or "WORLD_SIZE" in env or any(k in env for k in _MPI_SIZE):
        return
    if "ACCELERATE_USE_CPU" in env and env.get("MASTER_ADDR"):  # accelerate's one-process launcher
        raise InvalidInput(
            "accelerate launch was asked for several processes (it set MASTER_ADDR) but started only this one "
            "(without GPUs it runs one process); start N CPU processes with `torchrun --nproc_per_node N -m rcdm "
            "...`, or run one without --num_processes (and unset MASTER_ADDR)"
        )


def _group() -> Any:
    """torch.distributed when a launch of several processes runs, else None (torch is never
    imported here: a process that has not imported it runs alone)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _portable(error: BaseException) -> BaseException:
    """``error`` itself when it can be sent to the other processes, else a RuntimeError saying it."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any exception that does not survive pickling
        return RuntimeError(f"the main process failed: {type(error).__name__}: {error}")


def on_main(fn: Callable[[], Any], *, main: bool | None = None, share: bool = True) -> Any:
    """``fn()`` on the main process; its result on every process (``share``; else None on the
    others); its error raised on every process. ``main`` overrides which process runs it
    (default: rank 0 of the launch)."""
    dist = _group()
    if main is None:
        main = dist is None or dist.get_rank() == 0
    result, error = None, None
    if main:
        try:
            result = fn()
        except Exception as e:  # raised below on every process, after telling the others
            error = e
    if dist is not None:
        msg = [None if error is None else _portable(error), result if share and error is None else None]
        dist.broadcast_object_list(msg, src=0)
        if not main:
            if msg[0] is not None:
                raise msg[0]
            result = msg[1]
    if error is not None:
        raise error
    return result


def on_all(fn: Callable[[], Any]) -> Any:
    """``fn()`` on every process, each its own result; when it failed on any process, that error
    (the lowest rank's) is raised on every process, so none is left waiting for the others."""
    dist = _group()
    result, error = None, None
    try:
        result = fn()
    except Exception as e:  # raised below on every process, after telling the others
        error = e
    if dist is not None:
        errors: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(errors, None if error is None else _portable(error))
        first = next((e for e in errors if e is not None), None)
        if error is None and first is not None:
            raise first
    if error is not None:
        raise error
    return result
