"""Shared pieces of the app-platform tests: built app packages, a compile cache, an appd process.

The example and test apps are built from source once (ci/build_examples.py caches by source
hash) and compiled once into a private cache that every test shares, so only the first run
pays the componentize-py build and the Cranelift compile.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from weft.daemons import protocol
from weft.daemons.appd.config import AppdConfig
from weft.daemons.relay import FromRuntime, Ipc, Launch, Ready, decode_line, encode_line
from weft.image import guests
from weft.pack.install import install_package
from weft.store import StorePaths

REPO = Path(__file__).resolve().parent.parent
APP_SOURCES = {
    "org.weft.demo.counter": REPO / "examples/org.weft.demo.counter",
    "org.weft.demo.notes": REPO / "examples/org.weft.demo.notes",
    "org.weft.test.probe": REPO / "tests/apps/org.weft.test.probe",
    "org.weft.test.silent": REPO / "tests/apps/org.weft.test.silent",
    "org.weft.test.memories": REPO / "tests/apps/org.weft.test.memories",
    "org.weft.test.tables": REPO / "tests/apps/org.weft.test.tables",
}
COMPILED_CACHE = REPO / ".cache/weft-test-components"


@pytest.fixture(scope="session")
def built_apps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Package directories of every app, built from source."""
    out = tmp_path_factory.mktemp("built")
    cache = guests.repo_cache(REPO)
    return {app_id: guests.build_package(src, out, cache) for app_id, src in APP_SOURCES.items()}


@pytest.fixture(scope="session")
def compiled_cache(built_apps: dict[str, Path]) -> Path:
    """A component cache holding every built app (what install-time precompilation gives)."""
    from weft.daemons.runtime.engine import ComponentCache, EngineOptions, make_engine

    COMPILED_CACHE.mkdir(mode=0o700, parents=True, exist_ok=True)
    options = EngineOptions()
    cache = ComponentCache(make_engine(options), options, COMPILED_CACHE)
    for package in built_apps.values():
        cache.load(package / "app.wasm")
    return COMPILED_CACHE


def with_capabilities(package: Path, target: Path, app_id: str, capabilities: list[str]) -> Path:
    """A copy of `package` under `target/app_id` with another id and capability list."""
    dest = target / app_id
    shutil.copytree(package, dest)
    manifest = (dest / "wapp.toml").read_text()
    original_id = manifest.split('id = "', 1)[1].split('"', 1)[0]
    manifest = manifest.replace(f'id = "{original_id}"', f'id = "{app_id}"')
    lines = [line for line in manifest.splitlines() if not line.startswith("capabilities")]
    lines.insert(lines.index("[package]") + 1, f"capabilities = {json.dumps(capabilities)}")
    (dest / "wapp.toml").write_text("\n".join(lines) + "\n")
    return dest


class Env:
    """An isolated user environment: runtime dir, app store, app data, HOME.

    appd and the runtime run packages from directories here (WEFT_APP_SOURCE=directory, the
    developer setting); tests/test_appd_verified.py launches through a fake weft-mountd instead."""

    def __init__(self, root: Path, cache: Path):
        self.root = root
        self.runtime_dir = root / "xdg"
        self.runtime_dir.mkdir(mode=0o700)
        self.store = root / "store"
        self.data = root / "app-data"
        self.home = root / "home"
        self.home.mkdir()
        self.vars = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "WEFT_APP_STORE": str(self.store),
            "WEFT_APP_DATA": str(self.data),
            "WEFT_CACHE_DIR": str(root / "cache"),
            "HOME": str(self.home),
            "WEFT_APPD_WS_PORT": "0",
            "WEFT_APP_CGROUPS": "off",
            "WEFT_APP_SOURCE": "directory",
        }
        # every test shares the compiled artifacts: point this env's cache at them
        (root / "cache").mkdir(mode=0o700)
        (root / "cache" / "components").symlink_to(cache)

    def install(self, package: Path) -> None:
        install_package(package, StorePaths.from_env(self.vars))

    def processes(self) -> list[int]:
        """Live processes started for this environment (found by its unique runtime dir)."""
        marker = f"XDG_RUNTIME_DIR={self.runtime_dir}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
                status = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if marker in environ.split(b"\0") and status.split(") ", 1)[1][0] != "Z":
                found.append(int(entry))
        return found


