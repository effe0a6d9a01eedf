"""`edgefn package <function>|--all [--out DIR] [--arch x86_64|arm64] [--python 3.11]`

Builds one Lambda zip per function containing only that function's folder, `shared/` and
the third-party distributions the function's code imports (found by reading its imports,
the lazy ones inside functions included, through the shared modules it uses), at the
versions and hashes of `requirements/runtime.lock`, as wheels for the chosen Lambda
architecture and Python version (pip's platform-specific wheel selection).

Zips are reproducible: entries sorted, fixed timestamps and permissions, bytecode compiled
with unchecked hashes (Lambda's /var/task is read-only, so shipping .pyc saves compiling
on every cold start). boto3/botocore are left out (the Lambda runtime provides them)
except where a function pins them deliberately: see `PINNED_IN`.

Sentry, imported only when SENTRY_DSN is set, ships only with `--with sentry`.

Prints each zip's size and, when the target Python is the one running, the cold import of
the handler from the unpacked zip with nothing else on sys.path.
"""

from __future__ import annotations

import argparse
import ast
import compileall
import hashlib
import importlib.metadata as md
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "runtime.lock"
#: the Lambda Python runtime ships boto3 and its dependency tree
PROVIDED_BY_RUNTIME = {"boto3", "botocore", "s3transfer", "jmespath"}
#: integrations a deployment opts in to (`--with sentry`): Sentry is imported only when
#: SENTRY_DSN is set, and costs about 1.9 MB per zip
OPTIONAL = {"sentry": "sentry-sdk"}
#: distributions a function ships although the runtime has them, and why
PINNED_IN: dict[str, dict[str, str]] = {
    "upload-media": {
        "boto3": "R2 needs request_checksum_calculation='when_required' (botocore >= 1.36); the "
        "runtime's boto3 changes version without notice, so the tested one ships",
    },
}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
PLATFORMS = {
    "x86_64": ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"],
    "arm64": ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64"],
}


@dataclass
class Built:
    function: str
    path: Path
    size: int
    sha256: str
    distributions: list[str]
    import_ms: float | None


# -- what a function imports ---------------------------------------------------------------


def _imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def code_files(folder: str) -> list[Path]:
    """The function's own files plus every shared module reachable from them."""
    files = sorted((ROOT / "functions" / folder).rglob("*.py"))
    seen: set[Path] = set()
    todo = list(files)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in _imports_of(f):
            if name.startswith("shared.") or name == "shared":
                parts = name.split(".")
                for i in range(len(parts), 0, -1):
                    mod = ROOT.joinpath(*parts[:i])
                    candidate = mod.with_suffix(".py") if mod.with_suffix(".py").exists() else mod / "__init__.py"
                    if candidate.exists():
                        todo.append(candidate)
                        break
    return sorted(seen)


def third_party_modules(folder: str) -> set[str]:
    mods: set[str] = set()
    for f in code_files(folder):
        for name in _imports_of(f):
            top = name.split(".")[0]
            if top in ("shared", "functions", "edgefn", "__future__") or top in sys.stdlib_module_names:
                continue
            mods.add(top)
    return mods


def _declared_extras() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out: dict[str, set[str]] = {}
    for spec in project["dependencies"]:
        req = Requirement(spec)
        out[canonicalize_name(req.name)] = set(req.extras)
    return out


def _environment(arch: str, python: str) -> dict[str, str]:
    return {
        "python_version": python,
        "python_full_version": python + ".0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "aarch64" if arch == "arm64" else "x86_64",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
    }


def distributions(function: str, arch: str, python: str, with_optional: tuple[str, ...] = ()) -> list[str]:
    """Canonical names of the distributions a function ships, dependencies included: not
    what the runtime provides (unless pinned in), not optional integrations not asked for."""
    folder = function.replace("-", "_")
    by_module = md.packages_distributions()
    extras = _declared_extras()
    env = _environment(arch, python)
    wanted: dict[str, set[str]] = {}
    for mod in third_party_modules(folder):
        for dist in by_module.get(mod, []):
            name = canonicalize_name(dist)
            wanted.setdefault(name, set()).update(extras.get(name, set()))
    pinned = PINNED_IN.get(function, {})
    skip = set() if pinned else set(PROVIDED_BY_RUNTIME)  # a pinned-in boto3 brings its tree
    skip |= {dist for key, dist in OPTIONAL.items() if key not in with_optional}
    result: set[str] = set()
    todo = [(n, e) for n, e in wanted.items() if n not in skip]
    while todo:
        name, want_extras = todo.pop()
        if name in result or name in skip:
            continue
        result.add(name)
        for spec in md.distribution(name).requires or []:
            req = Requirement(spec)
            if req.marker is not None:
                ok = any(Marker(str(req.marker)).evaluate({**env, "extra": e}) for e in (want_extras or {""}))
                if not ok:
                    continue
            todo.append((canonicalize_name(req.name), set(req.extras)))
    return sorted(result)


