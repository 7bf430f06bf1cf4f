"""One writer per output folder: the lock every stage takes on what it writes.

Two commands writing one output at once mix their files (two `rcdm extract --overwrite` with
different seeds gave a store whose manifest said seed 0 over seed-1 shards, and it passed verify).
So each stage holds ``<out>/.rcdm.lock`` while it runs: extract on the store, train on the run
folder, sample on the sample folder.

- The file is created atomically (``O_CREAT | O_EXCL``) and holds the holder's pid, host, command,
  command line and start time as JSON. A second writer is refused with an :class:`OutputLocked`
  (an ``OutputExists``: the CLI prints it without a traceback) naming all of these.
- It is removed when the holder leaves the ``with`` block: normally, on an exception, on
  KeyboardInterrupt, and on SIGTERM (turned into ``SystemExit`` while the lock is held).
- A lock left by a process that died anyway (SIGKILL, a crash, a reboot) is stale when its host is
  this host and its pid no longer runs (or now belongs to a later process): it is taken over, with
  a note on stderr. A lock of another host cannot be checked from here: it is refused, and the
  message says to delete the file if that host's process is gone.
- Under ``accelerate launch`` / torchrun the processes of one run write one output together:
  only the main process (rank 0) takes the lock, and it tells the others whether it got it, so all
  of them stop together with the same message (:func:`holding_output_lock`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rcdm.errors import OutputExists, UserError, write_error
from rcdm.launch import launch_state, on_main

__all__ = ["LOCK_FILE", "OutputLocked", "holding_output_lock", "is_main_process", "output_lock", "read_holder"]

LOCK_FILE = ".rcdm.lock"


class OutputLocked(OutputExists):
    """Another process is writing this output (or its lock cannot be read)."""


# ------------------------------------------------------------------------------- the holder
def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a Linux process, None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], fields[19]  # state, starttime (fields 3 and 22 of proc(5))


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _me(command: str) -> dict:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
    stat = _proc_stat(os.getpid())
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "argv": shlex.join(argv),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "boot_id": _boot_id(),
        "pid_start": stat[1] if stat else None,
    }


def _stale_because(holder: dict) -> str | None:
    """Why the holder (of this host) no longer runs, or None if it may still run."""
    if holder.get("host") != socket.gethostname():
        return None  # another machine's process cannot be checked from here
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return "the machine has restarted since"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "it is no longer running"
    except PermissionError:
        pass  # alive, another user's
    stat = _proc_stat(pid)
    if stat is not None and stat[0] in ("Z", "X"):
        return "it is no longer running (it has exited)"
    if stat is not None and holder.get("pid_start") and stat[1] != holder["pid_start"]:
        return "it is no longer running (the pid now belongs to another process)"
    return None


def _describe(holder: dict) -> str:
    argv = holder.get("argv")
    ran = f"{holder.get('command')}" + (f" (`{argv}`)" if argv else "")
    return f"pid {holder.get('pid')} on {holder.get('host')}, running {ran}, since {holder.get('since')}"


def read_holder(folder: str | Path) -> dict | None:
    """The record of the process holding ``folder``'s lock, or None when it is free."""
    try:
        return json.loads((Path(folder) / LOCK_FILE).read_text())
    except FileNotFoundError:
        return None


