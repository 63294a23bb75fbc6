"""deltapack: serve many full-parameter fine-tunes of one base model as compressed deltas."""

from ._core import __version__
from .errors import (
    BaseMismatchError,
    ChecksumError,
    DeltapackError,
    FormatError,
    TensorNotFoundError,
    UnsupportedError,
)
from .format import DeltaFile, DeltaWriter, PackedTensor, TensorInfo, fingerprint, open, xxh3_64

__all__ = [
    "__version__",
    "open",
    "DeltaFile",
    "DeltaWriter",
    "PackedTensor",
    "TensorInfo",
    "fingerprint",
    "xxh3_64",
    "DeltapackError",
    "FormatError",
    "UnsupportedError",
    "ChecksumError",
    "BaseMismatchError",
    "TensorNotFoundError",
]
