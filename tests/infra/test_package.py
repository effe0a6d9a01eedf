"""`edgefn package` builds zips that load on the deploy target, for both architectures,
from a plain `pip install -e .`.

The native-architecture zips are run for real: the target Python, isolated, with nothing
but the unpacked zip on its path, answers a recorded Function URL event and imports every
module the function may import later. The other architecture cannot run here, so its zips
are held to what loading needs: wheel tags, ELF machine, glibc symbol versions, extension
file names, imports present, bytecode for the target version. The checks themselves are
tested on real wheels that must fail them (the python3.11 runtime's glibc, the wrong
architecture, the wrong Python).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import io
import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from edgefn import zipcheck
from edgefn.package import PINNED_IN, PROVIDED_BY_RUNTIME, third_party_modules
from edgefn.target import MACHINES, TARGET
from functions import FUNCTIONS

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"

pytestmark = pytest.mark.network


def unpack(built: Any, into: Path) -> Path:
    zipfile.ZipFile(built.path).extractall(into)
    return into


# -- the packager installs with the project -------------------------------------------------


@pytest.mark.parametrize("module", ["edgefn.package", "edgefn.zipcheck", "edgefn.target", "edgefn.cli"])
def test_the_packager_needs_only_the_projects_own_dependencies(module: str) -> None:
    """What `pip install -e .` installs (no extras) is all `edgefn package` imports."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {canonicalize_name(Requirement(s).name) for s in project["dependencies"]}
    by_module = md.packages_distributions()
    path = ROOT / (module.replace(".", "/") + ".py")
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        for name in names:
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in ("edgefn", "functions", "shared", "__future__"):
                continue
            dists = {canonicalize_name(d) for d in by_module.get(top, [])}
            assert dists & base, f"{module} imports {top}, which `pip install -e .` does not install"


def test_package_help_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "edgefn.cli", "package", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"default {TARGET.arch}" in out.stdout


# -- the native zips run ----------------------------------------------------------------------

