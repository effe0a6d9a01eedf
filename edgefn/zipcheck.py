"""What makes an unpacked Lambda zip loadable on the target runtime, checked without it.

- every staged wheel carries a tag the target interpreter accepts (`packaging.tags`);
- every ELF file is built for the target machine, needs no newer glibc symbol version than
  the runtime's glibc, and needs only libraries that the zip bundles or that every
  manylinux system has (read with pyelftools, so a foreign architecture reads the same);
- every extension module has a file name the target interpreter imports;
- every third-party module the function's code imports is present in the zip.

`health` then runs the real thing where the host can: the target interpreter, isolated,
with nothing on its path but the unpacked zip, answering a recorded Function URL event.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from packaging.tags import Tag, compatible_tags, cpython_tags, parse_tag

from edgefn.target import MACHINES, wheel_platforms

#: libraries a wheel may link without bundling: the manylinux policy's core set, plus
#: zlib, which CPython's own zlib module links (so every Python runtime has it)
SYSTEM_LIBS = frozenset({
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libutil.so.1",
    "libresolv.so.2", "libnsl.so.1", "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1",
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
})
_ELF_MACHINE = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64"}
_GLIBC = re.compile(r"^GLIBC_(\d+)\.(\d+)")


def supported_tags(python: str, arch: str) -> set[Tag]:
    major, minor = (int(p) for p in python.split("."))
    platforms = wheel_platforms(arch)
    interp = f"cp{major}{minor}"
    return {*cpython_tags((major, minor), abis=[interp, "abi3", "none"], platforms=platforms),
            *compatible_tags((major, minor), interpreter=interp, platforms=platforms)}


def wheel_tag_problems(tree: Path, python: str, arch: str) -> list[str]:
    ok = supported_tags(python, arch)
    problems = []
    for wheel in sorted(tree.glob("*.dist-info/WHEEL")):
        tags = {t for line in wheel.read_text().splitlines() if line.startswith("Tag:")
                for t in parse_tag(line.split(":", 1)[1].strip())}
        if not tags & ok:
            problems.append(f"{wheel.parent.name}: wheel tags {sorted(map(str, tags))} do not load on "
                            f"CPython {python} {arch}")
    return problems


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def elf_files(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*.so*") if p.is_file() and _is_elf(p))


def glibc_needed(path: Path) -> tuple[int, int] | None:
    """The newest GLIBC_x.y symbol version this ELF file asks for (None: no glibc symbols)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerNeedSection

    newest: tuple[int, int] | None = None
    with path.open("rb") as f:
        for section in ELFFile(f).iter_sections():
            if isinstance(section, GNUVerNeedSection):
                for _, auxiliaries in section.iter_versions():
                    for aux in auxiliaries:
                        m = _GLIBC.match(aux.name)
                        if m and (newest is None or (int(m[1]), int(m[2])) > newest):
                            newest = (int(m[1]), int(m[2]))
    return newest


