from __future__ import annotations

import signal
from pathlib import Path

import pytest

# A suite started in the background of a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, so
# fednas._interrupt leaves both signals alone and the interrupt tests' own SIGTERM would stop pytest itself.
# Restore Python's usual Ctrl-C handler so the suite behaves as it does in a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]


TINY_STUDY = (Path(__file__).resolve().parent / "tiny_study.toml").read_text()



@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A study TOML that runs in a few seconds."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY)
    return path


@pytest.fixture(scope="session")
def tiny_study_factory(tmp_path_factory: pytest.TempPathFactory):
    """Run a study made from ``tiny_study.toml`` plus overrides; returns (folder, config, result)."""
    from fednas.config import load_config
    from fednas.search import run_search

    def make(name: str, overrides: tuple[str, ...] = ()):
        folder = tmp_path_factory.mktemp(f"{name}-study")
        path = folder / f"{name}.toml"
        path.write_text(TINY_STUDY)
        config = load_config(path, [f"study.name='{name}'", *overrides])
        return folder, config, run_search(config, progress=False)

    return make
