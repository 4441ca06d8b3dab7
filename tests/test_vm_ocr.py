"""weft.vm.ocr on real pictures: text drawn with cairo, read back by Tesseract with its place."""
from __future__ import annotations

from pathlib import Path

import cairo
import pytest

from weft.errors import WeftError
from weft.vm.ocr import png_size, read_number, read_screen


def _draw(path: Path, words: list[tuple[str, int, int]], *, dark: bool) -> Path:
    surface = cairo.ImageSurface(cairo.FORMAT_RGB24, 640, 400)
    ctx = cairo.Context(surface)
    ctx.set_source_rgb(*((0.1, 0.12, 0.2) if dark else (1, 1, 1)))
    ctx.paint()
    ctx.set_source_rgb(*((0.95, 0.95, 0.95) if dark else (0, 0, 0)))
    ctx.select_font_face("DejaVu Sans")
    ctx.set_font_size(28)
    for text, x, y in words:
        ctx.move_to(x, y)
        ctx.show_text(text)
    surface.write_to_png(str(path))
    return path


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_words_are_read_with_their_place_on_the_screen(tmp_path: Path, dark: bool) -> None:
    png = _draw(tmp_path / "screen.png", [("Counter", 60, 100), ("Notes", 400, 300)], dark=dark)
    screen = read_screen(png)
    found = {w.text: w for w in screen.words}
    assert {"Counter", "Notes"} <= set(found), screen.text
    x, y = found["Counter"].center
    assert 60 <= x <= 220 and 70 <= y <= 110
    x, y = found["Notes"].center
    assert 400 <= x <= 520 and 270 <= y <= 310


def test_words_on_one_line_read_as_one_line(tmp_path: Path) -> None:
    png = _draw(tmp_path / "screen.png", [("Counter is ready", 40, 200)], dark=False)
    assert "Counter is ready" in read_screen(png).text.splitlines()


def test_png_size_reads_the_header_and_refuses_other_files(tmp_path: Path) -> None:
    assert png_size(_draw(tmp_path / "a.png", [], dark=False)) == (640, 400)
    (tmp_path / "b.png").write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(WeftError, match="not a PNG"):
        png_size(tmp_path / "b.png")


def test_white_text_on_a_blue_button_and_a_lone_large_number_are_read(tmp_path: Path) -> None:
    """WEFT's counter: a 72 px count above white-on-blue buttons on a dark page."""
    surface = cairo.ImageSurface(cairo.FORMAT_RGB24, 640, 400)
    ctx = cairo.Context(surface)
    ctx.set_source_rgb(0.06, 0.07, 0.1)
    ctx.paint()
    ctx.set_source_rgb(0.36, 0.54, 0.96)
    ctx.rectangle(250, 260, 90, 40)
    ctx.fill()
    ctx.select_font_face("DejaVu Sans")
    ctx.set_source_rgb(1, 1, 1)
    ctx.set_font_size(20)
    ctx.move_to(262, 288)
    ctx.show_text("Reset")
    ctx.set_source_rgb(0.91, 0.93, 0.96)
    ctx.set_font_size(72)
    ctx.move_to(275, 220)
    ctx.show_text("7")
    png = tmp_path / "counter.png"
    surface.write_to_png(str(png))
    assert "Reset" in [w.text for w in read_screen(png).words]
    assert read_number(png, (150, 120, 450, 250)) == 7
