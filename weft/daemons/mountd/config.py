"""weft-mountd's configuration: where images, keys and mounts live, and who may ask.

Resolved once by the CLI (defaults: the paths on the booted image, docs/mountd.md) and
passed down; nothing below reads the environment.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from weft import settings
from weft.rollback import ROLLBACK_RECORD
from weft.store import DEVICE_IMAGE_STORE, SYSTEM_IMAGE_STORE

APPD_USER = "weft"


class MountdConfig(BaseModel):
    model_config = ConfigDict(frozen=True)
    # Shipped images (verity-protected root) win over installed ones: a system id is never shadowed.
    system_images: Path = SYSTEM_IMAGE_STORE
    images: Path = DEVICE_IMAGE_STORE
    trusted_keys: Path = settings.TRUSTED_KEYS.default  # the CLI passes WEFT_TRUSTED_KEYS or --trusted-keys
    mount_root: Path = settings.APPS_MOUNT_ROOT.default
    rollback_record: Path = ROLLBACK_RECORD
    appd_uid: int = Field(ge=0)
    # Tear-down waits this long for a busy mount or device before detaching it lazily.
    busy_timeout_s: float = Field(default=1.0, ge=0, le=60)
    busy_poll_s: float = Field(default=0.05, gt=0, le=1)
    # A mount found at start-up (the helper restarted under running apps) waits this long for
    # appd to claim it again before it is torn down, and then only if nothing uses it.
    adopt_grace_s: float = Field(default=30.0, ge=0, le=3600)
