"""weft-appd: the session daemon."""
