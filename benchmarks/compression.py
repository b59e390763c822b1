"""Each compression knob against the uncompressed baseline, on one architecture and seed.

Runs the default federation (mnist5k, 8 clients, Dirichlet 0.5) of ``mobilenet_tiny`` once
uncompressed and once per knob, in this process, prints a markdown table, writes it into
BENCHMARKS.md (between the ``compression-table`` markers; ``--no-write`` to skip) and prints,
as the last line, one JSON object:

    python benchmarks/compression.py --rounds 4

Upload ratios are of the *training* uploads only (``train`` exchanges: the encoded model
updates); the batch-norm pooling replies (``query.bn_moments``, never compressed, identical
in every run) are left out and shown in their own column. MACs/params are those of the
trained (final) model. ``prune50`` is federated pruning: after aggregating the middle round
(``rounds // 2``) the server prunes 50 % of the global model's channels (L1 ranking, NNI +
ModelSpeedup), and the remaining rounds train and send the smaller model; its MACs/params
are of the final pruned model. ``int8`` is post-training static int8 of the baseline's final
model, calibrated on 256 training images. ``w16`` ... ``w8_stages_4/4/4`` are the weight
precisions of the ``weight_bits`` / ``s{i}_wbits`` labels applied to the baseline's final
model (weight-only, float16 scale per output channel); their note gives the packed bytes
against float32 (``weight_bytes``). ``prune50_weight`` / ``prune80_weight`` / ``prune50_neuron`` /
``prune50_block`` (and ``_block_taylor``) are the other ``prune_granularity`` values at the same
round; ``tucker50`` is Tucker-2 of the dense k x k convs (ResNet's). ``--depths``/``--hidden``
make the preset deeper or give it a hidden linear, so that blocks and neurons exist to prune;
``greedy@w6`` / ``dp@w6`` (and ``@w4``) are the compression
policies (``fednas.compress.allocate_bits``: per-layer widths from 16/8/6/4/3/2 bits, chosen by
per-layer sensitivity, the output KL divergence on 512 training images) at the packed-weight budget of uniform 6-bit
(4-bit) weights, against the uniform ``w6`` / ``w4`` rows; ``kd_feature`` / ``kd_attention``
distil the received global model's stage outputs (FitNets hints) or attention maps instead of
its soft targets (``kd``); ``--only`` runs some knobs
(``policies@w6``, ``policies@w4`` for those); ``--table NAME`` writes between ``compression-table-NAME`` markers:

    python benchmarks/compression.py --depths 1,2,2 --hidden 64 --table deeper
    python benchmarks/compression.py --arch resnet_micro --depths 2,2 --table resnet --only tucker50,prune50_block
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fednas.config import DataConfig, FederationConfig
from fednas.cost import measure
from fednas.fl import RunSpec, federated_data, run_federation
from fednas.fl._spec import build_run_model
from search_spaces import CompressionSettings, preset

RUNS: dict[str, CompressionSettings] = {
    "baseline": CompressionSettings(),
    "q8": CompressionSettings(uplink_codec="quantize", uplink_bits=8),
    "q4": CompressionSettings(uplink_codec="quantize", uplink_bits=4),
    "topk1": CompressionSettings(uplink_codec="topk", uplink_topk=0.01),
    "q8down": CompressionSettings(downlink_codec="quantize", downlink_bits=8),
    "lowrank50": CompressionSettings(lowrank_ratio=0.5),
    "kd": CompressionSettings(kd_weight=0.3, kd_temperature=4.0),
    "kd_feature": CompressionSettings(kd_weight=0.3, kd_kind="feature"),
    "kd_attention": CompressionSettings(kd_weight=0.3, kd_kind="attention"),
}


@dataclass
class Row:
    name: str
    accuracy: float
    macs: int
    params: int
    train_upload: int
    train_download: int
    bn_bytes: int
    seconds: float
    note: str = ""


def _federated(spec: RunSpec, name: str) -> tuple[Row, Any]:
    data = federated_data(spec.data, spec.federation.num_clients, spec.seed)
    model = build_run_model(spec.arch, spec.compression, num_classes=data.train.num_classes,
                            in_channels=data.train.in_channels)
    cost = measure(model, in_channels=data.train.in_channels, resolution=data.train.resolution)
    start = time.perf_counter()
    out = run_federation(replace(spec))
    train = out.bytes_by_type.get("train", {"upload_bytes": 0, "download_bytes": 0})
    bn = out.bytes_by_type.get("query.bn_moments", {"upload_bytes": 0, "download_bytes": 0})
    note = ""
    s = spec.compression
    if out.pruned_round:  # the server pruned during the run: the final model is the smaller structure
        from fednas.compress import apply_prune_plan, is_block_plan, plan_blocks
        from fednas.fl._pruning import example_input

        model = apply_prune_plan(model, out.prune_masks, example_input(data.train.in_channels, data.train.resolution))
        cost = measure(model, in_channels=data.train.in_channels, resolution=data.train.resolution)
        note = (f"federated {s.prune_method.upper()} {s.prune_granularity} {s.prune_sparsity:.0%} after round "
                f"{out.pruned_round}")
        if is_block_plan(out.prune_masks):
            note += f"; blocks removed {plan_blocks(out.prune_masks)}"
        taylor = out.bytes_by_type.get("query.taylor_scores")
        if taylor:
            note += f"; Taylor scores round trip {taylor['upload_bytes'] + taylor['download_bytes']:,} B"
    model.load_state_dict(out.arrays.to_torch_state_dict())
    if s.prune_on and s.prune_granularity == "weight":
        note += f"; {_sparse_note(model, data)}"
    if s.tucker_on or s.lowrank_on:
        note = "factorized before training"
    row = Row(name, out.accuracy, cost.macs, cost.params, train["upload_bytes"], train["download_bytes"],
              bn["upload_bytes"] + bn["download_bytes"], time.perf_counter() - start, note)
    return row, model


def _sparse_note(model: torch.nn.Module, data: Any) -> str:
    """Sparsity reached and the int8 file size with and without the bitmap encoding of zero weights."""
    from fednas.compress import quantize_int8, sparse_saving, sparsity_of

    q = quantize_int8(model, data.train.x[:256])
    weights = {n: m.weight for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    return (f"sparsity {sparsity_of(model):.3f}; int8 {q.bytes - sparse_saving(weights, 8):,} B with a bitmap "
            f"encoding vs {q.bytes:,} B dense")


def _int8(model: torch.nn.Module, data: Any, base: Row) -> Row:
    from fednas.compress import evaluate_int8, quantize_int8, serialized_bytes

    q = quantize_int8(model, data.train.x[:256])
    _, acc = evaluate_int8(q, data.test.x, data.test.y)
    return replace(base, name="int8", accuracy=acc, seconds=0.0,
                   note=f"post-training; {q.bytes:,} B vs {serialized_bytes(model):,} B float")


# Weight precisions applied after training to the baseline's final model (weight_bits, per-stage s{i}_wbits).
PRECISIONS: dict[str, tuple[int, tuple[int, ...]]] = {
    "w16": (16, ()), "w8": (8, ()), "w6": (6, ()), "w4": (4, ()),
    "w8_stages_8/6/4": (8, (8, 6, 4)), "w8_stages_4/4/4": (8, (4, 4, 4)),
}


def _precision(model: torch.nn.Module, arch: Any, data: Any, base: Row, name: str, bits: int,
               stages: tuple[int, ...]) -> tuple[Row, float]:
    from fednas.compress import quantize_weights, weight_plan
    from fednas.train import evaluate

    plan32 = weight_plan(model, arch, 32)
    float_bytes = quantize_weights(model, plan32)[1].nbytes
    quantized, packed = quantize_weights(model, weight_plan(model, arch, bits, stages))
    _, acc = evaluate(quantized, data.test.x, data.test.y)
    ratio = packed.nbytes / float_bytes
    return replace(base, name=name, accuracy=acc, seconds=0.0,
                   note=f"weight-only post-training; packed {packed.nbytes:,} B vs {float_bytes:,} B float32 "
                        f"({ratio:.3f})"), ratio


def _policies(model: torch.nn.Module, arch: Any, data: Any, base: Row, uniform: int) -> tuple[dict[str, Row], dict]:
    """Greedy and DP per-layer widths at the packed-weight budget of uniform ``uniform``-bit weights, as a trial's
    ``compression_policy`` label chooses them (``fednas.compress.policy_plan``: sensitivity from the first 512
    training images); accuracy on the held-out split."""
    from fednas.compress import POLICY_SAMPLES, policy_plan, quantize_weights
    from fednas.train import evaluate

    x = data.train.x[:POLICY_SAMPLES]
    rows, info = {}, {}
    for policy in ("greedy", "dp"):
        start = time.perf_counter()
        chosen = policy_plan(model, arch, uniform, (), policy, x)
        seconds = time.perf_counter() - start
        plan, budget, spent = chosen.plan, chosen.budget, chosen.spent
        _, acc = evaluate(quantize_weights(model, plan)[0], data.test.x, data.test.y)
        counts = {b: sum(1 for v in plan.values() if v == b) for b in sorted(set(plan.values()), reverse=True)}
        name = f"{policy}@w{uniform}"
        rows[name] = replace(base, name=name, accuracy=acc, seconds=seconds,
                             note=f"post-training; planned weights {spent:,.0f} B of the uniform w{uniform} budget "
                                  f"{budget:,.0f} B; layers per width {counts}")
        info[name] = {"accuracy": acc, "bytes": spent, "budget": budget}
    uniform_plan = policy_plan(model, arch, uniform, (), "uniform")
    _, uacc = evaluate(quantize_weights(model, uniform_plan.plan)[0], data.test.x, data.test.y)
    info[f"uniform@w{uniform}"] = {"accuracy": uacc, "bytes": uniform_plan.budget, "budget": uniform_plan.budget}
    return rows, info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default="mobilenet_tiny")
    p.add_argument("--depths", default="", help="comma-separated stage depths replacing the preset's (e.g. 1,2,2)")
    p.add_argument("--hidden", type=int, default=-1, help="MobileNet classifier_hidden width replacing the preset's")
    p.add_argument("--only", default="", help="comma-separated knobs to run besides the baseline (default: all)")
    p.add_argument("--table", default="", help="write between the compression-table-TABLE markers instead")
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    fed = FederationConfig(num_clients=args.clients, rounds=args.rounds)
    arch = _arch(args)
    base_spec = RunSpec(DataConfig(), fed, args.seed, arch.to_dict())
    middle = max(args.rounds // 2, 1)

    def prune(method: str, granularity: str = "channel", sparsity: float = 0.5) -> CompressionSettings:
        return CompressionSettings(prune_method=method, prune_granularity=granularity, prune_sparsity=sparsity,
                                   prune_round=middle)

    runs = {**RUNS, "tucker50": CompressionSettings(tucker_ratio=0.5),
            "prune50": prune("l1"), "prune50_taylor": prune("taylor"),
            "prune50_weight": prune("l1", "weight"), "prune80_weight": prune("l1", "weight", 0.8),
            "prune50_neuron": prune("l1", "neuron"), "prune50_block": prune("l1", "block"),
            "prune50_block_taylor": prune("taylor", "block")}
    if args.only:
        keep = {"baseline", *args.only.split(",")}
        unknown = sorted(keep - set(runs) - set(PRECISIONS) - {"int8", "policies@w6", "policies@w4"})
        if unknown:
            p.error(f"--only: unknown knob(s) {unknown}; expected some of {sorted(set(runs) | set(PRECISIONS))}")
        runs = {k: v for k, v in runs.items() if k in keep}
    rows: dict[str, Row] = {}
    baseline_model = None
    for name, settings in runs.items():
        row, model = _federated(replace(base_spec, compression=settings), name)
        rows[name] = row
        if name == "baseline":
            baseline_model = model
        print(f"{name}: accuracy {row.accuracy:.4f}, train upload {row.train_upload:,} B", file=sys.stderr)
    data = federated_data(base_spec.data, fed.num_clients, base_spec.seed)
    post = set(PRECISIONS) | {"int8"} if not args.only else set(args.only.split(","))
    if "int8" in post:
        rows["int8"] = _int8(baseline_model, data, rows["baseline"])
    weight_ratio: dict[str, float] = {}
    for name, (bits, stages) in PRECISIONS.items():
        if name in post:
            rows[name], weight_ratio[name] = _precision(baseline_model, arch, data, rows["baseline"], name, bits,
                                                        stages)
    policy_info: dict[str, Any] = {}
    for uniform in (6, 4):
        if not args.only or f"policies@w{uniform}" in post:
            extra, info = _policies(baseline_model, arch, data, rows["baseline"], uniform)
            rows.update(extra)
            policy_info.update(info)
    b = rows["baseline"]
    shape = f" (stage depths {args.depths})" if args.depths else ""
    shape += f" (classifier_hidden {args.hidden})" if args.hidden >= 0 else ""
    lines = [
        f"`{args.arch}`{shape}, mnist5k, {args.clients} clients Dirichlet 0.5, {args.rounds} rounds, seed "
        f"{args.seed}; upload = training uploads only (batch-norm pooling in its own column)",
        "",
        "| knob | accuracy | Δ acc | MACs | params | train upload B | ratio | train download B | ratio | BN pooling B | s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r.name} | {r.accuracy:.4f} | {r.accuracy - b.accuracy:+.4f} | {r.macs:,} | {r.params:,} | "
            f"{r.train_upload:,} | {r.train_upload / b.train_upload:.3f} | {r.train_download:,} | "
            f"{r.train_download / b.train_download:.3f} | {r.bn_bytes:,} | {r.seconds:.1f} | {r.note} |"
        )
    print("\n".join(lines))
    summary = {f"{k}_upload_ratio": rows[k].train_upload / b.train_upload for k in ("q8", "q4", "topk1") if k in rows}
    summary.update({f"{k}_macs_ratio": rows[k].macs / b.macs for k in rows if k.startswith("prune")})
    summary.update({
        "upload_counts": "train exchanges only (query.bn_moments excluded)",
        "accuracy_delta": {k: rows[k].accuracy - b.accuracy for k in rows if k != "baseline"},
        "weight_bytes_ratio": weight_ratio,
        "policies": policy_info,
    })
    if not args.no_write:
        _write_table(lines + ["", "Last line: `" + json.dumps(summary) + "`"], args.table)
    print()
    print(json.dumps(summary))
    return 0


def _arch(args: argparse.Namespace) -> Any:
    """The preset, with ``--depths`` / ``--hidden`` applied (a deeper or wider member of its family)."""
    import dataclasses

    arch = preset(args.arch)
    if args.depths:
        depths = [int(d) for d in args.depths.split(",")]
        if len(depths) != len(arch.stages):
            raise SystemExit(f"--depths: {args.arch} has {len(arch.stages)} stages, got {len(depths)} depths")
        arch = dataclasses.replace(arch, stages=tuple(dataclasses.replace(s, depth=d)
                                                      for s, d in zip(arch.stages, depths)))
    if args.hidden >= 0:
        arch = dataclasses.replace(arch, classifier_hidden=args.hidden)
    return arch


def _write_table(lines: list[str], table: str = "") -> None:
    """Replace the text between the markers in BENCHMARKS.md (append the section if absent)."""
    path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
    name = f"compression-table-{table}" if table else "compression-table"
    begin, end = f"<!-- {name}:begin (benchmarks/compression.py) -->", f"<!-- {name}:end -->"
    block = "\n".join([begin, *lines, end])
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
