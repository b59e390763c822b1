"""Property-based harness: hostile files of every kind fednas reads, run through the CLI.

Generated architecture JSON, bundles (arch.json, metrics.json, safetensors), npz archives,
image folders, LEAF JSON, latency tables, study TOML and storage URLs are given to the verbs that read them.
Every command must exit 0 or 2, print no traceback (an error is one line), use at most
1 GB of memory above its start and 10 s before an error, and leave an existing study
untouched. Commands run in one long-lived worker process (``tests/_cli_worker.py``).

``FEDNAS_HOSTILE_EXAMPLES`` sets the examples per kind (default 25; BENCHMARKS.md records a
long run); ``FEDNAS_HOSTILE_RANDOM=1`` draws new cases each run instead of the fixed sequence
CI runs; ``FEDNAS_HOSTILE_LOG=FILE`` appends one JSON line per command run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

WORKER = Path(__file__).resolve().parent / "_cli_worker.py"
REPLY_TAG = next(line.split('"')[1] for line in WORKER.read_text().splitlines() if line.startswith("REPLY_TAG ="))

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("FEDNAS_HOSTILE_EXAMPLES", "25"))
LOG = os.environ.get("FEDNAS_HOSTILE_LOG", "")
MAX_ERROR_SECONDS = 10.0
MAX_GROWTH_MB = 1024.0
TIMEOUT = 120.0  # a command still running after this is a hang
RANDOM = os.environ.get("FEDNAS_HOSTILE_RANDOM", "") == "1"  # fresh draws each run (exploration); else fixed ones
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
                    suppress_health_check=list(HealthCheck))
TINY = (Path(__file__).resolve().parent / "tiny_study.toml").read_text()


class Worker:
    """The client side of ``tests/_cli_worker.py``: one command at a time, restarted after a hang or crash."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.buffer = b""

    def start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.buffer = b""
        assert self._reply(TIMEOUT).get("ready"), "worker did not start"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, argv: list[str], cwd: Path) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"argv": argv, "cwd": str(cwd)}) + "\n").encode())
        self.proc.stdin.flush()
        reply = self._reply(TIMEOUT)
        if not reply:
            code = self.proc.poll()
            self.stop()
            reply = {"rc": "hang" if code is None else f"worker died ({code})", "stdout": "", "stderr": "",
                     "traceback": "", "seconds": TIMEOUT, "peak_growth_mb": 0.0}
        return reply

    def _reply(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        tag = REPLY_TAG.encode()
        deadline = _now() + timeout
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                if line.startswith(tag):
                    return json.loads(line[len(tag):])
            left = deadline - _now()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return {}
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return {}
            self.buffer += chunk


def _now() -> float:
    import time

    return time.monotonic()


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, worker: Worker) -> dict[str, Any]:
    """An existing study (two trials) and a bundle of one of them; digests to prove both stay untouched."""
    folder = tmp_path_factory.mktemp("hostile-world")
    config = folder / "tiny.toml"
    config.write_text(TINY)
    r = worker.run(["search", str(config), "--quiet", "--trials", "2", "--set", "federation.rounds=1"], folder)
    assert r["rc"] == 0, r
    bundle = folder / "bundle"
    r = worker.run(["export", "--storage", f"sqlite:///{folder / 'tiny.db'}", "--study", "tiny", "--trial", "0",
                    "--out", str(bundle), "--formats", "onnx", "--onnx-exporter", "torchscript"], folder)
    assert r["rc"] == 0, r
    return {"folder": folder, "config": config, "storage": f"sqlite:///{folder / 'tiny.db'}", "bundle": bundle,
            "digest": _digest(folder)}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _check(worker: Worker, world: dict[str, Any], kind: str, argv: list[str], cwd: Path) -> dict[str, Any]:
    r = worker.run(argv, cwd)
    if LOG:
        with open(LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, "argv": argv[:2], "rc": r["rc"], "seconds": r["seconds"],
                                "peak_growth_mb": r["peak_growth_mb"], "error": r["stderr"].strip()[:300],
                                "traceback": r["traceback"][-600:]}) + "\n")
    what = f"{kind}: fednas {' '.join(argv)}"
    assert not r["traceback"] and "Traceback" not in r["stderr"], f"{what}\n{r['traceback'] or r['stderr']}"
    assert r["rc"] in (0, 2), f"{what}: exit {r['rc']}\n{r['stderr']}"
    if r["rc"] == 2:
        err = r["stderr"].strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fednas: error:"), f"{what}: expected one error line\n{r['stderr']}"
        assert r["seconds"] <= MAX_ERROR_SECONDS, f"{what}: {r['seconds']} s before the error"
    assert r["peak_growth_mb"] <= MAX_GROWTH_MB, f"{what}: memory grew by {r['peak_growth_mb']} MB"
    assert _digest(world["folder"]) == world["digest"], f"{what}: the existing study or bundle changed"
    return r


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A fresh folder for one generated case, removed afterwards (also when the case fails)."""
    tmp = Path(tempfile.mkdtemp(prefix="fednas-hostile-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- values

HUGE = [10**3, 10**6, 10**9, 10**12, 10**18, 2**63, -1, -(10**9), 0]
scalars = st.one_of(
    st.sampled_from(HUGE), st.integers(-10, 300), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.none(), st.text(max_size=8), st.sampled_from(["mobilenet", "resnet", "relu6", "basic", "NaN"]),
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6),
                                                                                                  inner, max_size=3),
                           max_leaves=8)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _mutate(doc: Any, path: list[Any], value: Any) -> Any:
    """``doc`` with the element at ``path`` (indices modulo the container's size) replaced by ``value``."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    doc = json.loads(json.dumps(doc))
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)] if isinstance(path[0], int) else path[0]
    if isinstance(doc, list) and not isinstance(key, int):
        return doc
    doc[key] = _mutate(doc[key] if (isinstance(doc, dict) and key in doc) or isinstance(doc, list) else None,
                       path[1:], value)
    return doc


