"""fednas's ArrayRecord readers and writers give exactly Flower's arrays and bytes, faster."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fednas.compress import array_numpy, from_torch, numpy_array, to_torch
from search_spaces import build_model, preset

ARRAYS = [np.zeros(()), np.arange(12, dtype=np.int64).reshape(3, 4).T, np.ones((2, 3), np.float16),
          np.arange(5, dtype=np.uint8)[::2], np.array([True, False]), np.arange(6, dtype=">f8").reshape(2, 3),
          np.zeros((0, 3), np.float32)]


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_numpy_array_writes_np_save_bytes_and_reads_back(arr: np.ndarray) -> None:
    for _ in range(2):  # the second time from the cached header
        ours, flowers = numpy_array(arr), Array.from_numpy_ndarray(arr)
        assert ours.data == flowers.data and ours.dtype == flowers.dtype and tuple(ours.shape) == tuple(flowers.shape)
        back = array_numpy(ours)
        assert back.dtype == arr.dtype and back.shape == arr.shape and np.array_equal(back, arr)
        assert back.flags.writeable


def test_state_dict_round_trip_matches_flower() -> None:
    sd = build_model(preset("mobilenet_tiny"), num_classes=10, in_channels=1).state_dict()
    ours, flowers = from_torch(sd), ArrayRecord(sd)
    assert list(ours) == list(flowers) and ours.count_bytes() == flowers.count_bytes()
    assert all(ours[k].data == flowers[k].data for k in ours)
    back = to_torch(flowers)
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in sd.items())


def test_unusual_payloads_fall_back_to_flower() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    good = Array.from_numpy_ndarray(arr)
    truncated = Array(dtype=good.dtype, shape=tuple(good.shape), stype=good.stype, data=good.data[:-4])
    with pytest.raises(ValueError):
        array_numpy(truncated)  # np.load's own error, not a silently short array
