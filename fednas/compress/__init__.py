"""Compression for fednas: cheaper messages during federated training, smaller models after.

DRAFT docstring: completed below.
"""

from __future__ import annotations

from fednas.compress._codecs import (CODECS, Codec, Identity, Layout, Quantize, TensorSpec, TopK, apply_update,
                                     codec_from_config, encode_with_feedback, make_codec, pack_bits, payload_bytes,
                                     unpack_bits, update_between)
from fednas.compress._distill import distillation_loss, train_with_teacher
from fednas.compress._int8 import INT8_BACKENDS, Int8Model, evaluate_int8, quantize_int8, serialized_bytes
from fednas.compress._lowrank import factorize, low_rank, low_rank_rank
from fednas.compress._mods import (COMPRESSION_RECORD, DownlinkEncoder, DownlinkOutOfSync, DownlinkPlan,
                                   make_downlink_mod, make_uplink_mod, to_array_record, to_numpy)
from fednas.compress._prune import PRUNING_METHODS, prune_channels
from fednas.compress._strategy import CompressedFedAvg, CompressionMixin, compressed

__all__ = [
    "CODECS",
    "COMPRESSION_RECORD",
    "INT8_BACKENDS",
    "PRUNING_METHODS",
    "Codec",
    "CompressedFedAvg",
    "CompressionMixin",
    "DownlinkEncoder",
    "DownlinkOutOfSync",
    "DownlinkPlan",
    "Identity",
    "Int8Model",
    "Layout",
    "Quantize",
    "TensorSpec",
    "TopK",
    "apply_update",
    "codec_from_config",
    "compressed",
    "distillation_loss",
    "encode_with_feedback",
    "evaluate_int8",
    "factorize",
    "low_rank",
    "low_rank_rank",
    "make_codec",
    "make_downlink_mod",
    "make_uplink_mod",
    "pack_bits",
    "payload_bytes",
    "prune_channels",
    "quantize_int8",
    "serialized_bytes",
    "to_array_record",
    "to_numpy",
    "train_with_teacher",
    "unpack_bits",
    "update_between",
]
