"""weft-shell: the system UI (taskbar, launcher, clock) as a WebKitGTK page over appd's WebSocket."""
