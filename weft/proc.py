"""Every external program goes through `run()` or `spawn()`: logged as `+ cmd` (shown with
--debug), given a clean environment, stderr captured, failures typed.

A child sees PATH, HOME, TMPDIR and LANG/LC_ALL=C.UTF-8 plus only what its caller passes in
`env` (use `inherited()` to pass on named variables of this process), so a stray variable in
the caller's environment never changes what a tool does.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from weft.errors import ToolError, WeftError

log = logging.getLogger("weft.proc")

KEPT_FROM_PARENT = ("PATH", "HOME", "TMPDIR")
LOCALE = "C.UTF-8"
# What a tool that downloads needs to reach the network the way the user's shell does.
NETWORK_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                     "SSL_CERT_FILE", "SSL_CERT_DIR")

Stream = int | IO[bytes] | None


def find_tool(name: str, hint: str) -> str:
    """Absolute path of `name` on PATH, or a WeftError saying what to install."""
    path = shutil.which(name)
    if path is None:
        raise WeftError(f"{name} not found on PATH; {hint}")
    return path


def inherited(*names: str, prefix: str | None = None) -> dict[str, str]:
    """The variables `names` (and those starting with `prefix`) that are set in this process,
    for a caller that must hand them on to a child explicitly."""
    return {key: value for key, value in os.environ.items()
            if key in names or (prefix is not None and key.startswith(prefix))}


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The clean environment of a child: the few variables every program needs, plus `extra`."""
    env = {name: os.environ[name] for name in KEPT_FROM_PARENT if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env["LANG"] = env["LC_ALL"] = LOCALE
    env.update(extra or {})
    return env


def _announce(args: list[str]) -> None:
    log.debug("+ %s", shlex.join(args))


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    capture: bool = True,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a program to completion; raise ToolError with its stderr when it exits non-zero.

    `env` is added to the clean child environment (see `child_env`)."""
    args = [os.fspath(a) for a in argv]
    _announce(args)
    try:
        proc = subprocess.run(
            args,
            env=child_env(env),
            cwd=cwd,
            timeout=timeout,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            check=False,
        )
    except FileNotFoundError as exc:
        raise WeftError(f"cannot run {args[0]}: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise WeftError(f"{Path(args[0]).name} did not finish within {timeout:g} s") from exc
    if proc.returncode != 0:
        stderr = (proc.stderr or b"").decode(errors="replace")
        raise ToolError(args, proc.returncode, stderr)
    return proc


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    stdin: Stream = subprocess.DEVNULL,
    stdout: Stream = None,
    stderr: Stream = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running program (QEMU) and return at once; the caller owns the process."""
    args = [os.fspath(a) for a in argv]
    _announce(args)
    try:
        return subprocess.Popen(args, env=child_env(env), stdin=stdin, stdout=stdout, stderr=stderr)
    except FileNotFoundError as exc:
        raise WeftError(f"cannot run {args[0]}: {exc.strerror}") from exc
