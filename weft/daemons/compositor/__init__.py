"""weft-compositor: the WEFT desktop's Wayland compositor (pywlroots 0.15). See docs/desktop.md."""
