"""How values become column values and back: hashed features as bytes, JSON arrays, text SQLite can hold."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .records import StoreError

_FEATURES_MAGIC = b"BRF1"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def encode_features(features: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Hashed features → bytes: `BRF1`, then per namespace: name length (u8), name (UTF-8), count n (u32 LE),
    n indices (u32 LE), n values (f32 LE)."""
    parts = [_FEATURES_MAGIC]
    for ns, (idx, val) in features.items():
        name = _NAMES.get(ns)
        if name is None:
            name = ns.encode("utf-8")
            name = struct.pack("<B", len(name)) + name
            if len(_NAMES) < 64:  # the extractor's few namespaces
                _NAMES[ns] = name
        parts.append(name + struct.pack("<I", len(idx)))
        # the extractor's arrays already have these types (on a little-endian machine): no conversion call
        parts.append(idx.tobytes() if getattr(idx, "dtype", None) == _U4 else np.asarray(idx, dtype=_U4).tobytes())
        parts.append(val.tobytes() if getattr(val, "dtype", None) == _F4 else np.asarray(val, dtype=_F4).tobytes())
    return b"".join(parts)


_NAMES: dict[str, bytes] = {}
"""A namespace's encoded name with its length byte, per namespace."""
_U4, _F4 = np.dtype("<u4"), np.dtype("<f4")


def decode_features(blob: bytes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Inverse of `encode_features`: the same values and types. Every namespace's indices and values are
    read-only views of two arrays (one copy of all the indices, one of all the values: aligned, as the copies
    that one `astype` per array made before; the extractor's own small namespaces are shared read-only arrays
    too), so a decision read back costs two numpy conversions, not two per namespace."""
    if blob[:4] != _FEATURES_MAGIC:
        raise StoreError("unknown features encoding")
    names: list[str] = []
    bounds: list[int] = [0]
    idx_parts: list[bytes] = []
    val_parts: list[bytes] = []
    pos, end = 4, len(blob)
    while pos < end:
        size = blob[pos]
        if pos + 1 + size + 4 > end:  # cut inside a namespace's name or count
            raise StoreError("truncated features encoding")
        try:
            names.append(blob[pos + 1 : pos + 1 + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise StoreError("corrupt features encoding: a namespace name is not UTF-8") from None
        pos += 1 + size
        (n,) = _COUNT(blob, pos)
        pos += 4
        idx_parts.append(blob[pos : pos + 4 * n])
        pos += 4 * n
        val_parts.append(blob[pos : pos + 4 * n])
        pos += 4 * n
        bounds.append(bounds[-1] + n)
    if pos != end:
        raise StoreError("truncated features encoding")
    indices = _read_only(np.frombuffer(b"".join(idx_parts), dtype=_U4), np.uint32)
    values = _read_only(np.frombuffer(b"".join(val_parts), dtype=_F4), np.float32)
    return {name: (indices[bounds[i] : bounds[i + 1]], values[bounds[i] : bounds[i + 1]])
            for i, name in enumerate(names)}


_COUNT = struct.Struct("<I").unpack_from


def _read_only(array: np.ndarray, native: type[np.generic]) -> np.ndarray:
    """`array` (read-only, over a bytes object) in the native type, aligned: itself on a little-endian machine
    (bytes objects' data are aligned), a converted copy elsewhere."""
    if array.dtype != native or not array.flags.aligned:
        array = array.astype(native)
        array.setflags(write=False)
    return array


def safe_text(text: str) -> str:
    """`text` as every store can hold it: lone surrogates (valid in JSON strings, not in UTF-8) and NUL (`\\u0000`:
    SQLite keeps it, PostgreSQL's `text` refuses it, and the whole write transaction with it) become U+FFFD, so that
    a prompt or tenant is stored the same on either store."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def to_json(value: Any) -> str:
    """Compact JSON; NaN and infinities are refused."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def floats_json(values: Sequence[float]) -> str:
    """A JSON array of finite floats (`repr` is valid JSON for them), several times faster than `json.dumps`."""
    return "[" + ",".join(map(repr, values)) + "]"
