"""Where a session's package comes from: a verified image mounted by weft-mountd, or a directory.

`WEFT_APP_SOURCE` picks one source when appd starts, and there is no fallback between them:

- `verified` (the default, and WEFT OS's only setting): each launch asks weft-mountd to mount
  the app's signed image (MOUNT_APP); the runtime then reads the package from the mount,
  `<WEFT_APPS_MOUNT_ROOT>/<app_id>`, and the app's data is bound to the publisher key that
  weft-mountd verified. A refusal ends the launch with its reason (LaunchReason); a package
  directory in a store is never looked at. The session's end drops the reference
  (UNMOUNT_APP); an end with an error first asks whether dm-verity saw corruption (CHECK_APP).
- `directory` (developer hosts without device-mapper): the package directory the store
  resolver names (weft.store), as before images existed.
"""
from __future__ import annotations

import abc
import logging
import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from weft.daemons.appd.catalog import installed_apps, installed_images
from weft.daemons.appd.config import AppdConfig
from weft.daemons.appd.mountd_link import MountdLink, MountdRefusal
from weft.daemons.protocol import AppInfo, LaunchReason
from weft.errors import WeftError
from weft.manifest import AppId
from weft.store import Publisher, StorePaths, image_file

log = logging.getLogger("weft.appd")
_ROOT_HASH = re.compile(r"^[0-9a-f]{64}$")
_PUBLISHER = re.compile(r"^[0-9a-f]{32}$")  # a key fingerprint: a verified image is never `unsigned`


class PackageRoot(BaseModel):
    """A package a session may run, held until the session ends."""

    model_config = ConfigDict(frozen=True)
    app_id: AppId
    path: Path  # what the runtime reads: the verified mount, or the package directory
    publisher: Publisher
    image_root_hash: str | None = None  # verified images only
    origin: str  # for people: the image file, or the package directory


class LaunchRefused(WeftError):
    def __init__(self, app_id: str, reason: LaunchReason, message: str) -> None:
        self.app_id = app_id
        self.reason = reason
        super().__init__(message)


class AppSource(abc.ABC):
    @abc.abstractmethod
    async def acquire(self, app_id: str) -> PackageRoot:
        """The package for a new session of `app_id`, or LaunchRefused."""

    @abc.abstractmethod
    def installed(self) -> list[AppInfo]:
        """What this source can launch (QUERY_INSTALLED_APPS)."""

    @abc.abstractmethod
    async def release(self, package: PackageRoot) -> None:
        """The session that acquired `package` has ended (its runtime is gone)."""

    @abc.abstractmethod
    async def corruption(self, package: PackageRoot) -> str | None:
        """A message naming the image if dm-verity has seen a corrupted block of it, else None."""

    @abc.abstractmethod
    async def close(self) -> None:
        """appd is stopping: let go of everything still held."""


class DirectorySource(AppSource):
    def __init__(self, store: StorePaths) -> None:
        self.store = store

    async def acquire(self, app_id: str) -> PackageRoot:
        try:
            package = self.store.resolve_package(app_id)
        except WeftError as exc:
            present = any(os.path.lexists(root / app_id) for root in self.store.roots)
            raise LaunchRefused(app_id, LaunchReason.BAD_PACKAGE if present else LaunchReason.NOT_INSTALLED,
                                str(exc)) from None
        return PackageRoot(app_id=app_id, path=package.path, publisher=package.publisher, origin=str(package.path))

    def installed(self) -> list[AppInfo]:
        return installed_apps(self.store)

    async def release(self, package: PackageRoot) -> None:
        pass  # a directory is not held

    async def corruption(self, package: PackageRoot) -> str | None:
        return None  # nothing verifies a directory's blocks

    async def close(self) -> None:
        pass


class VerifiedSource(AppSource):
    def __init__(self, link: MountdLink, mount_root: Path, store: StorePaths) -> None:
        self.link = link
        self.mount_root = mount_root
        self.store = store

    def image_path(self, app_id: str) -> Path:
        """The image weft-mountd activates for `app_id` (the system store wins), for messages."""
        system = image_file(self.store.system_images_root, app_id)
        if os.path.lexists(system) or self.store.images_root is None:
            return system
        return image_file(self.store.images_root, app_id)

    async def acquire(self, app_id: str) -> PackageRoot:
        image = self.image_path(app_id)
        try:
            mounted = await self.link.mount(app_id)
        except MountdRefusal as exc:
            message = str(exc)
            if exc.reason != LaunchReason.MOUNTD_UNAVAILABLE and image.name not in message:
                message = f"{image}: {message}"
            raise LaunchRefused(app_id, exc.reason, message) from None
        expected = self.mount_root / app_id
        problem = None
        if mounted.app_id != app_id or Path(mounted.mount_path) != expected:
            problem = f"weft-mountd mounted {mounted.app_id} at {mounted.mount_path}, not {app_id} at {expected}"
        elif mounted.publisher is None or not _PUBLISHER.fullmatch(mounted.publisher):
            problem = f"weft-mountd did not say which trusted key verified {image} (publisher {mounted.publisher!r})"
        elif not _ROOT_HASH.fullmatch(mounted.root_hash):
            problem = f"weft-mountd gave no valid root hash for {image}"
        if problem is not None:
            await self._unmount(app_id)
            raise LaunchRefused(app_id, LaunchReason.MOUNT_FAILED, problem)
        assert mounted.publisher is not None
        log.info("%s %s: verified image %s (root hash %s…) mounted at %s", app_id, mounted.version, image,
                 mounted.root_hash[:16], expected)
        return PackageRoot(app_id=app_id, path=expected, publisher=mounted.publisher,
                           image_root_hash=mounted.root_hash, origin=str(image))

    def installed(self) -> list[AppInfo]:
        return installed_images(self.store)

    async def release(self, package: PackageRoot) -> None:
        await self._unmount(package.app_id)

    async def _unmount(self, app_id: str) -> None:
        try:
            await self.link.unmount(app_id)
        except MountdRefusal as exc:
            log.warning("weft-mountd: cannot drop a reference to %s: %s", app_id, exc)

    async def corruption(self, package: PackageRoot) -> str | None:
        try:
            corrupted = await self.link.is_corrupted(package.app_id)
        except MountdRefusal as exc:
            log.warning("weft-mountd: cannot check %s for corruption: %s", package.origin, exc)
            return None
        return f"dm-verity detected corruption in {package.origin}" if corrupted else None

    async def close(self) -> None:
        await self.link.close()


def app_source(config: AppdConfig) -> AppSource:
    if config.app_source == "directory":
        log.warning("WEFT_APP_SOURCE=directory: apps run from package directories, not verified images")
        return DirectorySource(config.store)
    return VerifiedSource(MountdLink(config.mountd_socket), config.apps_mount_root, config.store)
