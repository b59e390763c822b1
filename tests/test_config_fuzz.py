"""Property-based: generated config documents never make the CLI print a traceback."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
tomli_w = pytest.importorskip("tomli_w")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fednas.cli import main  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TINY_STUDY = (Path(__file__).resolve().parent / "tiny_study.toml").read_text()

BASE = tomllib.loads(TINY_STUDY)
SECTIONS = ["study", "objectives", "constraints", "space", "data", "federation", "bogus"]
KEYS = sorted({k for section in BASE.values() for k in section} | {
    "name", "trials", "seed", "sampler", "alpha", "num_clients", "rounds", "lr", "partition", "source",
    "path", "limit", "max_macs", "accuracy", "macs", "labels", "strategy", "min_train_nodes", "batch_size",
    "test_fraction", "base_channels", "strides", "fraction_train", "heartbeat", "zzz",
})
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-10**6, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["mnist5k", "npz", "dirichlet", "iid", "maximize", "minimize", "fedavg", "nsga2", "tpe"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3), max_leaves=6)
mutation = st.tuples(st.sampled_from(SECTIONS), st.sampled_from(KEYS), values)


def _apply(doc: dict[str, Any], muts: list[tuple[str, str, Any]]) -> dict[str, Any]:
    doc = {k: dict(v) for k, v in doc.items()}
    for section, key, value in muts:
        doc.setdefault(section, {})
        if isinstance(doc[section], dict):
            doc[section][key] = value
    return doc


def _run(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gen.toml"
        cfg.write_text(text)
        storage = f"sqlite:///{Path(tmp) / 'never.db'}"
        rc = main(["search", str(cfg), "--storage", storage, "--check"])
        out, err = capsys.readouterr()
        assert rc in (0, 2)
        assert "Traceback" not in err
        if rc == 2:
            assert err.startswith("fednas: error: ") and err.count("\n") == 1
        else:
            assert "OK" in out
        assert not (Path(tmp) / "never.db").exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_study_documents(capsys: pytest.CaptureFixture[str], muts: list) -> None:
    try:
        text = tomli_w.dumps(_apply(BASE, muts))
    except (TypeError, ValueError):  # NaN keys etc. that TOML cannot hold
        return
    _run(text, capsys)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80))
def test_arbitrary_text(capsys: pytest.CaptureFixture[str], text: str) -> None:
    _run(text, capsys)
