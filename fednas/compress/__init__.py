"""Compression for fednas: cheaper messages during federated training, smaller models after.

Two families, each real and measured. In the federation: update codecs (``Codec``),
Flower ClientApp mods that apply them (uplink, downlink) and a strategy wrapper that
decodes. On a model: channel pruning (NNI), low-rank factorization, int8 post-training
quantization and knowledge distillation. Plain PyTorch/NumPy except the Flower pieces
(``_mods``, ``_strategy``); NNI is imported only by ``prune_channels``.

Codecs (``_codecs``; NumPy only)
    CODECS: dict name -> class: "identity", "quantize", "topk".
    make_codec(name, **options) -> Codec                 unknown name/option -> ValueError listing valid ones
    codecs_for(settings) -> {"uplink"|"downlink": Codec} the codecs a trial's compression labels turn on
    Quantize(bits=8, per_channel=False)                  stochastic rounding, unbiased, min/max scales;
                                                         bits 1/2/4/8/16, codes bit-packed (uint8) or uint16
    TopK(fraction=0.01, values="float32")                global top-k by magnitude, uint16 delta-coded positions
    Identity()                                           float32, one flat array (baseline)
    Codec.encode(tensors, *, rng=None, layout=None) -> dict[str, np.ndarray]
    Codec.decode(encoded, layout) -> dict[str, np.ndarray]    layout: ``Layout`` or the base model's arrays
    Codec.to_config(prefix) -> dict                      "{prefix}-codec", "{prefix}-bits", ...
    codec_from_config(config, prefix) -> Codec | None    inverse; None when "{prefix}-codec" is absent
    Layout.of(tensors)                                   float tensors (ndim >= 1) are coded, end to end in
                                                         sorted name order; the rest (int counters) raw,
                                                         carrying their value; shapes never travel
    payload_bytes(encoded) -> int                        exact bytes of the encoded arrays' data
    wire_bytes(encoded) -> int                           the same as Flower counts it (+ .npy headers, keys)
    encode_with_feedback(codec, update, residual, *, layout, rng) -> (encoded, new_residual)
    update_between(new, base, layout) / apply_update(base, decoded, layout)   delta out / model back in
    pack_bits(codes, bits) / unpack_bits(packed, bits, count)

Flower pieces (``_mods``, ``_strategy``)
    make_uplink_mod(*, arrays_key="arrays", config_key="config") -> Mod
    make_downlink_mod(*, arrays_key="arrays", config_key="config") -> Mod
    DownlinkEncoder(codec, *, seed=0)                    server copy of what clients hold; prepare/commit/forget
    compressed(strategy_cls) -> type                     any FedAvg subclass (FedAvg, FedProx, FedAvgM,
                                                         FedAdam, ...) + keyword args uplink=, downlink=,
                                                         uplink_error_feedback=, seed=
    CompressedFedAvg = compressed(FedAvg)
    COMPRESSION_RECORD = "compression"                   ConfigRecord name on an encoded reply
    to_array_record(arrays) / to_numpy(record)           NumPy dict <-> ArrayRecord (keeps 0-d arrays 0-d)
    to_torch(record) / array_numpy(array)                a state dict / one array, read without np.load's parser
    from_torch(state) / numpy_array(arr)                 the other way, np.save's bytes with cached headers

Model compression
    prune_channels(model, sparsity, *, method="l1"|"l2"|"fpgm"|"taylor", example_input, batches=None,
                   exclude=()) -> nn.Module             smaller copy, same output shape (NNI + ModelSpeedup)
    prune_channels_with_masks(...) -> (nn.Module, masks) the same, plus {layer: bool keep vector over out channels}
    masks_from_scores(model, scores, sparsity) -> masks   given per-channel scores (e.g.
                                                         federated Taylor), same dependency groups
    apply_channel_masks(model, masks, example_input)     the same pruned structure from masks (federated pruning:
                                                         clients rebuild the server's pruned model this way)
    encode_channel_masks(masks) -> str / decode_channel_masks(text) / mask_digest(text)
    (``prune_channels_with_masks(..., kinds=(nn.Linear,))``: neurons of hidden linear layers only)
    weight_masks(model, sparsity, *, method="l1") -> {weight name: bool keep mask}   unstructured, per layer
    apply_weight_masks(model, masks) (in place); keep_zeros(model) (context: zeros stay zero while training)
    sparsity_of(model) -> float; sparse_saving(weights, bits) -> int   bytes a bitmap encoding saves
    removable_blocks(arch) -> [k]; block_scores(model, arch, method, channel_scores=None) -> {k: score}
    choose_blocks(scores, sparsity) -> [k]; drop_blocks(model, ks) -> nn.Module; reduced_arch(arch, ks)
    block_plan(ks) -> str; apply_prune_plan(model, plan, example_input); plan_arch(arch, plan)
    allocate_bits(model, "greedy"|"dp", budget_bytes, x) -> {weight name: bits}   per-layer widths under a budget
    greedy_allocation / dp_allocation(costs, sensitivity, budget)   NetAdapt-style steps / multiple-choice knapsack
    policy_plan(model, arch, weight_bits, stage_bits, policy, x) -> PolicyPlan   a trial's compression_policy:
                                                         the uniform plan's bytes re-spent by sensitivity
    check_plan(model, plan, where) -> {weight: bits}     a stored plan checked against the model
    layer_costs(model) / layer_sensitivity(model, x)   per layer and width: packed bytes / output KL divergence
    low_rank(model, ratio, *, only_if_smaller=True, exclude=()) -> nn.Module
                                                         SVD-factorized 1x1 convs and linears (copy)
    factorize(layer, rank) -> nn.Sequential; low_rank_rank(ratio, out, in) -> int
    quantize_int8(model, calibration, *, backend="x86", batch_size=64) -> Int8Model
                                                         FX static int8; .model, .bytes, .float_bytes, .size_ratio
    evaluate_int8(q, x, y) -> (loss, accuracy); serialized_bytes(model) -> int (torch.save of the state dict)
    distillation_loss(student_logits, teacher_logits, targets, temperature=4.0, weight=0.5) -> Tensor
                                                         (1 - w) CE + w T^2 KL(p_teacher || p_student)
    train_with_teacher(model, teacher, x, y, config, *, seed, temperature=4.0, weight=0.5, kind="soft")
                                                         ``fednas.train.train`` with that loss; kind "feature"
                                                         (FitNets hints, 1x1 regressors) or "attention"
                                                         (attention transfer) distils stage outputs instead
    stage_ends(model, sample) -> (block indices, shapes); hint_loss(...); attention_loss(...)

Integration (federation)
    * ClientApp: ``ClientApp(mods=[make_downlink_mod(), make_uplink_mod()])`` (downlink outermost, so
      the uplink mod sees decoded arrays). Flower 1.42 binds app-wide mods when ``@app.train()`` etc.
      register a function, so they must be passed to the constructor; they then wrap train, evaluate
      and query handlers, and each acts only on messages carrying its keys: without compression
      configured the apps behave exactly as before. ``@app.train(mods=[...])`` also works.
    * Server: build the strategy with ``compressed(FedAvg)(**sampling, uplink=Quantize(bits=4),
      downlink=Quantize(bits=8))``. It writes the train ConfigRecord keys ``uplink-codec``,
      ``uplink-bits``, ``uplink-per-channel``, ``uplink-topk``, ``uplink-topk-values``,
      ``uplink-error-feedback`` (clients need no settings of their own) and, per message,
      ``downlink-codec``..., ``downlink-version`` and ``downlink-base``. A study config could map e.g.
      ``[compression] uplink = "quantize" uplink_bits = 4 downlink = "quantize" downlink_bits = 8``
      onto ``make_codec``.
    * Replies: ``arrays`` holds the encoded update (``q.codes``, ``q.lo``, ``q.step`` / ``topk.values``,
      ``topk.gaps`` / ``dense.values``, plus ``raw.<dtype>``), and a ConfigRecord ``compression`` names
      the codec; ``metrics`` is untouched. The strategy decodes against the arrays the nodes received
      (the downlink reference when downlink is on) and then runs the wrapped strategy's own
      aggregation, so ``aggregate_train`` returns full float models as before. A reply without
      ``compression`` is taken as a full model.
    * Bytes: the encoded arrays and the small ConfigRecords are ordinary records, so
      ``CountingGrid``'s ``count_bytes`` measures what actually travels, each way, with no change.
      Flower's ``count_bytes`` includes each array's ``.npy`` header (~128 B) and key; codecs put the
      whole update in 3-4 arrays for that reason. ``payload_bytes`` gives the data bytes alone.
    * Downlink: round 1 (and any node that missed the previous broadcast or failed) gets the model in
      full precision; later rounds the encoded difference to the previous reference. A node that
      does not hold the delta's base version raises ``DownlinkOutOfSync`` (an error reply); the
      strategy then forgets it and sends it full precision next round. With ``fraction_train < 1``
      nodes skipped in a round pay full precision when they return. Evaluation messages and
      fednas's own ``query.bn_moments`` messages are sent uncompressed (they carry no codec keys).
    * State on clients (``context.state``): ``fednas-uplink-residual`` (ArrayRecord, error feedback),
      ``fednas-downlink-model`` (ArrayRecord) and ``fednas-downlink`` (ConfigRecord ``version``).
    * Seeds: client rounding is seeded from (run id, node id, server round); the server's from
      ``seed`` and the round, so runs stay reproducible.
"""

