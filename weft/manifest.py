"""`wapp.toml`: the one manifest model used by weft-pack, appd and the runtime.

Interfaces follow the reference (§2.2-2.4); its defects are fixed here:
`[runtime].module` and `[ui].entry` must stay inside the package directory, and
`net:fetch:<host>` is a real host allowlist entry (a hostname, or `*` for any host).
"""
from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from weft.errors import WeftError

MANIFEST_NAME = "wapp.toml"
SIGNATURE_NAME = "signature.sig"
WASM_MAGIC = b"\0asm"
MAX_MANIFEST_BYTES = 64 * 1024
# Bounds that keep tomllib from recursing deeply or working quadratically (see _check_shape);
# a real manifest needs 2 levels and 2-part keys.
MAX_MANIFEST_NESTING = 32
MAX_KEY_PARTS = 32

APP_ID_RE = re.compile(r"^[a-z][a-z0-9]*(\.[a-z][a-z0-9]*){2,}$")
# Not in the reference (which accepts any string); versions end up in file names.
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_~-]{0,63}$")
HOST_RE = re.compile(r"^(\*|(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*)$")

FIXED_CAPABILITIES = frozenset(
    {
        "fs:rw:app-data",
        "fs:read:app-data",
        "fs:rw:xdg-documents",
        "fs:read:xdg-documents",
        "hw:gpu:compute",
        "hw:gpu:render",
        "sys:notifications",
        "sys:clipboard:read",
        "sys:clipboard:write",
    }
)
FETCH_PREFIX = "net:fetch:"


class ManifestError(WeftError):
    """The manifest is unreadable or invalid; `problems` lists every finding."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def is_valid_app_id(app_id: object) -> bool:
    return isinstance(app_id, str) and APP_ID_RE.fullmatch(app_id) is not None


def require_app_id(app_id: str) -> str:
    """Validate an app id at an entry point (CLI argument, wire message, path component)."""
    if not is_valid_app_id(app_id):
        raise WeftError(f"'{app_id}' is not a valid app ID (expected e.g. com.example.notes)")
    return app_id


def _check_app_id(value: str) -> str:
    if not is_valid_app_id(value):
        raise ValueError(f"package.id '{value}' does not match required pattern")
    return value


def _check_name(value: str) -> str:
    size = len(value.encode())
    if size == 0:
        raise ValueError("package.name is empty")
    if size > 64:
        raise ValueError(f"package.name exceeds 64 characters ({size})")
    return value


def _check_version(value: str) -> str:
    if not VERSION_RE.fullmatch(value):
        raise ValueError(f"package.version '{value}' must be 1-64 characters of [0-9A-Za-z.+_~-]")
    return value


def _check_capability(value: str) -> str:
    if value in FIXED_CAPABILITIES:
        return value
    if value.startswith(FETCH_PREFIX) and HOST_RE.fullmatch(value[len(FETCH_PREFIX):]):
        return value
    raise ValueError(f"unknown capability '{value}'")


def _check_inner_path(value: str) -> str:
    """A path inside the package: relative, POSIX, no `..`, no empty components."""
    path = PurePosixPath(value)
    if not value or value.startswith("/") or "\\" in value or "\0" in value:
        raise ValueError(f"'{value}' must be a relative path inside the package")
    if any(part in ("..", "") for part in value.split("/")) or path == PurePosixPath("."):
        raise ValueError(f"'{value}' must stay inside the package (no '..')")
    return value


AppId = Annotated[str, AfterValidator(_check_app_id)]
Version = Annotated[str, AfterValidator(_check_version)]
InnerPath = Annotated[str, AfterValidator(_check_inner_path)]
Capability = Annotated[str, AfterValidator(_check_capability)]


class PackageSection(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    id: AppId
    name: Annotated[str, AfterValidator(_check_name)]
    version: Version
    description: str | None = None
    author: str | None = None
    capabilities: tuple[Capability, ...] = ()


class RuntimeSection(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    module: InnerPath


class UiSection(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    entry: InnerPath


class Manifest(BaseModel):
    """A parsed, validated `wapp.toml`. Unknown keys are ignored, as in the reference."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    package: PackageSection
    runtime: RuntimeSection
    ui: UiSection

    @property
    def app_id(self) -> str:
        return self.package.id

    def grants(self, capability: str) -> bool:
        return capability in self.package.capabilities

    @property
    def fetch_hosts(self) -> frozenset[str]:
        """Hosts the app may fetch from (`*` = any); empty = no network at all."""
        return frozenset(
            cap[len(FETCH_PREFIX):] for cap in self.package.capabilities if cap.startswith(FETCH_PREFIX)
        )


