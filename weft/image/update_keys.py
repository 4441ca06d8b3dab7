"""The OpenPGP key that signs OS updates (docs/image.md, "Update artefacts").

systemd-sysupdate (through systemd-pull) trusts an update source only if its `SHA256SUMS`
has a valid detached signature `SHA256SUMS.gpg` by a key in the image's
`/usr/lib/systemd/import-pubring.gpg`. A key is two files:

    <stem>.sec.asc       the secret key, ASCII-armored, no passphrase (mode 0600)
    <stem>.pubring.gpg   the public key as `gpg --export` writes it, which gpg reads as a keyring

The `test` profile uses the committed, public test key tests/vm/keys/weft-test-update.*; an
update signed with it proves nothing. Every other profile uses the builder's
keys/weft-update.*, made on first use and kept out of git (like keys/weft-release.key).

gpg always runs in a temporary GNUPGHOME, so ~/.gnupg is never read or changed.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from weft.errors import ToolError, WeftError
from weft.image.profile_keys import key_for_profile
from weft.proc import find_tool, run

log = logging.getLogger("weft.image")

TEST_KEY_DIR = Path("tests/vm/keys")
TEST_KEY_STEM = "weft-test-update"
TEST_KEY_NAME = "WEFT OS TEST update key (public, never trust)"
RELEASE_KEY_DIR = Path("keys")
RELEASE_KEY_STEM = "weft-update"
RELEASE_KEY_NAME = "WEFT OS update key"
SECRET_SUFFIX = ".sec.asc"
PUBRING_SUFFIX = ".pubring.gpg"
GPG_TIMEOUT = 120.0
# No passphrase: the key file itself is the secret (as keys/weft-release.key is).
NO_PASSPHRASE = ("--batch", "--pinentry-mode", "loopback", "--passphrase", "")
# What systemd-pull passes to gpg to check SHA256SUMS.gpg (src/import/pull-common.c), so publish
# accepts exactly what a device will.
PULL_VERIFY = ("--no-options", "--no-default-keyring", "--no-auto-key-locate", "--no-auto-check-trustdb", "--batch",
               "--trust-model=always")


def key_paths(key_dir: Path, stem: str) -> tuple[Path, Path]:
    """(secret key, public keyring) of the key `stem` in `key_dir`."""
    return key_dir / f"{stem}{SECRET_SUFFIX}", key_dir / f"{stem}{PUBRING_SUFFIX}"


def _gpg() -> str:
    return find_tool("gpg", "install gpg (apt-get install gpg)")


@contextmanager
def _gnupg_home() -> Iterator[dict[str, str]]:
    """A throw-away GNUPGHOME (0700) as the environment for gpg; its agent is stopped after."""
    home = tempfile.mkdtemp(prefix="weft-gpg-")
    env = {"GNUPGHOME": home}
    try:
        yield env
    finally:
        # Secret-key operations start a gpg-agent for this home; it must not outlive it.
        # (Its socket may live under /run/user/<uid>/gnupg/, so ask gpgconf rather than look.)
        gpgconf = shutil.which("gpgconf")
        if gpgconf:
            try:
                run([gpgconf, "--kill", "gpg-agent"], env=env, timeout=30)
            except WeftError as exc:
                log.debug("gpg: stopping the agent of %s: %s", home, exc)
        shutil.rmtree(home, ignore_errors=True)


def _gpg_output(argv: list[str], env: dict[str, str], what: str) -> bytes:
    try:
        return run([_gpg(), *argv], env=env, timeout=GPG_TIMEOUT).stdout
    except ToolError as exc:
        raise WeftError(f"{what}: gpg failed:\n  " + "\n  ".join(exc.stderr.strip().splitlines()[-5:])) from None


def _fingerprint(listing: bytes) -> str:
    """The first key's fingerprint in `gpg --with-colons` output."""
    for line in listing.decode(errors="replace").splitlines():
        fields = line.split(":")
        if fields[0] == "fpr" and len(fields) > 9 and fields[9]:
            return fields[9]
    raise WeftError("gpg listed no key fingerprint")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we chose
        fh.write(data)


