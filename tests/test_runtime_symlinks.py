"""Issue 7, defect 12: symlinks a guest plants in its data pointing out of it are never followed by WEFT.

wasmtime's WASI lets a guest create a symlink with a relative target that climbs out of its
preopen (absolute targets are refused) and offers no hook to refuse it; so these tests prove
that nothing of WEFT follows such a link: not WASI itself, not the file portal, not
`weft-pack uninstall --purge`.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from platform_support import Env, RuntimeUnderTest, with_capabilities

from weft.daemons.runtime.session import ExitCode

APP_ID = "org.weft.test.linker"


class Planted:
    def __init__(self, env: Env, runtime: RuntimeUnderTest, outside: Path):
        self.runtime = runtime
        self.outside = outside
        assert runtime.ask("files-write:/data/good.txt:good") == "written"
        [marker] = Path(env.vars["WEFT_APP_DATA"]).rglob("good.txt")
        self.data = marker.parent  # the host directory behind /data
        climb = os.path.relpath(outside, self.data)
        assert climb.startswith("../")
        # The guest plants them itself, through WASI.
        assert runtime.ask(f"symlink:{climb}/secret.txt:/data/file-out") == "linked"
        assert runtime.ask(f"symlink:{climb}:/data/dir-out") == "linked"
        assert runtime.ask(f"symlink:{outside}/secret.txt:/data/absolute").startswith("oserror")  # refused
        assert os.readlink(self.data / "file-out") == f"{climb}/secret.txt"  # really there on the host

    def outside_untouched(self) -> bool:
        return sorted(p.name for p in self.outside.iterdir()) == ["secret.txt"] and \
            (self.outside / "secret.txt").read_text() == "secret"


@pytest.fixture
def planted(env: Env, built_apps: dict[str, Path], tmp_path: Path,
            runtime_factory: Callable[..., RuntimeUnderTest]) -> Iterator[Planted]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    env.install(with_capabilities(built_apps["org.weft.test.probe"], tmp_path / "src", APP_ID, ["fs:rw:app-data"]))
    runtime: RuntimeUnderTest = runtime_factory(APP_ID)
    runtime.wait_ready()
    yield Planted(env, runtime, outside)


def test_wasi_never_follows_a_planted_link(planted: Planted) -> None:
    ask = planted.runtime.ask
    for command in ("read:/data/file-out", "read:/data/dir-out/secret.txt", "write:/data/file-out:x",
                    "write:/data/dir-out/new.txt:x", "symlink:x:/data/dir-out/link"):
        assert ask(command).startswith("oserror"), command
    assert planted.outside_untouched()
    assert planted.runtime.close() == ExitCode.OK


def test_the_portal_never_follows_a_planted_link(planted: Planted) -> None:
    ask = planted.runtime.ask
    assert ask("files-read:/data/file-out") == "err: access denied: /data/file-out"
    assert ask("files-read:/data/dir-out/secret.txt") == "err: access denied: /data/dir-out/secret.txt"
    assert ask("files-list:/data/dir-out") == "err: access denied: /data/dir-out"
    assert ask("files-write:/data/file-out:x").startswith("err: Too many levels of symbolic links")
    assert ask("files-write:/data/dir-out/new.txt:x") == "err: Not a directory (os error 20)"  # O_NOFOLLOW parent
    assert ask("files-list:/data") == "dir-out,file-out,good.txt"  # listing shows names, follows nothing
    assert planted.outside_untouched()
    assert planted.runtime.close() == ExitCode.OK


def test_uninstall_purge_removes_the_links_not_their_targets(env: Env, planted: Planted) -> None:
    assert planted.runtime.close() == ExitCode.OK
    result = subprocess.run([sys.executable, "-c", "import sys; from weft.pack.cli import main; sys.exit(main())",
                             "uninstall", "--purge", APP_ID], env=env.vars, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert not planted.data.exists()
    assert planted.outside_untouched()
