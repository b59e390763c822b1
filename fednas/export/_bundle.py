"""A model bundle: arch.json, weights, metrics.json, a model card and the exported formats.

Layout of a bundle folder::

    arch.json            the architecture (``fednas arch info``/``fednas train`` read it)
    model.safetensors    the final global model's state dict (architecture in the metadata)
    metrics.json         everything measured: objectives, metrics, data, federation, exports
    README.md            the model card
    model.onnx, model.int8.onnx, model.torchscript.pt, model.pte   (the chosen formats)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fednas._errors import ConfigError
from fednas._paths import ensure_writable_dir, replaced_dir
from fednas.compress import CALIBRATION_SAMPLES
from fednas.export._formats import ExportContext
from fednas.export._registry import DEFAULT_FORMATS, EXPORTERS
from fednas.export._source import ModelSource
from fednas.models import (ARCH_FILE, MAX_BUNDLE_JSON_BYTES, METRICS_FILE, WEIGHTS_FILE, load_model,
                           trained_structure)
from search_spaces import CompressionSettings, get_search_space, with_compression

__all__ = ["BundleResult", "check_bundle_out", "load_model", "resolve_formats", "write_bundle"]

CARD_FILE = "README.md"


@dataclass(frozen=True)
class BundleResult:
    """What ``write_bundle`` wrote: the folder, its files, metrics.json's content, skipped formats."""

    out: Path
    files: dict[str, Path]
    metrics: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)


