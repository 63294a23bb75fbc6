"""Typed errors. Every failure reading or writing a .dpk raises one of these (or OSError /
ValueError for I/O and bad arguments), with a message naming the tensor and segment at fault.

    DeltapackError
    ├── FormatError            not a valid .dpk: structure, layout, manifest
    │   ├── UnsupportedError   valid, but a version / flag / encoding this reader does not know
    │   └── ChecksumError      bytes do not match their checksum
    ├── BaseMismatchError      the delta was made for a different base model
    ├── TensorNotFoundError    no tensor of that name
    └── ModelMismatchError     base and fine-tune cannot be paired (architecture, names, shapes)
"""

from ._core import (  # noqa: F401  (re-exported)
    BaseMismatchError,
    ChecksumError,
    DeltapackError,
    FormatError,
    TensorNotFoundError,
    UnsupportedError,
)



class ModelMismatchError(DeltapackError):
    """Base and fine-tune cannot be paired: architecture, tensor names or shapes differ."""


__all__ = [
    "DeltapackError",
    "FormatError",
    "UnsupportedError",
    "ChecksumError",
    "BaseMismatchError",
    "TensorNotFoundError",
    "ModelMismatchError",
]
