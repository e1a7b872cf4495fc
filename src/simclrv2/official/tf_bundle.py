"""A TensorFlow checkpoint ("tensor bundle") reader that needs no TensorFlow.

A bundle ``PREFIX`` is ``PREFIX.index``, an SSTable (LevelDB table format, uncompressed) mapping
tensor names to ``BundleEntryProto`` records (key "" holds the ``BundleHeaderProto``), and
``PREFIX.data-0000S-of-0000N`` shards holding the raw little-endian tensor bytes. Parsing needs
varints, block handles and the protobuf wire format of those two messages, nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simclrv2.crc32c import crc32c, fast_crc32c, unmask_crc

__all__ = ["BundleError", "BundleEntry", "TFBundle", "proto_fields"]

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER = 5  # compression type byte + masked crc32c
# TensorFlow DataType enum -> numpy dtype (those a checkpoint of ours can hold).
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
          10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
DT_STRING = 7
VERIFY_WITHOUT_FAST_CRC = 1 << 16  # bytes: without a C crc32c, only tensors up to this size are checked


class BundleError(ValueError):
    """The files are not a readable TensorFlow checkpoint bundle."""


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lives: ``BundleEntryProto`` without the partitioned-variable slices."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # masked, as stored
    sliced: bool


# ---- protobuf wire format and varints --------------------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise BundleError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise BundleError("varint too long")


def proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a protobuf message: ints for varint/fixed, bytes for length-delimited."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        else:
            raise BundleError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise BundleError("truncated protobuf message")
        out.append((field, value))
    return out


def _shape(buf: bytes) -> tuple[int, ...]:
    """``TensorShapeProto``: repeated Dim (field 2) with size (field 1)."""
    dims = []
    for field, value in proto_fields(buf):
        if field == 2:
            size = dict(proto_fields(value)).get(1, 0)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)
        elif field == 3 and value:
            raise BundleError("tensor of unknown rank")
    return tuple(dims)


def _entry(name: str, buf: bytes) -> BundleEntry:
    values: dict[int, int | bytes] = {1: 0, 2: b"", 3: 0, 4: 0, 5: 0}
    sliced = False
    for field, value in proto_fields(buf):
        if field == 7:
            sliced = True
        else:
            values[field] = value
    return BundleEntry(name, values[1], _shape(values[2]), values[3], values[4], values[5], values.get(6), sliced)


# ---- the SSTable ----------------------------------------------------------------------------------

def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Key/value pairs of one table block (keys are prefix-compressed against the previous key)."""
    if len(block) < 4:
        raise BundleError("table block too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise BundleError("corrupt table block")
    pos, key, out = 0, b"", []
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        out.append((key, block[pos:pos + vlen]))
        pos += vlen
    if pos != end:
        raise BundleError("corrupt table block")
    return out


def _read_block(data: bytes, handle: bytes) -> bytes:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + BLOCK_TRAILER > len(data):
        raise BundleError("table block outside the index file (truncated?)")
    block = data[offset:offset + size]
    kind, masked = struct.unpack_from("<BI", data, offset + size)
    if kind != 0:
        raise BundleError(f"compressed table blocks (type {kind}) are not supported")
    if unmask_crc(masked) != crc32c(data[offset:offset + size + 1]):
        raise BundleError("index block checksum mismatch")
    return block


class TFBundle:
    """The tensors of checkpoint ``prefix`` (e.g. ``.../model.ckpt-751``): names, shapes, values."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = Path(prefix)
        index = Path(f"{self.prefix}.index")
        if not index.is_file():
            raise BundleError(f"no checkpoint index {index}")
        data = index.read_bytes()
        if len(data) < FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
            raise BundleError(f"{index} is not a TensorFlow checkpoint index (bad footer magic)")
        footer = data[-FOOTER_SIZE:]
        _, pos = _varint(footer, 0)  # metaindex handle (empty in bundles)
        _, pos = _varint(footer, pos)
        index_handle = footer[pos:]
        self.entries: dict[str, BundleEntry] = {}
        self.num_shards = 1
        for _, handle in _block_entries(_read_block(data, index_handle)):
            for key, value in _block_entries(_read_block(data, handle)):
                if key == b"":
                    header = dict(proto_fields(value))
                    self.num_shards = header.get(1, 1)
                    if header.get(2, 0) != 0:
                        raise BundleError(f"{index}: big-endian checkpoints are not supported")
                else:
                    name = key.decode()
                    self.entries[name] = _entry(name, value)

    def shard_path(self, shard_id: int) -> Path:
        return Path(f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}")

    def names(self) -> list[str]:
        return sorted(self.entries)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: e.shape for n, e in self.entries.items()}

    def check_shards(self) -> None:
        """Every shard exists and is long enough for the tensors it should hold (catches truncation early)."""
        need: dict[int, int] = {}
        for e in self.entries.values():
            need[e.shard_id] = max(need.get(e.shard_id, 0), e.offset + e.size)
        for shard, end in sorted(need.items()):
            path = self.shard_path(shard)
            if not path.is_file():
                raise BundleError(f"checkpoint data shard missing: {path}")
            if path.stat().st_size < end:
                raise BundleError(f"checkpoint data shard {path} is truncated: {path.stat().st_size} bytes, "
                                  f"its tensors need {end}")

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a numpy array (string tensors as an object array of bytes)."""
        if name not in self.entries:
            raise KeyError(name)
        e = self.entries[name]
        if e.sliced:
            raise BundleError(f"{name}: partitioned (sliced) variables are not supported")
        path = self.shard_path(e.shard_id)
        with open(path, "rb") as f:
            f.seek(e.offset)
            raw = f.read(e.size)
        if len(raw) != e.size:
            raise BundleError(f"checkpoint data shard {path} is truncated (tensor {name})")
        if e.dtype == DT_STRING:
            return self._strings(name, raw, e)
        if e.dtype not in DTYPES:
            raise BundleError(f"{name}: unsupported dtype enum {e.dtype}")
        if e.crc32c is not None and (fast_crc32c() is not None or e.size <= VERIFY_WITHOUT_FAST_CRC):
            if crc32c(raw) != unmask_crc(e.crc32c):
                raise BundleError(f"{name}: checksum mismatch in {path} (corrupt file)")
        dtype = np.dtype(DTYPES[e.dtype]).newbyteorder("<")
        count = int(np.prod(e.shape)) if e.shape else 1
        if count * dtype.itemsize != e.size:
            raise BundleError(f"{name}: {e.size} bytes do not fit shape {e.shape}")
        return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(e.shape)

    @staticmethod
    def _strings(name: str, raw: bytes, e: BundleEntry) -> np.ndarray:
        # Layout: varint64 length per element, a uint32 checksum of the lengths, then the bytes.
        count = int(np.prod(e.shape)) if e.shape else 1
        pos, lengths = 0, []
        for _ in range(count):
            n, pos = _varint(raw, pos)
            lengths.append(n)
        pos += 4
        values = []
        for n in lengths:
            values.append(raw[pos:pos + n])
            pos += n
        if pos != len(raw):
            raise BundleError(f"{name}: corrupt string tensor")
        return np.array(values, dtype=object).reshape(e.shape)
