"""Secure aggregation (privacy.secure_aggregation = "secagg+"): Flower's SecAgg+ gives the plain weighted mean."""

from __future__ import annotations

import dataclasses

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

import fednas.fl._run
from fednas.config import ConfigError, DataConfig, FederationConfig, PrivacyConfig, parse_config
from fednas.export._card import _privacy
from fednas.fl import RunSpec, record_bytes, run_federation, serverapp_identity
from fednas.fl._secure import SECAGG_STAGES
from search_spaces import preset

SECURE = PrivacyConfig(secure_aggregation="secagg+")


def _spec(**federation) -> RunSpec:
    fed = FederationConfig(**{"num_clients": 4, "rounds": 1, "bn_recalibration": "off", "min_train_nodes": 3,
                              **federation})
    return RunSpec(DataConfig(limit=240), fed, 5, preset("mobilenet_micro").to_dict())


def _max_diff(a, b) -> float:
    sa, sb = a.arrays.to_torch_state_dict(), b.arrays.to_torch_state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


def test_the_secure_aggregate_equals_the_plain_weighted_mean_and_is_reproducible() -> None:
    spec = _spec(rounds=2)
    plain = run_federation(spec)
    secure = run_federation(dataclasses.replace(spec, privacy=SECURE))
    again = run_federation(dataclasses.replace(spec, privacy=SECURE))
    assert _max_diff(plain, secure) < 1e-4  # within the protocol's quantization error
    assert _max_diff(secure, again) == 0.0  # masks cancel exactly; the stochastic rounding is seeded
    assert set(secure.bytes_by_type) == set(SECAGG_STAGES) and set(plain.bytes_by_type) == {"train"}
    report = secure.secure
    assert report["protocol"] == "secagg+" and report["protocol_bytes"] > 0 and report["clipped_values"] == 0
    assert report["protected_upload_bytes"] == secure.bytes_by_type["train"]["upload_bytes"] > 0
    assert secure.upload_bytes > plain.upload_bytes and plain.secure == {}
    assert [r.replies for r in secure.rounds] == [4, 4]
    assert secure.rounds[-1].train_loss == pytest.approx(plain.rounds[-1].train_loss, rel=1e-3)
    card = _privacy({"secure_aggregation": report})
    assert "SecAgg+" in card and "saw only their weighted sum" in card and str(report["protocol_bytes"]) in card
    assert "saw each client's update" in _privacy({})


def test_a_client_lost_after_the_key_exchange_is_unmasked_from_its_neighbours_shares(monkeypatch) -> None:
    """Partition 0 drops the message that trains (SecAgg+ stage 2); the others' shares remove its masks,
    and the mean is that of the three clients left, as plain FedAvg gives when that client drops."""
    spec = _spec()

    def secure_drop(spec_):
        return lambda msg, pid: pid == 0 and "fitins.config" in msg.content.config_records

    def plain_drop(spec_):
        return lambda msg, pid: pid == 0 and msg.metadata.message_type == "train"

    monkeypatch.setattr(fednas.fl._run, "dropout_fn", secure_drop)
    secure = run_federation(dataclasses.replace(spec, privacy=SECURE))
    monkeypatch.setattr(fednas.fl._run, "dropout_fn", plain_drop)
    plain = run_federation(spec)
    assert secure.rounds[0].replies == plain.rounds[0].replies == 3 and secure.rounds[0].dropped == 1
    assert _max_diff(plain, secure) < 1e-4


def test_too_few_clients_for_the_threshold_fail_the_round_with_the_reason(monkeypatch) -> None:
    monkeypatch.setattr(fednas.fl._run, "dropout_fn", lambda spec_: lambda msg, pid: pid < 3)
    with pytest.raises(fednas.fl.FederationError, match="SecAgg\\+ halted in stage 'secagg.setup': 1 of 4"):
        run_federation(dataclasses.replace(_spec(min_train_nodes=1), privacy=SECURE))


def test_values_beyond_the_quantization_range_are_counted_per_round() -> None:
    spec = dataclasses.replace(_spec(), privacy=dataclasses.replace(SECURE, secagg_clipping_range=0.01))
    outcome = run_federation(spec)
    assert outcome.rounds[0].secagg_clipped == outcome.secure["clipped_values"] > 0
    assert _max_diff(run_federation(_spec()), outcome) > 1e-3  # clipping changed the mean: why it is reported


def test_attacks_compose_with_secure_aggregation() -> None:
    spec = dataclasses.replace(_spec(attack="sign_flip", attack_fraction=0.25), privacy=SECURE)
    outcome = run_federation(spec)
    assert outcome.rounds[0].attackers == 1
    assert _max_diff(run_federation(_spec()), outcome) > 1e-3


def test_record_bytes_counts_the_empty_values_flower_cannot() -> None:
    content = RecordDict({"c": ConfigRecord({"ids": [], "message": "", "x": 1.0})})
    with pytest.raises((IndexError, ValueError)):
        content["c"].count_bytes()  # Flower's own count (the bug this works around)
    assert record_bytes(content) == len("ids") + len("message") + len("x") + 8
    assert record_bytes(RecordDict({"c": ConfigRecord({"x": 1.0})})) == ConfigRecord({"x": 1.0}).count_bytes()


def test_plain_train_messages_pass_the_secure_mod_untouched() -> None:
    from fednas.fl._secure import secure_mod

    seen = []
    with serverapp_identity(1):
        msg = Message(RecordDict({"config": ConfigRecord({"lr": 0.1})}), 1, "train")
    secure_mod(msg, None, lambda m, c: seen.append(m) or m)
    assert seen == [msg]


