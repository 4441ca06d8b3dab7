"""Reading the GPT of a disk image: which partition holds what, at which byte offset."""
from __future__ import annotations

import struct
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from weft.errors import WeftError

SECTOR = 512  # the image is built with SectorSize=512 (OVMF needs it)
GPT_SIGNATURE = b"EFI PART"

# Discoverable Partitions Specification type GUIDs (x86-64).
ESP = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
ROOT_X86_64 = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
ROOT_VERITY_X86_64 = uuid.UUID("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5")


class Partition(BaseModel):
    model_config = ConfigDict(frozen=True)
    number: int
    type_uuid: uuid.UUID
    label: str
    offset: int
    size: int


def read_partitions(image: Path) -> list[Partition]:
    """The used entries of the primary GPT of `image`."""
    try:
        with open(image, "rb") as fh:
            fh.seek(SECTOR)
            header = fh.read(92)
            if header[:8] != GPT_SIGNATURE:
                raise WeftError(f"{image} has no GPT partition table")
            entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
            fh.seek(entries_lba * SECTOR)
            table = fh.read(count * entry_size)
    except OSError as exc:
        raise WeftError(f"cannot read {image}: {exc.strerror}") from None
    partitions = []
    for index in range(count):
        entry = table[index * entry_size:(index + 1) * entry_size]
        type_uuid = uuid.UUID(bytes_le=entry[:16])
        if type_uuid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        label = entry[56:128].decode("utf-16-le").rstrip("\0")
        partitions.append(Partition(number=index + 1, type_uuid=type_uuid, label=label,
                                    offset=first * SECTOR, size=(last - first + 1) * SECTOR))
    return partitions


def find_partition(image: Path, type_uuid: uuid.UUID) -> Partition:
    for partition in read_partitions(image):
        if partition.type_uuid == type_uuid:
            return partition
    raise WeftError(f"{image} has no partition of type {type_uuid}")
