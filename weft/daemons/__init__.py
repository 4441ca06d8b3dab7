"""The long-running programs of WEFT OS."""
