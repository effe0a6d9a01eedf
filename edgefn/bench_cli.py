"""`edgefn bench [--quick]`: the system benchmark (see `bench/system.py`). It runs from a
clone of the repository (the `bench` folder is not part of the installed package); install
the plotting extra first: `pip install -e '.[bench]'`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench_importable() -> bool:
    if not (ROOT / "bench" / "system.py").exists():
        return False
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return True


def add_arguments(p: argparse.ArgumentParser) -> None:
    if _bench_importable():
        from bench.system import add_arguments as _add

        _add(p)


def run(args: argparse.Namespace) -> int:
    from edgefn.cli import CommandError

    if not _bench_importable():
        raise CommandError("the benchmark runs from a clone of the repository (no bench/ folder beside edgefn/)")
    from bench.system import run_cli

    return run_cli(args, "edgefn bench" + "".join(" " + a for a in sys.argv[2:]))
