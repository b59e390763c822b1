"""The model card (README.md of a bundle), rendered from the content of metrics.json."""

from __future__ import annotations

from typing import Any

from fednas._format import number
from search_spaces import arch_from_dict

__all__ = ["render_card"]

_FORMAT_NAMES = {"onnx": "ONNX (float32)", "int8": "ONNX (int8, static quantization)",
                 "torchscript": "TorchScript", "executorch": "ExecuTorch (XNNPACK)",
                 "tflite": "TFLite / LiteRT (float32)", "tflite_int8": "TFLite / LiteRT (full-integer int8)",
                 "coreml": "Core ML (mlprogram, float16)"}


def render_card(doc: dict[str, Any]) -> str:
    """Markdown model card for a bundle's ``metrics.json`` document."""
    sections = [_title(doc), _architecture(doc), _objectives(doc), _compression(doc), _training(doc),
                _privacy(doc), _files(doc), _rounds(doc), _loading(doc)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _n(v: Any) -> str:
    return number(v)


def _pct(v: Any) -> str:
    return f"{100 * v:.2f} %" if isinstance(v, (int, float)) else "-"


def _size(n: int) -> str:
    return f"{n:,} B" if n < 10_000 else f"{n / 1024:,.1f} KiB" if n < 10_000_000 else f"{n / 2**20:,.1f} MiB"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _title(doc: dict[str, Any]) -> str:
    o, i, m, fed = doc["origin"], doc["input"], doc["metrics"], doc["federation"]
    if "trial" in o:
        title = f"# fednas model: study `{o['study']}`, trial {o['trial']}"
        how = f"picked as `{o['picked']}` from the Pareto front" if o.get("picked") else "chosen by number"
        where = f"Exported from the weights stored with trial {o['trial']} ({how}) of `{o['storage']}`, without retraining."
    elif o.get("supernet"):
        title = f"# fednas model: study `{o['study']}`, the supernet's largest subnet"
        where = (f"Exported from the supernet weights stored with study `{o['study']}` of `{o['storage']}` (the "
                 "space's largest member), batch-norm statistics pooled from the clients, without retraining.")
    else:
        title = f"# fednas model: `{o.get('architecture', 'architecture')}`, retrained for {fed['rounds']} rounds"
        where = f"Trained by `fednas train` ({o.get('from', '')})."
    shape = "x".join(str(s) for s in i["shape"])
    training = o.get("training") or {}
    if training.get("mode") == "supernet":
        how = (f"with weights inherited from a weight-sharing supernet trained by federated learning "
               f"({fed['num_clients']} clients, {training['supernet_rounds']} supernet rounds, per-element averaging "
               "of the clients' subnets)")
        if training.get("finetune_rounds"):
            how += (f" and fine-tuned by {training['finetune_rounds']} federated rounds on {training['finetune_nodes']} "
                    f"clients (accuracy with the inherited weights: {_pct(m.get('accuracy_inherited'))})")
    else:
        how = f"trained by federated learning ({fed['strategy']}, {fed['num_clients']} clients, {fed['rounds']} rounds)"
    lead = (f"{arch_from_dict(doc['architecture']).title} for {shape} inputs and {i['num_classes']} classes, {how} on "
            f"`{doc['data']['source']}`. Held-out accuracy {_pct(m.get('accuracy'))}, "
            f"{_n(m.get('macs', '-'))} MACs, {_n(m.get('params', '-'))} parameters.")
    lat = m.get("latency")
    if isinstance(lat, dict) and "ms" in lat:
        how_lat = (f"predicted from the latency table `{lat.get('table', '')}`" if lat.get("source") == "predicted"
                   else f"measured, median of {lat.get('repeats')} runs, quartiles {lat.get('p25_ms', 0):.4g}-"
                        f"{lat.get('p75_ms', 0):.4g} ms")
        lead += (f" Single-image latency {lat['ms']:.4g} ms on {lat.get('runtime')} {lat.get('runtime_version', '')} "
                 f"with {lat.get('threads')} thread(s) ({how_lat}).")
    return f"{title}\n\n{lead}\n\n{where}"


def _architecture(doc: dict[str, Any]) -> str:
    head, rows, note = arch_from_dict(doc["architecture"]).table(doc["input"]["num_classes"])
    return (f"## Architecture\n\n{_table(head, rows)}\n\n{note} `arch.json` rebuilds it with "
            "`fednas.build_model`.")


def _objectives(doc: dict[str, Any]) -> str:
    parts = []
    if doc["objectives"]:
        rows = [[n, o["direction"], _n(o["value"])] for n, o in doc["objectives"].items()]
        parts.append("## Objectives\n\n" + _table(["objective", "direction", "value"], rows))
    m = doc["metrics"]
    rows = [[k, _pct(v) if k.startswith("accuracy") else _n(v)] for k, v in m.items()]
    rows.append(["accuracy re-measured on export (PyTorch)", _pct(doc["pytorch_accuracy"])])
    parts.append(f"## Metrics\n\nOn {doc['test_samples']:,} held-out test images.\n\n" + _table(["metric", "value"], rows))
    return "\n\n".join(parts)


def _compression(doc: dict[str, Any]) -> str:
    comp = doc.get("compression") or {}
    if not comp:
        return ""
    rows = [[k, _n(v)] for k, v in comp.items()]
    out = "## Compression settings\n\n" + _table(["label", "value"], rows)
    p = (doc.get("metrics") or {}).get("precision")
    if p and any(k == "weight_bits" or k.endswith("_wbits") for k in comp):
        by = ", ".join(f"{_n(n)} at {b} bits" for b, n in sorted(p["weights_by_bits"].items(), key=lambda x: -int(x[0])))
        m = doc.get("metrics") or {}
        out += (f"\n\nWeights at the chosen precision (weight-only post-training quantization; 16 = float16, "
                f"8/6/4 = integers with a float16 scale per output channel): {by}. Packed, with the rest at "
                f"float32: {_size(m.get('weight_bytes', 0))}; held-out accuracy at this precision "
                f"{_pct(m.get('accuracy_quantized', float('nan')))}. The exported files hold these weight values.")
        if p.get("policy", "uniform") != "uniform":
            out += (f" The widths per layer were chosen by the {p['policy']!r} compression policy from each layer's "
                    f"measured sensitivity (output KL divergence on training images), spending "
                    f"{_size(p.get('spent', 0))} of the uniform plan's {_size(p.get('budget', 0))} of packed weights; "
                    "metrics.json lists the width of every layer (precision.plan).")
    return out


def _training(doc: dict[str, Any]) -> str:
    d, f = doc["data"], doc["federation"]
    data = ", ".join(f"{k}={_n(v)}" for k, v in d.items() if v not in ("", 0) or k == "limit")
    keys = ["num_clients", "rounds", "strategy", "fraction_train", "local_epochs", "local_steps", "batch_size",
            "lr", "momentum", "weight_decay", "bn_recalibration"]
    fed = ", ".join([f"{k}={_n(f[k])}" for k in keys if k in f]
                    + [f"{k}={_n(v)}" for k, v in (f.get("strategy_options") or {}).items()])
    return (f"## Data and federation\n\n- data: {data}\n- federation: {fed}\n- seed: {doc['seed']}\n"
            f"- input: {doc['input']['layout']} {doc['input']['dtype']}, {doc['input']['preprocessing']}"
            + _normalization(doc["input"]))


def _privacy(doc: dict[str, Any]) -> str:
    p, s = doc.get("privacy") or {}, doc.get("secure_aggregation") or {}
    sum_only = ""
    if s.get("protocol") == "secagg+":
        sum_only = (f" Each round's updates were aggregated by SecAgg+ (Flower's protocol; key shares sent to "
                    f"{s['num_shares']:.0%} of the round's clients, {s['threshold']:.0%} of the shares recover a lost "
                    f"client's masks; models clipped to +-{s['clipping_range']:g} and quantized to "
                    f"{s['quantization_bits']} bits, {s['clipped_values']} values clipped): the server saw only "
                    f"their weighted sum, at the cost of {s['protocol_bytes']} bytes of key exchange and "
                    f"{s['protected_upload_bytes']} bytes of masked uploads.")
    elif s.get("protocol") == "ckks":
        sum_only = (f" Each round's updates were encrypted with CKKS (TenSEAL, polynomial degree "
                    f"{s['poly_modulus_degree']}) and summed by the server as ciphertexts; one client decrypted the "
                    "sum. All clients share one secret key, so a client colluding with the server could decrypt "
                    f"every client's update. Cost: {s['protected_upload_bytes']} bytes of encrypted uploads and "
                    f"{s['protocol_bytes']} bytes of public-key and decryption messages.")
    if not p:
        return ("## Privacy\n\nNo differential privacy: the weights carry no formal guarantee about the clients' "
                "data" + (", and the server saw each client's update." if not s else "." + sum_only))
    if p.get("mode") == "local":
        return (f"## Privacy\n\nExample-level local differential privacy: each client trained by DP-SGD (Opacus; "
                f"each example's gradient clipped at L2 norm {p['clipping_norm']:.4g}, Gaussian noise multiplier "
                f"{p['noise_multiplier']:.4g}, Poisson-sampled batches of {p['batch_size']} expected), so everything "
                f"it sent is (epsilon, delta) = ({p['epsilon']:.4g}, {p['delta']:g})-DP for each of its records; "
                f"{p['accountant']}. The guarantee is per record, not per client." + sum_only)
    clip = (f"fixed clipping of each client's update at L2 norm {p['clipping_norm']:.4g}" if p["clipping"] == "fixed"
            else f"adaptive clipping (final norm {p['clipping_norm']:.4g})")
    return (f"## Privacy\n\nUser-level central differential privacy: (epsilon, delta) = ({p['epsilon']:.4g}, "
            f"{p['delta']:g}) for the released weights, against adding or removing one client's whole data. "
            f"{clip.capitalize()}, Gaussian noise multiplier {p['noise_multiplier']:.4g}, {p['clients_per_round']} "
            f"of {p['population']} clients per round, {p['releases']} rounds released; {p['accountant']}. The "
            "guarantee covers what the weights reveal; the server that added the noise saw each clipped update.")


def _values(xs: list[float]) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in xs) + "]"


