"""Hostile package trees (issue 7, defect 11 and around): symlink loops, symlinks leading out,
device files, fifos and sockets give one clean `error:` line from every command, never a
traceback, and nothing lands in the store."""
from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from weft.pack import tree
from weft.pack.signing import bundle_digest
from weft.pack.tree import PackageTreeError, read_inside, walk_package

PACK = [sys.executable, "-m", "weft.pack.cli"]


def run_pack(*argv: str | os.PathLike[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PACK, *map(str, argv)], check=False, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def one_error_line(proc: subprocess.CompletedProcess[str], message: str) -> bool:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    return (proc.returncode != 0 and "Traceback" not in proc.stderr and len(errors) == 1
            and message in proc.stderr)


def _loop_pair(p: Path) -> None:
    (p / "a").symlink_to("b")
    (p / "b").symlink_to("a")


def _module_loop(p: Path) -> None:
    (p / "app.wasm").unlink()
    (p / "app.wasm").symlink_to("app.wasm")


def _entry_loop(p: Path) -> None:
    (p / "ui" / "index.html").unlink()
    (p / "ui" / "index.html").symlink_to("../ui/index.html")


def _escape_module(p: Path) -> None:
    (p / "app.wasm").unlink()
    (p / "app.wasm").symlink_to("/bin/true")


def _socket(p: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(p / "ui" / "sock"))


def _device(p: Path) -> None:
    os.mknod(p / "ui" / "null", 0o644 | stat.S_IFCHR, os.makedev(1, 3))


OUTSIDE = "is a symlink that leads outside the package"
NOT_REGULAR = "is not a regular file or directory"
HOSTILE = [
    pytest.param(_loop_pair, "symlink loop at 'a'", id="loop-pair"),
    pytest.param(lambda p: (p / "x").symlink_to("x"), "symlink loop at 'x'", id="self-loop"),
    pytest.param(_module_loop, "symlink loop at 'app.wasm'", id="module-loop"),
    pytest.param(_entry_loop, "symlink loop at 'ui/index.html'", id="ui-entry-loop"),
    pytest.param(lambda p: (p / "self").symlink_to("."), "symlink loop at 'self'", id="dir-to-itself"),
    pytest.param(lambda p: (p / "ui" / "up").symlink_to(".."), "symlink loop at 'ui/up'", id="dir-to-parent"),
    pytest.param(lambda p: (p / "ui" / "again").symlink_to("../ui"), "symlink loop at 'ui/again'", id="dir-to-own-dir"),
    pytest.param(lambda p: (p / "leak").symlink_to("../../../../../../../etc/passwd"), f"'leak' {OUTSIDE}",
                 id="escape-relative"),
    pytest.param(lambda p: (p / "leak").symlink_to("/etc/passwd"), f"'leak' {OUTSIDE}", id="escape-absolute"),
    pytest.param(lambda p: (p / "etc").symlink_to("/etc"), f"'etc' {OUTSIDE}", id="escape-dir"),
    pytest.param(_escape_module, f"'app.wasm' {OUTSIDE}", id="escape-module"),
    pytest.param(lambda p: (p / "gone").symlink_to("nowhere"), "'gone' is a broken symlink", id="broken"),
    pytest.param(lambda p: os.mkfifo(p / "ui" / "pipe"), f"'ui/pipe' {NOT_REGULAR}", id="fifo"),
    pytest.param(_socket, f"'ui/sock' {NOT_REGULAR}", id="socket"),
    pytest.param(_device, f"'ui/null' {NOT_REGULAR}", id="device",
                 marks=pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")),
]


@pytest.mark.parametrize("plant,message", HOSTILE)
@pytest.mark.parametrize("command", ["check", "install", "sign", "bundle"])
def test_hostile_tree_is_one_clean_error(make_package, keypair, tmp_path, command, plant, message):
    package = make_package()
    plant(package)
    extra = {"sign": ["--key", keypair[0]], "bundle": ["--out", tmp_path / "b"]}.get(command, [])
    proc = run_pack(command, package, *extra, env={"WEFT_APP_STORE": str(tmp_path / "store"),
                                                   "WEFT_APP_DATA": str(tmp_path / "data")})
    assert one_error_line(proc, message), proc.stderr
    assert not (tmp_path / "store" / "com.example.notes").exists()
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
    assert not (package / "signature.sig").exists()


@pytest.mark.parametrize("command", ["verify", "build-image"])
def test_verify_and_build_image_refuse_a_symlink_loop(make_package, keypair, tmp_path, command):
    package = make_package()
    _module_loop(package)
    (package / "signature.sig").write_text("ab" * 64)
    key = keypair[1] if command == "verify" else keypair[0]
    proc = run_pack(command, package, "--key", key, *(["--out", tmp_path / "x.wapp"] if command != "verify" else []))
    assert one_error_line(proc, "symlink loop at 'app.wasm'"), proc.stderr
    assert not (tmp_path / "x.wapp").exists()


def test_signature_file_leading_out_is_refused(sample_package, keypair, tmp_path):
    (tmp_path / "elsewhere.sig").write_text("ab" * 64)
    (sample_package / "signature.sig").symlink_to(tmp_path / "elsewhere.sig")
    proc = run_pack("verify", sample_package, "--key", keypair[1])
    assert one_error_line(proc, "'signature.sig' is a symlink that leads outside the package"), proc.stderr


def test_sign_never_writes_through_a_planted_symlink(sample_package, keypair, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (sample_package / ".signature.sig.tmp").symlink_to(victim)  # the old fixed temporary name
    (sample_package / "signature.sig").symlink_to(victim)
    with pytest.raises(PackageTreeError):  # both symlinks lead out: the package is refused ...
        bundle_digest(sample_package)
    os.unlink(sample_package / ".signature.sig.tmp")
    os.unlink(sample_package / "signature.sig")
    (sample_package / "signature.sig").symlink_to("ui/index.html")  # ... one inside is replaced, not written through
    proc = run_pack("sign", sample_package, "--key", keypair[0])
    assert proc.returncode == 0, proc.stderr
    assert not (sample_package / "signature.sig").is_symlink()
    assert (sample_package / "ui" / "index.html").read_text().startswith("<!doctype html>")
    assert victim.read_text() == "precious"


def test_loop_inside_a_bundle_is_a_clean_install_error(tmp_path, make_package):
    """unbundle keeps relative symlinks; a loop among them is caught by the check of the staged copy."""
    package = make_package()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(package, arcname="com.example.notes")
        for name, target in (("a", "b"), ("b", "a")):
            info = tarfile.TarInfo(f"com.example.notes/{name}")
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    archive = tmp_path / "loop.app.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    proc = run_pack("install", archive, env={"WEFT_APP_STORE": str(tmp_path / "store"),
                                              "WEFT_APP_DATA": str(tmp_path / "data")})
    assert one_error_line(proc, "symlink loop at 'a'"), proc.stderr
    assert [p.name for p in (tmp_path / "store").iterdir()] == []


def test_symlinks_inside_are_followed_as_the_reference_does(make_package, tmp_path):
    package = make_package(files={"lib/data.txt": b"shared"})
    (package / "ui" / "lib").symlink_to("../lib")  # a directory symlink, not a loop
    (package / "alias.txt").symlink_to("lib/../lib/./data.txt")
    (package / "absolute.txt").symlink_to(package.resolve() / "lib" / "data.txt")  # absolute, but inside
    files = {f.rel: f.read_into() for f in walk_package(package)}
    assert {"ui/lib/data.txt", "alias.txt", "absolute.txt", "lib/data.txt"} <= set(files)
    assert len({files[rel] for rel in ("ui/lib/data.txt", "alias.txt", "absolute.txt", "lib/data.txt")}) == 1
    assert read_inside(package, "ui/lib/../ui/index.html", 9)  # physical `..`, as the kernel == b"<!doctype"


def test_symlinked_directories_cannot_blow_up_the_walk(make_package, monkeypatch):
    """d1 holds two links to d0, d2 two links to d1, ...: 2^20 paths from 40 symlinks."""
    package = make_package()
    (package / "d0").mkdir()
    (package / "d0" / "f").write_bytes(b"x")
    for level in range(1, 21):
        (package / f"d{level}").mkdir()
        for link in ("a", "b"):
            (package / f"d{level}" / link).symlink_to(f"../d{level - 1}")
    monkeypatch.setattr(tree, "MAX_ENTRIES", 5_000)  # the real bound is 100 000; same code path
    with pytest.raises(PackageTreeError, match="more than 5000 files and directories"):
        bundle_digest(package)


def test_depth_and_size_bounds(make_package, monkeypatch):
    package = make_package(files={"a/b/c/d/e/f.txt": b"deep", "big.bin": b"x" * 5000})
    monkeypatch.setattr(tree, "MAX_DEPTH", 4)
    with pytest.raises(PackageTreeError, match="nested more than 4 directories deep"):
        bundle_digest(package)
    monkeypatch.setattr(tree, "MAX_DEPTH", 128)
    monkeypatch.setattr(tree, "MAX_TOTAL_BYTES", 4096)
    with pytest.raises(PackageTreeError, match="holds more than"):
        bundle_digest(package)


def test_walk_order_is_the_byte_order_of_full_paths(make_package):
    package = make_package(files=dict.fromkeys(("a-c", "a/b", "a.b", "a0", "ab c", "ab/x", "é", "z"), b""))
    rels = [f.rel for f in walk_package(package)]
    assert rels == sorted(rels, key=str.encode)
