"""weft-runtime as a real process with real components, driven over its relay like appd does."""
from __future__ import annotations

import http.server
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from platform_support import Env, with_capabilities

from weft.daemons.runtime.engine import ComponentCache, EngineOptions, make_engine
from weft.daemons.runtime.fetch import MAX_BODY_BYTES
from weft.daemons.runtime.session import ExitCode, failure_reason


@pytest.fixture
def probe(env: Env, built_apps: dict[str, Path], tmp_path: Path) -> Callable[[str, list[str]], str]:
    """Install a probe app with the given capabilities and return its id."""
    def install(app_id: str, capabilities: list[str]) -> str:
        env.install(with_capabilities(built_apps["org.weft.test.probe"], tmp_path / "src", app_id, capabilities))
        return app_id
    return install


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = {"/": (200, b"hello from the host"), "/missing": (404, b"gone"),
                            "/big": (200, b"x" * (MAX_BODY_BYTES + 1)), "/moved": (302, b"")}[self.path]
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            if status == 302:
                self.send_header("Location", "http://localhost:1/elsewhere")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_counter_answers_over_the_relay_and_exits_cleanly_when_it_closes(env, built_apps, runtime_factory):
    env.install(built_apps["org.weft.demo.counter"])
    runtime = runtime_factory("org.weft.demo.counter")
    runtime.wait_ready()
    assert runtime.ask("increment") == '{"count":1}'
    assert runtime.ask("  get\n") == '{"count":1}'
    assert runtime.close() == ExitCode.OK


def test_guest_stdout_cannot_fake_readiness_and_is_logged_with_the_session(env, probe, runtime_factory):
    runtime = runtime_factory(probe("org.weft.test.quiet", []), session_id=41)
    runtime.wait_ready()
    # The guest prints exactly what a READY line looks like, on stdout; only the reply arrives.
    assert runtime.ask('print:{"t":"ready"}') == "printed"
    assert runtime.ask("print:READY") == "printed"
    assert runtime.ask("echo:a\nb") == "a\nb"
    runtime.close()
    assert 'session 41 stdout: {"t":"ready"}' in runtime.log()


def test_imports_without_their_capability_return_errors(env, probe, runtime_factory, http_server):
    runtime = runtime_factory(probe("org.weft.test.nocaps", []))
    runtime.wait_ready()
    assert runtime.ask(f"fetch:{http_server}") == "err: capability 'net:fetch:127.0.0.1' not granted"
    assert runtime.ask("notify:hi") == "err: capability 'sys:notifications' not granted"
    assert runtime.ask("clip-read") == "err: capability 'sys:clipboard:read' not granted"
    assert runtime.ask("files-read:/data/x").startswith("err: access denied")
    assert runtime.ask("read:/etc/hostname").startswith("oserror")  # no preopen: WASI sees nothing


def test_fetch_is_limited_to_allowlisted_hosts(env, probe, runtime_factory, http_server):
    runtime = runtime_factory(probe("org.weft.test.fetcher", ["net:fetch:127.0.0.1"]))
    runtime.wait_ready()
    assert runtime.ask(f"fetch:{http_server}") == "200 text/plain hello from the host"
    assert runtime.ask("fetch:http://localhost:1/") == "err: capability 'net:fetch:localhost' not granted"
    assert runtime.ask("fetch:file:///etc/passwd").startswith("err: only http and https")
    assert runtime.ask(f"fetch:{http_server}missing") == "404 text/plain gone"  # a response, not an error
    assert runtime.ask(f"fetch:{http_server}moved") == "302 text/plain "  # not followed off the allowlist
    assert runtime.ask(f"fetch:{http_server}big") == f"err: response body larger than {MAX_BODY_BYTES} bytes"


def test_documents_capability_maps_home_documents_read_only(env, probe, runtime_factory):
    documents = env.home / "Documents"
    documents.mkdir()
    (documents / "letter.txt").write_text("dear app")
    runtime = runtime_factory(probe("org.weft.test.docreader", ["fs:read:xdg-documents"]))
    runtime.wait_ready()
    assert runtime.ask("read:/xdg/documents/letter.txt") == "dear app"
    assert runtime.ask("files-list:/xdg/documents") == "letter.txt"
    assert runtime.ask("write:/xdg/documents/letter.txt:changed").startswith("oserror")
    assert runtime.ask("files-write:/xdg/documents/letter.txt:changed").startswith("err: access denied")
    assert (documents / "letter.txt").read_text() == "dear app"


