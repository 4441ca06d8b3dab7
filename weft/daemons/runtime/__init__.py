"""weft-runtime: the Wasm component host for one app session."""
