"""What a long-running server imports at start-up: everything its function imports lazily.

Handlers import their heavy libraries inside functions, on first use, to keep a Lambda cold
start short; a Lambda instance serves one request at a time, so that first use delays only
it. A server (Cloud Run, uvicorn) serves many requests on one event loop, and a first-use
import there (psycopg, boto3, h2: tens of milliseconds each) holds every request on the loop.
So at start-up, in a worker thread, the server imports every module its function's code can
import: the names in every import statement (top level or inside a function) of the
function's package, followed through the project's own modules it reaches (`shared`).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from functools import lru_cache
from pathlib import Path

#: the project's own packages: followed module by module; anything else is imported as named
OWN = ("shared", "functions")


@lru_cache(maxsize=None)
def _named_in(path: str) -> frozenset[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"), path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from shared import tls`: the name may be a module of its own
            names.update(f"{node.module}.{alias.name}" for alias in node.names if node.module.split(".")[0] in OWN)
    return frozenset(names)


def reachable(package: str, skip: frozenset[str] = frozenset()) -> list[str]:
    """Every module the code of `package` can import, through the project's own modules
    (those named in `skip` not followed, nor imported)."""
    seen: set[str] = set()
    found: list[str] = []
    todo = [package]
    while todo:
        name = todo.pop()
        if name in seen or name in skip:
            continue
        seen.add(name)
        if name.split(".")[0] not in OWN:
            found.append(name)
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None:  # `from shared.app import FunctionApp`: a name, not a module
            continue
        found.append(name)
        if spec.origin and spec.origin.endswith(".py"):
            todo += _named_in(spec.origin)
        if name == package:  # the function's own package: every module of it
            for folder in spec.submodule_search_locations or ():
                todo += [f"{name}.{p.stem}" for p in Path(folder).glob("*.py") if p.stem != "__init__"]
    return sorted(found)


def import_everything(package: str, skip: frozenset[str] = frozenset()) -> list[str]:
    """Import what `package` can import; returns the names that could not be imported (an
    optional library that is not installed: its feature is off)."""
    missing = []
    for name in reachable(package, skip):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional or platform-only dependency
            missing.append(name)
    return missing
