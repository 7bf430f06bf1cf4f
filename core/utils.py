"""Small shared helpers: hashing, atomic writes, devices, generators."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rcdm.errors import InvalidInput, write_error


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def inside(folder: str | Path, name: str, what: str, fix: str) -> Path:
    """``folder / name`` for a file name read from a manifest, refused (``InvalidInput`` naming
    ``what`` and ``fix``) unless it stays inside ``folder``: no absolute path, no ``..``, and no
    symbolic link that leads out of it. Nothing a manifest says can make rcdm read, write or
    delete a file elsewhere."""
    folder = Path(folder)
    p = Path(str(name))
    escapes = not str(name) or p.is_absolute() or ".." in p.parts or p.drive
    if not escapes:
        real, root = os.path.realpath(folder / p), os.path.realpath(folder)
        escapes = os.path.commonpath([real, root]) != root
    if escapes:
        raise InvalidInput(
            f"{what} names {str(name)!r}, which is not a file inside {folder} (an absolute path, '..' or a "
            f"link out of the folder): the manifest was edited or damaged; {fix}"
        )
    return folder / p


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary name in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only folder: one line naming the file and the fix
        raise (write_error(e, path) or e) from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # after a failed write (a full disk): no half file stays
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


CHECKSUM = "checksum"  # a manifest's own sha256, of its other fields (json_checksum)


def json_checksum(obj: dict) -> str:
    """sha256 of a manifest's fields but ``checksum`` (sorted keys, compact): written into the
    manifest, so an edited or damaged manifest is refused instead of read as something else."""
    body = {k: v for k, v in obj.items() if k != CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def with_checksum(obj: dict) -> dict:
    """``obj`` with its :func:`json_checksum` as the last field."""
    return {**{k: v for k, v in obj.items() if k != CHECKSUM}, CHECKSUM: json_checksum(obj)}


def checksum_problem(obj: Any) -> str | None:
    """What is wrong with a manifest's own checksum (absent, or not its fields'), or None."""
    if not isinstance(obj, dict) or CHECKSUM not in obj:
        return "has no checksum of its fields"
    if obj[CHECKSUM] != json_checksum(obj):
        return "does not match its checksum: it was edited or damaged"
    return None


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def pick_device(spec: str = "auto"):
    """'auto' -> the first CUDA device if there is one, else the CPU."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"device {spec!r} was requested but CUDA is not available; use --device cpu")
    return dev


def seed_generator(seed: int, device="cpu"):
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def now_iso() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def tool_version() -> str:
    """rcdm's installed version, recorded in every manifest ("unknown" in a bare checkout)."""
    try:
        from importlib.metadata import version

        return version("rcdm")
    except Exception:  # not installed (e.g. running from a bare checkout)
        return "unknown"
