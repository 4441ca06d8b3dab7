"""Make untrusted text safe to print to a terminal.

App payloads, manifest fields and file names come from app authors. Printed raw, an ESC or
C1 control starts a terminal escape sequence: OSC 52 writes the clipboard, others retitle the
window, move the cursor to forge output, or (on some terminals) echo text back as input.
Every program that prints such text to a human goes through `terminal_safe`.
"""
from __future__ import annotations

import re

# What a terminal could interpret instead of showing:
# - C0 controls (incl. ESC, BEL, CR, LF, TAB: a field is shown on one line), DEL, C1 controls
#   (U+0080-U+009F; U+009B is a one-character CSI, U+009D an OSC on terminals that honour C1);
# - surrogates (U+D800-U+DFFF): surrogateescape turns undecodable bytes into these and writing
#   them back out emits the raw byte, which may be a C1 control in an 8-bit terminal;
# - line/paragraph separators and bidirectional overrides, which let text fake the layout of
#   the lines around it.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """`text` with every control character written as a visible escape (`\\x1b`, `\\u009b`).

    Printable text, including non-ASCII letters and backslashes, is unchanged, so the common
    case reads as written; the escapes are for display, not meant to be reversed.
    """
    return _UNSAFE.sub(_escape, text)