def _read(lock: Path, wait_s: float) -> tuple[dict | None, bytes | None]:
    """(holder, raw bytes) of an existing lock; (None, None) if it vanished; (None, bytes) if it
    stays unreadable for ``wait_s`` (its creator writes it right after creating it)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            raw = lock.read_bytes()
        except FileNotFoundError:
            return None, None
        try:
            holder = json.loads(raw)
            if isinstance(holder, dict):
                return holder, raw
        except ValueError:
            pass
        if time.monotonic() >= deadline:
            return None, raw
        time.sleep(0.05)


def _remove_if_unchanged(lock: Path, raw: bytes) -> bool:
    """Remove ``lock`` if it still holds ``raw``. The rename is atomic, so of two processes
    taking over one stale lock only one removes it; a newer lock moved by mistake is put back."""
    aside = lock.with_name(f"{LOCK_FILE}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return False
    try:
        if aside.read_bytes() == raw:
            return True
        with contextlib.suppress(FileExistsError):
            os.link(aside, lock)  # someone's fresh lock: back where it was
        return False
    finally:
        aside.unlink(missing_ok=True)


# ------------------------------------------------------------------------ acquire / release
def _acquire(folder: Path, command: str, wait_s: float) -> bytes:
    lock = folder / LOCK_FILE
    for _ in range(20):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder, raw = _read(lock, wait_s)
            if raw is None:
                continue  # released meanwhile: try again
            if holder is None:
                raise OutputLocked(
                    f"{folder} is locked by {lock}, which cannot be read (not the JSON rcdm writes). "
                    f"If no rcdm command is writing {folder}, delete {lock} and re-run"
                ) from None
            why = _stale_because(holder)
            if why is None:
                raise OutputLocked(_held_message(folder, lock, holder)) from None
            if _remove_if_unchanged(lock, raw):
                print(f"rcdm: taking over the lock of {folder}: {_describe(holder)}, but {why}", file=sys.stderr)
            continue
        data = json.dumps(_me(command)).encode()
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return data
    raise OutputLocked(f"{folder}: could not take {lock}; other processes keep taking it. Re-run")


def _held_message(folder: Path, lock: Path, holder: dict) -> str:
    msg = f"{folder} is being written by another process: {_describe(holder)} (lock file {lock}). "
    if holder.get("host") == socket.gethostname():
        return msg + "Wait for it to finish, or stop it, then re-run: two writers on one output mix their files"
    return msg + (
        f"rcdm cannot check a process on another host: wait for it to finish; if it is no longer "
        f"running (the job was killed or {holder.get('host')} is gone), delete {lock} and re-run"
    )


def _release(folder: Path, mine: bytes, made_folder: bool, pid: int) -> None:
    if os.getpid() != pid:
        return  # a forked child (a DataLoader worker) never releases its parent's lock
    lock = folder / LOCK_FILE
    with contextlib.suppress(OSError):
        if lock.read_bytes() == mine:  # never remove a lock that another process took over
            lock.unlink()
    if made_folder:  # a folder made for the lock alone (the stage failed early) goes too
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """While held, SIGTERM (a scheduler or torchrun stopping the job) unwinds like an exception,
    so the lock is released; only where SIGTERM would otherwise kill at once."""
    install = threading.current_thread() is threading.main_thread()
    if install and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def exit_now(signum, frame):
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, exit_now)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    else:
        yield


def _check_folder(folder: Path) -> None:
    """``--out`` must name a folder, new or existing (refused before anything is written)."""
    if folder.exists() and not folder.is_dir():
        raise OutputExists(
            f"--out {folder} is a file, not a folder; pass a folder (a new one, or the output to resume)"
        )
    parent = next((p for p in folder.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputExists(
            f"--out {folder}: {parent} is a file, not a folder, so it cannot hold the output; pass a folder path"
        )


@contextlib.contextmanager
def output_lock(
    folder: str | Path, command: str, *, main: bool = True, sync: bool = False, wait_s: float = 2.0
) -> Iterator[Path | None]:
    """Hold ``<folder>/.rcdm.lock`` for the block (the folder is made if needed); yields the lock
    file, or None on a process that is not ``main`` (which takes nothing).

    ``command`` names the writer in the message another writer gets (e.g. "rcdm extract").
    ``sync``: every process of the launch enters together and all stop if the main one is refused.
    ``wait_s``: how long an unreadable lock (one being written) is re-read before it is refused.
    """
    folder = Path(folder)
    made = False

    def take() -> bytes:
        nonlocal made
        _check_folder(folder)
        made = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return _acquire(folder, command, wait_s)
        except BaseException as e:
            if made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            # the first write of every stage: a read-only output folder is one line, not a traceback
            if isinstance(e, OSError) and not isinstance(e, UserError) and (w := write_error(e, folder / LOCK_FILE)):
                raise w from e
            raise

    # with sync, a refusal on the main process is raised on every process of the launch
    mine = on_main(take, main=main, share=False) if sync else (take() if main else None)
    if mine is None:
        yield None
        return
    pid = os.getpid()
    try:
        with _sigterm_exits():
            yield folder / LOCK_FILE
    finally:
        _release(folder, mine, made, pid)


# ------------------------------------------------------------------------------- for stages
def is_main_process(device: str = "auto") -> bool:
    """Whether this is the main process (rank 0) of an ``accelerate launch`` / torchrun launch, as
    the stages count ranks (:func:`rcdm.launch.launch_state`, the state every stage makes)."""
    return launch_state(device).is_main_process


def holding_output_lock(
    command: str, *, main: Callable[[Any], bool] = lambda cfg: is_main_process(getattr(cfg, "device", "auto"))
) -> Callable:
    """Decorate a stage's ``run(cfg)`` to hold the lock of ``cfg.out`` while it runs; the main
    process of a launch holds it for all (``main(cfg)`` says which one this is)."""

    def wrap(run: Callable) -> Callable:
        @functools.wraps(run)
        def locked(cfg: Any, *args: Any, **kwargs: Any) -> Any:
            if not getattr(cfg, "out", None):
                return run(cfg, *args, **kwargs)  # the stage itself says that out is missing
            with output_lock(cfg.out, command, main=main(cfg), sync=True):
                return run(cfg, *args, **kwargs)

        return locked

    return wrap
