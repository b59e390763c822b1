"""Federated Taylor pruning: clients score channels on their data, the server ranks by the sum."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nni")

from fednas.compress import apply_channel_masks, masks_from_scores  # noqa: E402
from fednas.config import DataConfig, FederationConfig  # noqa: E402
from fednas.fl import RunSpec, run_federation  # noqa: E402
from fednas.train import taylor_channel_scores  # noqa: E402
from search_spaces import CompressionSettings, build_model, preset  # noqa: E402

EXPAND, DEPTHWISE = "blocks.0.block.0.0", "blocks.0.block.1.0"


def _micro() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(preset("mobilenet_micro"), num_classes=10, in_channels=1)


def test_scores_cover_every_conv_and_linear_and_leave_the_model_unchanged() -> None:
    model = _micro()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    scores = taylor_channel_scores(model, x, y, batch_size=16)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert set(scores) == set(convs)
    assert all(scores[n].shape == (m.weight.shape[0],) and (scores[n] >= 0).all() for n, m in convs.items())
    assert sum(float(s.sum()) for s in scores.values()) > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)


def test_masks_keep_the_highest_scored_channels_of_a_group() -> None:
    model = _micro()
    scores = {n: torch.ones(m.weight.shape[0]) for n, m in model.named_modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    ranked = torch.arange(scores[EXPAND].numel(), dtype=torch.float64)
    scores[EXPAND] = scores[DEPTHWISE] = ranked  # expansion and depthwise prune together
    masks = masks_from_scores(model, scores, 0.5)
    kept = masks[EXPAND].nonzero().flatten()
    assert len(kept) == len(ranked) // 2
    assert kept.min() >= len(ranked) // 2  # the lower-scored half went
    smaller = apply_channel_masks(model, masks, torch.zeros(2, 1, 28, 28))
    assert smaller(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_a_federated_taylor_trial_prunes_with_client_scores() -> None:
    comp = CompressionSettings(prune_method="taylor", prune_sparsity=0.5, prune_round=1)
    spec = RunSpec(DataConfig(limit=240), FederationConfig(num_clients=3, rounds=2, batch_size=16), 0,
                   preset("mobilenet_tiny").to_dict(), comp)
    outcome = run_federation(spec)
    assert len(outcome.rounds) == 2 and outcome.prune_masks
    taylor = outcome.bytes_by_type["query.taylor_scores"]  # the scores travelled, and were counted
    assert taylor["upload_bytes"] > 0 and taylor["download_bytes"] > 0
    full = build_model(preset("mobilenet_tiny"), num_classes=10, in_channels=1)
    pruned_numel = sum(v.numel() for v in outcome.arrays.to_torch_state_dict().values())
    assert pruned_numel < 0.7 * sum(v.numel() for v in full.state_dict().values())
    assert outcome.rounds[1].upload_bytes < outcome.rounds[0].upload_bytes
