"""The command lines, run as real processes: help, output, and `error: ...` instead of tracebacks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PACK = [sys.executable, "-m", "weft.pack.cli"]
VERITY = [sys.executable, "-m", "weft.verity.cli"]
PACK_COMMANDS = ["check", "info", "generate-key", "sign", "verify", "install", "uninstall", "list", "bundle",
                 "unbundle", "build-image", "verify-image", "inspect-image"]


def run(argv, env=None, cwd=None):
    merged = {**os.environ, **(env or {})}
    return subprocess.run([*argv], capture_output=True, text=True, env=merged, cwd=cwd)


def failed_cleanly(proc, message: str) -> bool:
    return (proc.returncode != 0 and "Traceback" not in proc.stderr
            and any(line.startswith("error: ") for line in proc.stderr.splitlines()) and message in proc.stderr)


@pytest.mark.parametrize("command", PACK_COMMANDS)
def test_every_pack_subcommand_has_help(command):
    proc = run([*PACK, command, "--help"])
    assert proc.returncode == 0 and "usage: weft-pack " + command in proc.stdout


@pytest.mark.parametrize("command", ["format", "verify"])
def test_every_verity_subcommand_has_help(command):
    proc = run([*VERITY, command, "--help"])
    assert proc.returncode == 0 and "--hash-offset" in proc.stdout


@pytest.mark.parametrize("argv,message", [
    (["check", "/nonexistent"], "wapp.toml: not found"),
    (["uninstall", "../../etc"], "'../../etc' is not a valid app ID"),
    (["verify", ".", "--key", "/nonexistent.pub"], "cannot read public key"),
    (["unbundle", "/etc/hostname"], "not a valid bundle"),
    (["inspect-image", "/etc/hostname"], ""),
    (["verify-image", "/etc/hostname"], "give --key PUB or --trusted-keys DIR"),
    (["nonsense"], "argument COMMAND: invalid choice"),
])
def test_bad_input_is_an_error_line_not_a_traceback(argv, message, tmp_path):
    proc = run([*PACK, *argv], env={"WEFT_APP_STORE": str(tmp_path)})
    assert failed_cleanly(proc, message), proc.stderr


def test_debug_shows_the_traceback():
    proc = run([*PACK, "check", "/nonexistent", "--debug"])
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_publisher_flow_end_to_end(sample_package, tmp_path, store_env):
    assert run([*PACK, "check", str(sample_package)]).stdout == "OK\n"
    info = json.loads(run([*PACK, "info", "--json", str(sample_package)]).stdout)
    assert info["id"] == "com.example.notes" and info["capabilities"] == ["fs:rw:app-data"]
    assert run([*PACK, "generate-key", str(tmp_path / "k")]).returncode == 0
    key, pub = tmp_path / "k" / "weft-sign.key", tmp_path / "k" / "weft-sign.pub"
    assert run([*PACK, "sign", str(sample_package), "--key", str(key)]).returncode == 0
    assert run([*PACK, "verify", str(sample_package), "--key", str(pub)]).stdout == "OK\n"
    bundled = run([*PACK, "bundle", str(sample_package), "--out", str(tmp_path / "b")])
    archive = bundled.stdout.split("bundled: ")[1].strip()
    installed = run([*PACK, "install", archive, "--require-signature", "--key", str(pub)], env=store_env)
    assert installed.returncode == 0, installed.stderr
    listed = json.loads(run([*PACK, "list", "--json"], env=store_env).stdout)
    assert [a["id"] for a in listed] == ["com.example.notes"]
    assert run([*PACK, "uninstall", "com.example.notes"], env=store_env).returncode == 0
    assert run([*PACK, "list"], env=store_env).stdout == "no apps installed\n"


def test_image_commands(sample_package, keypair, other_keypair, tmp_path):
    built = run([*PACK, "build-image", str(sample_package), "--key", str(keypair[0])], cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "build-image: mkfs.erofs" in built.stderr  # progress goes to stderr
    image = tmp_path / "com.example.notes-1.0.0.wapp"
    assert run([*PACK, "verify-image", str(image), "--key", str(keypair[1])]).stdout.startswith("OK ")
    wrong = run([*PACK, "verify-image", str(image), "--key", str(other_keypair[1])])
    assert failed_cleanly(wrong, "wrong key")
    footer = json.loads(run([*PACK, "inspect-image", "--json", str(image)]).stdout)
    assert footer["app_id"] == "com.example.notes" and len(footer["verity"]["root_hash"]) == 64
    again = run([*PACK, "build-image", str(sample_package), "--key", str(keypair[0])], cwd=tmp_path)
    assert failed_cleanly(again, "") and "--force" in again.stderr


def test_verity_cli_format_and_verify(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(os.urandom(4096 * 40))
    out = run([*VERITY, "format", str(data), str(tmp_path / "hash"), "--salt", "ab" * 32]).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines()[1:])
    assert fields["Salt"].strip() == "ab" * 32
    root = fields["Root hash"].strip()
    assert run([*VERITY, "verify", str(data), str(tmp_path / "hash"), root]).returncode == 0
    with open(data, "r+b") as fh:
        fh.seek(4096 * 7)
        fh.write(b"X")
    bad = run([*VERITY, "verify", str(data), str(tmp_path / "hash"), root])
    assert failed_cleanly(bad, "data block 7 ")


@pytest.mark.parametrize("argv,message", [
    (["format", "{tmp}/missing", "{tmp}/hash"], "cannot"),
    (["format", "/etc/hostname", "/dev/null", "--salt", "zz"], "salt must be hexadecimal"),
    (["format", "/etc/hostname", "/dev/null", "--data-block-size", "999"], "block size 999"),
    (["verify", "/etc/hostname", "/etc/hostname", "00"], "superblock"),
    (["verify", "/etc/hostname", "/etc/hostname", "00", "--no-superblock"], "--salt is required"),
    (["format", sys.executable, "/dev/null", "--hash-offset", "-512"], "negative"),
    (["format", "/etc/hostname", "/dev/null", "--data-blocks", "999999"], "999999 requested"),
    (["verify", "/etc/hostname", "/etc", "00"], "Is a directory"),
])
def test_verity_cli_bad_input(argv, message, tmp_path):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert failed_cleanly(run([*VERITY, *argv]), message)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_command_lines_never_raise(data, tmp_path, monkeypatch, sample_package, keypair, capsys):
    """Any mix of commands, options and (mostly wrong) operands: an exit code, never an exception."""
    from weft.pack.cli import main as pack_main
    from weft.verity.cli import main as verity_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEFT_APP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("WEFT_APP_DATA", str(tmp_path / "data"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\0asm" + bytes(range(256)) * 40)
    operands = [str(sample_package), str(keypair[0]), str(keypair[1]), str(junk), str(tmp_path),
                "nonexistent", "com.example.notes", "", "-", "ab" * 32, "0", "-1", "../x"]
    options = ["--key", "--json", "--out", "--force", "--purge", "--require-signature", "--app-id",
               "--salt", "--hash-offset", "--data-blocks", "--no-superblock", "--format", "--hash"]
    main, commands = data.draw(st.sampled_from([(pack_main, PACK_COMMANDS), (verity_main, ["format", "verify"])]))
    argv = [data.draw(st.sampled_from(commands))]
    argv += data.draw(st.lists(st.sampled_from(operands + options), max_size=6))
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage errors and --help
        code = exc.code
    assert isinstance(code, int)
    assert "Traceback" not in capsys.readouterr().err


def test_verity_cli_random_salt_by_default(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(os.urandom(4096 * 3))
    salts = set()
    for name in ("h1", "h2"):
        out = run([*VERITY, "format", str(data), str(tmp_path / name)]).stdout
        fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines()[1:])}
        salts.add(fields["Salt"])
        assert len(fields["Salt"]) == 64
        assert run([*VERITY, "verify", str(data), str(tmp_path / name), fields["Root hash"]]).returncode == 0
    assert len(salts) == 2
