"""Helpers that rewrite parts of a .dpk to build malformed files."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Callable

from deltapack import _core

PRELUDE = _core.PRELUDE_LEN
ALIGN = _core.DATA_ALIGN


def split(path: Path) -> tuple[bytes, dict[str, Any], bytes]:
    b = path.read_bytes()
    (mlen,) = struct.unpack_from("<Q", b, 16)
    start = -(-(PRELUDE + mlen) // ALIGN) * ALIGN
    return b[:PRELUDE], json.loads(b[PRELUDE : PRELUDE + mlen]), b[start:]


def assemble(manifest_bytes: bytes, data: bytes, *, version: int = 1, flags: int = 0, mlen: int | None = None, checksum: int | None = None) -> bytes:
    mlen = len(manifest_bytes) if mlen is None else mlen
    h = _core.xxh3_64_bytes(manifest_bytes) if checksum is None else checksum
    head = _core.MAGIC + struct.pack("<IIQQ", version, flags, mlen, h)
    start = -(-(PRELUDE + len(manifest_bytes)) // ALIGN) * ALIGN
    return head + manifest_bytes + b"\0" * (start - PRELUDE - len(manifest_bytes)) + data


def rewrite_manifest(path: Path, out: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    """Copy ``path`` to ``out`` with the manifest edited and correctly re-checksummed."""
    _, m, data = split(path)
    mutate(m)
    out.write_bytes(assemble(json.dumps(m).encode(), data))
    return out
