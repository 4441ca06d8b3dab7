"""Shared fixtures: a sample app package on disk, a publisher key pair, a signed app image.

`make_package(...)` / `write_package(dir, ...)` make real package directories;
`sample_image` is a signed `.wapp` of the sample package, verifiable with `keypair[1]`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from package_support import write_package

# The app-platform fixtures (built example apps, compile cache, appd processes).
pytest_plugins = ["platform_support", "mountd_support"]


@pytest.fixture
def make_package(tmp_path: Path) -> Callable[..., Path]:
    """make_package(app_id=..., version=..., files={...}) -> a fresh package directory."""
    counter = iter(range(1_000_000))

    def make(**kwargs) -> Path:
        return write_package(tmp_path / f"pkg{next(counter)}" / kwargs.get("app_id", "com.example.notes"),
                             **kwargs)

    return make


@pytest.fixture
def sample_package(make_package) -> Path:
    return make_package()


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    """(private key file, public key file) as `weft-pack generate-key` writes them."""
    from weft.pack.keys import generate_keypair

    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def other_keypair(tmp_path: Path) -> tuple[Path, Path]:
    from weft.pack.keys import generate_keypair

    return generate_keypair(tmp_path / "other-keys")


@pytest.fixture
def store_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose package store and app data live under tmp_path."""
    return {"HOME": str(tmp_path / "home"), "WEFT_APP_STORE": str(tmp_path / "store"),
            "WEFT_APP_DATA": str(tmp_path / "app-data")}


@pytest.fixture
def sample_image(sample_package: Path, keypair: tuple[Path, Path], tmp_path: Path) -> Path:
    """A signed `<id>-<version>.wapp` of `sample_package`, signed by `keypair` (mkfs.erofs comes from ci/setup.sh)."""
    from weft.pack.image import build_image, image_name
    from weft.pack.keys import load_signing_key

    out = tmp_path / "images" / image_name("com.example.notes", "1.0.0")
    return build_image(sample_package, load_signing_key(keypair[0]), out, progress=lambda _message: None)
