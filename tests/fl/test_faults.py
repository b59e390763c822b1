from __future__ import annotations

import pytest

from fednas.config import DataConfig, FederationConfig
from fednas.fl import FederationError, RunSpec, run_federation
from search_spaces import preset


def _spec(**fed) -> RunSpec:
    federation = FederationConfig(**{"num_clients": 8, "rounds": 3, "bn_recalibration": "off", **fed})
    return RunSpec(DataConfig(limit=240), federation, 3, preset("mobilenet_micro").to_dict())


@pytest.mark.parametrize("kind", ["client_failure_rate", "client_dropout_rate"])
def test_rounds_complete_with_faulty_clients_and_count_them(kind: str) -> None:
    outcome = run_federation(_spec(**{kind: 0.3}))
    assert len(outcome.rounds) == 3
    for r in outcome.rounds:
        assert r.replies + r.failures + r.dropped == 8
        assert r.replies >= 2
    bad = sum(r.failures if kind == "client_failure_rate" else r.dropped for r in outcome.rounds)
    other = sum(r.dropped if kind == "client_failure_rate" else r.failures for r in outcome.rounds)
    assert bad > 0 and other == 0
    # faulty clients upload nothing: fewer bytes up than a clean run
    clean = run_federation(_spec())
    assert outcome.upload_bytes < clean.upload_bytes


def test_faults_are_reproducible() -> None:
    a = run_federation(_spec(client_failure_rate=0.3, client_dropout_rate=0.2))
    b = run_federation(_spec(client_failure_rate=0.3, client_dropout_rate=0.2))
    assert [(r.replies, r.failures, r.dropped) for r in a.rounds] == [(r.replies, r.failures, r.dropped) for r in b.rounds]
    assert a.accuracy == b.accuracy


def test_too_few_replies_fail_the_run_with_a_reason() -> None:
    with pytest.raises(FederationError, match=r"fewer than min_train_nodes=6.*injected client failure"):
        run_federation(_spec(client_failure_rate=0.6, min_train_nodes=6))
