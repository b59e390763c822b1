"""Update codecs: a model update (name -> array) to a few compact arrays and back.

Plain NumPy, no Flower. An update is encoded as a whole: the floating tensors of the
update (those with at least one element and one dimension) are laid end to end in sorted
name order and coded as one flat vector, so a message carries a handful of arrays instead
of several per layer (Flower serializes every array with its own ``.npy`` header, about
128 bytes, which would otherwise dominate a 2-bit update of a small model). Everything
else (integer buffers such as batch norm's ``num_batches_tracked``, 0-d scalars) travels
raw, grouped by dtype, and carries its *value*, not a difference.

Shapes are not sent: both ends know them. The decoder is given the ``Layout`` of the
model it applies the update to (the server: the global arrays it sent; a client: the
model it holds), built with ``Layout.of`` exactly as the encoder built it.

Codecs (``CODECS``):

* ``quantize`` (``bits`` in 1, 2, 4, 8, 16; ``per_channel``): stochastic rounding onto
  ``2**bits`` evenly spaced levels between each group's min and max, so that the decoded
  value is an unbiased estimate of the input and off by less than one step. A group is a
  whole tensor, or with ``per_channel`` one slice along the first dimension of each tensor
  of rank >= 2. Min/max (asymmetric) rather than symmetric max-abs: its step
  ``(max - min) / (2**bits - 1)`` is never larger than the symmetric
  ``2 max|x| / (2**bits - 1)`` and much smaller for the one-sided groups updates contain
  (batch-norm scales and running variances, biases), and the rounding variance is
  ``O(step**2)``; it costs one more float32 per group. Codes are bit-packed, 8 // bits per
  byte (uint8), or uint16 for 16 bits; per group float32 ``lo`` and ``step``.
* ``topk`` (``fraction``): the ``round(fraction * n)`` largest magnitudes of the flat
  vector (global, not per layer), values as float32 (or float16), positions as
  delta-coded gaps in uint16 (uint32 when a gap exceeds 65535). Biased on its own; pair it
  with error feedback (``encode_with_feedback``).
* ``identity``: the flat vector as float32; a baseline that only removes per-array
  overhead.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Union

import numpy as np

__all__ = [
    "CODECS",
    "codecs_for",
    "Codec",
    "Identity",
    "Layout",
    "Quantize",
    "TensorSpec",
    "TopK",
    "apply_update",
    "codec_from_config",
    "encode_with_feedback",
    "make_codec",
    "pack_bits",
    "payload_bytes",
    "unpack_bits",
    "update_between",
]

ConfigScalar = Union[bool, int, float, str]
Tensors = Mapping[str, np.ndarray]


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor of an update."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def coded(self) -> bool:
        """Floating tensors with at least one dimension and element are coded; the rest raw."""
        return np.issubdtype(self.dtype, np.floating) and len(self.shape) >= 1 and self.size > 0


class Layout:
    """How an update's tensors map onto the flat coded vector and the raw arrays.

    Built from the arrays (or specs) of a model; encoder and decoder must build it from
    tensors with the same names, shapes and dtypes.
    """

    def __init__(self, specs: list[TensorSpec]) -> None:
        specs = sorted(specs, key=lambda s: s.name)
        self.specs: tuple[TensorSpec, ...] = tuple(specs)
        self.coded: tuple[TensorSpec, ...] = tuple(s for s in specs if s.coded)
        self.raw: tuple[TensorSpec, ...] = tuple(s for s in specs if not s.coded)
        self.sizes = np.array([s.size for s in self.coded], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @classmethod
    def of(cls, tensors: Mapping[str, np.ndarray | TensorSpec] | Layout) -> Layout:
        """The layout of ``tensors`` (arrays or ``TensorSpec``s); a ``Layout`` is returned as is."""
        if isinstance(tensors, Layout):
            return tensors
        specs = []
        for name, t in tensors.items():
            if isinstance(t, TensorSpec):
                specs.append(t)
            else:
                a = np.asarray(t)
                specs.append(TensorSpec(name, tuple(a.shape), a.dtype))
        return cls(specs)

    @property
    def total(self) -> int:
        """Number of coded elements."""
        return int(self.offsets[-1])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def group_sizes(self, per_channel: bool) -> np.ndarray:
        """Element counts of the quantization groups, in flat order."""
        if not per_channel:
            return self.sizes.copy()
        parts = []
        for s in self.coded:
            if len(s.shape) >= 2 and s.shape[0] > 0:
                parts.append(np.full(s.shape[0], s.size // s.shape[0], dtype=np.int64))
            else:
                parts.append(np.array([s.size], dtype=np.int64))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def check(self, tensors: Tensors) -> None:
        """Raise ``ValueError`` unless ``tensors`` has exactly this layout's names and shapes."""
        missing = sorted(set(self.names) - set(tensors))
        extra = sorted(set(tensors) - set(self.names))
        if missing or extra:
            raise ValueError(f"update does not match the layout: missing {missing[:5]}, unexpected {extra[:5]}")
        for s in self.specs:
            shape = tuple(np.shape(tensors[s.name]))
            # raw entries only need the same size: Flower may turn a 0-d counter into shape (1,)
            if shape != s.shape and (s.coded or math.prod(shape) != s.size):
                raise ValueError(f"update {s.name!r}: shape {shape}; expected {s.shape}")

    def flatten(self, tensors: Tensors) -> np.ndarray:
        """The coded tensors end to end, as float64."""
        if not self.coded:
            return np.zeros(0, dtype=np.float64)
        return np.concatenate([np.asarray(tensors[s.name], dtype=np.float64).ravel() for s in self.coded])

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat vector back into the coded tensors, each in its own dtype."""
        return {
            s.name: flat[a:b].reshape(s.shape).astype(s.dtype)
            for s, a, b in zip(self.coded, self.offsets[:-1], self.offsets[1:])
        }

    def pack_raw(self, tensors: Tensors) -> dict[str, np.ndarray]:
        """Raw tensors as one flat array per dtype (``raw.<dtype>``), cast to the layout's dtypes."""
        groups: dict[str, list[np.ndarray]] = {}
        for s in self.raw:
            groups.setdefault(s.dtype.name, []).append(np.asarray(tensors[s.name]).astype(s.dtype).ravel())
        return {f"raw.{k}": np.concatenate(v) for k, v in groups.items()}

    def unpack_raw(self, encoded: Tensors) -> dict[str, np.ndarray]:
        cursor: dict[str, int] = {}
        out = {}
        for s in self.raw:
            key = f"raw.{s.dtype.name}"
            if key not in encoded:
                raise ValueError(f"encoded update lacks {key!r} for {s.name!r}")
            start = cursor.get(key, 0)
            out[s.name] = np.asarray(encoded[key])[start : start + s.size].reshape(s.shape).astype(s.dtype)
            cursor[key] = start + s.size
        return out