def _describe(error: ErrorDetails) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    if error["type"] == "value_error":
        msg = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
        if loc in ("runtime.module", "ui.entry"):
            return f"{loc}: {msg}"
        return msg
    if error["type"] == "missing":
        return f"{loc} is missing"
    return f"{loc}: {error['msg']}"


_SHAPE_TOKEN = re.compile(r"[\[\]{}#\"'=,.\n]")


def _check_shape(text: str) -> None:
    """Refuse what makes tomllib itself fail badly, before it runs.

    tomllib parses arrays and inline tables recursively (a few hundred `[` raise RecursionError,
    at a depth that depends on the caller's stack) and handles a dotted key in time quadratic in
    its parts (a 40 KB key took 5 s). A manifest needs neither deep nesting nor long keys. This
    is a bound, not a parser: text that tomllib would reject anyway may be counted loosely.
    """
    open_brackets: list[str] = []
    expect_key = True  # at a line start, after `{`, and after `,` in an inline table
    key_parts = 1
    position = 0
    while (token := _SHAPE_TOKEN.search(text, position)) is not None:
        char, position = token.group(), token.end()
        if char in "\"'":
            position = _string_end(text, token.start())
        elif char == "#":
            newline = text.find("\n", position)
            position = len(text) if newline < 0 else newline
        elif char in "[{":
            header = char == "[" and expect_key and all(b == "[" for b in open_brackets)  # [table], [[table]]
            open_brackets.append(char)
            if len(open_brackets) > MAX_MANIFEST_NESTING:
                raise ManifestError([f"{MANIFEST_NAME}: arrays or tables nested deeper than "
                                     f"{MAX_MANIFEST_NESTING} levels"])
            expect_key = header or char == "{"
            key_parts = 1
        elif char in "]}":
            if open_brackets:
                open_brackets.pop()
            expect_key = False
        elif char == "=":
            expect_key = False
        elif char == ",":
            expect_key = bool(open_brackets) and open_brackets[-1] == "{"
            key_parts = 1
        elif char == "\n":
            if not open_brackets:  # a new line, a new key (inside a multi-line array: still a value)
                expect_key, key_parts = True, 1
        elif expect_key:  # a `.` between the parts of a dotted key
            key_parts += 1
            if key_parts > MAX_KEY_PARTS:
                raise ManifestError([f"{MANIFEST_NAME}: a key has more than {MAX_KEY_PARTS} dotted parts"])


def _string_end(text: str, start: int) -> int:
    """Index just past the TOML string starting at `start` (or the end of the text if unclosed)."""
    quote = text[start]
    delimiter = quote * 3 if text.startswith(quote * 3, start) else quote
    position = start + len(delimiter)
    while position < len(text):
        char = text[position]
        if char == "\\" and quote == '"':
            position += 2
        elif text.startswith(delimiter, position):
            position += len(delimiter)
            while len(delimiter) == 3 and text.startswith(quote, position):  # `"""a""""` ends in `a"`
                position += 1
            return position
        elif char == "\n" and len(delimiter) == 1:
            return position  # an unclosed one-line string: tomllib reports it
        else:
            position += 1
    return position


def parse_manifest(text: str) -> Manifest:
    """Parse manifest text; every problem is reported, not just the first."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MANIFEST_BYTES:
        raise ManifestError([f"{MANIFEST_NAME}: larger than {MAX_MANIFEST_BYTES} bytes"])
    _check_shape(text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError([f"{MANIFEST_NAME}: {exc}"]) from None
    except RecursionError:  # the scan above should prevent this; never let it become a traceback
        raise ManifestError([f"{MANIFEST_NAME}: arrays or tables nested too deeply"]) from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError([_describe(e) for e in exc.errors()]) from None


def load_manifest(package_dir: str | os.PathLike[str]) -> Manifest:
    path = Path(package_dir) / MANIFEST_NAME
    try:
        # O_NONBLOCK: a FIFO planted as wapp.toml must not hang a listing; only a regular file is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ManifestError([f"{MANIFEST_NAME}: not a regular file"])
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError([f"{MANIFEST_NAME}: not found in {package_dir}"]) from None
    except OSError as exc:
        raise ManifestError([f"{MANIFEST_NAME}: {exc.strerror}"]) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError([f"{MANIFEST_NAME}: larger than {MAX_MANIFEST_BYTES} bytes"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError([f"{MANIFEST_NAME}: not valid UTF-8"]) from None
    return parse_manifest(text)


def resolve_inside(package_dir: str | os.PathLike[str], inner: str) -> Path:
    """Resolve `inner` under `package_dir`, refusing anything (symlinks too) that leaves it."""
    base = Path(package_dir).resolve()
    target = (base / inner).resolve()
    if target != base and base not in target.parents:
        raise WeftError(f"'{inner}' resolves outside the package directory")
    return target