LAZY_PROBE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
missing = []
for name in sys.argv[2:]:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing.append(f"{name}: {exc}")
print(json.dumps(missing))
"""


@pytest.mark.parametrize("route", sorted(FUNCTIONS))
def test_each_zip_answers_health_in_a_clean_target_interpreter(
    route: str, zips_native: dict[str, Any], target_interpreter: str, tmp_path: Path
) -> None:
    built = zips_native[route]
    tree = unpack(built, tmp_path / "task")
    result = zipcheck.health(tree, route, FUNCTIONS[route], target_interpreter, EVENTS)
    assert result["status"] == 200 and result["body"]["data"]["function"] == route
    assert result["outside"] == [], "modules loaded from outside the zip and the standard library"
    # every module the function imports later (lazily) is there too, except what the
    # Lambda runtime provides
    provided = {m for m, d in md.packages_distributions().items()
                if {canonicalize_name(x) for x in d} & PROVIDED_BY_RUNTIME}
    lazy = sorted(third_party_modules(FUNCTIONS[route].split(".")[1]) - (set() if route in PINNED_IN else provided))
    out = subprocess.run([target_interpreter, "-I", "-S", "-c", LAZY_PROBE, str(tree), *lazy],
                         capture_output=True, text=True, env={"PATH": ""}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_zips_ship_what_the_runtime_lacks_and_nothing_more(zips_native: dict[str, Any]) -> None:
    for route, built in zips_native.items():
        assert "sentry-sdk" in built.distributions, "SENTRY_DSN is passed to every function"
        assert not {"packaging", "pyelftools", "uvicorn", "moto"} & set(built.distributions)
        if route not in PINNED_IN:
            assert "boto3" not in built.distributions
            # 17-20 MB: about 10 MB of native code, 4.4 MB of bytecode, Sentry 1.6 MB, Powertools 2 MB
            assert built.size < 25_000_000, f"{route}: {built.size / 1e6:.1f} MB"


def test_zips_are_reproducible(zips_native: dict[str, Any], tmp_path: Path) -> None:
    from edgefn.package import _native_arch, build

    again = build(["webhooks"], tmp_path, arch=_native_arch(), run_health=False)[0]
    assert again.sha256 == zips_native["webhooks"].sha256


# -- both architectures load on the target ----------------------------------------------------


@pytest.mark.parametrize("which", ["zips_native", "zips_foreign"])
def test_every_zip_passes_the_load_checks_for_its_architecture(which: str, request: pytest.FixtureRequest,
                                                                tmp_path: Path) -> None:
    zips: dict[str, Any] = request.getfixturevalue(which)
    for route, built in zips.items():
        arch = _arch_of(built)
        tree = unpack(built, tmp_path / route)
        modules = third_party_modules(FUNCTIONS[route].split(".")[1])
        if route not in PINNED_IN:
            modules -= {"boto3", "botocore"}
        assert zipcheck.problems(tree, TARGET.python, arch, TARGET.glibc, modules) == []
        elves = zipcheck.elf_files(tree)
        assert elves, "the zip has native code (psycopg, pydantic-core ...)"
        newest = max(v for v in map(zipcheck.glibc_needed, elves) if v is not None)
        assert newest <= TARGET.glibc


def _arch_of(built: Any) -> str:
    """The architecture a zip was built for, read from its ELF files."""
    from elftools.elf.elffile import ELFFile

    with zipfile.ZipFile(built.path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".so") and "pydantic_core" in n)
        machine = ELFFile(io.BytesIO(zf.read(name)))["e_machine"]
    return {"EM_X86_64": "x86_64", "EM_AARCH64": "arm64"}[machine]


@pytest.mark.parametrize("which", ["zips_native", "zips_foreign"])
def test_every_module_ships_bytecode_for_the_target_python(which: str, request: pytest.FixtureRequest) -> None:
    zips: dict[str, Any] = request.getfixturevalue(which)
    if zipcheck.interpreter_for(TARGET.python) is None:
        # bytecode is compiled by the target version itself; without it `edgefn package`
        # warns that the zips carry none and what that costs
        assert not any(built.bytecode for built in zips.values())
        pytest.skip(f"no Python {TARGET.python} on this host: the zips carry no bytecode (CI runs where one is on PATH)")
    tag = f"cpython-{TARGET.python.replace('.', '')}"
    for route, built in zips.items():
        assert built.bytecode
        with zipfile.ZipFile(built.path) as zf:
            names = set(zf.namelist())
            sources = [n for n in names if n.endswith(".py")]
            for src in sources:
                folder, _, file = src.rpartition("/")
                pyc = f"{folder + '/' if folder else ''}__pycache__/{file[:-3]}.{tag}.pyc"
                assert pyc in names, f"{route}: {src} has no {tag} bytecode"
            header = zf.read(f"functions/__pycache__/__init__.{tag}.pyc")[4:8]
            # flags 0b01: hash-based and not checked against the source (read-only /var/task)
            assert int.from_bytes(header, "little") == 0b01


# -- the checks fail where loading would fail -------------------------------------------------


def test_glibc_check_refuses_the_python311_runtime(zips_foreign: dict[str, Any], zips_native: dict[str, Any],
                                                   tmp_path: Path) -> None:
    """Amazon Linux 2 (python3.11's runtime) has glibc 2.26: the locked cryptography wheel
    needs 2.34 on both architectures, and on arm64 psycopg-binary's bundled libgssapi
    needs 2.27 (what broke the python3.11 arm64 deploy)."""
    for zips in (zips_native, zips_foreign):
        built = zips["webhooks"]
        arch = _arch_of(built)
        found = zipcheck.elf_problems(unpack(built, tmp_path / arch), arch, (2, 26))
        assert any(p.startswith("cryptography/") and "GLIBC_2.34" in p for p in found), found
        if arch == "arm64":
            assert any("libgssapi" in p and "GLIBC_2.27" in p for p in found), found


def test_machine_check_refuses_the_other_architecture(zips_foreign: dict[str, Any], tmp_path: Path) -> None:
    built = zips_foreign["webhooks"]
    arch = _arch_of(built)
    other = next(a for a in MACHINES if a != arch)
    found = zipcheck.elf_problems(unpack(built, tmp_path / "t"), other, TARGET.glibc)
    assert found and all("built for" in p for p in found)


def test_tag_and_name_checks_refuse_another_python(zips_foreign: dict[str, Any], tmp_path: Path) -> None:
    built = zips_foreign["webhooks"]
    tree = unpack(built, tmp_path / "t")
    arch = _arch_of(built)
    tags = zipcheck.wheel_tag_problems(tree, "3.12", arch)
    assert any(p.startswith(("pydantic_core", "orjson", "psycopg_binary")) for p in tags), tags
    names = zipcheck.extension_problems(tree, "3.12", arch)
    assert any("_pydantic_core.cpython-313" in p for p in names), names
    assert zipcheck.import_problems(tree, {"pydantic_core", "not_there"}, TARGET.python, arch) == [
        "not_there: imported by the function's code but not in the zip"
    ]
