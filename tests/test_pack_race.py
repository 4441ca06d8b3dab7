"""Install from a directory while its owner rearranges it (issue 7, defect 3).

The attack: a local user asks root to `weft-pack install ~/pkg`, and between the check and the
copy swaps a package file (or directory) for a symlink to a file only root can read. The old
code walked the tree, then copied by path, and put the secret into the store, 0644. Each test
here fires the swap at a precise point of the walk (a hook on the stat/open call that saw the
entry), and one races a real thread against many installs.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from weft.pack.cli import main as weft_pack
from weft.pack.signing import bundle_digest

SECRET = b"root-only: the device's private key\n"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "root-only" / "secret"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WEFT_APP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("WEFT_APP_DATA", str(tmp_path / "app-data"))
    return tmp_path / "store"


def store_holds_secret(store: Path) -> bool:
    return store.exists() and any(p.is_file() and SECRET in p.read_bytes() for p in store.rglob("*"))


def one_error_line(stderr: str, message: str) -> bool:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return "Traceback" not in stderr and len(errors) == 1 and message in errors[0]


def after_call(monkeypatch: pytest.MonkeyPatch, name: str, matches: Callable[[str, dict], bool],
               action: Callable[[], None]) -> list[bool]:
    """Run `action` once, right after the first `os.<name>` call that `matches` returns."""
    real = getattr(os, name)
    fired: list[bool] = []

    def hooked(path, *args, **kwargs):
        result = real(path, *args, **kwargs)
        if not fired and isinstance(path, (str, os.PathLike)) and matches(os.fspath(path), kwargs):
            fired.append(True)
            action()
        return result

    monkeypatch.setattr(os, name, hooked)
    return fired


def swap_for_symlink(path: Path, target: Path) -> Callable[[], None]:
    def swap() -> None:
        os.rename(path, path.with_name(path.name + ".orig"))
        os.symlink(target, path)
    return swap


def test_file_swapped_for_a_symlink_after_the_listing_is_refused(sample_package, secret, store, monkeypatch, capsys):
    index = sample_package / "ui" / "index.html"
    fired = after_call(monkeypatch, "stat",
                       lambda path, kw: path.endswith("index.html") and kw.get("follow_symlinks") is False,
                       swap_for_symlink(index, secret))
    assert weft_pack(["install", str(sample_package)]) != 0
    assert fired
    assert one_error_line(capsys.readouterr().err, "'ui/index.html' changed while it was being read")
    assert not store_holds_secret(store)


def test_directory_swapped_for_a_symlink_after_the_listing_is_refused(sample_package, secret, store, monkeypatch,
                                                                      capsys):
    decoy = secret.parent / "ui"
    decoy.mkdir()
    (decoy / "index.html").write_bytes(SECRET)  # a root-only directory that looks like the package's ui/
    fired = after_call(monkeypatch, "stat",
                       lambda path, kw: path == "ui" and kw.get("follow_symlinks") is False,
                       swap_for_symlink(sample_package / "ui", decoy))
    fired_old = after_call(monkeypatch, "stat",  # the old walker's lstat took the full path
                           lambda path, kw: path.endswith("/ui") and kw.get("follow_symlinks") is False,
                           swap_for_symlink(sample_package / "ui", decoy))
    assert weft_pack(["install", str(sample_package)]) != 0
    assert fired or fired_old
    assert one_error_line(capsys.readouterr().err, "'ui' changed while it was being read")
    assert not store_holds_secret(store)


def test_file_swapped_after_it_was_opened_is_copied_as_opened(sample_package, secret, store, monkeypatch, capsys):
    """Once the walk holds the descriptor, the path no longer matters: the original is copied."""
    index = sample_package / "ui" / "index.html"
    original = index.read_bytes()
    fired = after_call(monkeypatch, "open", lambda path, kw: path == "index.html", swap_for_symlink(index, secret))
    assert weft_pack(["install", str(sample_package)]) == 0, capsys.readouterr().err
    assert fired
    assert (store / "com.example.notes" / "ui" / "index.html").read_bytes() == original
    assert not store_holds_secret(store)


def test_a_real_race_never_gets_the_secret_into_the_store(sample_package, secret, store, capsys):
    """A thread flips ui/index.html between the file and a symlink to the secret while installs run."""
    index = sample_package / "ui" / "index.html"
    plain = sample_package.parent / "plain.tmp"  # outside the package, on its file system
    link = sample_package.parent / "link.tmp"
    plain.write_bytes(index.read_bytes())
    link.symlink_to(secret)
    os.unlink(index)
    os.link(plain, index)
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            os.replace(link, index)  # the symlink in place
            link.symlink_to(secret)
            os.link(plain, plain.with_name("again.tmp"))
            os.replace(plain.with_name("again.tmp"), index)  # the plain file back

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    outcomes = []
    try:
        for _ in range(300):  # the old code let the secret through about once in 30 installs
            outcomes.append(weft_pack(["install", str(sample_package)]))
            assert not store_holds_secret(store)
            if outcomes[-1] == 0:
                assert weft_pack(["uninstall", "com.example.notes"]) == 0
    finally:
        stop.set()
        flipper.join()
    # Refusals are clean errors (a symlink leaving the package, or a change mid-walk), never a traceback.
    assert "Traceback" not in capsys.readouterr().err


def test_signing_hashes_what_it_read(sample_package, monkeypatch):
    """The digest comes from the walked descriptors: a swap after the open changes nothing."""
    before = bundle_digest(sample_package)
    index = sample_package / "ui" / "index.html"
    after_call(monkeypatch, "open", lambda path, kw: path == "index.html",
               swap_for_symlink(index, sample_package / "app.wasm"))
    assert bundle_digest(sample_package) == before