def generate_update_key(dest_dir: Path, stem: str, name: str) -> tuple[Path, Path]:
    """A new Ed25519 signing key `name` as <stem>.sec.asc (0600, in a 0700 directory) and
    <stem>.pubring.gpg in `dest_dir`; never overwrites a key."""
    secret, pubring = key_paths(dest_dir, stem)
    for path in (secret, pubring):
        if path.exists():
            raise WeftError(f"{path} already exists; refusing to overwrite a key")
    dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest_dir, 0o700)
    with _gnupg_home() as env:
        what = f"generating the update key {name!r}"
        _gpg_output([*NO_PASSPHRASE, "--quick-generate-key", name, "ed25519", "sign", "never"], env, what)
        fingerprint = _fingerprint(_gpg_output(["--batch", "--with-colons", "--list-secret-keys"], env, what))
        armored = _gpg_output([*NO_PASSPHRASE, "--armor", "--export-secret-keys", fingerprint], env, what)
        public = _gpg_output(["--batch", "--export", fingerprint], env, what)
    if not armored or not public:
        raise WeftError(f"{what}: gpg exported nothing")
    _write_new(secret, armored, 0o600)
    try:
        _write_new(pubring, public, 0o644)
    except OSError:
        secret.unlink()  # half a key pair is no key: the next attempt starts clean
        raise
    log.info("update key: made %s (fingerprint %s)", secret, fingerprint)
    return secret, pubring


def key_fingerprint(pubring: Path) -> str:
    """The fingerprint of the (first) key in a keyring file."""
    if not pubring.is_file():
        raise WeftError(f"update keyring {pubring} does not exist")
    with _gnupg_home() as env:
        return _fingerprint(_gpg_output(["--batch", "--with-colons", "--show-keys", str(pubring)], env,
                                        f"reading {pubring}"))


def sign_file(secret_key: Path, target: Path) -> Path:
    """Write `<target>.gpg`, a binary detached signature of `target` by `secret_key`
    (replaced atomically: a reader sees the old signature or the new one)."""
    if not secret_key.is_file():
        raise WeftError(f"update signing key {secret_key} does not exist")
    signature = target.with_name(target.name + ".gpg")
    what = f"signing {target} with {secret_key}"
    with _gnupg_home() as env:
        _gpg_output([*NO_PASSPHRASE, "--import", str(secret_key)], env, what)
        data = _gpg_output([*NO_PASSPHRASE, "--detach-sign", "--output", "-", str(target)], env, what)
    if not data:
        raise WeftError(f"{what}: gpg wrote no signature")
    fd, tmp = tempfile.mkstemp(prefix=f".{signature.name}.", dir=signature.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, signature)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return signature


def verify_file(pubring: Path, target: Path, signature: Path) -> None:
    """Check `signature` over `target` as systemd-pull does, trusting only the keys in `pubring`."""
    for path, role in ((pubring, "update keyring"), (target, "signed file"), (signature, "signature")):
        if not path.is_file():
            raise WeftError(f"{role} {path} does not exist")
    with _gnupg_home() as env:
        # gpg may write beside a keyring it reads; give it a copy, not the committed file.
        keyring = Path(env["GNUPGHOME"]) / "import-pubring.gpg"
        shutil.copyfile(pubring, keyring)
        try:
            run([_gpg(), *PULL_VERIFY, f"--keyring={keyring}", "--verify", str(signature), str(target)], env=env,
                timeout=GPG_TIMEOUT)
        except ToolError as exc:
            detail = "\n  ".join(exc.stderr.strip().splitlines()[-3:])
            raise WeftError(f"{signature} is not a valid signature of {target} by a key in {pubring}:\n  {detail}"
                            ) from None


def release_key_paths(repo: Path) -> tuple[Path, Path]:
    return key_paths(repo / RELEASE_KEY_DIR, RELEASE_KEY_STEM)


def generate_release_update_key(repo: Path) -> tuple[Path, Path]:
    """`weft image genkey`: keys/weft-update.sec.asc (0600, in a 0700 directory) + .pubring.gpg."""
    return generate_update_key(repo / RELEASE_KEY_DIR, RELEASE_KEY_STEM, RELEASE_KEY_NAME)


def update_key_for(repo: Path, profile: str) -> tuple[Path, Path]:
    """(secret key, public keyring) that sign the updates of `profile`; the release key is
    made if missing."""
    test_secret, _ = key_paths(TEST_KEY_DIR, TEST_KEY_STEM)
    release_secret, _ = key_paths(RELEASE_KEY_DIR, RELEASE_KEY_STEM)
    secret = key_for_profile(repo, profile, test_key=test_secret, release_key=release_secret,
                             make=lambda: generate_release_update_key(repo), what="update signing key",
                             why="Images trust it for their updates")
    pubring = secret.with_name(secret.name.removesuffix(SECRET_SUFFIX) + PUBRING_SUFFIX)
    if not pubring.is_file():
        raise WeftError(f"{secret} exists but its public keyring {pubring} is missing; restore it from your backup")
    return secret, pubring