paths = st.lists(st.one_of(st.integers(0, 50), st.sampled_from(["stages", "channels", "depth", "expansion",
                                                                 "kernel", "stem_channels", "family", "blocks",
                                                                 "input", "num_classes", "resolution", "labels",
                                                                 "normalization", "user_data", "x", "y", "users"])),
                 min_size=1, max_size=4)


def _json_text(base: Any) -> st.SearchStrategy[bytes]:
    """Mutated JSON documents, plus raw garbage, truncation and very deep nesting."""
    mutated = st.tuples(st.lists(st.tuples(paths, json_values), min_size=1, max_size=4)).map(
        lambda t: _apply_all(base, t[0]))
    return st.one_of(
        mutated.map(lambda d: json.dumps(d).encode()),
        mutated.map(lambda d: json.dumps(d).encode()).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),
        st.binary(max_size=200),
        st.sampled_from([_deep(100_000).encode(), b'{"a": ' * 50_000, b"\xff\xfe\x00garbage", b"",
                         json.dumps({"family": "mobilenet", "stages": [{}] * 100_000}).encode()]),
    )


def _apply_all(base: Any, muts: list[tuple[list[Any], Any]]) -> Any:
    for path, value in muts:
        base = _mutate(base, path, value)
    return base


# --------------------------------------------------------------------------- architecture JSON and bundles

def _arch_docs() -> list[dict[str, Any]]:
    from search_spaces import preset

    return [preset("mobilenet_micro").to_dict(), preset("resnet18").to_dict()]


@st.composite
def big_mobilenets(draw: st.DrawFn) -> bytes:
    """Well-formed MobileNets with every size inside the per-field bounds: only the whole can be too big."""
    from search_spaces import preset

    doc = preset("mobilenet_micro").to_dict()
    stage = doc["stages"][0]
    doc["stages"] = [{**stage, "channels": draw(st.sampled_from([8, 64, 512, 4096, 16_384])),
                      "depth": draw(st.sampled_from([1, 4, 50, 512])), "expansion": draw(st.integers(1, 16)),
                      "kernel": draw(st.sampled_from([1, 3, 7, 15])), "stride": draw(st.sampled_from([1, 2]))}
                     for _ in range(draw(st.integers(1, 4)))]
    doc["head_channels"] = draw(st.sampled_from([0, 1280, 16_384]))
    doc["classifier_hidden"] = draw(st.sampled_from([0, 1024, 16_384]))
    return json.dumps(doc).encode()


@SETTINGS
@given(data=st.data())
def test_architecture_json(worker: Worker, world: dict[str, Any], data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(_arch_docs()))
    text = data.draw(st.one_of(_json_text(base), big_mobilenets()))
    with _scratch() as tmp:
        path = tmp / "arch.json"
        path.write_bytes(text)
        _check(worker, world, "arch.json", ["arch", "info", str(path)], tmp)
        _check(worker, world, "arch.json", ["arch", "info", str(path), "--resolution", "32", "--json"], tmp)


