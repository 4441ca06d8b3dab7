"""Where packages, app data and caches live, and which packages exist: the one resolver.

Every component asks this module which packages exist (`list_packages`), where one app's
package is (`resolve_package`) and where its data goes (`app_data_dir`), so appd's catalogue,
`weft-pack list` and the runtime apply the same rules. A package comes in one of two kinds:

- `directory`: a directory named by a valid app id holding a regular `wapp.toml` whose id is
  that name, in the system package store (`/usr/share/weft/apps`) or the user's store;
- `image`: a signed `<app_id>.wapp` in the system image store (`/usr/share/weft/images`) or the
  installed image store (`/var/lib/weft/images` on WEFT OS), described by the manifest inside
  it, which is trusted because the footer is signed by a key in the trusted-key directory and
  names that manifest's SHA-256 (weft.pack.image_manifest; no full verification here: install
  and weft-mountd check every block).

Rules, the same for both kinds:

- The system stores (read-only, shipped with the OS) win. An id that ships with the OS, as a
  directory package or an image, is never taken by a user entry of either kind: such an
  entry is skipped with a warning, `weft-pack install` refuses it, and a broken system entry
  is skipped without falling back to a user copy.
- Anything else in a store that is not a usable package (bad name, broken manifest, unreadable
  or unsigned footer, a manifest that is not the one the footer names, ...) is skipped with a
  reason, never listed half-broken and never a reason to fail the whole listing.
- The two kinds are listed side by side: an id can be there once as an image and once as a
  directory. Which kind runs is appd's app source setting (WEFT_APP_SOURCE): `verified`
  launches and lists only images, `directory` only package directories; `weft-pack list`
  shows both, each with its kind.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from weft import settings
from weft.errors import WeftError
from weft.manifest import AppId, Manifest, ManifestError, is_valid_app_id, load_manifest, require_app_id

if TYPE_CHECKING:
    from nacl.signing import VerifyKey

SYSTEM_STORE = settings.SYSTEM_APP_STORE.default
# Signed `.wapp` images: shipped with the OS in the verity-protected root (read-only), and
# installed ones on the state partition (docs/weft-pack.md, "App images").
SYSTEM_IMAGE_STORE = settings.SYSTEM_IMAGE_STORE.default
DEVICE_IMAGE_STORE = Path("/var/lib/weft/images")
IMAGE_SUFFIX = ".wapp"  # an image store holds `<app_id>.wapp`

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
StoreName = Literal["system", "user"]  # for images, `user` is the installed image store
PackageKind = Literal["directory", "image"]
PACKAGE_KINDS: tuple[PackageKind, ...] = ("directory", "image")


class InstallRecord(BaseModel):
    """What `weft-pack install` verified about a directory package, kept beside it in the store."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    app_id: AppId
    publisher: Publisher


class InstalledPackage(BaseModel):
    """A package (directory or image) that exists by the store's rules, with its manifest and publisher."""

    model_config = ConfigDict(frozen=True)
    app_id: AppId
    path: Path  # the package directory, or the image file
    manifest: Manifest
    publisher: Publisher  # for an image: the fingerprint of the trusted key that signed its footer
    store: StoreName
    kind: PackageKind = "directory"
    root_hash: str | None = None  # images: the dm-verity root hash their signed footer names


class SkippedEntry(BaseModel):
    """Something in a store that is not a usable package, and why (callers log or print it)."""

    model_config = ConfigDict(frozen=True)
    path: Path
    reason: str


class PackageListing(BaseModel):
    model_config = ConfigDict(frozen=True)
    packages: tuple[InstalledPackage, ...]  # sorted by app id, then kind; one per id and kind
    skipped: tuple[SkippedEntry, ...]


class _NotAPackage(WeftError):
    pass


def image_file(root: Path, app_id: str) -> Path:
    """`<root>/<app_id>.wapp`: where an image store keeps the image of `app_id`."""
    return root / f"{require_app_id(app_id)}{IMAGE_SUFFIX}"


