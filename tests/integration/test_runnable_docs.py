"""The documentation's commands run as written.

Every ```bash block placed right after a `<!-- runnable -->` line in README.md or a page of docs/ is run, on the
built-in model, in one scratch folder shared by all of them, after the README's own demo command (`saehealth demo`,
which trains checkpoints/demo and writes reports/demo that later blocks use). Pages run in the order of mkdocs.yml's
nav, then any page not in the nav. A block fails the test if any of its lines exits non-zero.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = re.compile(r"^<!-- runnable -->\n```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
FIRST_BLOCK = re.compile(r"```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)

pytestmark = pytest.mark.slow


class _MkDocsLoader(yaml.SafeLoader):
    """mkdocs.yml as data: its `!!python/name:` tags (a fence's formatter) are read as plain strings, not imported."""


_MkDocsLoader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: suffix)


def _nav_pages(nav) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


def documented_pages() -> list[Path]:
    """README.md, then docs/ in nav order, then docs pages not in the nav."""
    nav = _nav_pages(yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_MkDocsLoader)["nav"])
    in_nav = [ROOT / "docs" / page for page in nav]
    others = sorted(set((ROOT / "docs").rglob("*.md")) - set(in_nav))
    return [ROOT / "README.md", *in_nav, *others]


def runnable_blocks() -> list[tuple[str, str]]:
    return [
        (str(page.relative_to(ROOT)), match.group(1))
        for page in documented_pages()
        for match in RUNNABLE.finditer(page.read_text())
    ]


def test_the_readme_starts_with_install_demo_and_tests():
    first = FIRST_BLOCK.search((ROOT / "README.md").read_text()).group(1)
    commands = [line.split("#")[0].strip() for line in first.splitlines()]
    assert commands[0].startswith("pip install")
    assert commands[1] == "saehealth demo"
    assert commands[2] == "python -m pytest -q"


def test_every_page_is_built_and_several_have_runnable_blocks():
    blocks = runnable_blocks()
    pages = {page for page, _ in blocks}
    assert "README.md" in pages and len(pages) >= 4, pages
    for page in documented_pages():
        assert page.is_file(), f"{page} is in mkdocs.yml's nav but does not exist"


def test_runnable_blocks_run(tmp_path):
    saehealth = shutil.which("saehealth") or str(Path(sys.executable).parent / "saehealth")
    assert Path(saehealth).exists(), "the saehealth command is not installed (pip install -e .)"
    work = tmp_path / "work"
    work.mkdir()
    (work / "scripts").symlink_to(ROOT / "scripts")  # pages name scripts/configs/*.yaml as a clone has them
    env = {
        **os.environ,
        "PATH": f"{Path(saehealth).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "120",
    }
    steps = [("README.md (the demo)", "saehealth demo\n"), *runnable_blocks()]
    for page, block in steps:
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", block],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, (
            f"a runnable block of {page} failed (exit {done.returncode}):\n{block}\n"
            f"--- stdout (end) ---\n{done.stdout[-3000:]}\n--- stderr (end) ---\n{done.stderr[-3000:]}"
        )
