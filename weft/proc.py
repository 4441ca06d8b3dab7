"""Every external program goes through `run()`: logged, stderr captured, failures typed."""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from weft.errors import ToolError, WeftError

log = logging.getLogger("weft.proc")


def find_tool(name: str, hint: str) -> str:
    """Absolute path of `name` on PATH, or a WeftError saying what to install."""
    path = shutil.which(name)
    if path is None:
        raise WeftError(f"{name} not found on PATH; {hint}")
    return path


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    capture: bool = True,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a program; raise ToolError with its stderr when it exits non-zero."""
    args = [os.fspath(a) for a in argv]
    log.debug("run: %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            env=dict(env) if env is not None else None,
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
