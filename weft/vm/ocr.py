"""Reading a screenshot's text with Tesseract (Debian's tesseract-ocr), as the NixOS test
driver does: what a person would read on the guest's screen, with where each word is, so a
test can wait for text and click it."""
from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict

from weft.errors import WeftError
from weft.proc import find_tool, run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OCR_TIMEOUT_S = 60
# A dark UI (WEFT's) has light text on dark and coloured backgrounds (white on a blue button):
# Tesseract reads black text on white best, so light pixels become black and the rest white.
LIGHT_TEXT_THRESHOLD = 180
# Tesseract page segmentation modes for a lone number: a block, a line, a character.
NUMBER_PAGE_MODES = ("6", "7", "10")
SCALE = 2  # Tesseract wants glyphs taller than ~20 px; UI text is 13-20 px


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


def _prepared(png: Path, dest: Path) -> Path:
    """Black text on white, twice the size: a dark screen is thresholded so that its light text
    turns black (a light screen keeps its dark text as it is)."""
    with Image.open(png) as image:
        gray = ImageOps.grayscale(image)
    histogram = gray.histogram()
    mean = sum(value * count for value, count in enumerate(histogram)) / max(1, sum(histogram))
    if mean < 128:
        gray = gray.point(lambda value: 0 if value >= LIGHT_TEXT_THRESHOLD else 255)
    gray.resize((gray.width * SCALE, gray.height * SCALE), Image.Resampling.LANCZOS).save(dest)
    return dest


def read_screen(png: Path) -> Screen:
    """Run Tesseract on `png` (sparse text: a desktop is tiles and bars, not a page); word boxes
    are in `png`'s pixels."""
    tesseract = find_tool("tesseract", "install tesseract-ocr (bash ci/setup.sh)")
    with tempfile.TemporaryDirectory(prefix="weft-ocr-") as tmp:
        prepared = _prepared(png, Path(tmp) / "ocr.png")
        result = run([tesseract, prepared, "-", "--psm", "11", "tsv"], timeout=OCR_TIMEOUT_S)
    return Screen(words=tuple(_words(result.stdout.decode(errors="replace"), SCALE)))


def _words(tsv: str, scale: int) -> list[Word]:
    words = []
    for row in csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE):
        text = (row.get("text") or "").strip()
        if row.get("level") != "5" or not text:
            continue
        words.append(Word(text=text, left=int(row["left"]) // scale, top=int(row["top"]) // scale,
                          width=int(row["width"]) // scale, height=int(row["height"]) // scale,
                          line=(int(row["block_num"]), int(row["par_num"]), int(row["line_num"]))))
    return words


def read_number(png: Path, box: tuple[int, int, int, int]) -> int | None:
    """The integer shown alone in `box` (left, top, right, bottom) of `png`, or None. Sparse-text
    OCR drops a lone large digit; read as a block, a line or a character, digits only, it is
    found (which of those works varies with the digit and the box, so each is tried)."""
    tesseract = find_tool("tesseract", "install tesseract-ocr (bash ci/setup.sh)")
    with tempfile.TemporaryDirectory(prefix="weft-ocr-") as tmp:
        with Image.open(png) as image:
            image.crop(box).save(Path(tmp) / "box.png")
        prepared = _prepared(Path(tmp) / "box.png", Path(tmp) / "ocr.png")
        for page_mode in NUMBER_PAGE_MODES:
            result = run([tesseract, prepared, "-", "--psm", page_mode, "-c", "tessedit_char_whitelist=-0123456789"],
                         timeout=OCR_TIMEOUT_S)
            text = result.stdout.decode(errors="replace").strip()
            if text.lstrip("-").isdigit():
                return int(text)
    return None
