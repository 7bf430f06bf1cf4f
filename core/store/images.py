"""The source image of each store row (training, sample grids and the analyses all need it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rcdm.errors import InvalidInput, MissingInput
from rcdm.store.read import FeatureStore

__all__ = ["StoreImages"]


class StoreImages:
    """The source image of each store row: the bytes a webdataset store carries, else the image at
    the store's recorded source root (or ``root``, where the images moved).

    One place for what training, sampling grids and the analyses all need. Not shared across
    processes: each DataLoader worker makes its own (tar handles do not survive fork).
    """

    def __init__(self, store: FeatureStore, root: str | None = None, hint: str = "", source: Any = None):
        self.store = store
        self.root = root or store.source.get("root")
        self.hint = hint or "pass the folder the images moved to"
        self._source: Any = source  # an already opened source of ``root`` may be passed in

    @property
    def source(self) -> Any:
        """The opened image source (``rcdm.data.images.ImageSource``)."""
        if self._source is None:
            from rcdm.data.images import open_source

            if not self.root or not Path(self.root).exists():
                raise MissingInput(
                    f"the images of store {self.store.path} were read from {self.root!r}, which does not exist; "
                    f"{self.hint}"
                )
            self._source = open_source(self.root)
        return self._source

    def index(self) -> np.ndarray:
        """Source index of every store row; a key the source lacks is a ValueError naming it."""
        src, index, missing = self.source, np.empty(len(self.store), dtype=np.int64), []
        for i, key in enumerate(self.store.keys):
            try:
                index[i] = src.index_of(key)
            except (KeyError, ValueError):
                missing.append(key)
        if missing:
            raise InvalidInput(
                f"{len(missing)} key(s) of store {self.store.path} are not in the image source "
                f"{self.root}, e.g. {missing[:3]}; {self.hint}"
            )
        return index

    def load(self, i: int, source_index: int | None = None, draft: tuple[int, int] | None = None) -> Any:
        """Row ``i``'s image (PIL, RGB); ``source_index`` skips the key lookup when known;
        ``draft`` (w, h): libjpeg's DCT scaling to no less than that size (``decode_image``)."""
        from rcdm.data.images import decode_image

        if self.store.has_images:
            return decode_image(self.store.image_bytes(i), draft, key=self.store.keys[i])
        src = self.source
        return src.load(src.index_of(self.store.keys[i]) if source_index is None else int(source_index), draft)
