"""supabase-js for the test page, built here from the pinned npm packages (`js/package.json`
and its lock, installed with `npm ci`, bundled with esbuild): no CDN at test time and no
generated bundle in the repository. The build is reused while the lock and the entry file
are unchanged (a stamp beside it records their digest).

    python -m tests.browser.jsbundle     # build it now (CI may, before the suite)
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

JS = Path(__file__).parent / "js"
BUNDLE = JS / "dist" / "supabase.js"
STAMP = JS / "dist" / "stamp"
ESBUILD_ARGS = ("entry.js", "--bundle", "--format=iife", "--global-name=supabase", "--target=es2022", "--log-level=warning")


class Unavailable(Exception):
    """The bundle cannot be built here; the message says why."""


def _digest() -> str:
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json", "entry.js"):
        h.update((JS / name).read_bytes())
    h.update(" ".join(ESBUILD_ARGS).encode())
    return h.hexdigest()


def _run(cmd: list[str], what: str, timeout: float) -> None:
    try:
        result = subprocess.run(cmd, cwd=JS, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{what} took more than {timeout:.0f} s") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise Unavailable(f"{what} failed: {' | '.join(tail)}")


def build() -> Path:
    """The bundle's path, built first when missing or stale."""
    digest = _digest()
    if BUNDLE.exists() and STAMP.exists() and STAMP.read_text() == digest:
        return BUNDLE
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        raise Unavailable("node and npm are needed to bundle supabase-js (Debian: apt-get install nodejs npm)")
    # --ignore-scripts: esbuild's binary comes from its platform package, no install script needed
    _run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], "npm ci", 300)
    BUNDLE.parent.mkdir(exist_ok=True)
    _run([node, "node_modules/esbuild/bin/esbuild", *ESBUILD_ARGS, f"--outfile={BUNDLE}"], "esbuild", 120)
    STAMP.write_text(digest)
    return BUNDLE


if __name__ == "__main__":
    print(build())
