"""The lint gate, run by the same command as the tests: ruff over the repository, and the
import contracts of pyproject.toml (layers, no cycles, no bench, HTTP only in the shell)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

from conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
OLD_ROOTS = re.compile(r"^\s*(from|import) (indexer|search|model|crawler|augment)\b", re.M)


def test_ruff_finds_nothing():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def installed_layout(out: Path) -> Path:
    """The package tree as pip installs it (pyproject's packages and package-dir), copied."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in setuptools["packages"]:
        source = ROOT / setuptools["package-dir"].get(package, package.replace(".", "/"))
        target = out / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for module in source.glob("*.py"):
            shutil.copy2(module, target / module.name)
    return out


def lint_imports(layout: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=layout,
        env={**os.environ, "PYTHONPATH": str(layout)},
    )


def test_import_contracts_hold(tmp_path):
    # In the checkout (twice/indexer and the others are links to the stage folders), as a
    # developer runs it, and on the tree pip installs.
    for layout in (ROOT, installed_layout(tmp_path)):
        result = lint_imports(layout)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 broken" in result.stdout


def test_import_contracts_catch_an_upward_import(tmp_path):
    layout = installed_layout(tmp_path)
    with (layout / "twice" / "indexer" / "catalog.py").open("a") as f:
        f.write("\nfrom twice.search import SearchEngine  # noqa\n")
    result = lint_imports(layout)
    assert result.returncode != 0
    assert "twice.indexer.catalog -> twice.search" in result.stdout


def test_nothing_imports_the_old_top_level_names():
    sources = [p for p in ROOT.rglob("*.py") if not {".venv", ".git", "build"} & set(p.parts)]
    offenders = [str(p.relative_to(ROOT)) for p in sources if OLD_ROOTS.search(p.read_text())]
    assert offenders == []
