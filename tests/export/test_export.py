"""fednas export on a tiny real study: every file of the bundle, checked against PyTorch."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from safetensors.torch import load_file

from fednas.cli import main
from fednas.config import ConfigError
from fednas.export import load_model, pick_trial, resolve_formats
from fednas.export._card import render_card
from fednas.plot import knee_index, read_study
from search_spaces import MobileNetArch, build_model, load_architecture

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]

# Wider than tests/tiny_study.toml so int8 weights outweigh the quantization nodes, still seconds.
EXPORT_OVERRIDES = (
    "study.seed=1", "space.base_channels=[16, 32]", "space.labels.stem_width=1.0",
    "space.labels.s1_width=[1.0, 1.5]", "space.labels.s2_width=[1.0, 1.5]",
    "space.labels.s1_expansion=[2, 4]", "space.labels.s2_expansion=3",
)


@pytest.fixture(scope="module")
def study(tiny_study_factory) -> dict:
    folder, config, result = tiny_study_factory("exp", EXPORT_OVERRIDES)
    assert result.completed == 3
    return {"storage": result.storage, "name": "exp", "db": folder / "exp.db", "folder": folder, "config": config}


@pytest.fixture(scope="module")
def bundle(study: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bundle") / "knee"
    start = time.perf_counter()
    rc = main(["export", "--storage", study["storage"], "--study", "exp", "--pick", "knee", "--out", str(out)])
    seconds = time.perf_counter() - start
    assert rc == 0
    print(f"export of the knee trial took {seconds:.1f} s")
    return {"out": out, "metrics": json.loads((out / "metrics.json").read_text())}


def _stored(study: dict, number: int) -> tuple[optuna.trial.FrozenTrial, dict[str, torch.Tensor]]:
    s = optuna.load_study(study_name="exp", storage=study["storage"])
    t = s.trials[number]
    return t, load_file(str(Path(s.user_attrs["artifacts_dir"]) / t.user_attrs["weights_artifact"]))


def test_knee_is_the_front_member_nearest_the_ideal_point(study: dict, bundle: dict) -> None:
    view = read_study(study["storage"], "exp")
    front = optuna.load_study(study_name="exp", storage=study["storage"]).best_trials
    values = [t.values for t in front]
    expected = front[knee_index(values, ["maximize", "minimize", "minimize"])].number
    assert bundle["metrics"]["origin"]["trial"] == expected
    assert pick_trial(view, pick="knee").number == expected
    best = pick_trial(view, pick="best-accuracy")
    assert best.values["accuracy"] == max(t.values[0] for t in front)
    small = pick_trial(view, pick="smallest")
    assert small.values["params"] == min(t.user_attrs["params"] for t in front)


def test_bundle_has_every_file_and_the_record(study: dict, bundle: dict) -> None:
    out, m = bundle["out"], bundle["metrics"]
    for name in ("arch.json", "model.safetensors", "metrics.json", "README.md", "model.onnx", "model.int8.onnx",
                 "model.torchscript.pt"):
        assert (out / name).stat().st_size > 0, name
    trial, _ = _stored(study, m["origin"]["trial"])
    # arch.json is a plain architecture file: the public loader rebuilds exactly the stored one
    assert load_architecture(out / "arch.json") == MobileNetArch.from_dict(trial.user_attrs["arch"])
    assert [m["objectives"][k]["value"] for k in ("accuracy", "macs", "comm_bytes")] == trial.values
    assert m["metrics"]["params"] == trial.user_attrs["params"]
    assert m["input"]["shape"] == [1, 28, 28] and m["input"]["num_classes"] == 10
    assert m["federation"]["rounds"] == 2 and m["data"]["limit"] == 240
    assert len(m["rounds"]) == 2
    # re-measuring the stored weights on the same test split gives the stored accuracy
    assert m["pytorch_accuracy"] == pytest.approx(trial.user_attrs["accuracy"], abs=1e-9)
    assert m["compression"] == {}  # only architecture labels in this study


def test_safetensors_round_trip(study: dict, bundle: dict) -> None:
    _, stored = _stored(study, bundle["metrics"]["origin"]["trial"])
    written = load_file(str(bundle["out"] / "model.safetensors"))
    assert written.keys() == stored.keys()
    for k in stored:
        assert torch.equal(written[k], stored[k]), k
    model = load_model(bundle["out"])
    assert not model.training
    ref = build_model(load_architecture(bundle["out"] / "arch.json"), num_classes=10, in_channels=1).eval()
    ref.load_state_dict(stored)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_onnx_matches_pytorch(bundle: dict) -> None:
    out, record = bundle["out"], bundle["metrics"]["exports"]["onnx"]
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto)
    assert record["opset"] == next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert record["max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    model = load_model(out)
    for batch in (1, 7):  # the batch axis is dynamic
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == (batch, 10)
        assert np.abs(got - expected).max() <= 1e-4
    # no stack traces or local paths of the exporting machine in the file
    assert str(ROOT).encode() not in (out / "model.onnx").read_bytes()


def test_torchscript_output_equals_pytorch(bundle: dict) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(bundle["out"] / "model.torchscript.pt"))
    model = load_model(bundle["out"])
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-6, rtol=0)


def test_int8_onnx_runs_is_smaller_and_its_accuracy_is_recorded(study: dict, bundle: dict) -> None:
    from fednas.fl import federated_data

    out, rec = bundle["out"], bundle["metrics"]["exports"]["int8"]
    fp32, int8 = (out / "model.onnx").stat().st_size, (out / "model.int8.onnx").stat().st_size
    assert int8 < fp32 and rec["bytes"] == int8 and rec["fp32_bytes"] == fp32
    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert "QLinearConv" in ops
    config = study["config"]
    test = federated_data(config.data, 3, config.study.seed).test
    session = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": test.x.numpy()})[0]
    assert logits.shape == (len(test), 10) and np.isfinite(logits).all()
    assert rec["accuracy"] == pytest.approx(float((logits.argmax(1) == test.y.numpy()).mean()))
    assert rec["fp32_accuracy"] == pytest.approx(bundle["metrics"]["pytorch_accuracy"])
    print(f"int8 {rec['accuracy']:.4f} vs fp32 {rec['fp32_accuracy']:.4f}; {int8:,} B vs {fp32:,} B")


def test_model_card(bundle: dict) -> None:
    card = (bundle["out"] / "README.md").read_text()
    m = bundle["metrics"]
    assert card.startswith(f"# fednas model: study `exp`, trial {m['origin']['trial']}")
    for stage in range(1, len(m["architecture"]["stages"]) + 1):
        assert f"| stage {stage} |" in card
    for needle in ("## Objectives", "| accuracy | maximize |", "## Data and federation", "num_clients=3",
                   f"opset {m['exports']['onnx']['opset']}", "int8 model: accuracy", "fednas.load_model(",
                   "onnxruntime", "torch.jit.load"):
        assert needle in card, needle
    assert "## Compression settings" not in card
    doc = dict(m, compression={"prune_ratio": 0.5, "quant_bits": 8})
    other = render_card(doc)
    assert "## Compression settings" in other and "| prune_ratio | 0.5 |" in other


def test_executorch_is_optional(study: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    if importlib.util.find_spec("executorch") is None:
        chosen, skipped = resolve_formats(None)
        assert "executorch" not in chosen and "fednas[executorch]" in skipped["executorch"]
        rc = main(["export", "--storage", study["storage"], "--study", "exp", "--trial", "0",
                   "--out", str(tmp_path / "b"), "--formats", "executorch"])
        err = capsys.readouterr().err
        assert rc == 2 and "fednas[executorch]" in err and err.count("\n") == 1
        assert not (tmp_path / "b").exists()
        return
    rc = main(["export", "--storage", study["storage"], "--study", "exp", "--trial", "0",
               "--out", str(tmp_path / "b"), "--formats", "executorch"])
    assert rc == 0
    rec = json.loads((tmp_path / "b" / "metrics.json").read_text())["exports"]["executorch"]
    assert (tmp_path / "b" / "model.pte").stat().st_size == rec["bytes"] > 0
    assert rec["max_abs_diff"] <= 1e-4


def test_torchscript_based_onnx_exporter(study: dict, tmp_path: Path) -> None:
    out = tmp_path / "legacy"
    assert main(["export", "--storage", study["storage"], "--study", "exp", "--trial", "1", "--out", str(out),
                 "--formats", "onnx", "--onnx-exporter", "torchscript"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["exports"]) == {"onnx"} and m["exports"]["onnx"]["exporter"] == "torchscript"
    assert m["exports"]["onnx"]["max_abs_diff"] <= 1e-4
    assert not (out / "model.torchscript.pt").exists()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_input_is_one_line_exit_2_and_leaves_the_store_alone(
    study: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty_db = tmp_path / "empty.db"
    empty = optuna.create_study(study_name="void", storage=f"sqlite:///{empty_db}", directions=["maximize", "minimize"])
    empty.set_user_attr("objectives", ["accuracy", "macs"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    before = {p: _digest(p) for p in (study["db"], empty_db)}
    artifacts = sorted(p.name for p in (study["folder"] / "exp.artifacts").iterdir())
    base = ["export", "--storage", study["storage"], "--study", "exp"]
    cases = {
        "no such trial": [*base, "--trial", "99", "--out", str(tmp_path / "a")],
        "not found": ["export", "--storage", study["storage"], "--study", "nope", "--trial", "0",
                      "--out", str(tmp_path / "a")],
        "empty Pareto front": ["export", "--storage", f"sqlite:///{empty_db}", "--study", "void", "--pick", "knee",
                               "--out", str(tmp_path / "a")],
        "cannot write": [*base, "--trial", "0", "--out", str(blocker / "sub")],
        "unknown format": [*base, "--trial", "0", "--out", str(tmp_path / "a"), "--formats", "onnx,tflite32"],
        "no such SQLite file": ["export", "--storage", f"sqlite:///{tmp_path / 'missing.db'}", "--trial", "0",
                                "--out", str(tmp_path / "a")],
    }
    for needle, argv in cases.items():
        assert main(argv) == 2, needle
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and err.startswith("fednas: error:"), (needle, err)
    assert {p: _digest(p) for p in before} == before
    assert sorted(p.name for p in (study["folder"] / "exp.artifacts").iterdir()) == artifacts
    assert not (tmp_path / "a").exists() and not (tmp_path / "missing.db").exists()


def test_load_model_rejects_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="arch.json: not found"):
        load_model(tmp_path)
    (tmp_path / "arch.json").write_text("{}")
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="malformed bundle"):
        load_model(tmp_path)


def test_pick_needs_a_front(study: dict) -> None:
    view = read_study(study["storage"], "exp")
    with pytest.raises(ConfigError, match="exactly one of"):
        pick_trial(view)
    with pytest.raises(ConfigError, match="unknown"):
        pick_trial(view, pick="median")


def test_train_from_a_stored_trial(study: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "retrained"
    rc = main(["train", "--storage", study["storage"], "--study", "exp", "--trial", "0", "--rounds", "1",
               "--out", str(out), "--formats", "onnx", "--onnx-exporter", "torchscript"])
    text = capsys.readouterr().out
    assert rc == 0 and "round   1/1" in text
    m = json.loads((out / "metrics.json").read_text())
    trial, _ = _stored(study, 0)
    assert m["architecture"] == trial.user_attrs["arch"]
    assert m["federation"]["rounds"] == 1 and len(m["rounds"]) == 1
    assert m["origin"]["from_trial"] == 0 and m["objectives"] == {}
    assert m["metrics"]["accuracy"] == pytest.approx(m["pytorch_accuracy"])


def test_a_bundle_folder_is_never_shared_by_two_models(study: dict, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"
    base = ["export", "--storage", study["storage"], "--study", "exp", "--onnx-exporter", "torchscript"]
    assert main([*base, "--trial", "0", "--out", str(out), "--formats", "onnx,torchscript"]) == 0
    first = {p.name: _digest(p) for p in out.iterdir()}
    capsys.readouterr()
    # another trial into it: refused, nothing touched
    assert main([*base, "--trial", "1", "--out", str(out), "--formats", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "holds the bundle of trial 0 of study 'exp', not of trial 1" in err and err.count("\n") == 1
    assert {p.name: _digest(p) for p in out.iterdir()} == first
    # the same trial again: replaced whole, so the TorchScript file of the first export is gone
    assert main([*base, "--trial", "0", "--out", str(out), "--formats", "onnx"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(set(first) - {"model.torchscript.pt"})
    assert json.loads((out / "metrics.json").read_text())["exports"].keys() == {"onnx"}
    # a folder of other files, and a file, are refused
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    assert main([*base, "--trial", "0", "--out", str(junk)]) == 2
    assert "holds no fednas bundle" in capsys.readouterr().err
    assert [p.name for p in junk.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "junk"]  # no staging folders left


def test_a_failed_export_leaves_the_earlier_bundle_whole(study: dict, tmp_path: Path, monkeypatch) -> None:
    from fednas.export import _formats

    out = tmp_path / "b"
    base = ["export", "--storage", study["storage"], "--study", "exp", "--trial", "0", "--out", str(out),
            "--onnx-exporter", "torchscript"]
    assert main([*base, "--formats", "onnx"]) == 0
    before = {p.name: _digest(p) for p in out.iterdir()}

    def broken(self, ctx):
        raise _formats.ExportError("simulated failure half-way")

    monkeypatch.setattr(_formats.OnnxExporter, "export", broken)
    with pytest.raises(_formats.ExportError):
        from fednas.export import source_from_trial, write_bundle

        write_bundle(source_from_trial(study["storage"], "exp", trial=0), out, formats=["onnx"])
    assert {p.name: _digest(p) for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_an_exported_bundle_teaches_a_search_and_a_bad_teacher_is_a_config_error(
    study: dict, bundle: dict, tiny_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from fednas.config import load_config
    from fednas.search import run_search

    teacher = str(bundle["out"])
    config = load_config(tiny_config, ["study.trials=1", "federation.rounds=1", "space.labels.kd_weight=0.5",
                                       f"space.labels.kd_teacher='{teacher}'"])
    result = run_search(config, progress=False)
    assert result.completed == 1 and result.front[0].attrs["labels"]["kd_teacher"] == teacher
    folder = tiny_config.parent
    rgb = folder / "rgb.npz"
    rng = np.random.default_rng(0)
    np.savez(rgb, x_train=rng.random((64, 3, 28, 28), dtype=np.float32), y_train=rng.integers(0, 4, 64),
             x_test=rng.random((16, 3, 28, 28), dtype=np.float32), y_test=rng.integers(0, 4, 16))
    gray = folder / "gray4.npz"
    np.savez(gray, x_train=rng.random((64, 1, 28, 28), dtype=np.float32), y_train=np.arange(64) % 4,
             x_test=rng.random((16, 1, 28, 28), dtype=np.float32), y_test=np.arange(16) % 4)
    cases = {
        "/nonexistent/teacher": ["space.labels.kd_weight=0.5", "space.labels.kd_teacher='/nonexistent/teacher'"],
        "does not take the data's 3x28x28 images": [
            "space.labels.kd_weight=0.5", f"space.labels.kd_teacher='{teacher}'", "data.source='npz'",
            f"data.path='{rgb}'", "data.limit=0"],
        "the teacher has 10 classes; expected the data's 4": [
            "space.labels.kd_weight=0.5", f"space.labels.kd_teacher='{teacher}'", "data.source='npz'",
            f"data.path='{gray}'", "data.limit=0"],
    }
    for needle, sets in cases.items():
        for check in (["--check"], []):
            argv = ["search", str(tiny_config), "--study", "teach", *check]
            for s in sets:
                argv += ["--set", s]
            assert main(argv) == 2, needle
            err = capsys.readouterr().err
            assert needle in err and err.count("\n") == 1 and "space.labels.kd_teacher" in err, err
    assert not optuna.study.get_all_study_names(f"sqlite:///{folder / 'tiny.db'}").count("teach")


def test_arch_info_of_a_bundle_uses_its_input_and_its_trained_model(bundle: dict,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["arch", "info", str(bundle["out"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    inp = bundle["metrics"]["input"]
    assert info["num_classes"] == inp["num_classes"] and info["params"] == sum(
        t.numel() for t in load_model(bundle["out"]).parameters())
    assert main(["arch", "info", str(bundle["out"])]) == 0
    assert f": {inp['in_channels']}x{inp['resolution']}x{inp['resolution']} -> " in capsys.readouterr().out


def test_a_bundle_records_its_normalization_and_class_names_and_load_model_applies_them(
    tiny_config: Path, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    from fednas.config import load_config
    from fednas.data import load_dataset
    from fednas.export import source_from_trial, write_bundle
    from fednas.search import run_search

    images = tmp_path / "pets"
    rng = np.random.default_rng(0)
    raw = {}
    for k, name in enumerate(("cat", "dog", "eel")):
        (images / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(60 + 60 * k, 40, (28, 28)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(images / name / f"{i:02d}.png")
            raw[(name, i)] = pixels
    sets = ["study.trials=1", "federation.rounds=1", "data.source='imagefolder'", f"data.path='{images}'",
            "data.resolution=28", "data.limit=0"]
    config = load_config(tiny_config, sets)
    result = run_search(config, progress=False)
    out = tmp_path / "bundle"
    write_bundle(source_from_trial(result.storage, "tiny", trial=0), out, formats=[])
    info = json.loads((out / "metrics.json").read_text())["input"]
    assert info["class_names"] == ["cat", "dog", "eel"]
    train, _ = load_dataset("imagefolder", path=str(images), resolution=28, seed=config.study.seed)
    norm = info["normalization"]
    assert norm["mean"] == pytest.approx(list(train.normalization.mean)) and norm["pixel_scale"] == pytest.approx(1 / 255)
    assert "0 cat, 1 dog, 2 eel" in (out / "README.md").read_text()
    # raw pixels through load_model(preprocess=True) == standardized images through the plain model
    plain, piped = load_model(out), load_model(out, preprocess=True)
    batch = torch.from_numpy(np.stack([raw[("dog", i)] for i in range(4)])[:, None].astype(np.float32))
    standardized = (batch / 255 - norm["mean"][0]) / norm["std"][0]
    with torch.no_grad():
        torch.testing.assert_close(piped(batch), plain(standardized), rtol=1e-4, atol=1e-5)
        big = torch.nn.functional.interpolate(batch, size=(56, 56), mode="nearest")
        assert piped(big).shape == (4, 3)  # any size is resized to the trained resolution
    with pytest.raises(ValueError, match=r"expected images \[N, 1, H, W\]"):
        piped(torch.zeros(1, 3, 28, 28))
    # a bundle from before normalization was recorded: the plain model loads, preprocess says why not
    doc = json.loads((out / "metrics.json").read_text())
    doc["input"].pop("normalization")
    (out / "metrics.json").write_text(json.dumps(doc))
    load_model(out)
    with pytest.raises(ValueError, match="input.normalization: expected pixel_offset"):
        load_model(out, preprocess=True)