def _safetensors(header: dict[str, Any], payload: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + payload


safetensors_files = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda shape, off, n: _safetensors({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, off]}},
                                                 b"\0" * n),
              st.lists(st.sampled_from([0, 1, 3, 10**6, 10**12, -1]), max_size=4), st.sampled_from([0, 4, 10**12]),
              st.integers(0, 64)),
    st.builds(lambda n: _safetensors({}, length=n), st.sampled_from([0, 7, 10**9, 2**63])),
    st.builds(lambda h: _safetensors(h), json_values),
)


@SETTINGS
@given(data=st.data())
def test_bundles(worker: Worker, world: dict[str, Any], data: st.DataObject) -> None:
    with _scratch() as tmp:
        bundle = tmp / "bundle"
        shutil.copytree(world["bundle"], bundle)
        which = data.draw(st.sampled_from(["arch.json", "metrics.json", "model.safetensors", "missing"]))
        if which == "arch.json":
            (bundle / which).write_bytes(data.draw(_json_text(json.loads((bundle / which).read_text()))))
        elif which == "metrics.json":
            doc = json.loads((bundle / which).read_text())
            (bundle / which).write_bytes(data.draw(_json_text({"input": doc["input"], "labels": doc["labels"],
                                                               "prune_masks": doc.get("prune_masks", "")})))
        elif which == "model.safetensors":
            (bundle / which).write_bytes(data.draw(safetensors_files))
        else:
            (bundle / data.draw(st.sampled_from(["arch.json", "metrics.json", "model.safetensors"]))).unlink()
        _check(worker, world, f"bundle {which}", ["arch", "info", str(bundle)], tmp)
        _check(worker, world, f"bundle {which}", ["train", str(bundle), str(world["config"]), "--rounds", "1",
                                                  "--set", "data.limit=60", "--out", str(tmp / "out"), "--formats", ""],
               tmp)


# --------------------------------------------------------------------------- data files

DTYPES = ["uint8", "float32", "float64", "int64", "int8", "bool", "complex64", "float16", "<U3", "object"]


@st.composite
def arrays(draw: st.DrawFn, label: bool = False) -> np.ndarray:
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 12), min_size=0 if label else 1, max_size=1 if label else 5)))
    n = int(np.prod(shape)) if shape else 1
    if dtype == "object":
        return np.array([draw(st.sampled_from([None, "x", 1]))] * max(n, 1), dtype=object)
    if dtype == "<U3":
        return np.full(shape, "ab", dtype=dtype)
    values = draw(st.sampled_from(["zeros", "random", "nan", "huge", "negative"]))
    rng = np.random.default_rng(n)
    base = {"zeros": np.zeros(shape), "random": rng.random(shape) * 255, "nan": np.full(shape, np.nan),
            "huge": np.full(shape, 1e30), "negative": -rng.random(shape) * 10}[values]
    with np.errstate(all="ignore"):
        return base.astype(dtype)


def _npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """An .npy file whose header claims ``shape`` but holds only a few bytes of data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 16


def _crafted_npz(path: Path, shape: tuple[int, ...], compressed: bool) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as z:
        z.writestr("x.npy", _npy_header(shape))
        z.writestr("y.npy", _npy_header((shape[0] if shape else 1,), "<i8"))


def _check_data(worker: Worker, world: dict[str, Any], kind: str, tmp: Path, source: str, path: Path,
                extra: tuple[str, ...] = ()) -> None:
    argv = ["search", str(world["config"]), "--check", "--storage", f"sqlite:///{tmp / 'new.db'}",
            "--set", f"data.source='{source}'", "--set", f"data.path='{path}'", "--set", "data.limit=0", *extra]
    _check(worker, world, kind, argv, tmp)
    assert not (tmp / "new.db").exists()


@SETTINGS
@given(data=st.data())
def test_npz(worker: Worker, world: dict[str, Any], data: st.DataObject) -> None:
    with _scratch() as tmp:
        path = tmp / "data.npz"
        how = data.draw(st.sampled_from(["near-valid", "near-valid", "arrays", "arrays", "crafted", "garbage"]))
        if how == "near-valid":  # a usable dataset in some dtype and layout, sometimes with one thing wrong
            n, side = data.draw(st.integers(30, 80)), data.draw(st.sampled_from([1, 4, 8, 28]))
            shape = data.draw(st.sampled_from([(n, side, side), (n, 1, side, side), (n, side, side, 3),
                                               (n, side * side)]))
            dtype = data.draw(st.sampled_from(["uint8", "float32", "float64", "int64", "bool", "float16"]))
            rng = np.random.default_rng(n)
            x = (rng.random(shape) * (255 if dtype in ("uint8", "int64") else 1)).astype(dtype)
            classes = data.draw(st.integers(1, 5))
            y = data.draw(st.sampled_from(["ok", "ok", "negative", "float", "short", "huge"]))
            labels = {"ok": np.arange(n) % classes, "negative": np.arange(n) % classes - 1,
                      "float": (np.arange(n) % classes) + 0.5, "short": np.arange(n - 1) % classes,
                      "huge": np.full(n, 2**40)}[y]
            np.savez(path, x=x, y=labels)
            how = f"near-valid y={y}"
        elif how == "arrays":
            keys = data.draw(st.lists(st.sampled_from(["x", "y", "x_train", "y_train", "x_test", "y_test", "z"]),
                                      unique=True, max_size=5))
            arrs = {k: data.draw(arrays(label=k.startswith("y"))) for k in keys}
            (np.savez_compressed if data.draw(st.booleans()) else np.savez)(path, **arrs)
        elif how == "crafted":
            shape = tuple(data.draw(st.lists(st.sampled_from([1, 28, 10**5, 10**9, 2**40]), min_size=1, max_size=4)))
            _crafted_npz(path, shape, data.draw(st.booleans()))
        else:
            path.write_bytes(data.draw(st.binary(max_size=400)))
        _check_data(worker, world, f"npz {how}", tmp, "npz", path,
                    data.draw(st.sampled_from([(), ("--set", "data.resolution=8"), ("--set", "data.partition='iid'")])))


def _png(width: int, height: int, mode: str = "L", idat: bytes | None = None) -> bytes:
    """A PNG whose header says ``width`` x ``height``; ``idat`` (default: a real all-zero image if small)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    color = {"L": 0, "RGB": 2}[mode]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    if idat is None:
        row = b"\0" + b"\0" * (width * (3 if mode == "RGB" else 1))
        idat = zlib.compress(row * height)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@st.composite
def image_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["png", "png", "bomb", "garbage", "empty", "truncated"]))
    if kind == "png":
        return _png(draw(st.integers(1, 48)), draw(st.integers(1, 48)), draw(st.sampled_from(["L", "RGB"])))
    if kind == "bomb":
        side = draw(st.sampled_from([20_000, 60_000, 2**31 - 1]))
        return _png(side, side, "RGB", idat=zlib.compress(b"\0" * 1000))
    if kind == "truncated":
        data = _png(16, 16)
        return data[: draw(st.integers(0, len(data)))]
    return b"" if kind == "empty" else draw(st.binary(max_size=200))


@SETTINGS
@given(data=st.data())
def test_image_folders(worker: Worker, world: dict[str, Any], data: st.DataObject) -> None:
    with _scratch() as tmp:
        root = tmp / "images"
        root.mkdir()
        if data.draw(st.booleans()):  # a usable folder: classes of real images of mixed sizes and modes
            for c in range(data.draw(st.integers(2, 3))):
                (root / f"class{c}").mkdir()
                for i in range(data.draw(st.integers(8, 14))):
                    (root / f"class{c}" / f"{i}.png").write_bytes(
                        _png(data.draw(st.integers(4, 40)), data.draw(st.integers(4, 40)),
                             data.draw(st.sampled_from(["L", "RGB"]))))
        for c in range(data.draw(st.integers(0, 3))):
            folder = root / data.draw(st.sampled_from([f"class{c}", f".hidden{c}", f"c {c} ü"]))
            folder.mkdir(exist_ok=True)
            for i in range(data.draw(st.integers(0, 4))):
                ext = data.draw(st.sampled_from([".png", ".jpg", ".txt", ".PNG"]))
                (folder / f"{i}{ext}").write_bytes(data.draw(image_files()))
        if data.draw(st.booleans()):
            (root / "loose.png").write_bytes(_png(8, 8))
        _check_data(worker, world, "imagefolder", tmp, "imagefolder", root,
                    data.draw(st.sampled_from([(), ("--set", "data.resolution=16")])))


LEAF = {"users": ["a", "b"], "num_samples": [3, 3],
        "user_data": {"a": {"x": [[0.1] * 16] * 3, "y": [0, 1, 2]}, "b": {"x": [[0.5] * 16] * 3, "y": [1, 2, 0]}}}


@SETTINGS
@given(data=st.data())
def test_leaf_json(worker: Worker, world: dict[str, Any], data: st.DataObject) -> None:
    with _scratch() as tmp:
        root = tmp / "leaf"
        root.mkdir()
        for i in range(data.draw(st.integers(1, 2))):
            (root / f"part{i}.json").write_bytes(data.draw(_json_text(LEAF)))
        partition = data.draw(st.sampled_from(["natural", "dirichlet", "iid"]))
        _check_data(worker, world, "leaf", tmp, "leaf", root,
                    ("--set", f"data.partition='{partition}'", "--set", "federation.num_clients=2",
                     "--set", "federation.min_train_nodes=1"))


# --------------------------------------------------------------------------- latency tables

def _table_doc() -> dict[str, Any]:
    return {"format": "fednas-latency-table", "version": 1, "runtime": "onnxruntime", "runtime_version": "1.0",
            "threads": 1, "repeats": 5, "overhead_ms": 0.01, "boundary_ms_per_element": 0.0, "machine": {},
            "created": "", "source": {}, "units": {"Sequential:ab@1x28x28": [0.1, 0.09, 0.12, "Sequential", 10, 20]}}


@SETTINGS
@given(data=st.data())
def test_latency_tables(worker: Worker, world: dict[str, Any], data: st.DataObject) -> None:
    text = data.draw(_json_text(_table_doc()))
    with _scratch() as tmp:
        path = tmp / "table.json"
        path.write_bytes(text)
        _check(worker, world, "latency table",
               ["search", str(world["config"]), "--check", "--storage", f"sqlite:///{tmp / 'new.db'}",
                "--set", "objectives={accuracy='maximize', latency_ms='minimize'}",
                "--set", f"latency.table='{path}'"], tmp)
        assert not (tmp / "new.db").exists()


# --------------------------------------------------------------------------- study TOML and storage URLs

toml_texts = st.one_of(
    st.text(max_size=300).map(str.encode),
    st.binary(max_size=200),
    st.builds(lambda lines: "\n".join(lines).encode(), st.lists(st.sampled_from([
        "[study]", "[federation]", "[data]", "[space.labels]", "[[federation.tiers]]", "trials = 1e999",
        "rounds = -1", "num_clients = 100000000", "limit = 99999999999999999999", 'source = "npz"',
        'path = "/dev/zero"', 'path = "/proc/self/mem"', "s1_depth = {low = 1, high = 1000000000}",
        "base_channels = [1000000000]", "strides = [3]", 'name = "../../etc"', "x = [" * 2000, "a.b.c = 1",
        'storage = "sqlite:///"', "heartbeat = -5", "resolution = 100000", "share = 0.5", 'name = "t"',
        "alpha = nan", "lr = inf",
    ]), max_size=12)),
)


@SETTINGS
@given(text=toml_texts)
def test_study_toml(worker: Worker, world: dict[str, Any], text: bytes) -> None:
    with _scratch() as tmp:
        path = tmp / "study.toml"
        path.write_bytes(text)
        _check(worker, world, "toml", ["search", str(path), "--check", "--storage", f"sqlite:///{tmp / 'new.db'}"], tmp)
        assert not (tmp / "new.db").exists()


storage_urls = st.one_of(
    st.builds(lambda scheme, rest: scheme + rest,
              st.sampled_from(["sqlite:///", "sqlite://", "sqlite:////", "journal:", "postgresql://", "mysql://",
                               "mongodb://", "", "file://", "sqlite:///file:"]),
              st.one_of(st.text(max_size=30), st.sampled_from(["/dev/null", "/proc/self/mem", "/etc/passwd",
                                                               "127.0.0.1:1/db", "nobody@127.0.0.1:1/x",
                                                               ":memory:", "x.db?mode=ro&uri=true", "../.."]))),
    st.text(max_size=40),
)


@SETTINGS
@given(url=storage_urls, name=st.one_of(st.just("tiny"), st.text(max_size=10)))
def test_storage_urls(worker: Worker, world: dict[str, Any], url: str, name: str) -> None:
    with _scratch() as tmp:
        flags = [f"--storage={url}", f"--study={name}"]  # "=": a value starting with "-" is still the value
        _check(worker, world, "storage", ["pareto", *flags, "--all"], tmp)
        _check(worker, world, "storage", ["search", str(world["config"]), "--check", *flags], tmp)
        _check(worker, world, "storage",
               ["export", *flags, "--trial", "0", "--out", str(tmp / "out"), "--formats", "onnx"], tmp)