# --------------------------------------------------------------------------- bit packing


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned codes ``< 2**bits`` into bytes (bits 1 to 8) or uint16 (16), little end first.

    Widths that do not divide 8 (3, 5, 6, 7) are one continuous little-endian bit stream:
    ``ceil(n * bits / 8)`` bytes.
    """
    codes = np.asarray(codes).ravel()
    if bits == 16:
        return codes.astype("<u2")
    if bits not in range(1, 9):
        raise ValueError(f"bits: expected 1 to 8 or 16, got {bits!r}")
    if 8 % bits:
        planes = (codes.astype(np.uint8)[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
        return np.packbits(planes.ravel(), bitorder="little")
    codes = codes.astype(np.uint8)
    if bits == 8:
        return codes
    per_byte = 8 // bits
    pad = (-len(codes)) % per_byte
    grid = np.concatenate([codes, np.zeros(pad, dtype=np.uint8)]).reshape(-1, per_byte)
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(grid << shifts, axis=1).astype(np.uint8)


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_bits``: the first ``count`` codes, as int64."""
    packed = np.asarray(packed).ravel()
    if bits in (8, 16):
        out = packed.astype(np.int64)
    elif bits in (3, 5, 6, 7):
        stream = np.unpackbits(packed.astype(np.uint8), bitorder="little")
        usable = len(stream) // bits * bits
        out = (stream[:usable].reshape(-1, bits).astype(np.int64) << np.arange(bits)).sum(1)
    elif bits in (1, 2, 4):
        per_byte = 8 // bits
        shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
        mask = np.uint8((1 << bits) - 1)
        out = ((packed.astype(np.uint8)[:, None] >> shifts) & mask).ravel().astype(np.int64)
    else:
        raise ValueError(f"bits: expected 1 to 8 or 16, got {bits!r}")
    if len(out) < count:
        raise ValueError(f"packed codes hold {len(out)} values; expected at least {count}")
    return out[:count]


