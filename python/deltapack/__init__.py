"""deltapack: serve many full-parameter fine-tunes of one base model as compressed deltas."""

from ._core import __version__
from .errors import (
    BaseMismatchError,
    ChecksumError,
    DeltapackError,
    FormatError,
    ModelMismatchError,
    TensorNotFoundError,
    UnsupportedError,
)
from .format import DeltaFile, DeltaWriter, PackedTensor, TensorInfo, fingerprint, open, xxh3_64


def load(base_dir, dpk, **kwargs):
    """A transformers model: the base with the delta applied through DeltaLinear modules.
    Refuses a base whose fingerprints differ (BaseMismatchError) unless
    ``allow_base_mismatch=True``. See :func:`deltapack.nn.load`."""
    from .nn.load import load as _load

    return _load(base_dir, dpk, **kwargs)


def compress(base_dir, ft_dir, out, **kwargs):
    """Compress ``ft_dir``'s delta against ``base_dir`` into ``out`` (a .dpk). Keyword
    arguments are the fields of :class:`deltapack.compress.pipeline.CompressConfig`."""
    from .compress.pipeline import compress as _compress

    return _compress(base_dir, ft_dir, out, **kwargs)


def materialize(base_dir, dpk, out_dir, **kwargs):
    """Write base + delta as a Hugging Face model directory. See :func:`deltapack.nn.materialize`."""
    from .nn.load import materialize as _materialize

    return _materialize(base_dir, dpk, out_dir, **kwargs)

__all__ = [
    "__version__",
    "open",
    "load",
    "compress",
    "materialize",
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
    "ModelMismatchError",
]