from __future__ import annotations

from fednas.compress._codecs import (CODECS, Codec, Identity, Layout, Quantize, TensorSpec, TopK, apply_update,
                                     codec_from_config, codecs_for, encode_with_feedback, make_codec, pack_bits, payload_bytes,
                                     unpack_bits, update_between)
from fednas.compress._distill import KD_KINDS, attention_loss, distillation_loss, hint_loss, stage_ends, train_with_teacher
from fednas.compress._granular import (apply_prune_plan, apply_weight_masks, block_plan, block_scores, choose_blocks,
                                      drop_blocks, is_block_plan, keep_zeros, plan_arch, plan_blocks, prunable_layers,
                                      reduced_arch, removable_blocks, sparse_saving, sparsity_of, weight_masks)
from fednas.compress._int8 import CALIBRATION_SAMPLES, INT8_BACKENDS, Int8Model, evaluate_int8, quantize_int8, serialized_bytes
from fednas.compress._lowrank import factorize, low_rank, low_rank_rank, tucker, tucker2
from fednas.compress._mods import (COMPRESSION_RECORD, DownlinkEncoder, DownlinkOutOfSync, DownlinkPlan,
                                   make_downlink_mod, make_uplink_mod, array_numpy, from_torch, numpy_array, to_array_record,
                                   to_numpy, to_torch,
                                   wire_bytes)
