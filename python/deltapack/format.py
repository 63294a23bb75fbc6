"""Python face of the Rust format core: open a .dpk as zero-copy torch views, write one.

Layout constants come from the Rust core (``deltapack._core``): see docs/FORMAT.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.dlpack import from_dlpack

from . import _core
from ._core import __version__

FORMAT_VERSION: int = _core.FORMAT_VERSION
DATA_ALIGN: int = _core.DATA_ALIGN
SEGMENT_ALIGN: int = _core.SEGMENT_ALIGN
PACK_WORD_BITS: int = _core.PACK_WORD_BITS
PACK_BITS: tuple[int, ...] = tuple(_core.PACK_BITS)
ENCODINGS: dict[str, int] = dict(_core.ENCODINGS)

# Element types of raw encodings and of scale / zero-point segments.
RAW_DTYPES: dict[str, torch.dtype] = {
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "i8": torch.int8,
    "u8": torch.uint8,
    "i32": torch.int32,
    "i64": torch.int64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in RAW_DTYPES.items()}
PARAM_DTYPES = ("f32", "f16", "bf16", "u8")


def _cpu_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def _addr(t: torch.Tensor) -> tuple[int, int]:
    """(address, nbytes) of a CPU-contiguous tensor; the caller keeps ``t`` alive."""
    assert t.device.type == "cpu" and t.is_contiguous()
    return t.data_ptr(), t.numel() * t.element_size()


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no .dpk raw encoding (supported: {sorted(RAW_DTYPES)})") from None


def xxh3_64(t: torch.Tensor | bytes) -> int:
    """xxh3-64 of a tensor's little-endian bytes (the base-fingerprint hash)."""
    if isinstance(t, (bytes, bytearray)):
        return _core.xxh3_64_bytes(bytes(t))
    c = _cpu_contiguous(t)
    return _core.xxh3_64(*_addr(c))


def fingerprint(t: torch.Tensor) -> dict[str, Any]:
    """The manifest's fingerprint of one base tensor: dtype, shape, xxh3-64 of its bytes."""
    return {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "xxh3": f"{xxh3_64(t):016x}"}


@dataclass(frozen=True)
class TensorInfo:
    """What the manifest and the layout rules say about one stored tensor."""

    name: str
    encoding: int
    encoding_name: str
    bits: int | None
    shape: tuple[int, ...]
    rows: int
    cols: int
    code_cols: int
    numel: int
    nbytes: int
    bits_per_param: float
    segments: dict[str, int]
    quant: dict[str, Any] | None = None
    scale_grid: tuple[int, int] | None = None
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def is_raw(self) -> bool:
        return self.bits is None


@dataclass
class PackedTensor:
    """Zero-copy views of a packed tensor's segments, typed per docs/FORMAT.md."""

    info: TensorInfo
    codes: torch.Tensor  # uint8 [rows, row_bytes]: little-endian bit stream per row
    scales: torch.Tensor  # scale_dtype, [grid_rows, grid_cols]
    zeros: torch.Tensor | None  # zero dtype, [grid_rows, grid_cols], or None for a constant
    indices: torch.Tensor | None = None  # uint8 [rows, row_bytes] of 2-bit positions (2:4)

    @property
    def zero_point(self) -> float | None:
        z = (self.info.quant or {}).get("zero", {})
        return z.get("value") if z.get("kind") == "constant" else None


