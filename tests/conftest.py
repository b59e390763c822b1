from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY_STUDY = """
[study]
name = "tiny"
trials = 3
seed = 0
sampler = "random"

[objectives]
accuracy = "maximize"
macs = "minimize"
comm_bytes = "minimize"

[space]
base_channels = [8, 16]
strides = [2, 2]

[space.labels]
stem_width = 0.5
s1_depth = 1
s2_depth = 1
s1_width = [0.5, 1.0]
s2_width = [0.5, 1.0]
s1_expansion = [1, 2]
s2_expansion = 2
s1_kernel = 3
s2_kernel = [3, 5]
s1_se = false
s2_se = false

[data]
source = "mnist5k"
limit = 240
alpha = 0.5

[federation]
num_clients = 3
rounds = 2
batch_size = 16
"""


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A study TOML that runs in a few seconds."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY)
    return path
