"""The documentation points at things that exist: every relative link and every configs/ path."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target)
CONFIG_PATH = re.compile(r"(?<![\w/.-])(configs/[\w./-]*[\w/])")


def _relative_links(text: str) -> list[str]:
    targets = [m.group(1).split("#", 1)[0] for m in LINK.finditer(text)]
    return [t for t in targets if t and "://" not in t and not t.startswith("mailto:")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_exist(page: Path):
    missing = [t for t in _relative_links(page.read_text()) if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_config_paths_exist(page: Path):
    named = {m.group(1).rstrip("/") for m in CONFIG_PATH.finditer(page.read_text())}
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{page.name} names config paths that do not exist: {missing}"


def test_the_checks_catch_a_broken_page():
    text = "see [the guide](docs/nowhere.md) and configs/none/such.yaml"
    assert _relative_links(text) == ["docs/nowhere.md"]
    assert [m.group(1) for m in CONFIG_PATH.finditer(text)] == ["configs/none/such.yaml"]


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move reference material to docs/"
