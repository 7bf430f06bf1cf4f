"""Damage a finished store the way disks and people do (for the integrity tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rcdm.store.format import FEAT, index_tar


def flip_feature_byte(shard: Path, row: int = 1) -> None:
    """Flip one bit inside the feature data of ``row`` (the file still opens, the values change)."""
    if shard.suffix == ".h5":
        import h5py

        with h5py.File(shard, "r") as f:
            ds = f["feat"]
            offset, row_bytes = ds.id.get_offset(), ds.dtype.itemsize * int(np.prod(ds.shape[1:]))
        at = offset + row * row_bytes + 3
    else:  # inside the row's feat.npy data, past its 128-byte npy header
        at = index_tar(shard)[row][1][FEAT][0] + 140
    data = bytearray(shard.read_bytes())
    data[at] ^= 0x40
    shard.write_bytes(bytes(data))