def elf_problems(tree: Path, arch: str, glibc: tuple[int, int]) -> list[str]:
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    files = elf_files(tree)
    bundled = {p.name for p in files}
    problems = []
    for path in files:
        rel = path.relative_to(tree)
        with path.open("rb") as f:
            elf = ELFFile(f)
            machine = elf["e_machine"]
            needed = [t.needed for s in elf.iter_sections() if isinstance(s, DynamicSection)
                      for t in s.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
        if machine != _ELF_MACHINE[MACHINES[arch]]:
            problems.append(f"{rel}: built for {machine}, not {arch}")
            continue
        wants = glibc_needed(path)
        if wants is not None and wants > glibc:
            problems.append(f"{rel}: needs GLIBC_{wants[0]}.{wants[1]}, the runtime has {glibc[0]}.{glibc[1]}")
        missing = [lib for lib in needed if lib not in bundled and lib not in SYSTEM_LIBS]
        if missing:
            problems.append(f"{rel}: links {', '.join(missing)}, which neither the zip nor the runtime has")
    return problems


def extension_suffixes(python: str, arch: str) -> tuple[str, ...]:
    version = python.replace(".", "")
    return (f".cpython-{version}-{MACHINES[arch]}-linux-gnu.so", ".abi3.so", ".so")


def _is_extension(path: Path, tree: Path) -> bool:
    """A Python extension module, as opposed to a shared library a wheel bundles (those live
    in `<name>.libs/` and usually carry a version after `.so`)."""
    rel = path.relative_to(tree)
    return path.name.endswith(".so") and not any(part.endswith(".libs") for part in rel.parts)


def extension_problems(tree: Path, python: str, arch: str) -> list[str]:
    """A version-tagged extension (`x.cpython-313-aarch64-linux-gnu.so`) must carry the
    target's own tag; `.abi3.so` and untagged `.so` load on any version (the wheel tag
    check covers the minimum an abi3 wheel needs)."""
    own = extension_suffixes(python, arch)[0]
    problems = []
    for path in elf_files(tree):
        if _is_extension(path, tree) and ".cpython-" in path.name and not path.name.endswith(own):
            problems.append(f"{path.relative_to(tree)}: CPython {python} on {arch} does not import this file name")
    return problems


def import_problems(tree: Path, modules: set[str], python: str, arch: str) -> list[str]:
    """Each top-level module the function imports resolves in the zip, as the import
    system would look for it (package, module, or extension with an accepted suffix)."""
    suffixes = extension_suffixes(python, arch)
    problems = []
    for mod in sorted(modules):
        found = (tree / mod).is_dir() or (tree / f"{mod}.py").is_file() or any(
            (tree / f"{mod}{s}").is_file() for s in suffixes
        )
        if not found:
            problems.append(f"{mod}: imported by the function's code but not in the zip")
    return problems


def problems(tree: Path, python: str, arch: str, glibc: tuple[int, int], modules: set[str]) -> list[str]:
    return [
        *wheel_tag_problems(tree, python, arch),
        *elf_problems(tree, arch, glibc),
        *extension_problems(tree, python, arch),
        *import_problems(tree, modules, python, arch),
    ]


# -- the real run, where the host can do it ---------------------------------------------------

_HEALTH_PROBE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
started = time.perf_counter()
import importlib
mod = importlib.import_module(sys.argv[2])
imported = time.perf_counter()
result = mod.handler(json.loads(sys.argv[3]), None)
print(json.dumps({"status": result["statusCode"], "body": json.loads(result["body"]),
                  "import_ms": (imported - started) * 1000,
                  "outside": sorted({m.__file__ for m in list(sys.modules.values())
                                     if getattr(m, "__file__", None) and not m.__file__.startswith(sys.argv[1])
                                     and not m.__file__.startswith(sys.base_prefix)})}))
"""


def health_event(route: str, events: Path) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((events / "function_url_get_health.json").read_text())
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/functions/v1/{route}/health"
    return event


def health(tree: Path, route: str, module: str, interpreter: str, events: Path) -> dict[str, Any]:
    """Import the handler and answer GET /health in `interpreter`, isolated (-I: no
    environment, no user site) and without site-packages (-S): only the zip and the
    standard library are there, as on Lambda."""
    out = subprocess.run(
        [interpreter, "-I", "-S", "-c", _HEALTH_PROBE, str(tree), module, json.dumps(health_event(route, events))],
        capture_output=True, text=True, env={"PATH": "", "EDGEFN_ACCESS_LOG": "0"}, timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{route}: the handler failed in a clean interpreter:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def interpreter_for(python: str) -> str | None:
    """A CPython `python` (e.g. "3.13") on this host: this one, `python3.13` on PATH, or
    a pyenv installation. None when there is none."""
    if python == f"{sys.version_info.major}.{sys.version_info.minor}":
        return sys.executable
    candidates = [shutil.which(f"python{python}")]
    pyenv_root = Path(subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()) \
        if shutil.which("pyenv") else None
    if pyenv_root:
        candidates += [str(p / "bin" / f"python{python}") for p in sorted((pyenv_root / "versions").glob(f"{python}.*"), reverse=True)]
    for c in candidates:
        if not c:
            continue
        done = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == python:
            return c
    return None
