"""The processes of one launch (``accelerate launch`` / torchrun): the main process decides,
every process agrees.

:func:`on_main` runs a step on the main process only (rank 0: the one that writes a stage's
shared files) and hands its result, or its error, to every process. An error on the main process
is raised on all of them, so none is left waiting at a barrier. Used by extraction (which shards
a re-run keeps), sampling (the plan) and the output lock. Without torch.distributed running (one
process) it is just ``fn()``.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["launch_state", "on_main"]


def launch_state(device: str = "auto") -> Any:
    """accelerate's ``PartialState`` of this launch (rank, world size, device; one process when not
    launched), as every stage makes it: on the CPU (gloo) when ``device`` is "cpu" or there is no
    CUDA, since a CPU-only launch needs ``cpu=True`` to see the other processes. The first
    PartialState of a process fixes the flag, so all callers must agree: they call this."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


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