def resolve_formats(formats: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """The formats to export, in order, and those skipped for a missing optional extra.

    Formats asked for by name must be available; the default set (``DEFAULT_FORMATS``) and
    ``["all"]`` (every format) skip what is missing.

    Raises:
        ConfigError: an unknown format, or a requested one whose extra is not installed.
    """
    explicit = formats is not None and formats != ["all"]
    wanted = list(formats) if explicit else list(EXPORTERS if formats == ["all"] else DEFAULT_FORMATS)
    for name in wanted:
        if name not in EXPORTERS:
            raise ConfigError(f"--formats: unknown format {name!r}; valid: {', '.join(EXPORTERS)}, or all")
    for name in list(wanted):  # a format's prerequisites are exported too
        wanted += [r for r in EXPORTERS[name].requires if r not in wanted]
    order = [n for n in EXPORTERS if n in wanted]
    chosen, skipped = [], {}
    for name in order:
        missing = EXPORTERS[name].missing()
        if missing and explicit:
            raise ConfigError(f"--formats {name}: {missing}")
        if missing:
            skipped[name] = missing
        elif any(r in skipped for r in EXPORTERS[name].requires):
            skipped[name] = skipped[EXPORTERS[name].requires[0]]
        else:
            chosen.append(name)
    return chosen, skipped


_IDENTITY = ("trained", "study", "trial", "supernet", "architecture")  # origin keys that say which model a bundle holds


def check_bundle_out(out: str | Path, origin: dict[str, Any], flag: str = "--out") -> Path:
    """Check that ``out`` may receive the bundle of the model ``origin`` describes.

    It may when it does not exist, is empty, or holds an earlier bundle of the same model
    (the same trial of the same study, or the same architecture trained again), which the
    new bundle then replaces whole.

    Raises:
        ConfigError: ``out`` is a file, or a non-empty folder holding anything else.
    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag} {folder}: is a file; expected a folder for the bundle")
    if folder.is_dir() and any(folder.iterdir()):
        old = _bundle_origin(folder)
        if old is None:
            raise ConfigError(f"{flag} {folder}: folder is not empty and holds no fednas bundle; "
                              "expected a new or empty folder")
        if any(old.get(k) != origin.get(k) for k in _IDENTITY):
            raise ConfigError(f"{flag} {folder}: holds the bundle of {_describe_origin(old)}, not of "
                              f"{_describe_origin(origin)}; expected a new or empty folder, or that model's own")
    ensure_writable_dir(folder.parent if folder.parent != folder else folder, flag)
    return folder


def _bundle_origin(folder: Path) -> dict[str, Any] | None:
    path = folder / METRICS_FILE
    try:
        if not path.is_file() or path.stat().st_size > MAX_BUNDLE_JSON_BYTES:
            return None
        origin = json.loads(path.read_text(encoding="utf-8")).get("origin")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return origin if isinstance(origin, dict) else None


def _describe_origin(origin: dict[str, Any]) -> str:
    what = (f"trial {origin.get('trial')} of study {origin.get('study')!r}" if origin.get("trial") is not None
            else f"the supernet's largest subnet of study {origin.get('study')!r}" if origin.get("supernet")
            else f"architecture {origin.get('architecture')!r}")
    return ("a training run of " if origin.get("trained") else "") + what


def write_bundle(
    source: ModelSource,
    out: str | Path,
    *,
    formats: list[str] | None = None,
    onnx_dynamo: bool | None = None,
    calibration_samples: int = CALIBRATION_SAMPLES,
) -> BundleResult:
    """Write the bundle of ``source`` into ``out`` (created if needed).

    Args:
        source: the model and its record (``source_from_trial`` or ``train_architecture``).
        out: folder to write: new, empty, or an earlier bundle of the same model, which is
            replaced whole once the new bundle is complete (``check_bundle_out``).
        formats: names from ``EXPORTERS``; default: all whose libraries are installed.
        onnx_dynamo: force the dynamo (True) or TorchScript-based (False) ONNX exporter.
        calibration_samples: training images used to calibrate the int8 model.

    Raises:
        ConfigError: bad formats, an unwritable ``out``, weights that do not fit the architecture.
        ExportError: an exported file does not reproduce the PyTorch model.
    """
    chosen, skipped = resolve_formats(formats)
    final = check_bundle_out(out, source.origin)
    with replaced_dir(final) as folder:
        doc, records = _write(source, folder, chosen, skipped, onnx_dynamo, calibration_samples)
    files = {"arch": final / ARCH_FILE, "weights": final / WEIGHTS_FILE, "metrics": final / METRICS_FILE,
             "card": final / CARD_FILE, **{n: final / r["file"] for n, r in records.items()}}
    return BundleResult(final, files, doc, skipped)


def _write(source: ModelSource, folder: Path, chosen: list[str], skipped: dict[str, str], onnx_dynamo: bool | None,
           calibration_samples: int) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    from safetensors.torch import save_file

    from fednas.fl import federated_data
    from fednas.train import evaluate

    cfg = source.config
    data = federated_data(cfg.data, cfg.federation.num_clients, cfg.study.seed)
    train, test = data.train, data.test
    model = _model(source, train.num_classes, train.in_channels, train.resolution, calibration=train.x)
    start = time.perf_counter()
    (folder / ARCH_FILE).write_text(source.arch.to_json(indent=2) + "\n", encoding="utf-8")
    info = _input_info(train)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE),
              metadata={"arch": source.arch.to_json(), "input": json.dumps(info)})
    _, torch_acc = evaluate(model, test.x, test.y)
    gen = torch.Generator().manual_seed(cfg.study.seed)
    calib = train.x[torch.randperm(len(train), generator=gen)[: max(calibration_samples, 1)]]
    ctx = ExportContext(model=model, out=folder, in_channels=train.in_channels, resolution=train.resolution,
                        calibration=calib, test_x=test.x, test_y=test.y, seed=cfg.study.seed, onnx_dynamo=onnx_dynamo)
    for name in chosen:
        ctx.records[name] = EXPORTERS[name].export(ctx)
    doc = _metrics_doc(source, info, torch_acc, len(test), ctx.records, skipped, time.perf_counter() - start)
    doc["file_bytes"] = {"arch": (folder / ARCH_FILE).stat().st_size, "weights": (folder / WEIGHTS_FILE).stat().st_size}
    (folder / METRICS_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    from fednas.export._card import render_card

    (folder / CARD_FILE).write_text(render_card(doc), encoding="utf-8")
    return doc, ctx.records


def _model(source: ModelSource, num_classes: int, in_channels: int, resolution: int = 0,
           calibration: torch.Tensor | None = None) -> nn.Module:
    """The trained model as the trial scored it: its structure, its weights, at its precision.

    A greedy/DP ``compression_policy`` takes the per-layer widths the trial stored
    (``metrics["precision"]["plan"]``); a run that stored none (``fednas train`` without
    post-training objectives) measures them again on ``calibration`` (the training images).
    """
    model = trained_structure(source.arch, CompressionSettings.from_labels(source.labels), num_classes=num_classes,
                              in_channels=in_channels, resolution=resolution, prune_masks=source.prune_masks)
    try:
        model.load_state_dict(source.state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ConfigError(f"weights do not fit the architecture ({first})") from None
    settings = CompressionSettings.from_labels(source.labels)
    if settings.precision_on:  # the model the trial scored: its weights at the chosen precision
        from fednas.compress import POLICY_SAMPLES, check_plan, plan_arch, policy_plan, quantize_weights

        stored = (source.metrics.get("precision") or {}).get("plan")
        where = f"trial {source.origin['trial']}" if "trial" in source.origin else "the run"
        if settings.compression_policy != "uniform" and stored is not None:
            try:
                plan = check_plan(model, stored, f"{where}: stored precision.plan")
            except ValueError as exc:  # the message names the trial and the key
                raise ConfigError(str(exc)) from None
        else:
            x = calibration[:POLICY_SAMPLES] if calibration is not None else None
            try:
                plan = policy_plan(model, plan_arch(source.arch, source.prune_masks), settings.weight_bits,
                                   settings.stage_weight_bits, settings.compression_policy, x).plan
            except ValueError as exc:
                raise ConfigError(f"labels: {exc}") from None
        model = quantize_weights(model, plan)[0]
    return model.eval()


def _input_info(train: Any) -> dict[str, Any]:
    """The input the model takes, and how a device makes it from an image (``fednas.models.Preprocess``)."""
    channels, resolution = train.in_channels, train.resolution
    norm = train.normalization.to_dict() if train.normalization is not None else None
    return {"shape": [channels, resolution, resolution], "in_channels": channels, "resolution": resolution,
            "num_classes": train.num_classes, "dtype": "float32", "layout": "NCHW",
            "normalization": norm, "class_names": list(train.class_names) or None,
            "preprocessing": "pixels mapped to [0, 1] as (pixel - pixel_offset) * pixel_scale, resized to the "
                             "resolution (bilinear, antialiased), then (x - mean[c]) / std[c] per channel with the "
                             "training split's mean and std; fednas.load_model(DIR, preprocess=True) does it"}


def _compression(source: ModelSource) -> dict[str, Any]:
    """Labels beyond the architecture's own (compression settings), those not at their "off" default."""
    try:
        space = with_compression(get_search_space(source.config.space.name, source.config.space.options))
    except ValueError:
        return {}
    arch_labels = set(space.arch.domains())
    off = {k: d.value for k, d in space.domains().items() if k not in arch_labels}  # type: ignore[attr-defined]
    return {k: v for k, v in source.labels.items() if k not in arch_labels and (k not in off or v != off[k])}


def _metrics_doc(source: ModelSource, info: dict[str, Any], torch_acc: float, n_test: int,
                 records: dict[str, dict[str, Any]], skipped: dict[str, str], seconds: float) -> dict[str, Any]:
    import fednas

    cfg = source.config
    return {
        "fednas": fednas.__version__,
        "origin": source.origin,
        "input": info,
        "architecture": source.arch.to_dict(),
        "objectives": source.objectives,
        "metrics": source.metrics,
        "pytorch_accuracy": torch_acc,
        "test_samples": n_test,
        "labels": source.labels,
        "searched": source.searched,
        "compression": _compression(source),
        "data": asdict(cfg.data),
        "federation": asdict(cfg.federation),
        "seed": cfg.study.seed,
        "rounds": source.rounds,
        "prune_masks": source.prune_masks,
        "privacy": source.privacy,
        "secure_aggregation": source.secure,
        "files": {"arch": ARCH_FILE, "weights": WEIGHTS_FILE, "metrics": METRICS_FILE, "card": CARD_FILE},
        "exports": records,
        "skipped": skipped,
        "export_seconds": round(seconds, 3),
        "file_bytes": {},
    }
