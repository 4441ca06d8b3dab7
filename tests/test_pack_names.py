"""File names a package may hold (issue 7, defect 2): the signed listing `<rel>\\t<sha>\\n` is
unambiguous only when no name holds a control character, so every reader refuses such names."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from weft.pack.bundle import BundleError, unbundle
from weft.pack.keys import load_signing_key, load_verify_key
from weft.pack.signing import listing_digest, sign_package, verify_package
from weft.pack.tree import PackageTreeError

PACK = [sys.executable, "-m", "weft.pack.cli"]

# Raw file names (bytes) that no package may hold.
BAD_NAMES = [
    pytest.param(b"tab\tname", id="tab"),
    pytest.param(b"new\nline", id="newline"),
    pytest.param(b"esc\x1b]52;c;aGk=\x07", id="osc52"),
    pytest.param(b"del\x7f", id="del"),
    pytest.param("c1\u009b".encode(), id="c1-csi"),
    pytest.param(b"latin1-\xe9", id="not-utf8"),
]


def run_pack(*argv: str | os.PathLike[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PACK, *map(str, argv)], check=False, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def failed_with_one_error_line(proc: subprocess.CompletedProcess[str], message: str) -> bool:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    return proc.returncode != 0 and "Traceback" not in proc.stderr and len(errors) == 1 and message in errors[0]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_one_crafted_name_no_longer_stands_in_for_two_signed_files(make_package, keypair):
    """The attack: sign a package holding zz1 and zz2, delete both and add ONE file named
    'zz1<TAB><sha of zz1><LF>zz2' with zz2's content. The listing text is unchanged, so the
    reference scheme still accepted the signature for a package missing two of its files."""
    package = make_package(files={"zz1": b"first file", "zz2": b"second file"})
    sign_package(package, load_signing_key(keypair[0]))
    os.unlink(package / "zz1")
    os.unlink(package / "zz2")
    (package / f"zz1\t{_sha(b'first file')}\nzz2").write_bytes(b"second file")
    with pytest.raises(PackageTreeError, match="control character"):
        verify_package(package, load_verify_key(keypair[1]))
    proc = run_pack("verify", package, "--key", keypair[1])
    assert failed_with_one_error_line(proc, r"'zz1\x09"), proc.stderr


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("command", ["check", "sign", "verify", "install", "bundle", "build-image"])
def test_every_reader_refuses_a_control_character_or_non_utf8_name(make_package, keypair, tmp_path, command, name):
    package = make_package()
    (package / "ui" / os.fsdecode(name)).write_bytes(b"x")
    (package / "signature.sig").write_text("ab" * 64)  # for verify: signed, by someone
    extra = {"sign": ["--key", keypair[0]], "verify": ["--key", keypair[1]], "bundle": ["--out", tmp_path / "b"],
             "build-image": ["--key", keypair[0], "--out", tmp_path / "x.wapp"]}.get(command, [])
    proc = run_pack(command, package, *extra, env={"WEFT_APP_STORE": str(tmp_path / "store")})
    message = "not valid UTF-8" if name.startswith(b"latin1") else "contains a control character"
    assert failed_with_one_error_line(proc, message), proc.stderr
    assert "'ui/" in proc.stderr
    # The name is shown escaped: no raw control byte reaches the terminal.
    assert not any(ch in proc.stderr for ch in "\t\x1b\x07\x7f\u009b")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())
    assert not (tmp_path / "b").exists() and not (tmp_path / "x.wapp").exists()


def test_legitimate_names_keep_the_reference_digest():
    """Non-ASCII, spaces, backslashes and U+FFFD are fine and hash exactly as the reference does."""
    entries = [("ui/naïve café.html", "a" * 64), ("back\\slash", "b" * 64), ("\ufffd.txt", "c" * 64)]
    text = "".join(f"{rel}\t{h}\n" for rel, h in sorted(entries, key=lambda e: e[0].encode()))
    assert listing_digest(entries) == hashlib.sha256(text.encode()).digest()


@pytest.mark.parametrize("rel", ["a\tb", "a\nb", "a\x85b", "a\udce9b"])
def test_the_listing_itself_refuses_ambiguous_names(rel):
    with pytest.raises(PackageTreeError):
        listing_digest([(rel, "0" * 64)])


def _bundle_with(tmp_path: Path, name: str, link: str | None = None) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        if link is None:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        else:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
    path = tmp_path / "evil.app.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return path


@pytest.mark.parametrize("name,link", [("com.example.notes/a\tb", None), ("com.example.notes/a\nb", None),
                                       ("com.example.notes/\udce9", None), ("com.example.notes/l", "a\x1bb")])
def test_unbundle_and_install_refuse_such_names(tmp_path, name, link):
    archive = _bundle_with(tmp_path, name, link)
    with pytest.raises(BundleError, match=r"control character|not valid UTF-8"):
        unbundle(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    for argv in (["unbundle", archive, "--out", tmp_path / "out"], ["install", archive]):
        proc = run_pack(*argv, env={"WEFT_APP_STORE": str(tmp_path / "store")})
        assert failed_with_one_error_line(proc, "archive member" if link is None else "symlink"), proc.stderr
