"""Data kinds (data/kinds.py): Gaussian mixtures, sklearn digits and Parquet image shards, one file each; importing
this package registers the built-in ones. Also toy 2-D sets, shard manifests and `multistep data convert`."""

from multistep.data import digits, gmm, parquet  # noqa: F401  (registration)
from multistep.data.kinds import DATA_KINDS, DataKind, FieldError, ImageData, Options, as_float, data_kind, register

__all__ = ["DATA_KINDS", "DataKind", "FieldError", "ImageData", "Options", "as_float", "data_kind", "register"]
