"""weft.terminal.terminal_safe: nothing a terminal would interpret survives."""
from __future__ import annotations

import pytest

from weft.terminal import terminal_safe

OSC52_CLIPBOARD = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x07"


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in text)


def test_osc52_sequence_does_not_survive() -> None:
    shown = terminal_safe(f"Notes{OSC52_CLIPBOARD}")
    assert "\x1b" not in shown and "\x07" not in shown
    assert shown == "Notes\\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\\x07"


@pytest.mark.parametrize("char, escaped", [
    ("\x00", "\\x00"), ("\n", "\\x0a"), ("\r", "\\x0d"), ("\t", "\\x09"), ("\x1b", "\\x1b"),
    ("\x7f", "\\x7f"),
    ("\x9b", "\\u009b"),  # one-character CSI
    ("\x9d", "\\u009d"),  # one-character OSC
    ("\udc9b", "\\udc9b"),  # the byte 0x9b smuggled through surrogateescape
    ("\ud800", "\\ud800"),
    ("\u202e", "\\u202e"),  # right-to-left override
    ("\u2028", "\\u2028"),
])
def test_each_control_is_escaped(char: str, escaped: str) -> None:
    assert terminal_safe(f"a{char}b") == f"a{escaped}b"


def test_no_control_character_survives_any_code_point() -> None:
    everything = "".join(chr(c) for c in range(0x10000))
    assert not _has_control(terminal_safe(everything))


def test_surrogateescaped_bytes_are_escaped() -> None:
    name = b"app\x1b[2J\x9b31m".decode("utf-8", "surrogateescape")
    shown = terminal_safe(name)
    assert not _has_control(shown)
    shown.encode("utf-8")  # printable with a strict encoder


@pytest.mark.parametrize("text", ["Notes", "Zürich Karten — 東京", "C:\\path\\x1b", "emoji 👩‍💻", ""])
def test_printable_text_is_unchanged(text: str) -> None:
    assert terminal_safe(text) == text