def _secure(**sections) -> dict:
    doc = {"privacy": {"secure_aggregation": "secagg+"}, "federation": {"bn_recalibration": "off"}}
    for k, v in sections.items():
        doc[k] = {**doc.get(k, {}), **v}
    return doc


@pytest.mark.parametrize(("doc", "key"), [
    (_secure(federation={"strategy": "krum"}), "federation.strategy"),
    (_secure(space={"labels": {"aggregation": ["fedavg", "fedmedian"]}}), "space.labels.aggregation"),
    (_secure(space={"labels": {"uplink_codec": "quantize"}}), "space.labels.uplink_codec"),
    (_secure(space={"labels": {"prune_method": ["none", "l1"]}}), "space.labels.prune_method"),
    (_secure(federation={"bn_recalibration": "final"}), "federation.bn_recalibration"),
    (_secure(privacy={"mode": "central"}), "privacy.mode"),
    (_secure(study={"mode": "supernet"}), "privacy.secure_aggregation"),
    (_secure(federation={"num_clients": 2, "min_train_nodes": 2}), "federation.fraction_train"),
    (_secure(federation={"num_clients": 8}, privacy={"secagg_quantization_bits": 30}),
     "privacy.secagg_quantization_bits"),
    (_secure(privacy={"secagg_num_shares": 3}), "privacy.secagg_num_shares"),
    (_secure(privacy={"secagg_threshold": 0}), "privacy.secagg_threshold"),
    (_secure(privacy={"secagg_clipping_range": -1.0}), "privacy.secagg_clipping_range"),
    (_secure(privacy={"secure_aggregation": "homomorphic"}), "privacy.secure_aggregation"),
    (_secure(privacy={"secure_aggregation": "ckks"}, federation={"strategy": "bulyan"}), "federation.strategy"),
    (_secure(privacy={"secure_aggregation": "ckks"}, federation={"bn_recalibration": "every_round"}),
     "federation.bn_recalibration"),
])
def test_impossible_secure_combinations_name_the_key(doc: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert str(err.value).startswith(key), str(err.value)


def test_a_secure_study_config_is_accepted_and_travels_in_the_run_spec() -> None:
    config = parse_config(_secure(federation={"strategy": "fedprox", "attack": "gaussian", "attack_fraction": 0.25},
                                  privacy={"secagg_num_shares": 0.5, "secagg_threshold": 0.6}))
    assert config.privacy.secure and not config.privacy.on
    spec = RunSpec(config.data, config.federation, 0, preset("mobilenet_micro").to_dict(), privacy=config.privacy)
    assert RunSpec.from_run_config(spec.to_run_config()).privacy == config.privacy


def test_the_ckks_aggregate_equals_the_plain_weighted_mean_without_the_server_holding_the_key() -> None:
    pytest.importorskip("tenseal")
    spec = _spec(rounds=2)
    plain = run_federation(spec)
    ckks = run_federation(dataclasses.replace(spec, privacy=PrivacyConfig(secure_aggregation="ckks")))
    assert _max_diff(plain, ckks) < 1e-4  # CKKS's approximation error only
    assert set(ckks.bytes_by_type) == {"train", "query.ckks_public", "query.ckks_decrypt"}
    assert ckks.bytes_by_type["query.ckks_public"]["upload_bytes"] > 0  # fetched once, from one client
    report = ckks.secure
    assert report["protocol"] == "ckks" and report["protected_upload_bytes"] > plain.upload_bytes
    assert [r.replies for r in ckks.rounds] == [4, 4]
    card = _privacy({"secure_aggregation": report})
    assert "CKKS" in card and "colluding with the server" in card


def test_a_ckks_key_file_serves_supernodes_and_the_public_context_has_no_secret(tmp_path) -> None:
    pytest.importorskip("tenseal")
    import numpy as np
    import tenseal as ts
    from flwr.app import Context

    from fednas.fl._ckks import CKKS_RECORD, ckks_decrypt, ckks_public, write_ckks_key

    key = tmp_path / "ckks.bin"
    write_ckks_key(str(key))
    node = Context(run_id=1, node_id=7, node_config={"ckks-key": str(key)}, state=RecordDict(), run_config={})
    with serverapp_identity(1):
        public_msg = ckks_public(Message(RecordDict(), 7, "query.ckks_public"), node)
        public = ts.context_from(public_msg.content[CKKS_RECORD]["context"])
        assert not public.has_secret_key()
        x = np.linspace(-1, 1, 5000)
        chunks = [ts.ckks_vector(public, x[i:i + 4096].tolist()) for i in (0, 4096)]
        total = [c + c for c in chunks]  # what the server can do with the public context: add
        query = Message(RecordDict({CKKS_RECORD: ConfigRecord({"chunks": [t.serialize() for t in total],
                                                               "size": 5000})}), 7, "query.ckks_decrypt")
        got = ckks_decrypt(query, node).content["sum"]["sum"].numpy()
    assert got.shape == (5000,) and np.abs(got - 2 * x).max() < 1e-5
    with serverapp_identity(1), pytest.raises(ValueError, match="ciphertexts for"):
        ckks_decrypt(Message(RecordDict({CKKS_RECORD: ConfigRecord({"chunks": [total[0].serialize()], "size": 9000})}),
                             7, "query.ckks_decrypt"), node)
