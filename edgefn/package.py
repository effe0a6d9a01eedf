"""`edgefn package <function>|--all [--out DIR] [--arch arm64|x86_64] [--python 3.13]`

Builds one Lambda zip per function containing only that function's folder, `shared/` and
the third-party distributions the function's code imports (found by reading its imports,
the lazy ones inside functions included, through the shared modules it uses), at the
versions and hashes of `requirements/runtime.lock`, as wheels for the deploy target
(`edgefn.target`: the runtime's Python, architecture and glibc) whatever the build host is.

Zips are reproducible: entries sorted, fixed timestamps and permissions, bytecode for the
target Python compiled with unchecked hashes (Lambda's /var/task is read-only, so a zip
without .pyc compiles every module it imports on every cold start). The bytecode needs an
interpreter of the target version on the build host (`edgefn.zipcheck.interpreter_for`);
without one the build says so and ships sources only. boto3/botocore are left out (the
Lambda runtime provides them) except where a function pins them deliberately: see
`PINNED_IN`.

Before a zip is written, `edgefn.zipcheck` checks what loads it on the target (wheel tags,
ELF machine and glibc symbol versions, extension file names, every import present) and the
build fails on any problem. Where the host can run the target (same architecture and an
interpreter of the target version), each zip also imports and answers `/health` in an
isolated interpreter with nothing but the zip, and the handler's import time is printed.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata as md
import os
import re
import shutil
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

from edgefn import zipcheck
from edgefn.target import TARGET, wheel_platforms

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "runtime.lock"
EVENTS = ROOT / "tests" / "events"
#: the Lambda Python runtime ships boto3; the zip takes it from there (jmespath, which
#: boto3 also brings, is small and ships: Powertools imports it in every function)
PROVIDED_BY_RUNTIME = {"boto3", "botocore", "s3transfer"}
#: distributions a function ships although the runtime has them, and why
PINNED_IN: dict[str, dict[str, str]] = {
    "upload-media": {
        "boto3": "R2 needs request_checksum_calculation='when_required' (botocore >= 1.36); the "
        "runtime's boto3 changes version without notice, so the tested one ships",
    },
}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ARCHES = ("arm64", "x86_64")


@dataclass
class Built:
    function: str
    path: Path
    size: int
    sha256: str
    distributions: list[str]
    #: bytecode for the target Python is in the zip
    bytecode: bool
    #: the handler's import in a clean target interpreter (None: the host cannot run it)
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


def distributions(function: str, arch: str = TARGET.arch, python: str = TARGET.python) -> list[str]:
    """Canonical names of the distributions a function ships, dependencies included, but
    not what the runtime provides (unless pinned in)."""
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
    for plat in wheel_platforms(arch):
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


def _assemble(function: str, dists: list[str], site: Path, into: Path, python: str) -> None:
    """Copy the function's distributions from the staged (stripped, compiled) site, each
    source with its bytecode when there is some, then the function's own code."""
    folder = function.replace("-", "_")
    tag = f"cpython-{python.replace('.', '')}"
    for d in dists:
        for f in _record_files(site, d):
            if f.is_file():
                files = [f]
                if f.suffix == ".py":
                    files.append(f.parent / "__pycache__" / f"{f.stem}.{tag}.pyc")
                for src in files:
                    if src.is_file():
                        dest = into / src.relative_to(site)
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(src, dest)
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


def _compile(root: Path, interpreter: str, *folders: Path) -> None:
    """Bytecode for every module under `folders` (default: all of `root`), by the target
    interpreter itself (bytecode is specific to a Python version, not to an architecture),
    with unchecked hashes so the zip stays reproducible, recorded as the path under
    /var/task where Lambda unpacks it."""
    subprocess.run(
        [interpreter, "-I", "-m", "compileall", "-q", "-q", "--invalidation-mode", "unchecked-hash",
         "-s", str(root), "-p", "/var/task", *(str(f) for f in folders or (root,))],
        check=True, capture_output=True, env={"PATH": ""},
    )


def _zip(tree: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(tree).as_posix(), ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes(), compresslevel=6)
    os.replace(tmp, out)


