"""`weft-update-server`: the update medium, served to systemd-sysupdate over loopback HTTP.

systemd-sysupdate fetches and checks an update source with systemd-pull, which in systemd 254
never finishes a `file://` download that has a signature to check (it logs "Transfer aborted."
and hangs); over HTTP the same source is fetched, checksummed and its signature verified. So the
image's transfers (sysupdate.d/) read `http://127.0.0.1:8619/`, and this program serves the
directory where an update medium is mounted, `/run/weft-updates`, there: read-only, GET/HEAD of
the files at its top level only, nothing else. systemd starts it on the first connection
(units/weft-update-server.socket passes the listening socket); nothing it serves is trusted —
systemd-pull checks SHA256SUMS.gpg against the image's update key and every file against
SHA256SUMS (docs/updates.md).
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import urllib.parse
from collections.abc import Sequence
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from weft.cli_support import add_debug_flag, run_cli
from weft.errors import UsageError, WeftError

log = logging.getLogger("weft.update_server")

SOURCE = Path("/run/weft-updates")
SD_LISTEN_FDS_START = 3


class MediumHandler(SimpleHTTPRequestHandler):
    """Files at the top level of the directory; no listings, no subdirectories, no writes."""

    def send_head(self) -> Any:
        name = urllib.parse.unquote(self.path.split("?", 1)[0]).lstrip("/")
        if not name or "/" in name or name.startswith("."):
            self.send_error(404)
            return None
        return super().send_head()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        # sendfile(2): the kernel moves the bytes. Python's own copy loop managed ~19 MB/s under
        # TCG, which made the server, not the checks, what an update waited for.
        self.connection.sendfile(source)

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(404)
        return None

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def activated_socket() -> socket.socket:
    """The listening socket systemd passed (LISTEN_FDS, LISTEN_PID: sd_listen_fds(3))."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        raise WeftError("no socket from systemd (start weft-update-server.socket, or pass --listen ADDRESS:PORT)")
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def serve(directory: Path, listener: socket.socket) -> None:
    if not directory.is_dir():
        # Every request gets 404 (systemd-sysupdate then reports no update source) until a
        # medium is mounted there; failing would only make systemd stop activating the socket.
        log.warning("%s does not exist: mount an update medium there", directory)
    handler = partial(MediumHandler, directory=str(directory))
    server = ThreadingHTTPServer(listener.getsockname()[:2], handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    log.info("serving %s on http://%s:%d/", directory, *listener.getsockname()[:2])
    with server:
        server.serve_forever()


def _listener(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--listen wants HOST:PORT, not {address!r}")
    listener = socket.create_server((host, int(port)))
    return listener


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="weft-update-server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--directory", type=Path, default=SOURCE, help=f"what to serve (default {SOURCE})")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="bind this address instead of using the socket systemd passes")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    serve(args.directory, _listener(args.listen) if args.listen else activated_socket())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)