def _normalization(info: dict[str, Any]) -> str:
    norm, names = info.get("normalization"), info.get("class_names")
    out = ""
    if norm:
        out += (f"\n- normalization: pixel_offset {norm['pixel_offset']:g}, pixel_scale {norm['pixel_scale']:.6g}, "
                f"mean {_values(norm['mean'])}, std {_values(norm['std'])}")
    else:
        out += "\n- normalization: not recorded (a bundle from before fednas kept it)"
    if names:
        out += "\n- classes (label order): " + ", ".join(f"{i} {n}" for i, n in enumerate(names))
    return out


def _files(doc: dict[str, Any]) -> str:
    sizes = doc.get("file_bytes", {})
    rows = [["`arch.json`", "architecture (JSON)", _size(sizes.get("arch", 0)), "rebuilds the network"],
            ["`model.safetensors`", "weights (safetensors)", _size(sizes.get("weights", 0)), "loaded strictly"]]
    for name, r in doc["exports"].items():
        rows.append([f"`{r['file']}`", _FORMAT_NAMES.get(name, name), _size(r["bytes"]), _check(name, r)])
    lines = ["## Files", "", _table(["file", "format", "size", "check"], rows)]
    for name, what in (("int8", "int8 model"), ("tflite_int8", "int8 TFLite model")):
        q = doc["exports"].get(name)
        if q:
            lines += ["", f"{what}: accuracy {_pct(q['accuracy'])} vs {_pct(q['fp32_accuracy'])} in float32 "
                          f"(same top-1 class on {_pct(q['agreement'])} of the test images), size "
                          f"{_size(q['bytes'])} vs {_size(q['fp32_bytes'])} ({q['size_ratio']:.2f}x); calibrated on "
                          f"{q['calibration_samples']} training images. {q['method']}."]
    if t8 := doc["exports"].get("tflite_int8"):
        i, o = t8["input_quantization"], t8["output_quantization"]
        lines += ["", f"The int8 TFLite model takes {i['dtype']} input, q = round(x / {i['scale']:.6g}) + "
                      f"{i['zero_point']}, and gives {o['dtype']} logits, x = (q - {o['zero_point']}) * "
                      f"{o['scale']:.6g}, with x the standardized input and the logits of the float model."]
    c = doc["exports"].get("coreml")
    if c and not c.get("numerics_checked"):
        lines += ["", f"The Core ML package's numerics were not checked: Core ML runs only on Apple's systems and this "
                      f"export ran on {c['platform']}. Checked: the spec loads, its input and output shapes, and "
                      f"{c['layers_checked']['conv']} conv and {c['layers_checked']['linear']} linear operations, as in "
                      f"the PyTorch model. It computes in float16."]
    for name, why in doc.get("skipped", {}).items():
        lines += ["", f"Not exported: {why}"]
    return "\n".join(lines)


