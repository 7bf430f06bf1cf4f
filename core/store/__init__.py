"""The feature store: one owner for the format shared by every stage.

    format.py   names, versions, the webdataset member layout (the on-disk contract)
    read.py     read_manifest (the one reader: the current format only), FeatureStore: a finished store,
                by row, key or as one matrix
    images.py   StoreImages: the source image of each row
    write.py    atomic shards, their records, the manifest (written last)
    check.py    info and verify
    integrity.py  is a shard what its manifest records (sha256, once per shard per process)
    stats.py    per-dimension statistics of a whole store in one streamed pass

Import from ``rcdm.store``; the modules above never import each other's private names.
"""

from rcdm.store.check import info, verify
from rcdm.store.format import FORMAT_VERSION, VIEWS, shard_name
from rcdm.store.images import StoreImages
from rcdm.store.integrity import REPAIR, bad_shards, check_shard
from rcdm.store.read import FeatureStore, UnknownKey, check_same_classes, read_manifest
from rcdm.store.write import build_manifest, completed_shards, write_manifest, write_shard

__all__ = [
    "FORMAT_VERSION",
    "VIEWS",
    "FeatureStore",
    "REPAIR",
    "StoreImages",
    "UnknownKey",
    "bad_shards",
    "build_manifest",
    "check_same_classes",
    "check_shard",
    "completed_shards",
    "info",
    "read_manifest",
    "shard_name",
    "verify",
    "write_manifest",
    "write_shard",
]
