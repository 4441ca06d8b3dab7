"""The wasmtime Engine and the compile-once component cache.

A componentize-py component takes seconds to compile but ~2 ms to deserialize, so compiled
artifacts are kept in `<cache_root>/components/`. The key covers the wasm bytes, the
wasmtime version and the engine options, so an artifact from another version or
configuration is never looked up. The bytes hashed are the very bytes compiled, read from
the package root appd handed over (for an app image: through its dm-verity mount, so every
block was checked on the way); an image launch adds the image's root hash, so an artifact is
only ever reused for the same verified image, never for a tampered or re-signed one.
Deserializing loads native code, so the cache directory and every artifact must belong to
this user and be writable by nobody else; anything else is treated as foreign and rebuilt.
An artifact wasmtime refuses is rebuilt too.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import stat
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from wasmtime import Config, Engine, WasmtimeError
from wasmtime.component import Component

from weft.errors import WeftError

log = logging.getLogger("weft.runtime")

WASMTIME_VERSION = importlib.metadata.version("wasmtime")


class EngineOptions(BaseModel):
    model_config = ConfigDict(frozen=True)
    epoch_interruption: bool = True  # lets a stop request interrupt a guest that never calls the host
    max_wasm_stack: int = 1 << 20
    # Off: the GC heap (GC and exception objects) is one more memory-sized region that the
    # store's count of memories leaves out (limits.py), and shared memories come with threads.
    # No WEFT toolchain emits any of them.
    wasm_gc: bool = False
    wasm_exceptions: bool = False
    wasm_threads: bool = False

    def cache_tag(self) -> bytes:
        return f"wasmtime={WASMTIME_VERSION};{self.model_dump_json()}".encode()


def make_engine(options: EngineOptions) -> Engine:
    config = Config()
    config.epoch_interruption = options.epoch_interruption
    config.max_wasm_stack = options.max_wasm_stack
    config.wasm_gc = options.wasm_gc
    config.wasm_exceptions = options.wasm_exceptions
    config.wasm_threads = options.wasm_threads
    return Engine(config)


def _private(path: Path, st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


class ComponentCache:
    def __init__(self, engine: Engine, options: EngineOptions, cache_dir: Path):
        self.engine = engine
        self.options = options
        self.cache_dir = cache_dir

    def _usable_dir(self) -> bool:
        try:
            self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            return _private(self.cache_dir, self.cache_dir.stat())
        except OSError as exc:
            log.warning("component cache %s unusable: %s", self.cache_dir, exc.strerror)
            return False

    def artifact_path(self, wasm: bytes, image_root_hash: str | None = None) -> Path:
        tag = self.options.cache_tag() + (f";image={image_root_hash}".encode() if image_root_hash else b"")
        key = hashlib.sha256(hashlib.sha256(wasm).digest() + tag).hexdigest()
        return self.cache_dir / f"{key}.cwasm"

    def load(self, wasm_path: Path, *, image_root_hash: str | None = None) -> Component:
        """The compiled component for `wasm_path`, from the cache when a trustworthy artifact exists.
        `image_root_hash`: the verified image `wasm_path` was read from (None: a package directory)."""
        try:
            wasm = wasm_path.read_bytes()
        except OSError as exc:
            raise WeftError(f"cannot read {wasm_path}: {exc.strerror}") from None
        if not self._usable_dir():
            log.warning("cache directory %s is not private; compiling without a cache", self.cache_dir)
            return self._compile(wasm, wasm_path)
        artifact = self.artifact_path(wasm, image_root_hash)
        cached = self._load_cached(artifact)
        if cached is not None:
            return cached
        component = self._compile(wasm, wasm_path)
        partial = artifact.with_name(f".{artifact.name}.{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(component.serialize())
        os.replace(partial, artifact)  # atomic: a concurrent launch never sees half an artifact
        return component

    def _load_cached(self, artifact: Path) -> Component | None:
        try:
            st = artifact.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or not _private(artifact, st):
            log.warning("ignoring foreign cache entry %s", artifact)
            artifact.unlink(missing_ok=True)
            return None
        try:
            return Component.deserialize_file(self.engine, str(artifact))
        except WasmtimeError as exc:
            log.warning("rebuilding stale cache entry %s: %s", artifact.name, str(exc).splitlines()[0])
            artifact.unlink(missing_ok=True)
            return None

    def _compile(self, wasm: bytes, wasm_path: Path) -> Component:
        try:
            return Component(self.engine, wasm)
        except WasmtimeError as exc:
            raise WeftError(f"{wasm_path} is not a valid component: {str(exc).splitlines()[0]}") from None