@pytest.fixture
def env(tmp_path: Path, compiled_cache: Path) -> Env:
    return Env(tmp_path, compiled_cache)


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Appd:
    """A real weft-appd process in an isolated environment."""

    def __init__(self, env: Env, extra_env: dict[str, str] | None = None):
        self.env = env
        config = AppdConfig.from_env({**env.vars, **(extra_env or {})})
        self.socket = config.socket_path
        self.log = env.root / "appd.log"
        wsport = config.wsport_path
        wsport.unlink(missing_ok=True)  # a previous appd's; the new one writes it once both sockets are bound
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "weft.daemons.appd"],
                                            env={**env.vars, **(extra_env or {})},
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: wsport.exists() or self.process.poll() is not None, what="appd sockets")
        assert self.process.poll() is None, self.log.read_text()
        self.ws_port = int(wsport.read_text())
        self.token = config.token_path.read_text()

    def client(self) -> protocol.Client:
        return protocol.Client(str(self.socket), timeout=30)

    def request(self, message: protocol.Message) -> protocol.Message:
        with self.client() as client:
            return client.request(message)

    def launch(self, app_id: str, timeout: float = 30.0) -> int:
        reply = self.request(protocol.LaunchApp(app_id=app_id))
        assert isinstance(reply, protocol.LaunchAck), reply
        self.wait_state(reply.session_id, protocol.SessionState.RUNNING, timeout)
        return reply.session_id

    def state(self, session_id: int) -> protocol.SessionState:
        reply = self.request(protocol.QueryAppState(session_id=session_id))
        assert isinstance(reply, protocol.AppState), reply
        return reply.state

    def wait_state(self, session_id: int, state: protocol.SessionState, timeout: float = 15.0) -> None:
        wait_for(lambda: self.state(session_id) == state, timeout, f"session {session_id} {state.value}")

    def roundtrip(self, session_id: int, payload: str, timeout_ms: int = 10_000) -> str:
        with self.client() as client:
            sent = client.request(protocol.IpcForward(session_id=session_id, payload=payload))
            assert isinstance(sent, protocol.AppState), sent
            reply = client.request(protocol.IpcRecv(session_id=session_id, timeout_ms=timeout_ms))
        assert isinstance(reply, protocol.IpcMessage), reply
        return reply.payload

    def ws_url(self, token: str | None = None) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/appd?token={token if token is not None else self.token}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


@pytest.fixture
def appd_factory(env: Env) -> Iterator[Callable[..., Appd]]:
    started: list[Appd] = []

    def start(**extra_env: str) -> Appd:
        started.append(Appd(env, extra_env))
        return started[-1]

    yield start
    for appd in started:
        appd.stop(signal.SIGKILL if appd.process.poll() is None else signal.SIGTERM)
    for pid in env.processes():  # nothing a test started may outlive it
        os.kill(pid, signal.SIGKILL)


class RuntimeUnderTest:
    """weft-runtime started the way appd does it (standby + launch over the relay), without appd."""

    def __init__(self, env: Env, app_id: str, session_id: int = 7, memory_mib: int = 128,
                 package_root: Path | None = None):
        ours, theirs = socket.socketpair()
        self.stderr_path = env.root / f"runtime-{app_id}-{session_id}.log"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "weft.daemons.runtime", "--standby", "--relay-fd", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=env.vars, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        theirs.close()
        self.sock = ours
        self.sock.settimeout(30)
        self.rfile = ours.makefile("rb")
        if package_root is None:  # what appd's directory source picks
            package = StorePaths.from_env(env.vars).resolve_package(app_id)
            package_root, publisher = package.path, package.publisher
        else:
            publisher = "unsigned"
        self.sock.sendall(encode_line(Launch(app_id=app_id, session_id=session_id, memory_mib=memory_mib,
                                             package_root=package_root, publisher=publisher)))

    def next(self) -> Ready | Ipc | None:
        line = self.rfile.readline()
        return decode_line(line, FromRuntime) if line else None  # type: ignore[return-value]

    def wait_ready(self) -> None:
        message = self.next()
        assert isinstance(message, Ready), (message, self.log())

    def send(self, payload: str) -> None:
        self.sock.sendall(encode_line(Ipc(payload=payload)))

    def ask(self, payload: str) -> str:
        self.send(payload)
        message = self.next()
        assert isinstance(message, Ipc), (message, self.log())
        return message.payload

    def log(self) -> str:
        return self.stderr_path.read_text()

    def close(self, timeout: float = 10.0) -> int:
        self.sock.shutdown(socket.SHUT_WR)
        try:
            return self.process.wait(timeout)
        finally:
            self.sock.close()


@pytest.fixture
def runtime_factory(env: Env) -> Iterator[Callable[..., RuntimeUnderTest]]:
    started: list[RuntimeUnderTest] = []

    def start(app_id: str, **kwargs: Any) -> RuntimeUnderTest:
        started.append(RuntimeUnderTest(env, app_id, **kwargs))
        return started[-1]

    yield start
    for runtime in started:
        if runtime.process.poll() is None:
            runtime.process.kill()
            runtime.process.wait()
