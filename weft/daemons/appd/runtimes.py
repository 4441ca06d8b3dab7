"""Runtime processes: spawning, the standby pool, stopping.

A fresh Python process needs ~100 ms to import wasmtime and build an Engine, more than the
whole launch budget. appd therefore keeps `pool_size` runtimes started with `--standby`:
they have paid that cost and wait on their relay socket. A launch takes one and hands it
the session over the relay; a replacement is started in the background. Every session still
runs in a process of its own.

With WEFT_APP_CGROUPS=required each runtime is moved into the `standby` cgroup right after
its spawn and into a cgroup of its own, with the app limits, when a session takes it
(cgroups.py); that cgroup is removed when the runtime has exited.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
from pathlib import Path

from weft.daemons.appd.cgroups import AppCgroups, CgroupError
from weft.daemons.appd.config import AppdConfig
from weft.daemons.relay import MAX_LINE_BYTES, FromRuntime, Ipc, Launch, Ready, decode_line, encode_line

log = logging.getLogger("weft.appd")


class RuntimeProcess:
    """One runtime process and appd's end of its relay socket."""

    def __init__(self, process: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, cgroups: AppCgroups | None = None):
        self.process = process
        self.reader = reader
        self.writer = writer
        self.pending: list[bytes] = []
        self.cgroups = cgroups
        self.cgroup: Path | None = None  # its session's cgroup, once a session took it

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def send(self, message: Launch | Ipc) -> None:
        # Lines queued in one event-loop turn go out in one write: under load that saves a
        # syscall and a wake-up of the runtime per message.
        if not self.pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self.pending.append(encode_line(message))

    def _flush(self) -> None:
        lines, self.pending = self.pending, []
        if not self.writer.is_closing():
            self.writer.write(b"".join(lines))

    def backlog(self) -> int:
        return self.writer.transport.get_write_buffer_size() + sum(map(len, self.pending))

    async def next_message(self) -> Ready | Ipc | None:
        """The next line from the runtime, or None when it closed the relay."""
        line = await self.reader.readline()
        if not line:
            return None
        return decode_line(line, FromRuntime)  # type: ignore[return-value]

    async def stop(self, grace_s: float) -> int:
        """SIGTERM, then SIGKILL after `grace_s`; always reaps and closes the relay."""
        if self.alive:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace_s)
            except TimeoutError:
                log.warning("runtime %d ignored SIGTERM for %.1f s; killing it", self.pid, grace_s)
                self._signal(signal.SIGKILL)
        code = await self.process.wait()
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()
        if self.cgroups is not None and self.cgroup is not None:
            await self.cgroups.release(self.cgroup)
            self.cgroup = None
        return code

    def _signal(self, sig: signal.Signals) -> None:
        # Not Process.send_signal/kill: Popen's poll() there reaps a child that has just exited
        # before asyncio's child watcher does, and the watcher then reports 255 instead of the
        # real status (a crash would read "exit 255"). Until the watcher has reaped it, the pid
        # is still this child's (at worst a zombie), so os.kill cannot hit another process.
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def enter_session(self, session_id: int) -> None:
        """Into the session's own cgroup (with the app limits) before it is told to launch."""
        if self.cgroups is not None:
            self.cgroup = self.cgroups.enter_session(self.pid, session_id)


async def spawn_runtime(config: AppdConfig, cgroups: AppCgroups | None = None) -> RuntimeProcess:
    ours, theirs = socket.socketpair()
    try:
        argv = [*config.runtime_command, "--standby", "--relay-fd", str(theirs.fileno())]
        process = await asyncio.create_subprocess_exec(*argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    try:
        if cgroups is not None:
            cgroups.adopt_standby(process.pid)
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_LINE_BYTES + 1)
    except BaseException:  # cancelled (a terminate or shutdown) mid-spawn: leave nothing behind
        ours.close()
        process.kill()
        await asyncio.shield(process.wait())
        raise
    return RuntimeProcess(process, reader, writer, cgroups)


class RuntimePool:
    def __init__(self, config: AppdConfig, cgroups: AppCgroups | None = None):
        self.config = config
        self.cgroups = cgroups
        self.idle: list[RuntimeProcess] = []
        self.refill_task: asyncio.Task[None] | None = None
        self.closed = False

    def start(self) -> None:
        self._schedule_refill()

    def _schedule_refill(self) -> None:
        if self.refill_task is None or self.refill_task.done():
            self.refill_task = asyncio.create_task(self._refill())

    async def _refill(self) -> None:
        while not self.closed and len(self.idle) < self.config.pool_size:
            try:
                self.idle.append(await spawn_runtime(self.config, self.cgroups))
            except (OSError, CgroupError) as exc:
                log.error("cannot start a standby runtime: %s", exc)
                return

    async def take(self, session_id: int) -> RuntimeProcess:
        """A standby runtime (or a fresh one when none is idle), in session_id's cgroup."""
        runtime = None
        while self.idle and runtime is None:
            candidate = self.idle.pop(0)
            if candidate.alive:
                runtime = candidate
            else:
                await candidate.stop(0.1)
        if runtime is None:
            runtime = await spawn_runtime(self.config, self.cgroups)
        self._schedule_refill()
        try:
            runtime.enter_session(session_id)
        except CgroupError:
            await runtime.stop(0.1)
            raise
        return runtime

    async def close(self) -> None:
        self.closed = True
        if self.refill_task is not None:
            await self.refill_task  # finishes the spawn in progress, so nothing escapes
        idle, self.idle = self.idle, []
        await asyncio.gather(*(runtime.stop(1.0) for runtime in idle))
