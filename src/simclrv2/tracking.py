"""TensorBoard scalars of the per-epoch metrics every stage already writes to ``metrics.jsonl``.

The event file is written here directly (TFRecord framing of ``Event`` protobufs, a few dozen bytes
each), not through ``torch.utils.tensorboard``: that module imports TensorFlow whenever it is
installed, which added seconds and a page of TensorFlow log lines to every command. Viewing the files
needs ``tensorboard`` (``pip install simclrv2[tensorboard]``); ``SIMCLRV2_TENSORBOARD=0`` turns
writing them off.
"""

from __future__ import annotations

import math
import numbers
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simclrv2.crc32c import crc32c, mask_crc

__all__ = ["TensorBoardLog", "tensorboard_enabled", "encode_scalar_event", "tfrecord"]

# Keys of a metrics record that are not metrics: the step itself and bookkeeping.
NOT_SCALARS = frozenset({"epoch", "step", "stage", "time"})


def tensorboard_enabled() -> bool:
    """False when the environment opts out with ``SIMCLRV2_TENSORBOARD=0`` (or ``false``/``off``)."""
    return os.environ.get("SIMCLRV2_TENSORBOARD", "1").strip().lower() not in ("0", "false", "no", "off")


# ---- the wire format: protobuf fields of tensorboard's event.proto / summary.proto -----------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_scalar_event(wall_time: float, step: int | None = None, scalars: Mapping[str, float] | None = None,
                        file_version: str | None = None) -> bytes:
    """``Event{wall_time=1, step=2, file_version=3, summary=5{value=1{tag=1, simple_value=2}}}``."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)
    if step is not None:
        out += _varint(2 << 3) + _varint(step & 0xFFFFFFFFFFFFFFFF)
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if scalars:
        values = b"".join(_field_bytes(1, _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", v))
                          for tag, v in scalars.items())
        out += _field_bytes(5, values)
    return out


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC-32C of the length, data, masked CRC-32C of the data."""
    def masked(b: bytes) -> bytes:
        return struct.pack("<I", mask_crc(crc32c(b)))

    length = struct.pack("<Q", len(data))
    return length + masked(length) + data + masked(data)


class TensorBoardLog:
    """Scalars of one stage under ``namespace/`` (``pretrain/loss``, ``finetune/val_top1``, ...).

    The event file is created on the first write and flushed after every write, so the dashboard is
    current and nothing is lost if the process is killed between epochs.
    """

    def __init__(self, log_dir: str | Path, namespace: str) -> None:
        self.log_dir = Path(log_dir)
        self.namespace = namespace.strip("/")
        self._file: Any = None
        self._available = tensorboard_enabled()

    @property
    def active(self) -> bool:
        """Whether scalars are being written (not switched off)."""
        return self._available

    def _open(self) -> Any:
        if self._file is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            now = time.time()
            name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.{id(self) & 0xFFFF}"
            self._file = open(self.log_dir / name, "ab")
            self._file.write(tfrecord(encode_scalar_event(now, file_version="brain.Event:2")))
        return self._file

    def write(self, values: Mapping[str, Any], step: int) -> None:
        """Log the finite numeric entries of ``values`` (booleans and strings are skipped) at ``step``."""
        scalars = {f"{self.namespace}/{k}": float(v) for k, v in values.items()
                   if k not in NOT_SCALARS and isinstance(v, numbers.Real) and not isinstance(v, bool)
                   and math.isfinite(v)}
        if not scalars or not self._available:
            return
        f = self._open()
        f.write(tfrecord(encode_scalar_event(time.time(), step, scalars)))
        f.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
