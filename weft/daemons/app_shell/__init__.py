"""weft-app-shell: one app's web UI, served from its package, bound to one session."""