def build(
    functions: list[str], out: Path, arch: str = TARGET.arch, python: str = TARGET.python,
    interpreter: str | None = None, run_health: bool = True,
) -> list[Built]:
    """Build, check and write one zip per function. `interpreter`: a Python of the target
    version (found on the host when not given); without one the zips carry no bytecode."""
    from edgefn.cli import CommandError
    from functions import FUNCTIONS

    interpreter = interpreter or zipcheck.interpreter_for(python)
    plan = {f: distributions(f, arch, python) for f in functions}
    built: list[Built] = []
    with tempfile.TemporaryDirectory(prefix="edgefn-package-") as tmp:
        work = Path(tmp)
        site = stage({d for ds in plan.values() for d in ds}, arch, python, work)
        _strip_binaries(site)
        if interpreter is not None:
            _compile(site, interpreter)
        runnable = interpreter is not None and arch == _native_arch() and run_health
        for function, dists in plan.items():
            tree = work / "trees" / function
            _assemble(function, dists, site, tree, python)
            modules = third_party_modules(function.replace("-", "_")) - _runtime_modules(function)
            found = zipcheck.problems(tree, python, arch, TARGET.glibc, modules)
            if found:
                raise CommandError(f"{function} would not load on {TARGET.runtime} {arch}:\n  " + "\n  ".join(found))
            if interpreter is not None:
                _compile(tree, interpreter, tree / "functions", tree / "shared")
            import_ms = None
            if runnable:
                assert interpreter is not None
                result = zipcheck.health(tree, function, FUNCTIONS[function], interpreter, EVENTS)
                if result["status"] != 200 or result["outside"]:
                    raise CommandError(f"{function}: /health in a clean interpreter answered {result}")
                import_ms = result["import_ms"]
            zpath = out / f"{function}.zip"
            _zip(tree, zpath)
            data = zpath.read_bytes()
            built.append(Built(function, zpath, len(data), hashlib.sha256(data).hexdigest(), dists,
                               interpreter is not None, import_ms))
    return built


def _runtime_modules(function: str) -> set[str]:
    """Top-level modules the Lambda runtime provides to this function (none when pinned in)."""
    if PINNED_IN.get(function):
        return set()
    by_module = md.packages_distributions()
    return {m for m, dists in by_module.items() if {canonicalize_name(d) for d in dists} & PROVIDED_BY_RUNTIME}


def _native_arch() -> str:
    return "arm64" if os.uname().machine in ("aarch64", "arm64") else "x86_64"


# -- CLI -----------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("function", nargs="?", help="a function's route name, e.g. upload-media")
    p.add_argument("--all", action="store_true", help="every function")
    p.add_argument("--out", default="dist/lambda", help="where the zips go (default dist/lambda)")
    p.add_argument("--arch", choices=ARCHES, default=TARGET.arch, help=f"default {TARGET.arch}, the deploy target")
    p.add_argument("--python", default=TARGET.python, help=f"the runtime's Python (default {TARGET.python}, the deploy target)")
    p.add_argument("--interpreter", help=f"a Python of that version, for the bytecode and the /health check "
                   "(default: found on this host)")


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
        raise CommandError(f"--python takes a version like 3.13, got {args.python!r}")
    try:
        built = build(names, Path(args.out), args.arch, args.python, interpreter=args.interpreter)
    except subprocess.CalledProcessError as exc:
        raise CommandError(f"pip could not fetch the wheels ({exc.returncode}); is the lock current?") from None
    print(f"{'function':<24}{'zip MB':>8}{'import ms':>11}  distributions")
    for b in built:
        ms = f"{b.import_ms:.0f}" if b.import_ms is not None else "-"
        print(f"{b.function:<24}{b.size / 1e6:>8.2f}{ms:>11}  {', '.join(b.distributions)}")
        for dist, why in PINNED_IN.get(b.function, {}).items():
            print(f"{'':<24}{'':>8}{'':>11}  ({dist} pinned in: {why})")
    print(f"written to {Path(args.out).resolve()} ({args.arch}, Python {args.python}); checked: wheel tags, "
          f"glibc <= {TARGET.glibc[0]}.{TARGET.glibc[1]}, extension names, imports"
          + ("; /health answered in a clean interpreter" if built and built[0].import_ms is not None else ""))
    if built and not built[0].bytecode:
        print(f"warning: no Python {args.python} on this host, so the zips carry no bytecode and every cold "
              f"start compiles what it imports; pass --interpreter or build where python{args.python} exists",
              file=sys.stderr)
    return 0
