"""What weft-shell and weft-app-shell share: the WebKitGTK boundary, the appd WebSocket, CSP."""
