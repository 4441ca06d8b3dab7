"""Where packages, app data and caches live, and which packages exist: the one resolver.

Every component asks this module which package directories exist (`list_packages`), where one
app's package is (`resolve_package`) and where its data goes (`app_data_dir`), so appd's
catalogue, `weft-pack list` and the runtime apply the same rules:

- The system store (`/usr/share/weft/apps`, read-only, shipped with the OS) wins. An id that
  ships with the OS, as a directory package or an image, is never taken by a user package:
  such a package is skipped with a warning, and `weft-pack install` refuses it.
- A package is a directory named by a valid app id holding a regular `wapp.toml` whose id is
  that name. Anything else in a store is skipped with a reason, never listed half-broken and
  never a reason to fail the whole listing.
- App data is bound to the publisher (issue 7, defect 7): `<app_data_root>/<app_id>/<publisher>/`,
  the publisher being the fingerprint of the key that signed the package, or `unsigned`. For
  a directory package, `weft-pack install` records the publisher it verified in
  `<store>/.<app_id>.weft-install.json`; without a record the package counts as unsigned. So a
  package that reuses a signed app's id, unsigned or from another key, never sees its data.

Deviation from the reference (§11.2 item 12): app data lives *outside* the package
directory, so uninstalling or re-verifying a package never touches user data.
"""
from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from weft import settings
from weft.errors import WeftError
from weft.manifest import AppId, Manifest, ManifestError, is_valid_app_id, load_manifest, require_app_id

SYSTEM_STORE = settings.SYSTEM_APP_STORE.default
# Signed `.wapp` images: shipped with the OS in the verity-protected root (read-only), and
# installed ones on the state partition (docs/weft-pack.md, "App images").
SYSTEM_IMAGE_STORE = settings.SYSTEM_IMAGE_STORE.default
DEVICE_IMAGE_STORE = Path("/var/lib/weft/images")
# The publisher keys the device trusts, on the verity-protected root.
TRUSTED_KEYS_DIR = Path("/usr/share/weft/trusted-keys")


UNSIGNED = "unsigned"
PUBLISHER_HEX_CHARS = 32
_PUBLISHER_RE = re.compile(rf"^([0-9a-f]{{{PUBLISHER_HEX_CHARS}}}|{UNSIGNED})$")
INSTALL_RECORD_SUFFIX = ".weft-install.json"
MAX_INSTALL_RECORD_BYTES = 4096


def publisher_from_key_id(key_id: str) -> str:
    """The publisher fingerprint: the first 16 bytes of SHA-256 of the raw public key, in hex
    (`key_id` is the whole SHA-256, as `weft.pack.keys.key_id` and image footers carry it)."""
    return key_id[:PUBLISHER_HEX_CHARS]


def _check_publisher(value: str) -> str:
    if not _PUBLISHER_RE.fullmatch(value):
        raise ValueError(f"publisher '{value}' is neither {PUBLISHER_HEX_CHARS} hex digits nor '{UNSIGNED}'")
    return value


Publisher = Annotated[str, AfterValidator(_check_publisher)]
StoreName = Literal["system", "user"]


class InstallRecord(BaseModel):
    """What `weft-pack install` verified about a directory package, kept beside it in the store."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    app_id: AppId
    publisher: Publisher


class InstalledPackage(BaseModel):
    """A package directory that exists by the store's rules, with its manifest and publisher."""

    model_config = ConfigDict(frozen=True)
    app_id: AppId
    path: Path
    manifest: Manifest
    publisher: Publisher
    store: StoreName


class SkippedEntry(BaseModel):
    """Something in a store that is not a usable package, and why (callers log or print it)."""

    model_config = ConfigDict(frozen=True)
    path: Path
    reason: str


class PackageListing(BaseModel):
    model_config = ConfigDict(frozen=True)
    packages: tuple[InstalledPackage, ...]  # sorted by app id, one per id
    skipped: tuple[SkippedEntry, ...]


class _NotAPackage(WeftError):
    pass


def install_record_path(root: Path, app_id: str) -> Path:
    return root / f".{require_app_id(app_id)}{INSTALL_RECORD_SUFFIX}"