def payload_bytes(encoded: Tensors) -> int:
    """Exact bytes of the encoded arrays' data (what a codec puts on the wire, no headers)."""
    return int(sum(np.asarray(a).nbytes for a in encoded.values()))


# --------------------------------------------------------------------------- codecs


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


class Codec(ABC):
    """Encodes a whole update to compact arrays and back (subclasses: frozen dataclasses)."""

    name: ClassVar[str]
    #: whether a client should carry the coding error to the next update by default
    default_error_feedback: ClassVar[bool] = False

    def encode(
        self, tensors: Tensors, *, rng: np.random.Generator | int | None = None, layout: Layout | None = None
    ) -> dict[str, np.ndarray]:
        """Encode ``tensors`` (an update: name -> array) to named compact arrays.

        Args:
            tensors: the update; floating tensors are coded, the rest sent raw.
            rng: randomness for stochastic codecs (a Generator or a seed).
            layout: the layout both ends agree on (default: ``Layout.of(tensors)``); raw
                tensors are cast to its dtypes.
        """
        layout = Layout.of(tensors) if layout is None else layout
        layout.check(tensors)
        out = self._encode_flat(layout.flatten(tensors), layout, _rng(rng))
        out.update(layout.pack_raw(tensors))
        return out

    def decode(self, encoded: Tensors, layout: Layout | Mapping[str, np.ndarray | TensorSpec]) -> dict[str, np.ndarray]:
        """Decode arrays made by ``encode`` for a model with ``layout`` (in the layout's dtypes)."""
        layout = Layout.of(layout)
        flat = self._decode_flat({k: np.asarray(v) for k, v in encoded.items()}, layout)
        if flat.shape != (layout.total,):
            raise ValueError(f"decoded {flat.shape[0]} values; the layout has {layout.total}")
        return {**layout.unflatten(flat), **layout.unpack_raw(encoded)}

    @abstractmethod
    def _encode_flat(self, flat: np.ndarray, layout: Layout, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Arrays carrying the float64 vector ``flat``."""

    @abstractmethod
    def _decode_flat(self, encoded: dict[str, np.ndarray], layout: Layout) -> np.ndarray:
        """The float64 vector carried by ``encoded``."""

    @classmethod
    def label_options(cls, settings: Any, side: str) -> dict[str, Any]:
        """This codec's options from a trial's compression labels (``uplink_bits``, ...) for ``side``."""
        return {}

    def to_config(self, prefix: str) -> dict[str, ConfigScalar]:
        """Flower ConfigRecord entries naming this codec: ``{prefix}-codec`` plus its options."""
        out: dict[str, ConfigScalar] = {f"{prefix}-codec": self.name}
        for f in fields(self):  # type: ignore[arg-type]
            out[f"{prefix}-{_OPTION_KEYS[f.name]}"] = getattr(self, f.name)
        return out


@dataclass(frozen=True)
class Identity(Codec):
    """The coded tensors as one float32 vector (no loss beyond float32)."""

    name: ClassVar[str] = "identity"

    def _encode_flat(self, flat: np.ndarray, layout: Layout, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"dense.values": flat.astype(np.float32)}

    def _decode_flat(self, encoded: dict[str, np.ndarray], layout: Layout) -> np.ndarray:
        return encoded["dense.values"].astype(np.float64)


@dataclass(frozen=True)
class Quantize(Codec):
    """Stochastic ``bits``-bit quantization, min/max scaled per tensor or per output channel.

    Attributes:
        bits: 1, 2, 4, 8 or 16 bits per value.
        per_channel: one (lo, step) per slice along the first dimension of tensors of rank >= 2.
    """

    name: ClassVar[str] = "quantize"

    @classmethod
    def label_options(cls, settings: Any, side: str) -> dict[str, Any]:
        return {"bits": getattr(settings, f"{side}_bits"), "per_channel": getattr(settings, f"{side}_per_channel")}
    bits: int = 8
    per_channel: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in (1, 2, 4, 8, 16):
            raise ValueError(f"bits: expected one of 1, 2, 4, 8, 16, got {self.bits!r}")
        if not isinstance(self.per_channel, bool):
            raise ValueError(f"per_channel: expected true or false, got {self.per_channel!r}")

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    def scales(self, flat: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
        """Per group float32 ``lo <= min`` and ``step`` with ``lo + levels * step >= max``."""
        sizes = layout.group_sizes(self.per_channel)
        if len(sizes) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        lo64, hi64 = np.minimum.reduceat(flat, starts), np.maximum.reduceat(flat, starts)
        lo = lo64.astype(np.float32)
        lo = np.where(lo.astype(np.float64) > lo64, np.nextafter(lo, np.float32(-np.inf)), lo)
        step = ((hi64 - lo) / self.levels).astype(np.float32)
        short = lo.astype(np.float64) + self.levels * step.astype(np.float64) < hi64
        step = np.where(short, np.nextafter(step, np.float32(np.inf)), step)
        constant = hi64 == lo64  # exact: no rounding needed, decode gives lo back
        return np.where(constant, lo64.astype(np.float32), lo), np.where(constant, np.float32(0), step)

    def _encode_flat(self, flat: np.ndarray, layout: Layout, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if not np.all(np.isfinite(flat)):
            raise ValueError("cannot quantize an update with NaN or infinite values")
        lo, step = self.scales(flat, layout)
        sizes = layout.group_sizes(self.per_channel)
        lo_e, step_e = np.repeat(lo.astype(np.float64), sizes), np.repeat(step.astype(np.float64), sizes)
        q = np.divide(flat - lo_e, step_e, out=np.zeros_like(flat), where=step_e > 0)
        codes = np.clip(np.floor(q + rng.random(flat.shape[0])), 0, self.levels)
        return {"q.codes": pack_bits(codes, self.bits), "q.lo": lo, "q.step": step}

    def _decode_flat(self, encoded: dict[str, np.ndarray], layout: Layout) -> np.ndarray:
        sizes = layout.group_sizes(self.per_channel)
        lo, step = encoded["q.lo"].astype(np.float64), encoded["q.step"].astype(np.float64)
        if lo.shape != sizes.shape or step.shape != sizes.shape:
            raise ValueError(f"expected {len(sizes)} quantization groups, got {lo.shape[0]}")
        codes = unpack_bits(encoded["q.codes"], self.bits, layout.total)
        return np.repeat(lo, sizes) + codes * np.repeat(step, sizes)


@dataclass(frozen=True)
class TopK(Codec):
    """The largest ``fraction`` of the update's entries by magnitude (global top-k).

    Attributes:
        fraction: share of the coded entries sent, in (0, 1]; at least one is sent.
        values: dtype of the sent values, "float32" or "float16".
    """

    name: ClassVar[str] = "topk"
    default_error_feedback: ClassVar[bool] = True
    fraction: float = 0.01
    values: str = "float32"

    @classmethod
    def label_options(cls, settings: Any, side: str) -> dict[str, Any]:
        return {"fraction": getattr(settings, f"{side}_topk")}

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0 < self.fraction <= 1:
            raise ValueError(f"fraction: expected a number in (0, 1], got {self.fraction!r}")
        if self.values not in ("float32", "float16"):
            raise ValueError(f"values: expected 'float32' or 'float16', got {self.values!r}")

    def count(self, n: int) -> int:
        return min(n, max(1, round(self.fraction * n))) if n else 0

    def _encode_flat(self, flat: np.ndarray, layout: Layout, rng: np.random.Generator) -> dict[str, np.ndarray]:
        k = self.count(len(flat))
        idx = np.sort(np.argpartition(-np.abs(flat), k - 1)[:k]) if k else np.zeros(0, np.int64)
        gaps = np.diff(idx, prepend=0)
        gap_dtype = np.uint16 if len(gaps) == 0 or gaps.max() < 1 << 16 else np.uint32
        return {"topk.values": flat[idx].astype(self.values), "topk.gaps": gaps.astype(gap_dtype)}

    def _decode_flat(self, encoded: dict[str, np.ndarray], layout: Layout) -> np.ndarray:
        idx = np.cumsum(encoded["topk.gaps"].astype(np.int64))
        values = encoded["topk.values"].astype(np.float64)
        if len(idx) != len(values) or (len(idx) and (idx[-1] >= layout.total)):
            raise ValueError("top-k indices do not fit the layout")
        out = np.zeros(layout.total, dtype=np.float64)
        out[idx] = values
        return out


CODECS: dict[str, type[Codec]] = {"identity": Identity, "quantize": Quantize, "topk": TopK}
"""Codec name -> class; options are the dataclass fields."""

# dataclass field -> config key suffix (``{prefix}-{suffix}``)
_OPTION_KEYS = {"bits": "bits", "per_channel": "per-channel", "fraction": "topk", "values": "topk-values"}


def codecs_for(settings: Any) -> dict[str, Codec]:
    """The ``uplink``/``downlink`` codecs a trial's compression labels turn on (``*_codec`` != "none").

    ``settings`` is a ``search_spaces.CompressionSettings``; each codec class reads its own
    labels (``Codec.label_options``), so a new codec is added here and in the label's choices.

    Raises:
        ValueError: a codec name that is not registered.
    """
    out: dict[str, Codec] = {}
    for side in ("uplink", "downlink"):
        name = getattr(settings, f"{side}_codec")
        if name == "none":
            continue
        if name not in CODECS:
            raise ValueError(f"{side}_codec: unknown codec {name!r}; valid: none, {', '.join(CODECS)}")
        cls = CODECS[name]
        out[side] = cls(**cls.label_options(settings, side))
    return out


def make_codec(name: str, **options: Any) -> Codec:
    """The codec registered as ``name`` with ``options``.

    Raises:
        ValueError: unknown name (listing the valid ones), unknown option or bad value.
    """
    try:
        cls = CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown codec {name!r}; valid: {', '.join(CODECS)}") from None
    valid = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(f"codec {name!r}: unknown option(s) {unknown}; valid: {sorted(valid)}")
    return cls(**options)


def codec_from_config(config: Mapping[str, Any], prefix: str) -> Codec | None:
    """The codec described by ``{prefix}-codec`` and its options in ``config``; None if absent or empty."""
    name = config.get(f"{prefix}-codec")
    if name in (None, "", "none"):
        return None
    cls = CODECS.get(str(name))
    if cls is None:
        raise ValueError(f"{prefix}-codec: unknown codec {name!r}; valid: {', '.join(CODECS)}")
    options = {}
    for f in fields(cls):  # type: ignore[arg-type]
        key = f"{prefix}-{_OPTION_KEYS[f.name]}"
        if key in config:
            value = config[key]
            options[f.name] = bool(value) if f.name == "per_channel" else value
    return cls(**options)


# --------------------------------------------------------------------------- helpers


def encode_with_feedback(
    codec: Codec,
    update: Tensors,
    residual: Tensors | None,
    *,
    layout: Layout | None = None,
    rng: np.random.Generator | int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Error feedback: encode ``update + residual``; return the encoding and the new residual.

    The new residual is what was meant but not sent, ``(update + residual) - decode(...)``,
    over the coded tensors only (float32). ``residual=None`` starts from zero.
    """
    layout = Layout.of(update) if layout is None else layout
    corrected = dict(update)
    if residual is not None:
        for s in layout.coded:
            corrected[s.name] = np.add(update[s.name], residual[s.name], dtype=np.float64)
    encoded = codec.encode(corrected, rng=rng, layout=layout)
    decoded = codec.decode(encoded, layout)
    new_residual = {
        s.name: (np.asarray(corrected[s.name], dtype=np.float64) - decoded[s.name]).astype(np.float32)
        for s in layout.coded
    }
    return encoded, new_residual


def update_between(new: Tensors, base: Tensors, layout: Layout | None = None) -> dict[str, np.ndarray]:
    """``new - base`` for coded tensors (float64), ``new``'s value for raw ones."""
    layout = Layout.of(base) if layout is None else layout
    out = {}
    for s in layout.specs:
        value = np.asarray(new[s.name])
        out[s.name] = value.astype(np.float64) - np.asarray(base[s.name], dtype=np.float64) if s.coded else value
    return out


def apply_update(base: Tensors, decoded: Tensors, layout: Layout | None = None) -> dict[str, np.ndarray]:
    """``base + decoded`` for coded tensors (in base's dtype), the decoded value for raw ones.

    Deterministic, so the server and a client that apply the same decoded update to the
    same base get bit-identical models. Keys keep ``base``'s order.
    """
    layout = Layout.of(base) if layout is None else layout
    coded = {s.name for s in layout.coded}
    out = {}
    for name, b in base.items():
        b = np.asarray(b)
        d = np.asarray(decoded[name])
        out[name] = (b + d.astype(b.dtype)) if name in coded else d.reshape(b.shape)
    return out
