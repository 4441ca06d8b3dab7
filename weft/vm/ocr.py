"""Reading a screenshot's text with Tesseract (Debian's tesseract-ocr), as the NixOS test
driver does: what a person would read on the guest's screen, with where each word is, so a
test can wait for text and click it."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from weft.errors import WeftError
from weft.proc import find_tool, run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OCR_TIMEOUT_S = 60


class Word(BaseModel):
    """One recognised word and its box, in screen pixels."""

    model_config = ConfigDict(frozen=True)
    text: str
    left: int
    top: int
    width: int
    height: int
    line: tuple[int, int, int]  # (block, paragraph, line): words with the same key share a line

    @property
    def center(self) -> tuple[int, int]:
        return self.left + self.width // 2, self.top + self.height // 2


class Screen(BaseModel):
    """What OCR read from one screenshot."""

    model_config = ConfigDict(frozen=True)
    words: tuple[Word, ...]

    @property
    def text(self) -> str:
        """The words line by line, as a person reads them."""
        lines: dict[tuple[int, int, int], list[str]] = {}
        for word in self.words:
            lines.setdefault(word.line, []).append(word.text)
        return "\n".join(" ".join(words) for words in lines.values())


def png_size(png: Path) -> tuple[int, int]:
    """Width and height from the PNG header (IHDR is always the first chunk)."""
    head = png.read_bytes()[:24]
    if len(head) < 24 or head[:8] != PNG_MAGIC or head[12:16] != b"IHDR":
        raise WeftError(f"{png} is not a PNG image")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def read_screen(png: Path) -> Screen:
    """Run Tesseract on `png` (sparse text: a desktop is tiles and bars, not a page)."""
    tesseract = find_tool("tesseract", "install tesseract-ocr (bash ci/setup.sh)")
    result = run([tesseract, png, "-", "--psm", "11", "tsv"], timeout=OCR_TIMEOUT_S)
    return Screen(words=tuple(_words(result.stdout.decode(errors="replace"))))


def _words(tsv: str) -> list[Word]:
    words = []
    for row in csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE):
        text = (row.get("text") or "").strip()
        if row.get("level") != "5" or not text:
            continue
        words.append(Word(text=text, left=int(row["left"]), top=int(row["top"]), width=int(row["width"]),
                          height=int(row["height"]),
                          line=(int(row["block_num"]), int(row["par_num"]), int(row["line_num"]))))
    return words
