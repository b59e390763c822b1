from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fednas.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_studies_are_valid() -> None:
    for path in sorted((ROOT / "studies").glob("*.toml")):
        config = load_config(path)
        assert config.study.name == path.stem
        assert config.storage == f"sqlite:///{path.parent / (path.stem + '.db')}"


def test_quickstart_meets_the_non_iid_requirement() -> None:
    config = load_config(ROOT / "studies" / "quickstart.toml")
    assert config.data.partition == "dirichlet" and config.data.alpha <= 1.0
    assert config.study.trials >= 10


def test_overrides_use_toml_literals_and_bare_strings(tiny_config: Path) -> None:
    config = load_config(tiny_config, ["federation.rounds=7", "data.source=npz", "data.path=/x/y.npz",
                                        "space.labels.s2_kernel=[3, 7]", "study.sampler=tpe"])
    assert config.federation.rounds == 7
    assert config.data.source == "npz" and config.data.path == "/x/y.npz"
    assert config.space.labels["s2_kernel"] == [3, 7]
    assert config.study.sampler == "tpe"


@pytest.mark.parametrize(
    "override, key",
    [
        ("federation.roundz=3", "federation.roundz"),
        ("federation.rounds='three'", "federation.rounds"),
        ("federation.rounds=0", "federation.rounds"),
        ("federation.strategy='fedsgd'", "federation.strategy"),
        ("federation.min_train_nodes=99", "federation.min_train_nodes"),
        ("data.alpha=0", "data.alpha"),
        ("data.alpha=-1.5", "data.alpha"),
        ("data.source='imagenet'", "data.source"),
        ("data.partition='zipf'", "data.partition"),
        ("data.test_fraction=1.0", "data.test_fraction"),
        ("objectives.latency='minimize'", "objectives.latency"),
        ("objectives.accuracy='max'", "objectives.accuracy"),
        ("study.sampler='cmaes'", "study.sampler"),
        ("study.trials=0", "study.trials"),
        ("constraints.max_macs=-1", "constraints.max_macs"),
        ("space.labels.s1_kernel=4", "s1_kernel"),
        ("space.labels.s9_kernel=3", "s9_kernel"),
        ("space.labels.s1_width=[]", "s1_width"),
        ("space.labels.s1_depth={low=3, high=1}", "s1_depth"),
        ("space.strides=[1, 3]", "strides"),
        ("space.widht=2", "widht"),
        ("extra.key=1", "extra"),
        ("data.source='npz'", "data.path"),
    ],
)
def test_bad_values_name_the_key(tiny_config: Path, override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config, [override])
    message = str(info.value)
    assert key in message and str(tiny_config) in message
    assert "\n" not in message


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\nname = 1")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml")


def test_section_of_wrong_type() -> None:
    with pytest.raises(ConfigError, match="federation: expected a table"):
        parse_config({"federation": 3})


def test_cli_config_error_exits_2_and_writes_nothing(tiny_config: Path, tmp_path: Path) -> None:
    storage = tmp_path / "never.db"
    run = subprocess.run(
        [sys.executable, "-m", "fednas", "search", str(tiny_config), "--storage", f"sqlite:///{storage}",
         "--set", "federation.lr=-1"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]  # one line
    assert "federation.lr" in run.stderr and "Traceback" not in run.stderr
    assert not storage.exists()
    assert not list(tmp_path.glob("*.db"))


def test_cli_bad_data_file_exits_2_before_storage(tiny_config: Path, tmp_path: Path) -> None:
    npz = tmp_path / "broken.npz"
    npz.write_bytes(b"not a zip")
    run = subprocess.run(
        [sys.executable, "-m", "fednas", "search", str(tiny_config), "--set", "data.source=npz",
         "--set", f"data.path={npz}"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "broken.npz" in run.stderr and "Traceback" not in run.stderr
    assert not list(tmp_path.glob("*.db"))


@pytest.mark.parametrize(
    "url, needle",
    [
        ("postgresql://nobody@127.0.0.1:1/nodb", "postgresql://"),
        ("mysql://nobody@127.0.0.1:1/nodb", "mysql+pymysql://"),  # no MySQLdb driver: says which to install
        ("not-a-url", "not-a-url"),
        ("sqlite:///{tmp}/afile/sub/x.db", "afile"),
    ],
)
def test_unusable_storage_is_a_one_line_error(tiny_config: Path, tmp_path: Path, url: str, needle: str) -> None:
    (tmp_path / "afile").write_text("a file, not a folder")
    before = sorted(p.name for p in tmp_path.iterdir())
    run = subprocess.run(
        [sys.executable, "-m", "fednas", "search", str(tiny_config), "--storage", url.format(tmp=tmp_path), "--trials", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert needle in run.stderr and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