def _check(name: str, r: dict[str, Any]) -> str:
    if name == "onnx":
        return (f"opset {r['opset']} ({r['exporter']} exporter); onnxruntime vs PyTorch max abs diff "
                f"{r['max_abs_diff']:.2g} (<= {r['tolerance']:g}); accuracy {_pct(r['accuracy'])}")
    if name in ("int8", "tflite_int8"):
        return f"accuracy {_pct(r['accuracy'])} (float32 {_pct(r['fp32_accuracy'])})"
    if name == "tflite":
        return (f"LiteRT interpreter vs PyTorch max abs diff {r['max_abs_diff']:.2g} (<= {r['tolerance']:.2g}); "
                f"accuracy {_pct(r['accuracy'])}")
    if name == "coreml":
        if r.get("numerics_checked"):
            return f"Core ML vs PyTorch max abs diff {r['max_abs_diff']:.2g} (<= {r['tolerance']:g}, float16)"
        return "spec, shapes and conv/linear counts checked; numerics not checked (not macOS)"
    if "max_abs_diff" in r:
        return f"max abs diff vs PyTorch {r['max_abs_diff']:.2g}"
    return "-"


def _rounds(doc: dict[str, Any]) -> str:
    rounds = doc.get("rounds") or []
    if not rounds:
        return ""
    rows = [[r["round"], _pct(r["accuracy"]), f"{r['loss']:.4f}", _n(r["download_bytes"] + r["upload_bytes"])]
            for r in rounds]
    return "## Accuracy per round\n\n" + _table(["round", "accuracy", "test loss", "bytes (both ways)"], rows)


