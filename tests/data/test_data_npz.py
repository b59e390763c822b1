from __future__ import annotations

import numpy as np
import pytest
import torch

from fednas.data import DataError, load_dataset

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, size=(20, 6, 6), dtype=np.uint8)
RGB = RNG.integers(0, 256, size=(20, 6, 6, 3), dtype=np.uint8)
LABELS = np.arange(20) % 4


def save(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(("x", "shape"), [
    (GRAY, (1, 6, 6)),                                    # [N, H, W]
    (GRAY[..., None], (1, 6, 6)),                         # [N, H, W, 1]
    (RGB, (3, 6, 6)),                                     # [N, H, W, 3]
    (np.concatenate([RGB, GRAY[..., None]], -1), (4, 6, 6)),  # [N, H, W, 4]
    (RGB.transpose(0, 3, 1, 2), (3, 6, 6)),               # [N, C, H, W]
    (GRAY.reshape(20, 36), (1, 6, 6)),                    # [N, D], D = 6 * 6
    (GRAY.astype(np.float32) / 255, (1, 6, 6)),           # floats already in [0, 1]
    (GRAY.astype(np.float64) / 127.5 - 1, (1, 6, 6)),     # floats in [-1, 1]: min-max scaled
])
def test_accepted_layouts(tmp_path, x, shape):
    train, test = load_dataset("npz", path=save(tmp_path, x=x, y=LABELS), test_fraction=0.25)
    assert train.x.shape[1:] == test.x.shape[1:] == shape
    assert len(train) == 15 and len(test) == 5 and train.num_classes == 4
    assert abs(float(train.x.mean())) < 1e-5


def test_channels_last_and_first_give_the_same_images(tmp_path):
    last, _ = load_dataset("npz", path=save(tmp_path, "a.npz", x=RGB, y=LABELS))
    first, _ = load_dataset("npz", path=save(tmp_path, "b.npz", x=RGB.transpose(0, 3, 1, 2), y=LABELS))
    assert torch.allclose(last.x, first.x)


def test_uint8_and_scaled_float_agree(tmp_path):
    ints, _ = load_dataset("npz", path=save(tmp_path, "a.npz", x=GRAY, y=LABELS))
    floats, _ = load_dataset("npz", path=save(tmp_path, "b.npz", x=GRAY / 255.0, y=LABELS))
    assert torch.allclose(ints.x, floats.x, atol=1e-5)


def test_split_keys_are_used_as_the_split(tmp_path):
    path = save(tmp_path, x_train=GRAY[:12], y_train=LABELS[:12], x_test=GRAY[12:], y_test=LABELS[12:] + 1)
    train, test = load_dataset("npz", path=path)
    assert (len(train), len(test)) == (12, 8)
    assert test.y.tolist() == (LABELS[12:] + 1).tolist()
    assert train.num_classes == test.num_classes == 5  # max label over both splits + 1


@pytest.mark.parametrize(("arrays", "match"), [
    ({"x": GRAY}, r"d\.npz: missing key 'y'"),
    ({"x_train": GRAY, "y_train": LABELS}, r"d\.npz: missing key 'x'"),
    ({"x": GRAY.astype(float) * np.nan, "y": LABELS}, r"d\.npz: key 'x': contains NaN"),
    ({"x": np.full((20, 6, 6), np.inf), "y": LABELS}, r"d\.npz: key 'x': contains NaN or inf"),
    ({"x": GRAY, "y": LABELS - 1}, r"d\.npz: key 'y': has negative label -1"),
    ({"x": GRAY, "y": LABELS + 0.5}, r"d\.npz: key 'y': labels are not whole numbers"),
    ({"x": GRAY, "y": LABELS[:10]}, r"d\.npz: key 'y': has 10 labels for 20 images"),
    ({"x": GRAY[0], "y": LABELS}, r"d\.npz: key 'x': rows have 6 values; expected a perfect square"),
    ({"x": GRAY.reshape(20, 1, 1, 6, 6), "y": LABELS}, r"d\.npz: key 'x': got shape \(20, 1, 1, 6, 6\)"),
    ({"x": GRAY[:, :, :5], "y": LABELS}, r"d\.npz: key 'x': .* expected square images"),
    ({"x": GRAY.astype(str), "y": LABELS}, r"d\.npz: key 'x': got dtype <U3; expected a numeric"),
    ({"x": GRAY, "y": LABELS.astype(object)}, r"d\.npz: key 'y' cannot be loaded without pickle"),
    ({"x": GRAY[:0], "y": LABELS[:0]}, r"d\.npz: key 'x' is empty"),
])
def test_bad_arrays_name_file_and_key(tmp_path, arrays, match):
    with pytest.raises(DataError, match=match):
        load_dataset("npz", path=save(tmp_path, **arrays))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"absent\.npz: not found"):
        load_dataset("npz", path=str(tmp_path / "absent.npz"))


def test_not_an_npz(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello, not a zip")
    with pytest.raises(DataError, match=r"notes\.npz: cannot be read as \.npz"):
        load_dataset("npz", path=str(text))
    single = tmp_path / "single.npy"
    np.save(single, GRAY)
    with pytest.raises(DataError, match=r"single\.npy: is a single \.npy array"):
        load_dataset("npz", path=str(single))


def test_pickled_object_arrays_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}] * 20, dtype=object), y=LABELS)
    with pytest.raises(DataError, match=r"evil\.npz: key 'x' cannot be loaded without pickle"):
        load_dataset("npz", path=str(path))
