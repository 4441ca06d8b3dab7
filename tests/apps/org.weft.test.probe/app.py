"""org.weft.test.probe: a guest that exercises one host feature per IPC command (tests only).

Each message is `command:argument`; the reply is one line of text:
  echo:T            -> T
  print:T           -> writes T to the guest's stdout, replies "printed"
  read:P / write:P:T       -> WASI file access through the preopens
  symlink:TARGET:LINK      -> os.symlink through the preopens, replies "linked"
  spam:N                   -> N lines on stdout as fast as it can, replies "spammed"
  fetch:URL                -> weft:app/fetch
  files-read:P / files-write:P:T / files-list:P -> weft:app/files (the file portal)
  notify:T / clip-read     -> weft:app/notifications, weft:app/clipboard
  alloc:MIB                -> grow guest memory
  spin                     -> loop forever (a runaway guest)
  trap                     -> raise, ending run() with an error
  exit                     -> return from run()
Host errors come back as "err: <message>".
"""
import os

import wit_world
from componentize_py_types import Err
from wit_world.imports import clipboard, fetch, files, ipc, notifications, notify

_hoard = []


def handle(command: str, arg: str) -> str:
    if command == "echo":
        return arg
    if command == "print":
        print(arg, flush=True)
        return "printed"
    if command == "read":
        with open(arg, encoding="utf-8") as fh:
            return fh.read()
    if command == "write":
        path, _, text = arg.partition(":")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return "written"
    if command == "symlink":
        target, _, link = arg.partition(":")
        os.symlink(target, link)
        return "linked"
    if command == "spam":
        for number in range(int(arg)):
            print(f"spam line {number}")
        return "spammed"
    if command == "fetch":
        response = fetch.fetch(arg, "GET", [], None)
        return f"{response.status} {response.content_type} {bytes(response.body).decode()}"
    if command == "files-read":
        return bytes(files.read(arg)).decode()
    if command == "files-write":
        path, _, text = arg.partition(":")
        files.write(path, text.encode())
        return "written"
    if command == "files-list":
        return ",".join(files.list_dir(arg))
    if command == "notify":
        notifications.notify("probe", arg, None)
        return "notified"
    if command == "clip-read":
        return clipboard.read()
    if command == "alloc":
        _hoard.append(bytearray(int(arg) << 20))
        return f"holding {sum(map(len, _hoard)) >> 20} MiB"
    if command == "spin":
        while True:
            pass
    if command == "trap":
        raise RuntimeError("probe asked to fail")
    return f"unknown command {command!r}"


class WitWorld(wit_world.WitWorld):
    def run(self) -> None:
        notify.ready()
        while (message := ipc.recv()) is not None:
            command, _, arg = message.partition(":")
            if command == "exit":
                return
            try:
                reply = handle(command, arg)
            except Err as exc:
                reply = f"err: {exc.value}"
            except OSError as exc:
                reply = f"oserror: {exc.errno} {os.strerror(exc.errno) if exc.errno else exc}"
            except MemoryError:
                reply = "memory error"
            ipc.send(reply)
