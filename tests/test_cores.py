"""Workers on one machine share its cores (fednas._cores)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fednas._cores import LocalWorkers, usable_cores


@pytest.fixture
def auto(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_live_workers_are_counted_and_dead_entries_removed(tmp_path: Path, auto) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        with LocalWorkers(tmp_path) as me:
            assert me.count() == 1
            (tmp_path / str(other.pid)).touch()
            (tmp_path / dead.stdout.strip()).touch()
            assert me.count() == 2
            assert not (tmp_path / dead.stdout.strip()).exists()  # cleaned up
        assert not any(p.name.isdigit() and p.name != str(other.pid) for p in tmp_path.iterdir())
    finally:
        other.kill()
        other.wait()


def test_share_sizes_torch_threads_and_restores_them(tmp_path: Path, auto, monkeypatch) -> None:
    monkeypatch.setattr("fednas._cores.usable_cores", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    others = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    try:
        with LocalWorkers(tmp_path) as me:
            assert me.share() == 4 and torch.get_num_threads() == 4
            (tmp_path / str(others[0].pid)).touch()
            assert me.share() == 2 and torch.get_num_threads() == 2
            (tmp_path / str(others[1].pid)).touch()
            assert me.share() == 1  # 4 // 3
            others[1].kill()
            others[1].wait()
            assert me.share() == 2  # a worker left: take its share back
        assert torch.get_num_threads() == 4  # what it was on entry
    finally:
        for p in others:
            p.kill()
            p.wait()
        torch.set_num_threads(before)


def test_an_explicit_thread_setting_is_left_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with LocalWorkers(tmp_path) as me:
            (tmp_path / str(other.pid)).touch()
            assert me.share() == before and torch.get_num_threads() == before
    finally:
        other.kill()
        other.wait()


def test_usable_cores_is_positive() -> None:
    assert 1 <= usable_cores() <= 4096
