"""The one user-facing error type: a message meant for a person, shown without a traceback."""


class WeftError(Exception):
    """A failure the user can act on. The CLI prints `error: <message>` and exits non-zero."""

    exit_code = 1


class UsageError(WeftError):
    """The command line itself is wrong."""

    exit_code = 2


class ToolError(WeftError):
    """An external program failed; carries its own stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str):
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:]
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        super().__init__(f"{argv[0]} failed with exit status {returncode}{detail}")