# -- building --------------------------------------------------------------------------------


def lock_entries() -> dict[str, str]:
    """canonical name -> the lock's requirement block (pin and hashes)."""
    text = LOCK.read_text()
    entries: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.\-]+)==", block)
        if m:
            lines = [ln for ln in block.splitlines() if not ln.strip().startswith("#")]
            entries[canonicalize_name(m.group(1))] = "\n".join(lines).rstrip(" \\\n") + "\n"
    return entries


def stage(dists: set[str], arch: str, python: str, work: Path) -> Path:
    """pip-install the pinned wheels once for every function being built."""
    entries = lock_entries()
    missing = sorted(d for d in dists if d not in entries)
    if missing:
        from edgefn.cli import CommandError

        raise CommandError(f"not in {LOCK.relative_to(ROOT)}: {', '.join(missing)} (regenerate the lock)")
    req = work / "requirements.txt"
    req.write_text("".join(entries[d] for d in sorted(dists)))
    target = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--no-compile", "--require-hashes", "--only-binary=:all:", "--implementation", "cp",
           "--python-version", python, "--target", str(target), "-r", str(req)]
    for plat in PLATFORMS[arch]:
        cmd += ["--platform", plat]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise subprocess.CalledProcessError(done.returncode, cmd)
    return target


def _record_files(site: Path, dist: str) -> list[Path]:
    for info in site.glob("*.dist-info"):
        meta = info / "METADATA"
        name = next((ln.split(":", 1)[1].strip() for ln in meta.read_text(errors="replace").splitlines()
                     if ln.startswith("Name:")), "")
        if canonicalize_name(name) == dist:
            files = []
            for line in (info / "RECORD").read_text().splitlines():
                rel = line.rsplit(",", 2)[0]
                if rel and not rel.startswith("..") and "__pycache__" not in rel and not rel.endswith(".pyc"):
                    files.append(site / rel)
            return files
    raise FileNotFoundError(f"{dist} is not in the staged wheels")


def _assemble(function: str, dists: list[str], site: Path, into: Path) -> None:
    folder = function.replace("-", "_")
    for d in dists:
        for f in _record_files(site, d):
            if f.is_file():
                dest = into / f.relative_to(site)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
    for src in [ROOT / "functions" / "__init__.py", *(ROOT / "functions" / folder).rglob("*.py"), *(ROOT / "shared").rglob("*.py")]:
        if "__pycache__" in src.parts:
            continue
        dest = into / src.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)


def _strip_binaries(tree: Path) -> None:
    """Drop symbol tables from shared objects, as serverless-python-requirements' `slim`
    does (cryptography's Rust extension ships unstripped: about 0.8 MB zipped). Skipped
    where binutils' strip is missing or cannot read the architecture."""
    strip = shutil.which("strip")
    if strip is None:
        return
    for so in sorted(tree.rglob("*.so*")):
        if so.is_file():
            subprocess.run([strip, "--strip-unneeded", str(so)], capture_output=True)


_PROBE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
importlib.import_module(sys.argv[2])
for name in sys.argv[3:]:
    try:
        importlib.import_module(name)
    except Exception:
        pass
