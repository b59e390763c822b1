from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from fednas.data import DataError, load_dataset

Image = pytest.importorskip("PIL.Image")


def write_folder(root, mode: str = "L", per_class: int = 4, size: int = 10) -> None:
    brightness = {"cat": 200, "ant": 10, "bee": 100}  # sorted names give ant=0, bee=1, cat=2
    for name, base in brightness.items():
        (root / name).mkdir()
        for i in range(per_class):
            value = base + i
            color = value if mode == "L" else (value, 255 - value, 7)
            Image.new(mode, (size, size + 2), color).save(root / name / f"{i}.png")


def test_gray_folder_labels_and_shapes(tmp_path):
    write_folder(tmp_path)
    train, test = load_dataset("imagefolder", path=str(tmp_path), test_fraction=0.25, resolution=8)
    assert train.x.shape == (9, 1, 8, 8) and test.x.shape == (3, 1, 8, 8)
    assert torch.equal(torch.bincount(test.y), torch.tensor([1, 1, 1]))
    assert train.num_classes == 3
    # class 'cat' (label 2) is the brightest folder, 'ant' (label 0) the darkest
    means = [float(train.x[train.y == c].mean()) for c in range(3)]
    assert means[2] > means[1] > means[0]
    # each image is one flat colour, so every resized pixel equals its first pixel
    assert torch.allclose(train.x, train.x[:, :, :1, :1].expand_as(train.x), atol=1e-5)


def test_default_resolution_is_32_and_any_colour_image_makes_rgb(tmp_path):
    write_folder(tmp_path, mode="RGB", per_class=2)
    Image.new("L", (5, 5), 9).save(tmp_path / "ant" / "gray.png")
    train, test = load_dataset("imagefolder", path=str(tmp_path))
    assert train.x.shape[1:] == (3, 32, 32)
    assert len(train) + len(test) == 7


def test_unreadable_image_names_the_file(tmp_path):
    write_folder(tmp_path, per_class=2)
    (tmp_path / "bee" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png: cannot be read as an image"):
        load_dataset("imagefolder", path=str(tmp_path))


def test_empty_layouts_are_rejected(tmp_path):
    with pytest.raises(DataError, match="has no class sub-folders"):
        load_dataset("imagefolder", path=str(tmp_path))
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"only: has no images"):
        load_dataset("imagefolder", path=str(tmp_path))


def test_missing_pillow_says_which_extra(tmp_path, monkeypatch):
    write_folder(tmp_path, per_class=1)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match=r"pip install fednas\[images\]"):
        load_dataset("imagefolder", path=str(tmp_path))


def test_rgba_is_read_as_rgb(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for k, folder in enumerate(["a", "b"]):
        arr = np.full((4, 4, 4), 60 * (k + 1), dtype=np.uint8)
        Image.fromarray(arr, "RGBA").save(tmp_path / folder / "0.png")
        Image.fromarray(arr // 2, "RGBA").save(tmp_path / folder / "1.png")
    train, test = load_dataset("imagefolder", path=str(tmp_path), resolution=4, test_fraction=0.5)
    assert train.in_channels == 3 and len(train) == len(test) == 2
