"""Packed float32 tensors on the wire <-> numpy arrays, with errors that say what is wrong."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from safepolicy.server.errors import InvalidRequest

FLOAT32 = np.dtype("<f4")
MAX_DIMS = 2


def decode_float32(shape: Sequence[int], data: bytes, what: str = "observations") -> np.ndarray:
    """A read-only float32 array of ``shape`` over ``data`` (little-endian, row-major)."""
    if len(shape) == 1 and shape[0] * FLOAT32.itemsize == len(data):
        return np.frombuffer(data, dtype=FLOAT32)  # the per-step fast path: one observation
    if not 1 <= len(shape) <= MAX_DIMS:
        raise InvalidRequest(
            f"{what} need a shape of 1 or 2 dimensions ([obs_dim] or "
            f"[batch, obs_dim]), got {list(shape)}"
        )
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidRequest(f"{what} shape {list(shape)} has a negative dimension")
        count *= dim
    if count * FLOAT32.itemsize != len(data):
        raise InvalidRequest(
            f"{what} shape {list(shape)} needs {count * FLOAT32.itemsize} bytes of float32 "
            f"data, got {len(data)}; pack them as little-endian float32, row-major"
        )
    return np.frombuffer(data, dtype=FLOAT32).reshape(tuple(shape))


def encode_float32(array: np.ndarray) -> tuple[list[int], bytes]:
    """(shape, little-endian float32 bytes) of ``array``."""
    packed = np.ascontiguousarray(array, dtype=FLOAT32)
    return list(packed.shape), packed.tobytes()