def write_install_record(root: Path, record: InstallRecord) -> Path:
    """Write `record` beside its package atomically (temporary file, fsync, rename)."""
    path = install_record_path(root, record.app_id)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with open(fd, "w", encoding="utf-8") as fh:
            fh.write(record.model_dump_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def read_install_record(root: Path, app_id: str) -> InstallRecord | None:
    """The record beside `<root>/<app_id>`, None if there is none; WeftError if it is damaged."""
    path = install_record_path(root, app_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WeftError(f"{path}: {exc.strerror}") from None
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WeftError(f"{path}: not a regular file")
        raw = fh.read(MAX_INSTALL_RECORD_BYTES + 1)
    try:
        if len(raw) > MAX_INSTALL_RECORD_BYTES:
            raise ValueError("too large")
        record = InstallRecord.model_validate(json.loads(raw))
    except (ValueError, ValidationError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise WeftError(f"{path}: damaged install record; reinstall the package") from None
    if record.app_id != app_id:
        raise WeftError(f"{path}: install record is for {record.app_id}; reinstall the package")
    return record


class StorePaths(BaseModel):
    """Resolved once from the environment at a program's entry point and passed down."""

    model_config = ConfigDict(frozen=True)
    install_root: Path | None
    app_data_root: Path | None
    cache_root: Path
    system_root: Path | None = SYSTEM_STORE  # package directories shipped with the OS; they win
    images_root: Path | None = None
    system_images_root: Path = SYSTEM_IMAGE_STORE
    rollback_record: Path = settings.ROLLBACK_RECORD.default

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StorePaths:
        data_home = settings.data_home(env)
        user_store = data_home / "weft/apps" if data_home else None
        install_root = settings.APP_STORE.read(env) or user_store
        app_data_root = settings.APP_DATA.read(env) or (data_home / "weft/app-data" if data_home else None)
        system_images = settings.SYSTEM_IMAGE_STORE.read(env)
        images_root = settings.IMAGE_STORE.read(env) or (
            DEVICE_IMAGE_STORE if system_images.is_dir()  # on WEFT OS: the store weft-mountd reads
            else data_home / "weft/images" if data_home else None)
        return cls(install_root=install_root, system_root=settings.SYSTEM_APP_STORE.read(env),
                   app_data_root=app_data_root, cache_root=settings.cache_dir(env), images_root=images_root,
                   system_images_root=system_images, rollback_record=settings.ROLLBACK_RECORD.read(env))

    def require_install_root(self) -> Path:
        if self.install_root is None:
            raise WeftError("no install location: set WEFT_APP_STORE or HOME")
        return self.install_root

    def require_images_root(self) -> Path:
        if self.images_root is None:
            raise WeftError("no image store location: set WEFT_IMAGE_STORE or HOME")
        return self.images_root

    @property
    def roots(self) -> tuple[Path, ...]:
        """The package directory stores, in precedence order: the system store first."""
        return tuple(root for root in (self.system_root, self.install_root) if root is not None)

    def _stores(self) -> list[tuple[StoreName, Path]]:
        stores: list[tuple[StoreName, Path]] = []
        if self.system_root is not None:
            stores.append(("system", self.system_root))
        if self.install_root is not None and self.install_root != self.system_root:
            stores.append(("user", self.install_root))
        return stores

    def is_system_app(self, app_id: str) -> bool:
        """Whether `app_id` ships with the OS, as a package directory or an app image."""
        require_app_id(app_id)
        in_system_store = self.system_root is not None and os.path.lexists(self.system_root / app_id)
        return in_system_store or os.path.lexists(self.system_images_root / f"{app_id}.wapp")

    def _read_package(self, store: StoreName, root: Path, app_id: str) -> InstalledPackage:
        """The package `<root>/<app_id>` by the rules above, or _NotAPackage/WeftError saying why not."""
        path = root / app_id
        if store == "user" and self.is_system_app(app_id):
            raise _NotAPackage(f"'{app_id}' ships with the OS; a user package cannot replace it")
        if not path.is_dir():
            raise _NotAPackage("not a package directory")
        manifest = load_manifest(path)
        if manifest.app_id != app_id:
            raise _NotAPackage(f"it holds '{manifest.app_id}', not '{app_id}'")
        record = read_install_record(root, app_id)
        publisher = record.publisher if record is not None else UNSIGNED
        return InstalledPackage(app_id=app_id, path=path, manifest=manifest, publisher=publisher, store=store)

    def list_packages(self) -> PackageListing:
        """Every package directory that exists by the store's rules, and what was skipped."""
        found: dict[str, InstalledPackage] = {}
        skipped: list[SkippedEntry] = []
        for store, root in self._stores():
            try:
                names = sorted(os.listdir(root))
            except FileNotFoundError:
                continue
            except OSError as exc:
                skipped.append(SkippedEntry(path=root, reason=f"cannot list the store: {exc.strerror}"))
                continue
            for name in names:
                if name.startswith("."):  # install records, staging and removal directories
                    continue
                if not is_valid_app_id(name):
                    skipped.append(SkippedEntry(path=root / name, reason="not named by a valid app id"))
                    continue
                try:  # a user package with a system app's id is skipped here, with its reason
                    found.setdefault(name, self._read_package(store, root, name))
                except WeftError as exc:  # ManifestError, _NotAPackage, a damaged install record
                    skipped.append(SkippedEntry(path=root / name, reason=str(exc)))
        return PackageListing(packages=tuple(found[app_id] for app_id in sorted(found)), skipped=tuple(skipped))

    def resolve_package(self, app_id: str) -> InstalledPackage:
        """The package that runs for `app_id` (same rules as `list_packages`), or a WeftError."""
        require_app_id(app_id)
        for store, root in self._stores():
            if not os.path.lexists(root / app_id):
                continue
            try:
                return self._read_package(store, root, app_id)
            except ManifestError as exc:
                raise WeftError(f"package '{app_id}' in {root} is broken: {exc}") from None
            except _NotAPackage as exc:
                raise WeftError(f"package '{app_id}' in {root} is not usable: {exc}") from None
        if self.is_system_app(app_id):
            raise WeftError(f"'{app_id}' ships with the OS as an app image, not a package directory")
        raise WeftError(f"package '{app_id}' not found in any package store "
                        f"({', '.join(map(str, self.roots)) or 'none configured'})")

    def find_package(self, app_id: str) -> Path:
        """The directory of the package that runs for `app_id` (see `resolve_package`)."""
        return self.resolve_package(app_id).path

    def app_data_dir(self, app_id: str, publisher: str) -> Path:
        """`<app_data_root>/<app_id>/<publisher>/`: the data of `app_id` as published by `publisher`."""
        require_app_id(app_id)
        _check_publisher(publisher)
        return self.all_app_data(app_id) / publisher

    def all_app_data(self, app_id: str) -> Path:
        """The data of every publisher of `app_id` (what `uninstall --purge` removes)."""
        require_app_id(app_id)
        if self.app_data_root is None:
            raise WeftError("no app data location: set WEFT_APP_DATA or HOME")
        return self.app_data_root / app_id
