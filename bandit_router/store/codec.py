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
_SURROGATE = re.compile("[\ud800-\udfff]")


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
    """Inverse of `encode_features`."""
    if blob[:4] != _FEATURES_MAGIC:
        raise StoreError("unknown features encoding")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    pos = 4
    while pos < len(blob):
        (size,) = struct.unpack_from("<B", blob, pos)
        name = blob[pos + 1 : pos + 1 + size].decode("utf-8")
        pos += 1 + size
        (n,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        idx = np.frombuffer(blob, dtype="<u4", count=n, offset=pos).astype(np.uint32)
        pos += 4 * n
        val = np.frombuffer(blob, dtype="<f4", count=n, offset=pos).astype(np.float32)
        pos += 4 * n
        out[name] = (idx, val)
    return out


def safe_text(text: str) -> str:
    """`text` as SQLite can store it: lone surrogates (valid in JSON strings, not in UTF-8) become U+FFFD."""
    if text.isascii():
        return text
    return _SURROGATE.sub("\ufffd", text)


def to_json(value: Any) -> str:
    """Compact JSON; NaN and infinities are refused."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def floats_json(values: Sequence[float]) -> str:
    """A JSON array of finite floats (`repr` is valid JSON for them), several times faster than `json.dumps`."""
    return "[" + ",".join(map(repr, values)) + "]"
