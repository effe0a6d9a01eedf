"""Each function's README names every error code the function raises by keyword
(`code="..."`): a client team reads the README, not the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"
CODE = re.compile(r'code="([A-Z][A-Z0-9_]+)"')
DOCUMENTED = sorted(p.parent.name for p in FUNCTIONS.glob("*/README.md"))


def test_the_scan_finds_codes() -> None:
    assert "PROFILE_REQUIRED" in CODE.findall((FUNCTIONS / "recommendations" / "logic.py").read_text())
    assert len(DOCUMENTED) >= 6 and "webhooks" in DOCUMENTED


@pytest.mark.parametrize("folder", DOCUMENTED)
def test_every_error_code_is_in_the_readme(folder: str) -> None:
    readme = (FUNCTIONS / folder / "README.md").read_text()
    raised = {code for path in (FUNCTIONS / folder).rglob("*.py") for code in CODE.findall(path.read_text())}
    assert sorted(c for c in raised if f"`{c}`" not in readme) == []
