"""Phone formats: TFLite (float32 and full-integer int8) and Core ML, exported from a real tiny study and checked.

Each test is skipped, naming the extra, when its packages are not installed; CI installs them
(they are part of the ``test`` extra) and sets FEDNAS_REQUIRE_EXTRAS, which turns the skips
into failures.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fednas.cli import main
from fednas.export import EXPORTERS, ExportContext, ExportError, load_model, resolve_formats
from fednas.fl import federated_data
from search_spaces import build_model, preset

OVERRIDES = ("study.seed=1", "space.base_channels=[16, 32]", "space.labels.stem_width=1.0",
             "space.labels.s1_width=[1.0, 1.5]", "space.labels.s2_width=[1.0, 1.5]",
             "space.labels.s1_expansion=[2, 4]", "space.labels.s2_expansion=3")


def _need(*modules: str, extra: str) -> None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if absent:
        message = f"{', '.join(absent)} not installed: pip install 'fednas[{extra}]'"
        if os.environ.get("FEDNAS_REQUIRE_EXTRAS"):
            pytest.fail(f"{message}, and FEDNAS_REQUIRE_EXTRAS is set (.ci/run installs the test extra)")
        pytest.skip(message)


@pytest.fixture(scope="module")
def study(tiny_study_factory) -> dict:
    folder, config, result = tiny_study_factory("mob", OVERRIDES)
    assert result.completed == 3
    return {"storage": result.storage, "config": config}


def _export(study: dict, out: Path, formats: str) -> dict:
    rc = main(["export", "--storage", study["storage"], "--study", "mob", "--trial", "0", "--out", str(out),
               "--formats", formats])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


def _test_images(study: dict) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = study["config"]
    test = federated_data(cfg.data, cfg.federation.num_clients, cfg.study.seed).test
    return test.x, test.y


def test_phone_formats_are_asked_for_by_name_or_with_all() -> None:
    chosen, _ = resolve_formats(None)
    assert not {"tflite", "tflite_int8", "coreml"} & set(chosen)
    everything, skipped = resolve_formats(["all"])
    assert set(everything) | set(skipped) == set(EXPORTERS)
    assert resolve_formats(["tflite_int8"])[0][:1] == ["tflite"] or "tflite" in resolve_formats(["tflite_int8"])[1]


def test_tflite_float_and_int8(study: dict, tmp_path: Path) -> None:
    _need("litert_torch", "ai_edge_litert", "ai_edge_quantizer", extra="tflite")
    from ai_edge_litert.interpreter import Interpreter

    out = tmp_path / "b"
    doc = _export(study, out, "tflite_int8")  # pulls in the float file it is quantized from
    assert set(doc["exports"]) == {"tflite", "tflite_int8"}
    fp, q = doc["exports"]["tflite"], doc["exports"]["tflite_int8"]
    assert (out / "model.tflite").stat().st_size == fp["bytes"] and (out / "model.int8.tflite").stat().st_size == q["bytes"]
    assert fp["max_abs_diff"] <= fp["tolerance"]

    # The file read back by a fresh interpreter, the way an app would, reproduces the recorded accuracy.
    model = load_model(out)
    x, y = _test_images(study)
    it = Interpreter(model_path=str(out / "model.tflite"))
    it.allocate_tensors()
    inp, res = it.get_input_details()[0], it.get_output_details()[0]
    assert list(inp["shape"]) == [1, *x.shape[1:]] and inp["dtype"] == np.float32
    logits = []
    for image in x.numpy():
        it.set_tensor(inp["index"], image[None])
        it.invoke()
        logits.append(it.get_tensor(res["index"])[0])
    logits = np.stack(logits)
    with torch.no_grad():
        reference = model(x).numpy()
    assert np.abs(logits - reference).max() <= fp["tolerance"]
    assert fp["accuracy"] == pytest.approx(float((logits.argmax(1) == y.numpy()).mean()))

    it8 = Interpreter(model_path=str(out / "model.int8.tflite"))
    it8.allocate_tensors()
    i8, o8 = it8.get_input_details()[0], it8.get_output_details()[0]
    assert i8["dtype"] == np.int8 and o8["dtype"] == np.int8  # full integer, input and output too
    assert q["input_quantization"]["scale"] == pytest.approx(i8["quantization"][0])
    assert q["bytes"] < fp["bytes"] and q["size_ratio"] == pytest.approx(q["bytes"] / fp["bytes"])
    assert q["fp32_accuracy"] == pytest.approx(fp["accuracy"])
    assert q["accuracy"] >= fp["accuracy"] - 0.1 and q["agreement"] >= 0.8, q
    card = (out / "README.md").read_text()
    assert "TFLite / LiteRT (float32)" in card and "int8 TFLite model: accuracy" in card
    assert f"round(x / {q['input_quantization']['scale']:.6g})" in card
    print(f"tflite {fp['accuracy']:.4f}, int8 {q['accuracy']:.4f} (agreement {q['agreement']:.3f}), "
          f"{q['bytes']:,} B vs {fp['bytes']:,} B, {fp['seconds'] + q['seconds']:.1f} s")


def test_coreml_package_spec_is_checked(study: dict, tmp_path: Path) -> None:
    _need("coremltools", extra="coreml")
    import coremltools as ct

    out = tmp_path / "b"
    doc = _export(study, out, "coreml")
    rec = doc["exports"]["coreml"]
    pkg = out / "model.mlpackage"
    assert pkg.is_dir() and rec["bytes"] == sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())
    spec = ct.models.MLModel(str(pkg), skip_model_load=True).get_spec()
    x, _ = _test_images(study)
    assert [list(i.type.multiArrayType.shape) for i in spec.description.input] == [[1, *x.shape[1:]]]
    model = load_model(out)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    fn = spec.mlProgram.functions["main"]
    ops = collections.Counter(op.type for op in fn.block_specializations[fn.opset].operations)
    assert ops["conv"] == convs == rec["layers_checked"]["conv"] > 0
    card = (out / "README.md").read_text()
    if platform.system() != "Darwin":
        assert rec["numerics_checked"] is False and "numerics were not checked" in card
    else:
        assert rec["numerics_checked"] is True and rec["max_abs_diff"] <= rec["tolerance"]


def test_a_coreml_program_missing_layers_is_refused(study: dict, tmp_path: Path, monkeypatch) -> None:
    _need("coremltools", extra="coreml")
    import fednas.export._mobile as mobile

    real = mobile._layer_counts
    monkeypatch.setattr(mobile, "_layer_counts", lambda m: {**real(m), "conv": real(m)["conv"] + 1})
    out = tmp_path / "b"
    with pytest.raises(ExportError, match="conv and 1 linear operations, the PyTorch model"):
        main(["export", "--storage", study["storage"], "--study", "mob", "--trial", "0", "--out", str(out),
              "--formats", "coreml"])
    assert not out.exists()  # nothing half-written


def _trained_like(model: nn.Module) -> nn.Module:
    """Weights and batch-norm statistics drawn at random: at initialization the residual blocks' last scales are
    zero and the logits are ~1e-10 and input-independent, which would let any conversion pass a max-abs check."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):  # He-normal by fan-in, so activations keep their scale
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5
            if m.bias is not None:
                m.bias.data = torch.randn(m.bias.shape, generator=gen) * 0.1
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=gen) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=gen) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=gen) * 0.1
            m.running_var = torch.rand(m.num_features, generator=gen) + 0.5
    return model


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v2"])
def test_mobilenet_presets_convert_to_both_phone_runtimes(name: str, tmp_path: Path) -> None:
    """Hard-swish, squeeze-excitation and ReLU6 blocks at 64x64 RGB: the TFLite file matches PyTorch, the Core ML
    program keeps every convolution."""
    _need("litert_torch", "ai_edge_litert", extra="tflite")
    _need("coremltools", extra="coreml")
    torch.manual_seed(0)
    model = _trained_like(build_model(preset(name), num_classes=10, in_channels=3)).eval()
    x = torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        assert model(x).abs().max() > 0.1  # logits of a size a conversion error would show in
    ctx = ExportContext(model=model, out=tmp_path, in_channels=3, resolution=64, calibration=x, test_x=x,
                        test_y=torch.zeros(8, dtype=torch.long))
    tfl = EXPORTERS["tflite"].export(ctx)
    with torch.no_grad():
        scale = float(model(x).abs().max())
    assert tfl["max_abs_diff"] <= tfl["tolerance"] == pytest.approx(1e-4 * max(1.0, scale), rel=0.5)
    cml = EXPORTERS["coreml"].export(ctx)
    assert cml["layers_checked"]["conv"] == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    print(f"{name}: tflite {tfl['bytes']:,} B diff {tfl['max_abs_diff']:.2g} in {tfl['seconds']:.1f} s; "
          f"coreml {cml['bytes']:,} B in {cml['seconds']:.1f} s")


def test_exporters_report_a_mismatch(tmp_path: Path, monkeypatch) -> None:
    """A TFLite file that does not reproduce the model is an ExportError, not a bundle."""
    _need("litert_torch", "ai_edge_litert", extra="tflite")
    import fednas.export._mobile as mobile

    torch.manual_seed(0)
    model = _trained_like(build_model(preset("mobilenet_tiny"), num_classes=10, in_channels=1)).eval()
    x = torch.randn(4, 1, 28, 28)
    ctx = ExportContext(model=model, out=tmp_path, in_channels=1, resolution=28, calibration=x, test_x=x,
                        test_y=torch.zeros(4, dtype=torch.long))
    real = mobile.to_tflite
    other = _trained_like(build_model(preset("mobilenet_tiny"), num_classes=10, in_channels=1)).eval()
    other.classifier[-1].bias.data += 1e-3  # the same network but for one bias
    monkeypatch.setattr(mobile, "to_tflite", lambda m, example: real(other, example))
    with pytest.raises(ExportError, match="differs from PyTorch"):
        EXPORTERS["tflite"].export(ctx)