def test_read_only_app_data_refuses_writes_through_wasi_and_the_portal(env, probe, runtime_factory):
    app_id = probe("org.weft.test.reader", ["fs:read:app-data"])
    data_dir = Path(env.vars["WEFT_APP_DATA"]) / app_id / "unsigned"  # installed without a signature check
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "seed.txt").write_text("seeded")
    runtime = runtime_factory(app_id)
    runtime.wait_ready()
    assert runtime.ask("read:/data/seed.txt") == "seeded"
    assert runtime.ask("files-read:/data/seed.txt") == "seeded"
    assert runtime.ask("write:/data/new.txt:x").startswith("oserror")
    assert runtime.ask("files-write:/data/new.txt:x") == "err: access denied: /data is read-only"
    assert not (data_dir / "new.txt").exists()


def test_portal_from_the_guest_writes_inside_and_refuses_escapes(env, probe, runtime_factory):
    app_id = probe("org.weft.test.writer", ["fs:rw:app-data"])
    runtime = runtime_factory(app_id)
    runtime.wait_ready()
    assert runtime.ask("files-write:/data/sub/note.txt:kept") == "written"
    assert (Path(env.vars["WEFT_APP_DATA"]) / app_id / "unsigned/sub/note.txt").read_text() == "kept"
    assert runtime.ask("files-list:/data") == "sub"
    assert runtime.ask("files-read:/data/../../../etc/passwd").startswith("err: access denied")
    os.symlink("/etc", Path(env.vars["WEFT_APP_DATA"]) / app_id / "unsigned/etc")
    assert runtime.ask("files-read:/data/etc/passwd").startswith("err: access denied")
    assert runtime.close() == ExitCode.OK


def test_memory_cap_is_enforced(env, probe, runtime_factory):
    runtime = runtime_factory(probe("org.weft.test.hungry", []), memory_mib=96)
    runtime.wait_ready()
    assert runtime.ask("alloc:32") == "holding 32 MiB"
    assert runtime.ask("alloc:64") == "memory error"
    assert runtime.ask("echo:still alive") == "still alive"


def test_sigterm_interrupts_a_runaway_guest(env, probe, runtime_factory):
    runtime = runtime_factory(probe("org.weft.test.spinner", []))
    runtime.wait_ready()
    runtime.send("spin")
    time.sleep(0.3)
    started = time.monotonic()
    runtime.process.send_signal(signal.SIGTERM)
    assert runtime.process.wait(5) == ExitCode.STOPPED
    assert time.monotonic() - started < 3


def test_a_trapping_guest_exits_with_failure(env, probe, runtime_factory):
    runtime = runtime_factory(probe("org.weft.test.trapper", []))
    runtime.wait_ready()
    runtime.send("trap")
    assert runtime.next() is None
    assert runtime.process.wait(10) == ExitCode.FAILED
    # The reason, not wasmtime's generic first line ('error while executing at wasm backtrace:').
    failed = [line for line in runtime.log().splitlines() if "session" in line and "failed:" in line]
    assert len(failed) == 1 and "unreachable" in failed[0], runtime.log()


def test_the_failure_reason_is_the_cause_escaped_without_the_backtrace():
    trap = Exception("error while executing at wasm backtrace:\n    0:  0x98 - \x1b]52;c;aGk=\x07!<wasm function 2>\n\n"
                     "Caused by:\n    wasm trap: wasm `unreachable` instruction executed")
    assert failure_reason(trap) == "wasm trap: wasm `unreachable` instruction executed"
    assert failure_reason(Exception("resource limit exceeded: memory count too high at 4\n")) == \
        "resource limit exceeded: memory count too high at 4"
    assert failure_reason(Exception("x\n\nCaused by:\n    0: bad \x1b[2J\n    1: worse")) == "0: bad \\x1b[2J; 1: worse"


def test_a_package_root_without_the_app_fails_with_a_clear_message(env, runtime_factory):
    runtime = runtime_factory("org.weft.not.installed", package_root=env.store / "org.weft.not.installed")
    assert runtime.next() is None
    assert runtime.process.wait(10) == 1
    assert f"wapp.toml: not found in {env.store / 'org.weft.not.installed'}" in runtime.log()
    assert "Traceback" not in runtime.log()


def test_the_runtime_checks_the_manifest_id_of_the_package_appd_names(env, built_apps, runtime_factory):
    """appd chooses the package root; the runtime still refuses one that holds another app."""
    runtime = runtime_factory("org.weft.demo.other", package_root=built_apps["org.weft.demo.counter"])
    assert runtime.next() is None
    assert runtime.process.wait(10) == 1
    assert "holds 'org.weft.demo.counter', not 'org.weft.demo.other'" in runtime.log()
    assert "Traceback" not in runtime.log()


