"""Run independent tasks in forked child processes, one per core.

Hashing is CPU-bound and Python's per-block loop holds the GIL, so threads do not scale
(measured: two threads are barely faster than one). Forked children share the parent's
memory and file descriptors, need nothing pickled, and each writes its own disjoint
region. Fork is used only while this process is single-threaded; otherwise, and for small
jobs, the tasks simply run here one after another.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence

from weft.verity.params import VerityError, VerityMismatch

Task = Callable[[], None]


def can_fork() -> bool:
    return hasattr(os, "fork") and threading.active_count() == 1


def run_tasks(tasks: Sequence[Task]) -> None:
    """Run every task; the first failure (by task order) is raised here."""
    if len(tasks) < 2 or not can_fork():
        for task in tasks:
            task()
        return
    children = [_spawn(task) for task in tasks[1:]]
    failure: BaseException | None = None
    try:
        tasks[0]()
    except BaseException as exc:  # noqa: BLE001 - re-raised below, once the children are reaped
        failure = exc
    reports = [_reap(pid, fd) for pid, fd in children]
    if failure is not None:
        raise failure
    for report in reports:
        if report is not None:
            raise report


def _spawn(task: Task) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: run, report, and leave without running the parent's cleanup code
        status = 0
        try:
            os.close(read_fd)
            task()
        except BaseException as exc:  # noqa: BLE001 - whatever failed, the parent gets a report
            import json  # the failure path only: keeps start-up of every run fast
            import traceback

            status = 1
            report = {"area": getattr(exc, "area", None), "message": str(exc),
                      "expected": isinstance(exc, VerityError), "trace": traceback.format_exc()}
            with contextlib.suppress(BaseException):  # the exit status still tells the parent
                os.write(write_fd, json.dumps(report).encode())
        finally:
            os._exit(status)
    os.close(write_fd)
    return pid, read_fd


def _reap(pid: int, read_fd: int) -> BaseException | None:
    with os.fdopen(read_fd, "rb") as pipe:
        raw = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    import json  # the failure path only

    try:
        report = json.loads(raw)
    except ValueError:
        return RuntimeError(f"hashing worker {pid} died (status {status})")
    if not report["expected"]:
        return RuntimeError(f"hashing worker failed:\n{report['trace']}")
    if report["area"]:
        return VerityMismatch(report["area"], report["message"])
    return VerityError(report["message"])