print(json.dumps(sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())})))
"""


def _compile_loaded(tree: Path, function: str) -> None:
    """Bytecode (unchecked-hash, so reproducible) for every module the function loads at
    cold start and when it first touches each dependency; the rest (rare paths, optional
    integrations) compiles on demand. Shipping all .pyc would add about 4 MB per zip."""
    folder = function.replace("-", "_")
    lazy = sorted(third_party_modules(folder))
    out = subprocess.run(
        [sys.executable, "-S", "-c", _PROBE, str(tree), f"functions.{folder}.handler", *lazy],
        capture_output=True, text=True, check=True, env={"PATH": "", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    import json

    root = str(tree)
    for f in json.loads(out.stdout.strip().splitlines()[-1]):
        if f.startswith(root) and f.endswith(".py"):
            rel = Path(f).relative_to(tree)
            compileall.compile_file(
                f, quiet=1, ddir=str(Path("/var/task") / rel.parent),
                invalidation_mode=compileall.py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )


def _zip(tree: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(tree).as_posix(), ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes(), compresslevel=9)
    os.replace(tmp, out)


def import_time(tree: Path, function: str, runs: int = 5) -> float:
    module = f"functions.{function.replace('-', '_')}.handler"
    code = f"import sys, time; sys.path.insert(0, {str(tree)!r}); t = time.perf_counter(); import {module}; print((time.perf_counter() - t) * 1000)"
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, env={"PATH": ""})
        times.append(float(out.stdout.strip()))
    return statistics.median(times)


def build(
    functions: list[str], out: Path, arch: str = "x86_64", python: str | None = None, measure: bool = True,
    with_optional: tuple[str, ...] = (),
) -> list[Built]:
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    plan = {f: distributions(f, arch, python, with_optional) for f in functions}
    built: list[Built] = []
    with tempfile.TemporaryDirectory(prefix="edgefn-package-") as tmp:
        work = Path(tmp)
        site = stage({d for ds in plan.values() for d in ds}, arch, python, work)
        same_python = python == f"{sys.version_info.major}.{sys.version_info.minor}"
        for function, dists in plan.items():
            tree = work / "trees" / function
            _assemble(function, dists, site, tree)
            _strip_binaries(tree)
            if same_python:
                _compile_loaded(tree, function)
            zpath = out / f"{function}.zip"
            _zip(tree, zpath)
            data = zpath.read_bytes()
            built.append(Built(function, zpath, len(data), hashlib.sha256(data).hexdigest(), dists,
                               import_time(tree, function) if (measure and same_python and arch == _native_arch()) else None))
    return built


def _native_arch() -> str:
    return "arm64" if os.uname().machine in ("aarch64", "arm64") else "x86_64"


# -- CLI -----------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("function", nargs="?", help="a function's route name, e.g. upload-media")
    p.add_argument("--all", action="store_true", help="every function")
    p.add_argument("--out", default="dist/lambda", help="where the zips go (default dist/lambda)")
    p.add_argument("--arch", choices=sorted(PLATFORMS), default="x86_64")
    p.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}", help="Lambda runtime Python (3.11, 3.12)")
    p.add_argument("--with", dest="with_optional", action="append", choices=sorted(OPTIONAL), default=[],
                   help="ship an optional integration (sentry: needed when SENTRY_DSN is set)")


def run(args: argparse.Namespace) -> int:
    from edgefn.cli import CommandError
    from functions import FUNCTIONS

    if args.all == bool(args.function):
        raise CommandError("name one function or pass --all")
    names = sorted(FUNCTIONS) if args.all else [args.function]
    for n in names:
        if n not in FUNCTIONS:
            raise CommandError(f"unknown function {n!r}; known: {', '.join(sorted(FUNCTIONS))}")
    if not re.fullmatch(r"3\.\d+", args.python):
        raise CommandError(f"--python takes a version like 3.12, got {args.python!r}")
    try:
        built = build(names, Path(args.out), args.arch, args.python, with_optional=tuple(args.with_optional))
    except subprocess.CalledProcessError as exc:
        raise CommandError(f"pip could not fetch the wheels ({exc.returncode}); is the lock current?") from None
    print(f"{'function':<24}{'zip MB':>8}{'import ms':>11}  distributions")
    for b in built:
        ms = f"{b.import_ms:.0f}" if b.import_ms is not None else "-"
        print(f"{b.function:<24}{b.size / 1e6:>8.2f}{ms:>11}  {', '.join(b.distributions)}")
        for dist, why in PINNED_IN.get(b.function, {}).items():
            print(f"{'':<24}{'':>8}{'':>11}  ({dist} pinned in: {why})")
    print(f"written to {Path(args.out).resolve()} ({args.arch}, Python {args.python})")
    return 0
