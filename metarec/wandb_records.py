"""Reading an offline W&B run back: the protobuf records of its ``run-*.wandb`` log.

W&B 0.31 writes no config or summary file for an offline run; everything (run, config, history,
summary, artifacts) is in the record log that ``wandb sync`` uploads, a LevelDB-style log of 32 KiB
blocks. ``scripts/wandb_layout.py`` and the tests read runs back with :func:`offline_records`.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

from metarec.errors import DataError

BLOCK = 32768
HEADER = 7  # crc (4), length (2), kind (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def offline_records(path: Path) -> Iterator:
    """Yield the ``wandb_internal_pb2.Record`` messages of the log ``path``, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise DataError(f"{path} is not a W&B run log")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos:pos + length], pos + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


__all__ = ["offline_records"]
