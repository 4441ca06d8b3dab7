"""VM tests: boot the test-profile image in QEMU and drive it (see weft.vm.machine).

The image must be built first (`weft image build --profile test`; ci/test.sh does it). A
missing image or QEMU is a test failure, not a skip. One booted VM is shared by the whole
session; a test that needs its own VM (the tampered image) stops the shared one first, so
there are never two VMs at once. Serial logs, QEMU command lines and each machine's actions
log (NAME-actions.log: every command, wait and key press, with the test that did it) are kept
under test-artifacts/vm/.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from weft.image.profiles import image_path
from weft.vm.accel import detect_accel
from weft.vm.machine import Machine
from weft.vm.qemu import Accel
from weft.vm.run import accel_cache_file

REPO = Path(__file__).resolve().parents[2]
DEFAULT_IMAGE = image_path(REPO, "test")
BOOT_TIMEOUT_S = 900  # TCG on 2 cores boots in ~1-2.5 min; leave room for a loaded machine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.vm)
    # Tests that boot their own VM stop the shared one: run them last, so it boots once.
    items.sort(key=lambda item: item.get_closest_marker("own_vm") is not None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before the test's fixtures run, so its actions log lines follow its name.
    SharedVm.test_starts(item.nodeid)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "own_vm: boots its own VM after the shared one is stopped")


@pytest.fixture(scope="session")
def test_image() -> Path:
    image = Path(os.environ.get("WEFT_TEST_IMAGE") or DEFAULT_IMAGE)
    if not image.is_file():
        pytest.fail(f"test image {image} is missing; build it with: weft image build --profile test")
    return image


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = REPO / "test-artifacts" / "vm"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def accel() -> Accel:
    return detect_accel(accel_cache_file())


class SharedVm:
    """The session's one booted machine, started on first use."""

    live: ClassVar[SharedVm | None] = None
    current_test: ClassVar[str] = ""

    def __init__(self, image: Path, artifacts: Path, accel: Accel):
        self._image, self._artifacts, self._accel = image, artifacts, accel
        self._machine: Machine | None = None
        self._boot_error: Exception | None = None

    @classmethod
    def test_starts(cls, nodeid: str) -> None:
        """Mark in the shared machine's actions log where each test begins."""
        cls.current_test = nodeid
        if cls.live is not None and cls.live._machine is not None:
            cls.live._machine.note(f"=== {nodeid}")

    def get(self) -> Machine:
        if self._boot_error is not None:
            pytest.fail(f"the shared VM did not boot: {self._boot_error}")
        if self._machine is None:
            machine = Machine(self._image, self._artifacts, self._accel, name="shared", secure_boot=True)
            machine.note(f"=== {self.current_test} (boots the shared VM)")
            try:
                machine.start()
                machine.wait_for_shell(BOOT_TIMEOUT_S)
            except Exception as exc:
                machine.close()
                self._boot_error = exc  # boot once per session, not once per test
                raise
            self._machine = machine
        return self._machine

    def stop(self) -> None:
        if self._machine is not None:
            try:
                self._machine.shutdown()
            finally:
                self._machine.close()
                self._machine = None


@pytest.fixture(scope="session")
def shared_vm(test_image: Path, artifacts: Path, accel: Accel) -> Iterator[SharedVm]:
    vm = SharedVm.live = SharedVm(test_image, artifacts, accel)
    yield vm
    vm.stop()
    SharedVm.live = None


@pytest.fixture
def machine(shared_vm: SharedVm) -> Machine:
    return shared_vm.get()