from fednas.compress._policy import (POLICIES, POLICY_SAMPLES, POLICY_WIDTHS, PolicyPlan, allocate_bits, check_plan,
                                    dp_allocation, greedy_allocation, layer_costs, layer_sensitivity, policy_plan)
from fednas.compress._precision import PRECISIONS, PackedWeights, packed_bytes, quantize_weights, unpack_weight, weight_plan
from fednas.compress._prune import (PRUNING_METHODS, ChannelMasks, apply_channel_masks, decode_channel_masks,
                                   encode_channel_masks, mask_digest, masks_from_scores, prune_channels,
                                   prune_channels_with_masks)
from fednas.compress._strategy import CompressedFedAvg, CompressionMixin, compressed

__all__ = [
    "CALIBRATION_SAMPLES",
    "CODECS",
    "ChannelMasks",
    "apply_channel_masks",
    "decode_channel_masks",
    "encode_channel_masks",
    "mask_digest",
    "COMPRESSION_RECORD",
    "INT8_BACKENDS",
    "PRUNING_METHODS",
    "PRECISIONS",
    "PackedWeights",
    "packed_bytes",
    "quantize_weights",
    "unpack_weight",
    "weight_plan",
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
    "codecs_for",
    "compressed",
    "distillation_loss",
    "encode_with_feedback",
    "evaluate_int8",
    "factorize",
    "low_rank",
    "low_rank_rank",
    "tucker",
    "tucker2",
    "make_codec",
    "make_downlink_mod",
    "make_uplink_mod",
    "pack_bits",
    "payload_bytes",
    "prune_channels",
    "masks_from_scores",
    "prune_channels_with_masks",
    "quantize_int8",
    "serialized_bytes",
    "to_array_record",
    "to_numpy",
    "to_torch",
    "array_numpy",
    "from_torch",
    "numpy_array",
    "train_with_teacher",
    "unpack_bits",
    "update_between",
    "wire_bytes",
    "apply_prune_plan",
    "apply_weight_masks",
    "block_plan",
    "block_scores",
    "choose_blocks",
    "drop_blocks",
    "is_block_plan",
    "keep_zeros",
    "plan_arch",
    "plan_blocks",
    "prunable_layers",
    "reduced_arch",
    "removable_blocks",
    "sparse_saving",
    "sparsity_of",
    "weight_masks",
    "KD_KINDS",
    "attention_loss",
    "hint_loss",
    "stage_ends",
    "POLICIES",
    "POLICY_SAMPLES",
    "POLICY_WIDTHS",
    "PolicyPlan",
    "check_plan",
    "policy_plan",
    "allocate_bits",
    "dp_allocation",
    "greedy_allocation",
    "layer_costs",
    "layer_sensitivity",
]