class DeltaFile:
    """An open .dpk. Tensors come out as torch views of the file mapping (no copy); the
    mapping stays alive as long as any view does, even after :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str], verify: str = "lazy"):
        self._f: Any = _core.File(os.fspath(path), verify)
        self.path = os.fspath(path)
        self.manifest: dict[str, Any] = json.loads(self._f.manifest_json())
        self._entries = {t["name"]: t for t in self.manifest["tensors"]}

    # -- mapping protocol
    def names(self) -> list[str]:
        return [t["name"] for t in self.manifest["tensors"]]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __enter__(self) -> DeltaFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop this handle's reference to the mapping (views keep theirs)."""
        self._f = None

    def _file(self) -> Any:
        if self._f is None:
            raise ValueError(f"{self.path} is closed")
        return self._f

    # -- facts
    @property
    def file_len(self) -> int:
        return self._file().file_len()

    @property
    def map_range(self) -> tuple[int, int]:
        """(address, length) of the mapping, to check that views lie inside it."""
        return tuple(self._file().map_range())  # type: ignore[return-value]

    def info(self, name: str) -> TensorInfo:
        lay = self._file().layout(name)
        e = self._entries[name]
        segs = dict(lay["segments"])
        return TensorInfo(
            name=name,
            encoding=lay["encoding"],
            encoding_name=lay["encoding_name"],
            bits=lay["bits"],
            shape=tuple(lay["shape"]),
            rows=lay["rows"],
            cols=lay["cols"],
            code_cols=lay["code_cols"],
            numel=lay["numel"],
            nbytes=sum(segs.values()),
            bits_per_param=lay["bits_per_param"],
            segments=segs,
            quant=e.get("quant"),
            scale_grid=tuple(lay["scale_grid"]) if "scale_grid" in lay else None,
            stats=dict(e.get("stats", {})),
        )

    # -- zero-copy views
    def segment(self, name: str, role: str) -> torch.Tensor:
        """A uint8 view of one segment's bytes (checksum verified first in lazy mode)."""
        return from_dlpack(self._file().segment(name, role))

    def raw(self, name: str) -> torch.Tensor:
        """A raw tensor as a view of the mapping, in its dtype and logical shape."""
        info = self.info(name)
        if not info.is_raw:
            raise ValueError(f"tensor '{name}' is {info.encoding_name}, not raw: use packed() or dequantize()")
        return self.segment(name, "data").view(RAW_DTYPES[info.encoding_name]).reshape(info.shape)

    def packed(self, name: str) -> PackedTensor:
        """Typed views of a packed tensor's segments, exactly as stored."""
        info = self.info(name)
        if info.is_raw:
            raise ValueError(f"tensor '{name}' is raw {info.encoding_name}: use raw()")
        q = info.quant or {}
        grid = info.scale_grid or (1, 1)

        def seg(role: str, dtype: str | None, shape: tuple[int, ...]) -> torch.Tensor:
            v = self.segment(name, role)
            return (v.view(RAW_DTYPES[dtype]) if dtype else v).reshape(shape)

        def rows_of(role: str) -> tuple[int, int]:
            return (info.rows, info.segments[role] // max(info.rows, 1))

        codes = seg("codes", None, rows_of("codes"))
        scales = seg("scales", q["scale_dtype"], grid)
        zeros = seg("zeros", q["zero"]["dtype"], grid) if q["zero"]["kind"] == "stored" else None
        indices = seg("indices", None, rows_of("indices")) if "indices" in info.segments else None
        return PackedTensor(info=info, codes=codes, scales=scales, zeros=zeros, indices=indices)

    def __getitem__(self, name: str) -> torch.Tensor | PackedTensor:
        if name not in self._entries:
            self._file().layout(name)  # raises TensorNotFoundError
        return self.raw(name) if self.info(name).is_raw else self.packed(name)

    # -- decoded copies
    def codes(self, name: str) -> torch.Tensor:
        """Unpacked codes, uint8 [rows, code_cols] (a copy)."""
        info = self.info(name)
        out = torch.empty((info.rows, info.code_cols), dtype=torch.uint8)
        self._file().unpack_codes_into(name, *_addr(out))
        return out

    def dequantize(self, name: str) -> torch.Tensor:
        """The tensor's values as float32 in its logical shape (a copy); raw floats converted."""
        info = self.info(name)
        out = torch.empty(info.shape, dtype=torch.float32)
        self._file().to_f32_into(name, out.data_ptr(), info.numel)
        return out

    # -- integrity
    def verify(self) -> None:
        """Hash every segment; raises ChecksumError on the first fault."""
        self._file().verify()

    def check(self) -> list[tuple[str, str, str]]:
        """Every checksum fault as (tensor, segment, message); empty when sound."""
        return [tuple(x) for x in self._file().check_all()]  # type: ignore[misc]

    def check_base(self, base: Mapping[str, torch.Tensor] | Callable[[str], torch.Tensor | None]) -> None:
        """Raise BaseMismatchError unless every fingerprinted base tensor matches.
        ``base`` maps names to tensors, or is a function returning a tensor or None."""
        get = base.get if isinstance(base, Mapping) else base
        actual: dict[str, tuple[str, list[int], int]] = {}
        for n, fp in self.manifest["base"].get("tensors", {}).items():
            t = get(n)
            if t is not None:
                actual[n] = (DTYPE_NAMES.get(t.dtype, str(t.dtype)), list(t.shape), xxh3_64(t) if list(t.shape) == fp["shape"] else 0)
        self._file().check_base(actual)


def open(path: str | os.PathLike[str], verify: str = "lazy") -> DeltaFile:  # noqa: A001
    """Open a .dpk. ``verify``: 'lazy' (hash a tensor on first access), 'full' (hash all now)
    or 'none'. Raises FormatError / UnsupportedError / ChecksumError on a bad file."""
    return DeltaFile(path, verify)


def _quant_params(granularity: str, group_size: int | None, scale_dtype: str, zeros: torch.Tensor | None, zero_point: float | None) -> dict[str, Any]:
    if (zeros is None) == (zero_point is None):
        raise ValueError("give exactly one of zeros (a stored zero point per scale) or zero_point (a constant)")
    zero: dict[str, Any] = {"kind": "constant", "value": float(zero_point)} if zeros is None else {"kind": "stored", "dtype": dtype_name(zeros.dtype)}
    q: dict[str, Any] = {"granularity": granularity, "scale_dtype": scale_dtype, "zero": zero}
    if group_size is not None:
        q["group_size"] = int(group_size)
    return q


class DeltaWriter:
    """Writes a .dpk atomically: nothing appears at ``path`` until :meth:`finish` succeeds.
    Usable as a context manager; leaving the block on an exception discards everything."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._w: Any = _core.Writer(self.path)

    def __enter__(self) -> DeltaWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._w is not None:
            self.abort()

    def add_raw(self, name: str, tensor: torch.Tensor, stats: Mapping[str, float] | None = None) -> None:
        t = _cpu_contiguous(tensor)
        self._w.add_raw(name, list(t.shape), dtype_name(t.dtype), *_addr(t), dict(stats or {}))

    @staticmethod
    def _param_tensor(t: torch.Tensor, what: str) -> torch.Tensor:
        t = _cpu_contiguous(t)
        if dtype_name(t.dtype) not in PARAM_DTYPES:
            raise ValueError(f"{what} must be float32, float16, bfloat16 (or uint8 zeros), not {t.dtype}")
        return t

    def add_quantized(
        self,
        name: str,
        codes: torch.Tensor,
        bits: int,
        scales: torch.Tensor,
        zeros: torch.Tensor | None = None,
        *,
        zero_point: float | None = None,
        granularity: str = "group",
        group_size: int | None = None,
        shape: tuple[int, ...] | None = None,
        stats: Mapping[str, float] | None = None,
    ) -> None:
        """Affine-quantized codes (value = (code - zero) * scale), packed by the Rust core.
        ``codes``: integers < 2**bits, in the logical shape (or ``shape`` given); ``scales``
        and ``zeros``: the scale grid (see docs/FORMAT.md), any shape with the right size."""
        shape = tuple(codes.shape) if shape is None else tuple(shape)
        c = _cpu_contiguous(codes).to(torch.uint8)
        s = self._param_tensor(scales, "scales")
        z = None if zeros is None else self._param_tensor(zeros, "zeros")
        q = _quant_params(granularity, group_size, dtype_name(s.dtype), z, zero_point)
        self._w.add_quantized(name, list(shape), bits, _addr(c), json.dumps(q), _addr(s), None if z is None else _addr(z), dict(stats or {}))

    def add_sparse24(
        self,
        name: str,
        codes: torch.Tensor,
        indices: torch.Tensor,
        bits: int,
        scales: torch.Tensor,
        zeros: torch.Tensor | None = None,
        *,
        shape: tuple[int, ...],
        zero_point: float | None = None,
        granularity: str = "row",
        group_size: int | None = None,
        stats: Mapping[str, float] | None = None,
    ) -> None:
        """2:4 sparse codes: ``codes`` and ``indices`` are [rows, cols/2]; each consecutive
        pair of indices holds the increasing positions (0..3) of the two kept values."""
        c = _cpu_contiguous(codes).to(torch.uint8)
        i = _cpu_contiguous(indices).to(torch.uint8)
        s = self._param_tensor(scales, "scales")
        z = None if zeros is None else self._param_tensor(zeros, "zeros")
        q = _quant_params(granularity, group_size, dtype_name(s.dtype), z, zero_point)
        self._w.add_sparse24(name, list(shape), bits, _addr(c), _addr(i), json.dumps(q), _addr(s), None if z is None else _addr(z), dict(stats or {}))

    def finish(
        self,
        *,
        method: str,
        base_name: str,
        finetune_name: str,
        method_params: Mapping[str, Any] | None = None,
        base_fingerprints: Mapping[str, Mapping[str, Any]] | None = None,
        deltas: list[Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Validate and publish the file; returns the manifest written."""
        header = {
            "producer": {"name": "deltapack", "version": __version__},
            "method": {"name": method, "params": dict(method_params or {})},
            "finetune": {"name": finetune_name},
            "base": {"name": base_name, "hash": "xxh3-64", "tensors": dict(base_fingerprints or {})},
            "deltas": list(deltas or []),
            "metadata": dict(metadata or {}),
        }
        w, self._w = self._w, None
        return json.loads(w.finish(json.dumps(header)))

    def abort(self) -> None:
        """Discard everything staged; no file is written."""
        if self._w is not None:
            self._w.abort()
            self._w = None
