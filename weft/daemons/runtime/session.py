"""One app session: load the package appd chose, instantiate the component with its grants, run it.

Limits: the guest's memories and tables are capped in total (limits.py); a stop request
(SIGTERM from appd, or the relay closing) wakes a guest blocked in `ipc.recv` with `none`
and interrupts a guest that is computing by bumping the engine epoch past the store's deadline.
"""
from __future__ import annotations

import enum
import logging
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from wasmtime import Engine, Store, Trap, WasiConfig, WasmtimeError
from wasmtime.component import Component, Func, Instance

from weft.daemons.runtime.channels import PortalClient, Relay
from weft.daemons.runtime.engine import ComponentCache
from weft.daemons.runtime.grants import Grants
from weft.daemons.runtime.guest_output import GuestOutput, LineBudget
from weft.daemons.runtime.host import HostImports, build_linker
from weft.daemons.runtime.limits import GuestLimits
from weft.errors import WeftError
from weft.manifest import load_manifest, resolve_inside
from weft.settings import MemoryMib
from weft.store import Publisher, StorePaths
from weft.terminal import terminal_safe

log = logging.getLogger("weft.runtime")
STOP_GRACE_S = 0.5


def failure_reason(exc: Exception) -> str:
    """What wasmtime says went wrong, in one escaped line.

    A trap's message starts with a generic 'error while executing at wasm backtrace:' and the
    backtrace (function names from the guest's own name section); the reason comes after
    'Caused by:'."""
    head, _, causes = str(exc).strip().partition("\nCaused by:")
    lines = [line.strip() for line in causes.splitlines() if line.strip()] or head.splitlines()[:1]
    return terminal_safe("; ".join(lines))


class ExitCode(enum.IntEnum):
    OK = 0  # the guest's run() returned
    FAILED = 1  # load, link or instantiation failed, or the guest trapped
    USAGE = 2
    STOPPED = 3  # interrupted by a stop request while the guest was computing


class SessionSettings(BaseModel):
    model_config = ConfigDict(frozen=True)
    app_id: str
    session_id: int
    memory_mib: MemoryMib = 256
    package_root: Path  # chosen by appd (a verified image's mount, or a package directory)
    publisher: Publisher
    image_root_hash: str | None = None  # the verified image's, for the compile-cache key


def _run_export(component: Component, engine: Engine, instance: Instance, store: Store) -> Func:
    """`run` of world weft:app/app, or `run` of the wasi:cli/run command interface."""
    names = component.type.exports(engine)
    if "run" in names:
        func = instance.get_func(store, "run")
    else:
        cli = next((n for n in names if n.startswith("wasi:cli/run@0.2")), None)
        interface = instance.get_export_index(store, cli) if cli else None
        run = instance.get_export_index(store, "run", interface) if interface else None
        func = instance.get_func(store, run) if run else None
    if func is None:
        raise WeftError("the component exports neither `run` nor `wasi:cli/run`")
    return func


class AppSession:
    def __init__(self, engine: Engine, cache: ComponentCache, store_paths: StorePaths, documents: Path | None,
                 settings: SessionSettings, relay: Relay | None):
        self.engine = engine
        self.settings = settings
        self.relay = relay
        self.stop_requested = threading.Event()
        manifest = load_manifest(settings.package_root)
        if manifest.app_id != settings.app_id:
            raise WeftError(f"{settings.package_root} holds '{manifest.app_id}', not '{settings.app_id}'")
        self.grants = Grants.from_manifest(manifest, store_paths, documents, publisher=settings.publisher)
        self.component = cache.load(resolve_inside(settings.package_root, manifest.runtime.module),
                                    image_root_hash=settings.image_root_hash)
        self.portal = PortalClient(self.grants)
        budget = LineBudget(settings.session_id)  # one budget for both streams
        self.stdout = GuestOutput(settings.session_id, "stdout", budget)
        self.stderr = GuestOutput(settings.session_id, "stderr", budget)

    def _wasi(self) -> WasiConfig:
        wasi = WasiConfig()
        wasi.argv = [self.settings.app_id]
        wasi.env = [("WEFT_APP_ID", self.settings.app_id), ("WEFT_SESSION_ID", str(self.settings.session_id))]
        for root in self.grants.roots:
            wasi.preopen_dir(str(root.host), root.guest, root.writable)
        wasi.stdout_custom = self.stdout.write
        wasi.stderr_custom = self.stderr.write
        return wasi  # no stdin, no sockets: WASI networking stays denied

    def _signal_ready(self) -> None:
        log.info("session %d (%s) ready", self.settings.session_id, self.settings.app_id)
        if self.relay is not None:
            self.relay.send_ready()

    def request_stop(self) -> None:
        """Thread-safe. A guest blocked in `ipc.recv` gets `none` and may return cleanly; one
        still computing after STOP_GRACE_S is interrupted at its next epoch check."""
        if self.stop_requested.is_set():
            return
        self.stop_requested.set()
        if self.relay is not None:
            self.relay.close_inbox()
        interrupt = threading.Timer(STOP_GRACE_S, self.engine.increment_epoch)  # past the deadline of 1
        interrupt.daemon = True
        interrupt.start()

    def run(self) -> ExitCode:
        store = Store(self.engine)
        GuestLimits.for_cap(self.settings.memory_mib).apply(store)
        store.set_epoch_deadline(1)  # the epoch only moves on a stop request
        store.set_wasi(self._wasi())
        imports = HostImports(self.grants, self.relay, self.portal, self._signal_ready)
        try:
            instance = build_linker(self.engine, imports).instantiate(store, self.component)
            _run_export(self.component, self.engine, instance, store)(store)
            return ExitCode.OK
        except (Trap, WasmtimeError) as exc:
            if self.stop_requested.is_set():
                log.info("session %d interrupted on request", self.settings.session_id)
                return ExitCode.STOPPED
            log.error("session %d failed: %s", self.settings.session_id, failure_reason(exc))
            log.debug("session %d trap details:\n%s", self.settings.session_id,
                      "\n".join(terminal_safe(line) for line in str(exc).splitlines()))
            return ExitCode.FAILED
        except Exception:  # a host import raised: our bug, but the session must still end cleanly
            log.exception("session %d: host import failed", self.settings.session_id)
            return ExitCode.FAILED
        finally:
            self.stdout.flush()
            self.stderr.flush()
            self.portal.close()