def test_compile_cache_is_reused_and_rebuilt_when_stale_or_foreign(built_apps, tmp_path):
    options = EngineOptions()
    engine = make_engine(options)
    cache = ComponentCache(engine, options, tmp_path / "components")
    wasm = built_apps["org.weft.demo.counter"] / "app.wasm"
    cache.load(wasm)
    artifact = cache.artifact_path(wasm.read_bytes())
    first = artifact.stat()
    assert stat.S_IMODE(first.st_mode) == 0o600
    cache.load(wasm)
    assert artifact.stat().st_mtime_ns == first.st_mtime_ns  # deserialized, not rebuilt

    artifact.write_bytes(b"not a compiled component")  # stale/corrupt (e.g. another wasmtime)
    cache.load(wasm)
    assert artifact.read_bytes() != b"not a compiled component"

    artifact.chmod(0o666)  # writable by others: cannot be trusted to hold our native code
    cache.load(wasm)
    assert stat.S_IMODE(artifact.stat().st_mode) == 0o600

    other_engine_options = EngineOptions(max_wasm_stack=1 << 19)
    assert ComponentCache(engine, other_engine_options, tmp_path / "components").artifact_path(
        wasm.read_bytes()) != artifact


@pytest.mark.parametrize("argv, message", [
    (["org.weft.demo.counter"], "APP_ID and SESSION_ID are required"),
    (["Bad.Id", "1"], "is not a valid app ID"),
    (["org.weft.demo.counter", "0"], "invalid session id"),
    (["--standby"], "--standby takes --relay-fd"),
    (["org.weft.demo.counter", "1", "--memory-mib", "0"],
     "--memory-mib='0': input should be greater than or equal to 16"),
])
def test_cli_rejects_bad_arguments_without_a_traceback(argv, message):
    result = subprocess.run([sys.executable, "-m", "weft.daemons.runtime", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_relay_messages_before_launch_are_refused(env, tmp_path):
    import socket

    ours, theirs = socket.socketpair()
    process = subprocess.Popen([sys.executable, "-m", "weft.daemons.runtime", "--standby", "--relay-fd",
                                str(theirs.fileno())], pass_fds=[theirs.fileno()], env=env.vars,
                               stderr=subprocess.PIPE, text=True)
    theirs.close()
    ours.sendall(b'{"t":"ipc","payload":"too early"}\n')
    _, stderr = process.communicate(timeout=10)
    ours.close()
    assert process.returncode == 1
    assert "expected a launch message first" in stderr
    assert "Traceback" not in stderr



def test_an_image_is_only_read_from_its_mount(env, built_apps):
    """A launch message for a verified image must name <WEFT_APPS_MOUNT_ROOT>/<app_id>."""
    import socket

    from weft.daemons.relay import Launch, encode_line

    ours, theirs = socket.socketpair()
    process = subprocess.Popen([sys.executable, "-m", "weft.daemons.runtime", "--standby", "--relay-fd",
                                str(theirs.fileno())], pass_fds=[theirs.fileno()], text=True, stderr=subprocess.PIPE,
                               env={**env.vars, "WEFT_APPS_MOUNT_ROOT": str(env.root / "apps")})
    theirs.close()
    ours.sendall(encode_line(Launch(app_id="org.weft.demo.counter", session_id=3, memory_mib=64,
                                    package_root=built_apps["org.weft.demo.counter"], publisher="unsigned",
                                    image_root_hash="a1" * 32)))
    _, stderr = process.communicate(timeout=30)
    ours.close()
    assert process.returncode == 1
    assert f"must be read from {env.root / 'apps' / 'org.weft.demo.counter'}" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("argv", [["org.weft.demo.counter", "1"], ["--compile-only", "org.weft.demo.counter"]])
def test_the_direct_forms_need_the_directory_source(env, built_apps, argv):
    env.install(built_apps["org.weft.demo.counter"])
    result = subprocess.run([sys.executable, "-m", "weft.daemons.runtime", *argv], capture_output=True, text=True,
                            env={**env.vars, "WEFT_APP_SOURCE": "verified"}, timeout=60)
    assert result.returncode == 1
    assert "needs WEFT_APP_SOURCE=directory" in result.stderr and "Traceback" not in result.stderr


def test_compile_only_fills_the_cache_at_install_time(env, built_apps, tmp_path):
    env.install(built_apps["org.weft.demo.counter"])
    cache_dir = tmp_path / "fresh-cache"
    result = subprocess.run([sys.executable, "-m", "weft.daemons.runtime", "--compile-only", "org.weft.demo.counter"],
                            env={**env.vars, "WEFT_CACHE_DIR": str(cache_dir)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert [p.suffix for p in (cache_dir / "components").iterdir()] == [".cwasm"]
    assert stat.S_IMODE((cache_dir / "components").stat().st_mode) == 0o700
