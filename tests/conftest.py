from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY_STUDY = (Path(__file__).resolve().parent / "tiny_study.toml").read_text()



@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A study TOML that runs in a few seconds."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY)
    return path
