"""fednas's units import only downward: the import-linter contract in pyproject.toml holds and covers every unit."""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> list[str]:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    return [unit.strip() for layer in layers for unit in layer.replace(":", "|").split("|")]


def test_every_top_level_unit_has_a_layer() -> None:
    import fednas

    units = {f"fednas.{m.name}" for m in pkgutil.iter_modules(fednas.__path__)} | {"search_spaces"}
    listed = set(_layers())
    assert units - listed == set(), "units missing from [tool.importlinter] layers"
    assert listed - units == set(), "layers naming units that do not exist"


def test_import_linter_contract_is_kept() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports not installed (pip install 'fednas[test]')")
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout
