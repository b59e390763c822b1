from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fednas.data import DataError, load_dataset

NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(a: np.ndarray) -> bytes:
    """Encodes a uint8 array in the idx format (magic 0x0000 08 <ndim>, big-endian dims)."""
    return struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_idx_folder(folder: Path, *, gz: bool, n_train: int = 12, n_test: int = 6) -> dict:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8)
        y = (np.arange(n) % 3).astype(np.uint8)
        arrays[split] = (x, y)
        for name, a in zip(NAMES[split], (x, y)):
            data = idx_bytes(a)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_loads_plain_and_gzipped_idx(tmp_path, gz):
    arrays = write_idx_folder(tmp_path, gz=gz)
    train, test = load_dataset("idx", path=str(tmp_path), test_fraction=0.5)
    assert train.x.shape == (12, 1, 4, 4) and test.x.shape == (6, 1, 4, 4)  # split from the files
    assert train.y.tolist() == arrays["train"][1].tolist()
    assert test.y.tolist() == arrays["test"][1].tolist()
    assert train.num_classes == 3 and train.name == tmp_path.name
    # values survive: undoing the train standardization gives back pixel / 255
    x = arrays["train"][0].astype(np.float64) / 255
    restored = train.x.numpy() * x.std() + x.mean()
    np.testing.assert_allclose(restored[:, 0], x, atol=1e-5)


def test_limit_keeps_few_samples_of_each_split(tmp_path):
    write_idx_folder(tmp_path, gz=False, n_train=30, n_test=30)
    train, test = load_dataset("idx", path=str(tmp_path), limit=6, test_fraction=0.25)
    assert len(train) == 6 and len(test) == 2
    assert torch.equal(torch.bincount(train.y), torch.tensor([2, 2, 2]))


def test_wrong_magic_names_the_file(tmp_path):
    write_idx_folder(tmp_path, gz=False)
    bad = tmp_path / "train-labels-idx1-ubyte"
    bad.write_bytes(b"\x12\x34" + bad.read_bytes()[2:])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: bad magic number"):
        load_dataset("idx", path=str(tmp_path))


def test_truncated_file_names_the_file(tmp_path):
    write_idx_folder(tmp_path, gz=False)
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: has .* bytes; expected"):
        load_dataset("idx", path=str(tmp_path))


def test_truncated_gzip_names_the_file(tmp_path):
    write_idx_folder(tmp_path, gz=True)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot read"):
        load_dataset("idx", path=str(tmp_path))


def test_missing_file_and_mismatched_counts(tmp_path):
    write_idx_folder(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset("idx", path=str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, dtype=np.uint8)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: has 5 labels for 6 images"):
        load_dataset("idx", path=str(tmp_path))


def test_labels_file_given_as_images_is_rejected(tmp_path):
    write_idx_folder(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros(12, dtype=np.uint8)))
    with pytest.raises(DataError, match="train-images-idx3-ubyte: has 1 dimensions; expected 3"):
        load_dataset("idx", path=str(tmp_path))


def test_path_must_be_a_folder(tmp_path):
    with pytest.raises(DataError, match="nope: not found"):
        load_dataset("idx", path=str(tmp_path / "nope"))


@pytest.mark.parametrize("gz", [False, True])
def test_declared_size_is_bounded_before_reading(tmp_path, gz, monkeypatch):
    """A header claiming more than MAX_ARRAY_BYTES is refused from the header alone; for a gzip
    member, before it is inflated (a bomb of zeros that would inflate past the bound)."""
    import fednas.data._idx as idx

    write_idx_folder(tmp_path, gz=gz)
    monkeypatch.setattr(idx, "MAX_ARRAY_BYTES", 1000)
    header = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">3I", 100, 28, 28)  # 78,400 bytes declared
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    (tmp_path / name).write_bytes(gzip.compress(header + bytes(78_400)) if gz else header)
    with pytest.raises(DataError, match=rf"{name}: header declares shape \(100, 28, 28\) \(78,400 bytes\); "
                                        r"expected at most 1,000 bytes"):
        load_dataset("idx", path=str(tmp_path))


@pytest.mark.parametrize("gz", [False, True])
def test_bytes_after_the_payload_name_the_file(tmp_path, gz):
    write_idx_folder(tmp_path, gz=gz)
    name = "t10k-labels-idx1-ubyte" + (".gz" if gz else "")
    data = idx_bytes((np.arange(6) % 3).astype(np.uint8)) + b"\x00"
    (tmp_path / name).write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match=rf"{name}: has more than 14 bytes; expected 14 for shape \(6,\)"):
        load_dataset("idx", path=str(tmp_path))