class _TrustedKeys:
    """The device's trusted keys, loaded at most once per listing, and only if an image needs them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._keys: list[VerifyKey] | None = None
        self._problem: str | None = None

    def get(self) -> Sequence[VerifyKey]:
        if self._keys is None and self._problem is None:
            from weft.pack.footer import require_trusted_keys  # PyNaCl: only when there are images

            try:
                self._keys = require_trusted_keys(self.directory)
            except WeftError as exc:
                self._problem = str(exc)
        if self._problem is not None:
            raise _NotAPackage(self._problem)
        assert self._keys is not None
        return self._keys


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


def _entry_id(kind: PackageKind, name: str) -> str:
    """The app id a store entry is named for (`<id>`, or `<id>.wapp` in an image store), or
    _NotAPackage saying why the name is not an entry's."""
    if kind == "image":
        if not name.endswith(IMAGE_SUFFIX):
            raise _NotAPackage(f"not an app image (an image store holds only <app id>{IMAGE_SUFFIX} files)")
        name = name[:-len(IMAGE_SUFFIX)]
    if not is_valid_app_id(name):
        raise _NotAPackage("not named by a valid app id")
    return name


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
    trusted_keys_dir: Path = settings.TRUSTED_KEYS.default

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
                   system_images_root=system_images, rollback_record=settings.ROLLBACK_RECORD.read(env),
                   trusted_keys_dir=settings.TRUSTED_KEYS.read(env))

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

    def _stores(self, kind: PackageKind = "directory") -> list[tuple[StoreName, Path]]:
        """The stores of one kind, in precedence order: the system store first."""
        system, user = (self.system_root, self.install_root) if kind == "directory" else (
            self.system_images_root, self.images_root)
        stores: list[tuple[StoreName, Path]] = []
        if system is not None:
            stores.append(("system", system))
        if user is not None and user != system:
            stores.append(("user", user))
        return stores

    def is_system_app(self, app_id: str) -> bool:
        """Whether `app_id` ships with the OS, as a package directory or an app image."""
        require_app_id(app_id)
        in_system_store = self.system_root is not None and os.path.lexists(self.system_root / app_id)
        return in_system_store or os.path.lexists(image_file(self.system_images_root, app_id))

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

    def _read_image(self, store: StoreName, root: Path, app_id: str, keys: _TrustedKeys) -> InstalledPackage:
        """The image `<root>/<app_id>.wapp` by the rules above (its footer signed by a trusted key,
        the manifest inside the one the footer names), or a WeftError saying why not."""
        # Imported here: the footer model and PyNaCl cost ~40 ms that the runtime's start-up never needs.
        from weft.pack.image_manifest import read_trusted_manifest

        if store == "user" and self.is_system_app(app_id):
            raise _NotAPackage(f"'{app_id}' ships with the OS; an installed image cannot replace it")
        path = image_file(root, app_id)
        image = read_trusted_manifest(path, keys.get())
        footer = image.footer
        if footer.app_id != app_id:
            raise _NotAPackage(f"it holds '{footer.app_id}', not '{app_id}'")
        return InstalledPackage(app_id=app_id, path=path, manifest=image.manifest, store=store, kind="image",
                                publisher=publisher_from_key_id(footer.key_id), root_hash=footer.verity.root_hash)

    def _read_entry(self, kind: PackageKind, store: StoreName, root: Path, app_id: str,
                    keys: _TrustedKeys) -> InstalledPackage:
        if kind == "image":
            return self._read_image(store, root, app_id, keys)
        return self._read_package(store, root, app_id)

    def list_packages(self, kinds: tuple[PackageKind, ...] = PACKAGE_KINDS) -> PackageListing:
        """Every package of the given kinds that exists by the store's rules, and what was skipped."""
        found: dict[tuple[str, PackageKind], InstalledPackage] = {}
        skipped: list[SkippedEntry] = []
        keys = _TrustedKeys(self.trusted_keys_dir)
        for kind in PACKAGE_KINDS:
            if kind not in kinds:
                continue
            for store, root in self._stores(kind):
                try:
                    names = sorted(os.listdir(root))
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    skipped.append(SkippedEntry(path=root, reason=f"cannot list the store: {exc.strerror}"))
                    continue
                for name in names:
                    if name.startswith("."):  # install records, staging and removal directories, temporary files
                        continue
                    try:  # a user entry with a system app's id is skipped here, with its reason
                        app_id = _entry_id(kind, name)
                        found.setdefault((app_id, kind), self._read_entry(kind, store, root, app_id, keys))
                    except WeftError as exc:  # ManifestError, _NotAPackage, FooterError, a damaged install record...
                        skipped.append(SkippedEntry(path=root / name, reason=str(exc)))
        return PackageListing(packages=tuple(found[key] for key in sorted(found)), skipped=tuple(skipped))

    def resolve_package(self, app_id: str, kind: PackageKind = "directory") -> InstalledPackage:
        """The package of `kind` that runs for `app_id` (same rules as `list_packages`), or a WeftError."""
        require_app_id(app_id)
        keys = _TrustedKeys(self.trusted_keys_dir)
        for store, root in self._stores(kind):
            if kind == "image":
                path = image_file(root, app_id)
                if not os.path.lexists(path):
                    continue
                try:
                    return self._read_image(store, root, app_id, keys)
                except WeftError as exc:  # the system store's image is never passed over for an installed one
                    raise WeftError(f"app image {path} is not usable: {exc}") from None
            if not os.path.lexists(root / app_id):
                continue
            try:
                return self._read_package(store, root, app_id)
            except ManifestError as exc:
                raise WeftError(f"package '{app_id}' in {root} is broken: {exc}") from None
            except _NotAPackage as exc:
                raise WeftError(f"package '{app_id}' in {root} is not usable: {exc}") from None
        if kind == "image":
            if self.is_system_app(app_id):
                raise WeftError(f"'{app_id}' ships with the OS as a package directory, not an app image")
            raise WeftError(f"'{app_id}' has no app image in "
                            f"{' or '.join(str(root) for _store, root in self._stores('image'))}")
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
