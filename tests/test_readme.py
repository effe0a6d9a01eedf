"""The README's inventory claims, checked against the tree: every shared module named in the
layout, every `edgefn` command in the Commands table, every linked file present."""

from __future__ import annotations

import re
from pathlib import Path

from edgefn.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_layout_names_every_shared_module() -> None:
    layout = README[README.index("- `shared/`:"): README.index("- `sql/migrations/`")]
    named = set(re.findall(r"`([a-z_][a-z0-9_]*)`", layout))
    modules = {p.stem for p in (ROOT / "shared").glob("*.py") if p.stem != "__init__"}
    assert modules - named == set(), "name them in the README's layout list"
    assert named - modules - {"shared"} == set(), "the README names modules that do not exist"


def test_the_commands_table_lists_every_command() -> None:
    table = README[README.index("## Commands"): README.index("## Configuration")]
    listed = set(re.findall(r"^\| `edgefn ([a-z-]+)", table, re.M))
    assert listed == set(COMMANDS)


def test_linked_files_exist() -> None:
    for target in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (ROOT / target).exists(), target
