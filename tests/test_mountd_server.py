"""weft-mountd's socket: only appd's uid is answered, framing and size cap, references die with
the connection, socket activation, and the CLI's own failures (fake kernel, real sockets)."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from mountd_support import APP, Device

from weft.daemons.mountd.client import MountdClient
from weft.daemons.mountd.errors import MountdError
from weft.daemons.mountd.registry import Registry
from weft.daemons.mountd.server import MountdServer, bind_socket, listen_fds
from weft.daemons.protocol import (
    LENGTH,
    MOUNTD_MAX_REQUEST_BYTES,
    MountError,
    MountReason,
    decode_body,
    parse_mountd_reply,
)


class Running:
    def __init__(self, device: Device, path: Path, appd_uid: int) -> None:
        self.device = device
        self.path = path
        self.server = MountdServer(Registry(device.kernel, device.config), appd_uid)
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.stop_event: asyncio.Event | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self.stop_event = asyncio.Event()
        await self.server.start(bind_socket(str(self.path)))
        self.started.set()
        await self.stop_event.wait()
        await self.server.close()

    def start(self) -> Running:
        self.thread.start()
        assert self.started.wait(10)
        return self

    def stop(self) -> None:
        assert self.stop_event is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)

    def wait_for(self, condition: object, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while not condition():  # type: ignore[operator]
            assert time.monotonic() < deadline, "condition not reached"
            time.sleep(0.01)


@pytest.fixture
def serve(device: Device, tmp_path: Path) -> Iterator[Running]:
    running = Running(device, tmp_path / "mountd.sock", os.getuid()).start()
    yield running
    running.stop()


def _raw(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock


def _reply(sock: socket.socket) -> object:
    header = sock.recv(LENGTH.size, socket.MSG_WAITALL)
    (length,) = LENGTH.unpack(header)
    return parse_mountd_reply(decode_body(sock.recv(length, socket.MSG_WAITALL)))


def test_mount_list_check_unmount_through_the_client(serve: Running, device: Device) -> None:
    device.install()
    with MountdClient(serve.path) as client:
        mounted = client.mount(APP)
        assert mounted.mount_path == str(device.config.mount_root / APP) and mounted.version == "1.0.0"
        assert [m.app_id for m in client.list_mounts()] == [APP]
        assert client.is_corrupted(APP) is False
        assert client.unmount(APP) == 0
    assert device.kernel.leftovers() == []


def test_errors_carry_their_reason(serve: Running) -> None:
    with MountdClient(serve.path) as client, pytest.raises(MountdError) as info:
        client.mount(APP)
    assert info.value.reason == MountReason.NOT_INSTALLED


def test_closing_the_connection_releases_its_mounts(serve: Running, device: Device) -> None:
    device.install()
    keeper = MountdClient(serve.path)
    keeper.mount(APP)
    with MountdClient(serve.path) as client:
        client.mount(APP)
    serve.wait_for(lambda: keeper.list_mounts()[0].refs == 1)
    keeper.close()
    serve.wait_for(lambda: device.kernel.leftovers() == [])


def test_another_uid_gets_no_answer(device: Device, tmp_path: Path) -> None:
    device.install()
    running = Running(device, tmp_path / "mountd.sock", os.getuid() + 1).start()
    try:
        sock = _raw(running.path)
        assert sock.recv(100) == b""  # closed without a reply
        with MountdClient(running.path) as client, pytest.raises(MountdError) as info:
            client.mount(APP)
        assert "without an answer" in str(info.value)
        assert device.kernel.calls == []
    finally:
        running.stop()


def test_malformed_requests_get_bad_request_and_the_connection_stays(serve: Running, device: Device) -> None:
    sock = _raw(serve.path)
    for body in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"type": "FORMAT_DISK"}),
                 msgpack.packb({"type": "MOUNT_APP", "app_id": "../../etc"}), msgpack.packb({"type": ["x"]})):
        sock.sendall(LENGTH.pack(len(body)) + body)
        reply = _reply(sock)
        assert isinstance(reply, MountError) and reply.reason == MountReason.BAD_REQUEST, reply
    body = msgpack.packb({"type": "LIST_MOUNTS"})
    sock.sendall(LENGTH.pack(len(body)) + body)
    assert _reply(sock).type == "MOUNTS"  # type: ignore[attr-defined]
    assert device.kernel.calls == []


def test_oversized_request_is_refused_and_the_connection_closed(serve: Running) -> None:
    sock = _raw(serve.path)
    sock.sendall(LENGTH.pack(MOUNTD_MAX_REQUEST_BYTES + 1))
    reply = _reply(sock)
    assert isinstance(reply, MountError) and reply.reason == MountReason.BAD_REQUEST
    assert sock.recv(10) == b""


def test_stopping_the_helper_keeps_the_mounts(device: Device, tmp_path: Path) -> None:
    """A helper restart must not pull mounts from under running apps (the next start adopts them)."""
    device.install()
    running = Running(device, tmp_path / "mountd.sock", os.getuid()).start()
    client = MountdClient(running.path)
    client.mount(APP)
    running.stop()
    client.close()
    assert len(device.kernel.mount_list) == 1
    again = Running(device, tmp_path / "mountd.sock", os.getuid()).start()
    try:
        with MountdClient(again.path) as client:
            assert [(m.app_id, m.refs) for m in client.list_mounts()] == [(APP, 0)]
            client.mount(APP)
        again.wait_for(lambda: device.kernel.leftovers() == [])
    finally:
        again.stop()
    assert device.kernel.calls.count("attach_loop") == 1


def test_listen_fds_takes_only_sockets_meant_for_this_process() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "weft-mountd.socket"}
    a, b = socket.socketpair()
    try:
        os.dup2(a.fileno(), 3)
        assert listen_fds(env) == [3] and env == {}
    finally:
        a.close()
        b.close()
    assert listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) == []
    assert listen_fds({}) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    return subprocess.run([sys.executable, "-m", "weft.daemons.mountd", *args], check=False, capture_output=True,
                          text=True, timeout=60, env=env)


def test_cli_help() -> None:
    result = _cli("--help")
    assert result.returncode == 0 and "--socket" in result.stdout and "appd" in result.stdout


def test_cli_without_a_socket_is_a_clear_error() -> None:
    result = _cli("--appd-user", "0")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    expected = "no socket" if os.geteuid() == 0 else "must run as root"
    assert f"error: {expected}" in result.stderr


def test_cli_unknown_user_is_a_clear_error() -> None:
    result = _cli("--appd-user", "no-such-user-here", "--socket", "/nonexistent/x.sock")
    assert result.returncode != 0 and "Traceback" not in result.stderr and "error:" in result.stderr
