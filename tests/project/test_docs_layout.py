"""docs/layout.md, the map of the code, names every module and test folder there is."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = (ROOT / "docs" / "layout.md").read_text()


def listed(heading: str) -> set[str]:
    """The first column of the table under ``heading`` (backquotes stripped)."""
    section = LAYOUT.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", section, re.MULTILINE)}


def test_every_module_of_both_packages_is_on_the_map() -> None:
    """Subpackages' modules included, as ``django/base.py``."""
    for package, heading in (("psycopg2_pool", "psycopg2_pool:"), ("telemetry", "telemetry:")):
        modules = {p.relative_to(ROOT / package).as_posix() for p in (ROOT / package).rglob("*")
                   if p.suffix in (".py", ".c") and p.name != "__init__.py"}
        assert listed(heading) == modules, package


def test_every_test_folder_is_on_the_map() -> None:
    folders = {f"tests/{p.name}/" for p in (ROOT / "tests").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= listed("Around them")
