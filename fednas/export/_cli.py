"""Handlers of ``fednas export`` and ``fednas train`` (the parsers are in ``fednas.cli``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from fednas._errors import ConfigError
from fednas.config import DEFAULT_CONFIG, StudyConfig

__all__ = ["run_export", "run_train"]


def _dynamo(args: argparse.Namespace) -> bool | None:
    return {None: None, "dynamo": True, "torchscript": False}[getattr(args, "onnx_exporter", None)]


def run_export(args: argparse.Namespace) -> int:
    from fednas.config import default_storage
    from fednas.export import check_bundle_out, resolve_formats, source_from_supernet, source_from_trial, write_bundle

    storage = args.storage or default_storage(args.study)
    resolve_formats(args.formats)  # bad or unavailable formats fail before anything is read
    start = time.perf_counter()
    if getattr(args, "supernet", False):
        source = source_from_supernet(storage, args.study)  # write_bundle checks --out against its origin
        print(f"the supernet's largest subnet of study {args.study!r} ({source.origin['architecture']})")
    else:
        source = source_from_trial(storage, args.study, trial=args.trial, pick=args.pick)
        check_bundle_out(args.out, source.origin)
        print(f"trial {source.origin['trial']} of study {args.study!r}" + (f" ({args.pick})" if args.pick else ""))
    result = write_bundle(source, args.out, formats=args.formats, onnx_dynamo=_dynamo(args))
    _report(result, time.perf_counter() - start)
    return 0


def _report(result: Any, seconds: float) -> None:
    m = result.metrics
    for name, r in m["exports"].items():
        extra = ""
        if name == "onnx":
            extra = f"  opset {r['opset']}, max abs diff {r['max_abs_diff']:.2g}"
        elif name == "int8":
            extra = f"  accuracy {r['accuracy']:.4f} (fp32 {r['fp32_accuracy']:.4f}), {r['size_ratio']:.2f}x the size"
        print(f"  {r['file']:<22} {r['bytes']:>10,} B  {r['seconds']:6.2f} s{extra}")
    for why in result.skipped.values():
        print(f"  skipped {why}")
    print(f"bundle written to {result.out} in {seconds:.1f} s (accuracy {m['pytorch_accuracy']:.4f})")


def run_train(args: argparse.Namespace) -> int:
    from fednas._interrupt import stop_at_safe_points
    from fednas.export import check_bundle_out, train_architecture, write_bundle
    from fednas.fl import FederationError
    from fednas.pipeline import CandidateError
    from fednas.train import TrainingDiverged

    candidate, config, origin = _train_inputs(args)
    rounds = args.rounds if args.rounds is not None else 3 * config.federation.rounds
    if rounds < 1:
        raise ConfigError(f"--rounds: expected an integer >= 1, got {rounds}")
    check_bundle_out(args.out, {"trained": True, **origin})
    if args.formats is not None:
        from fednas.export import resolve_formats

        resolve_formats(args.formats)
    from fednas.fl import federated_data
    from fednas.pipeline import build

    try:  # an architecture that cannot be built for this data is refused before the run is announced
        build(candidate, federated_data(config.data, config.federation.num_clients, config.study.seed))
    except CandidateError as exc:
        raise ConfigError(f"{origin['architecture']}: {exc}") from None
    comp = candidate.compression.describe()
    print(f"training {origin['architecture']} for {rounds} rounds on {config.data.source} "
          f"({config.federation.num_clients} clients, {config.federation.strategy}"
          + (f"; compression {comp}" if comp != "-" else "") + ")", flush=True)

    def on_round(r: Any) -> None:
        print(f"  round {r.round:>3}/{rounds}  accuracy {r.accuracy:.4f}  loss {r.loss:.4f}  "
              f"bytes {r.download_bytes + r.upload_bytes:>12,}  {r.seconds:5.1f} s", flush=True)

    start = time.perf_counter()
    if getattr(args, "superlink", None) is not None:
        return _train_on_superlink(args, candidate, config, rounds, origin, start)
    try:
        with stop_at_safe_points():  # Ctrl-C stops between batches; main() reports it
            source = train_architecture(candidate, config, rounds=rounds, on_round=on_round, origin=origin)
    except (FederationError, TrainingDiverged) as exc:
        print(f"fednas: training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"final accuracy {source.metrics['accuracy']:.4f} after {rounds} rounds "
          f"({time.perf_counter() - start:.1f} s)")
    result = write_bundle(source, args.out, formats=args.formats, onnx_dynamo=_dynamo(args))
    _report(result, time.perf_counter() - start)
    return 0


def _train_on_superlink(args: argparse.Namespace, candidate: Any, config: StudyConfig, rounds: int,
                        origin: dict[str, Any], start: float) -> int:
    """``fednas train --superlink``: the run goes through ``flwr run``; the bundle is written from what the
    ServerApp saved (when it ran on this machine)."""
    import shutil
    import tempfile

    from fednas.export import write_bundle
    from fednas.export._deploy import app_root, train_on_superlink
    from fednas.fl import FederationError

    app_root()  # refused before anything runs when fednas has no project folder
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.superlink-", dir=out.parent))
    connection = args.superlink or None
    print(f"submitting to SuperLink connection {connection or '(Flower default)'}: {config.federation.num_clients} "
          f"SuperNodes expected, started with --node-config \"partition-id=I num-partitions="
          f"{config.federation.num_clients}\"", flush=True)
    try:
        source = train_on_superlink(candidate, config, rounds=rounds, connection=connection,
                                    origin={**origin, "superlink": connection or "default"}, staging=staging)
    except FederationError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"fednas: training failed: {exc}", file=sys.stderr)
        return 1
    if source is None:
        print(f"the run finished; its ServerApp ran on another machine and saved the final model there in "
              f"{staging / 'result'} (model.safetensors, outcome.json)")
        return 0
    try:
        print(f"final accuracy {source.metrics['accuracy']:.4f} after {rounds} rounds "
              f"({time.perf_counter() - start:.1f} s)")
        result = write_bundle(source, args.out, formats=args.formats, onnx_dynamo=_dynamo(args))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _report(result, time.perf_counter() - start)
    return 0


def _train_inputs(args: argparse.Namespace) -> tuple[Any, StudyConfig, dict[str, Any]]:
    """The candidate (architecture and compression labels), the config and where both came from.

    A bundle folder brings its architecture and its labels; a preset or an ``arch.json``
    takes the compression labels CONFIG fixes (``[space.labels]`` scalars), as ``flwr run`` does.
    """
    from fednas.config import load_config
    from fednas.fl._spec import flwr_run_compression
    from fednas.models import read_bundle
    from fednas.pipeline import Candidate
    from search_spaces import CompressionSettings, load_architecture

    targets = list(args.targets)
    if args.trial is not None:
        if len(targets) > 1:
            raise ConfigError(f"with --trial, expected at most a CONFIG argument, got {' '.join(targets)}")
        return _from_trial(args, targets[0] if targets else None)
    if not targets:
        raise ConfigError("expected an architecture (ARCH.json, a preset name or a bundle folder) or --study S --trial N")
    if len(targets) > 2:
        raise ConfigError(f"expected ARCH [CONFIG], got {len(targets)} arguments")
    ref = targets[0]
    config_path = targets[1] if len(targets) > 1 else DEFAULT_CONFIG
    config = load_config(config_path, args.overrides)
    if Path(ref).is_dir():
        arch, doc = read_bundle(ref)
        bundle_labels = dict(doc.get("labels") or {})
    else:
        arch, bundle_labels = load_architecture(ref), {}
    try:
        settings = flwr_run_compression(config, bundle_labels)
    except ValueError as exc:  # a bundle's stored labels (the config's own were checked when it was read)
        raise ConfigError(f"{Path(ref) / 'metrics.json' if bundle_labels else ref}: labels: {exc}") from None
    off = settings == CompressionSettings()
    candidate = Candidate(arch, settings, bundle_labels if off else {**bundle_labels, **settings.to_dict()})
    return candidate, config, {"architecture": targets[0], "config": config_path,
                               "from": f"architecture {targets[0]}, config {config_path}"}


def _from_trial(args: argparse.Namespace, config_path: str | None) -> tuple[Any, StudyConfig, dict[str, Any]]:
    from fednas.config import apply_overrides, default_storage, load_config, parse_config
    from fednas.pipeline import Candidate
    from fednas.study import pick_trial, read_study

    study = args.study or "quickstart"
    storage = args.storage or default_storage(study)
    view = read_study(storage, study)
    chosen = pick_trial(view, trial=args.trial)

    if config_path is not None:
        config = load_config(config_path, args.overrides)
    elif view.config is None:
        raise ConfigError(f"study {study!r} has no stored config; give a CONFIG file")
    else:
        doc = view.config.to_dict()
        doc["space"] = {"name": doc["space"]["name"], **doc["space"]["options"], "labels": doc["space"]["labels"]}
        apply_overrides(doc, args.overrides)
        config = parse_config(doc)
    # the trial's labels (compression too), with any label --set gives on top
    named = {item.partition("=")[0].strip().removeprefix("space.labels.") for item in args.overrides
             if item.strip().startswith("space.labels.")}
    labels = {**chosen.labels, **{k: v for k, v in config.space.labels.items() if k in named}}
    try:
        candidate = Candidate.of(chosen.arch, labels)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"trial {chosen.number}: stored architecture is invalid ({exc})") from None
    name = f"trial {chosen.number} of study {study!r}"
    return candidate, config, {"architecture": name, "storage": storage, "study": study, "from_trial": chosen.number,
                          "from": f"{name} in {storage}" + (f", config {config_path}" if config_path else "")}
