"""Fixtures for the deploy checks.

Tests that install the locked wheels (the Lambda zips) need the package index: they carry
the `network` marker and skip, saying why, when pip cannot reach it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def registry() -> None:
    """Skips the test when pip cannot download one small locked wheel from the configured
    index (the machine is offline, or the index is down)."""
    from edgefn.package import lock_entries

    pin = lock_entries()["idna"].split(" ")[0].strip()
    with tempfile.TemporaryDirectory() as dest:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "--timeout", "15", "--retries", "1", "--dest", dest, pin],
            capture_output=True, text=True,
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"the package index cannot be reached, and these tests install the locked wheels from it "
                    f"(pip download {pin}: {last})")


@pytest.fixture(scope="session")
def target_interpreter() -> str:
    from edgefn.target import TARGET
    from edgefn.zipcheck import interpreter_for

    found = interpreter_for(TARGET.python)
    if found is None:
        pytest.skip(f"no Python {TARGET.python} on this host: the zips cannot be run here (CI runs where one is on PATH)")
    return found


def _build(out: Path, arch: str) -> dict[str, Any]:
    from edgefn.package import build
    from functions import FUNCTIONS

    # the tests run /health themselves (and more), so the build does not
    return {b.function: b for b in build(sorted(FUNCTIONS), out, arch=arch, run_health=False)}


@pytest.fixture(scope="session")
def zips_native(registry: None, target_interpreter: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every function's zip for the target Python on this host's architecture (x86_64 on
    CI), where they can be run."""
    from edgefn.package import _native_arch

    yield _build(tmp_path_factory.mktemp("zips-native"), _native_arch())


@pytest.fixture(scope="session")
def zips_foreign(registry: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every function's zip for the other architecture (arm64, the deploy target, on CI)."""
    from edgefn.package import ARCHES, _native_arch

    other = next(a for a in ARCHES if a != _native_arch())
    yield _build(tmp_path_factory.mktemp("zips-foreign"), other)
