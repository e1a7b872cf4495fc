"""CRC-32C (Castagnoli) and TensorFlow's masking of it: the checksum of TF checkpoint bundles and of
TFRecord files (TensorBoard event files)."""

from __future__ import annotations

import functools
from collections.abc import Callable

__all__ = ["crc32c", "fast_crc32c", "mask_crc", "unmask_crc"]


@functools.cache
def _table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


@functools.cache
def fast_crc32c() -> Callable[[bytes], int] | None:
    """A C implementation when one is installed (``google-crc32c`` or ``crc32c``), else None."""
    for module, attr in (("google_crc32c", "value"), ("crc32c", "crc32c")):
        try:
            return getattr(__import__(module), attr)
        except ImportError:
            continue
    return None


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (a C implementation when one is installed, else a table loop)."""
    fast = fast_crc32c()
    if fast is not None:
        return fast(bytes(data))
    crc, table = 0xFFFFFFFF, _table()
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """TensorFlow stores a CRC rotated right by 15 bits plus a constant."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