def _loading(doc: dict[str, Any]) -> str:
    shape = ", ".join(str(s) for s in doc["input"]["shape"])
    out = ["## How to load", "", "```python", "import fednas", "",
           'model = fednas.load_model("path/to/this/folder")   # torch.nn.Module in eval mode, standardized input',
           'model = fednas.load_model("path/to/this/folder", preprocess=True)   # raw pixels of any size',
           "```"]
    if "onnx" in doc["exports"]:
        out += ["", "```python", "import numpy as np, onnxruntime as ort", "",
                'session = ort.InferenceSession("model.onnx")   # or model.int8.onnx',
                f"x = np.zeros((1, {shape}), dtype=np.float32)   # standardized: see normalization above",
                'logits = session.run(None, {"input": x})[0]', "```"]
    if "torchscript" in doc["exports"]:
        out += ["", "TorchScript: `torch.jit.load(\"model.torchscript.pt\")` (no fednas needed)."]
    if "tflite" in doc["exports"]:
        out += ["", "TFLite / LiteRT: `ai_edge_litert.interpreter.Interpreter(model_path=\"model.tflite\")` (or the "
                    "Android LiteRT API); one image per call, NCHW float32 like the PyTorch model."]
    if "coreml" in doc["exports"]:
        out += ["", "Core ML: `coremltools.models.MLModel(\"model.mlpackage\").predict({\"input\": x})[\"logits\"]` on "
                    "macOS, or add the package to an Xcode project (iOS 16 / macOS 13 and later)."]
    if "executorch" in doc["exports"]:
        out += ["", "ExecuTorch: load `model.pte` with the ExecuTorch runtime (XNNPACK delegate, batch of 1)."]
    out += ["", "By hand: `search_spaces.build_model(search_spaces.arch_from_json(open('arch.json').read()), "
                f"num_classes={doc['input']['num_classes']}, in_channels={doc['input']['in_channels']})`, then "
                "`load_state_dict(safetensors.torch.load_file('model.safetensors'))`."]
    return "\n".join(out)
