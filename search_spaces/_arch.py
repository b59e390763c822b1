"""The architecture protocol and the family registry.

Every architecture family (``mobilenet``, ``resnet``, ...) has one record class that
subclasses ``Architecture``: a frozen, keyword-only dataclass that round-trips through
``to_dict``/``from_dict`` exactly, knows its ``family``, builds its ``nn.Module`` and
describes itself in one line. A family registers itself once (``register_family``) with
its record class, its search space and its presets; everything else in fednas goes
through ``arch_from_dict``, ``build_model``, ``preset`` and ``get_search_space``.

Nothing here imports PyTorch: records, spaces and presets are plain data, and a family's
modules are imported only when ``Architecture.build`` is called, so reading a stored
study never loads torch.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ._base import SearchSpace

__all__ = [
    "FAMILIES",
    "PRESETS",
    "Architecture",
    "Family",
    "Preset",
    "WeightSlice",
    "arch_from_dict",
    "arch_from_json",
    "build_model",
    "check_int",
    "check_size",
    "describe_arch",
    "make_divisible",
    "stages_record_from_dict",
    "stages_record_to_dict",
    "space_from_options",
    "check_skeleton",
    "check_keys",
    "get_family",
    "preset",
    "register_family",
]

# Bounds on sizes read from files: generous for real networks (torchvision's largest
# ResNet/MobileNet stay far below them), small enough that a hostile file cannot make
# ``build`` allocate gigabytes. Checked by the records' ``__post_init__``.
MAX_CHANNELS = 16_384
MAX_CLASSES = 1_000_000
MAX_BLOCKS = 512
NORMS = ("batch", "group")  # a family's ``norm`` label: batch norm, or group norm (for DP-SGD)
MAX_KERNEL = 15
MAX_EXPANSION = 16
# Per-field bounds still multiply: a network is also bounded as a whole, counted on PyTorch's
# "meta" device (shapes only, nothing allocated) before ``build_model`` builds it for real.
# ResNet-152 has 60 M parameters, MobileNetV2 3.5 M; 100 M parameters are 400 MB of float32.
MAX_PARAMS = 100_000_000
MAX_RESOLUTION = 4096  # input side in pixels, where a file or a flag gives one


class Architecture(ABC):
    """A network of one family, as plain data.

    Subclasses are frozen keyword-only dataclasses storing chosen values only (no derived
    ones), so ``from_dict(to_dict())`` is the identity.
    """

    family: ClassVar[str] = ""
    title: ClassVar[str] = "A network"  # how a model card introduces it: "A ResNet for 3x32x32 inputs ..."
    # a family whose records implement ``weight_slices`` can be searched as a weight-sharing supernet
    elastic: ClassVar[bool] = False

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with a ``family`` key."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        """Inverse of ``to_dict``; unknown or missing keys and bad values raise ``ValueError``."""

    @abstractmethod
    def build(self, *, num_classes: int, in_channels: int) -> nn.Module:
        """The network for this record (pure: the record is not modified)."""

    @abstractmethod
    def describe(self) -> str:
        """One line for tables and hovers, e.g. ``stem 16/s2 | 16x1 k3 e2 relu6``."""

    @property
    @abstractmethod
    def num_blocks(self) -> int:
        """Number of blocks (residual, inverted-residual...) of the network."""

    @abstractmethod
    def table(self, num_classes: int) -> tuple[list[str], list[list[Any]], str]:
        """Model-card table: column names, one row per part, and a sentence on the block type."""

    def weight_slices(self, supernet: Architecture, *, num_classes: int, in_channels: int) -> list[WeightSlice]:
        """Where each tensor of this network's ``state_dict`` lies inside ``supernet``'s (weight sharing).

        ``supernet`` is a record of the same family that contains this one (the search space's
        largest member, ``SearchSpace.supernet``); every tensor of ``build(...)``'s state dict is
        a box of one supernet tensor: the first blocks, the first channels, the centre of a
        kernel. ``num_classes`` and ``in_channels`` are those both networks are built for.
        Families with ``elastic = True`` implement it.

        Raises:
            ValueError: this network does not fit inside ``supernet`` (naming the part).
        """
        raise NotImplementedError(f"the {self.family!r} family has no weight-sharing supernet")

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class WeightSlice:
    """One tensor of a subnet as a box of a supernet tensor.

    Attributes:
        key: the tensor's name in the subnet's ``state_dict``.
        source: the supernet tensor's name.
        box: per dimension of ``source``, the ``(start, stop)`` it keeps; the subnet tensor is
            ``source[start0:stop0, start1:stop1, ...]`` (a scalar tensor has ``box == ()``).
    """

    key: str
    source: str
    box: tuple[tuple[int, int], ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(stop - start for start, stop in self.box)

    @property
    def index(self) -> tuple[slice, ...]:
        """The box as an index: ``source_tensor[slice.index]`` is the subnet's tensor."""
        return tuple(slice(start, stop) for start, stop in self.box)


@dataclass(frozen=True)
class Preset:
    """A named architecture and the input it is defined for (its published setting).

    Attributes:
        name: registry key, e.g. ``resnet18``.
        make: returns the architecture record.
        num_classes / in_channels / resolution: the input ``fednas arch info`` assumes
            for it unless told otherwise.
        note: what it reproduces, for documentation.
    """

    name: str
    make: Callable[[], Architecture]
    num_classes: int = 10
    in_channels: int = 1
    resolution: int = 28
    note: str = ""


@dataclass(frozen=True)
class Family:
    """One architecture family: its record class, its search space and its presets."""

    name: str
    arch: type[Architecture]
    space: Callable[[dict[str, Any]], SearchSpace]
    presets: tuple[Preset, ...] = ()


FAMILIES: dict[str, Family] = {}
PRESETS: dict[str, Preset] = {}
DEFAULT_FAMILY = "mobilenet"  # stored trials from before the ``family`` key are MobileNets


def register_family(family: Family) -> Family:
    """Add ``family`` (and its presets) to the registries.

    Raises:
        ValueError: a family or preset name that is already taken.
    """
    if family.name in FAMILIES:
        raise ValueError(f"architecture family {family.name!r} is already registered")
    if family.arch.family != family.name:
        raise ValueError(f"{family.arch.__name__}.family is {family.arch.family!r}, expected {family.name!r}")
    taken = sorted({p.name for p in family.presets} & set(PRESETS))
    if taken:
        raise ValueError(f"preset name(s) {taken} of family {family.name!r} are already registered")
    FAMILIES[family.name] = family
    for p in family.presets:
        PRESETS[p.name] = p
    return family


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown architecture family {name!r}; valid: {', '.join(FAMILIES)}") from None


def arch_from_dict(data: Any) -> Architecture:
    """The architecture of any registered family; dispatches on the ``family`` key.

    A dict without ``family`` is a MobileNet (trials stored before families existed).

    Raises:
        ValueError: not an object, an unknown family, or the family's own validation error.
    """
    if isinstance(data, Architecture):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"architecture: expected a JSON object, got {type(data).__name__}")
    family = data.get("family", DEFAULT_FAMILY)
    if not isinstance(family, str) or family not in FAMILIES:
        raise ValueError(f"family: expected one of {', '.join(FAMILIES)}, got {family!r}")
    return FAMILIES[family].arch.from_dict(data)


def arch_from_json(text: str) -> Architecture:
    return arch_from_dict(json.loads(text))


def describe_arch(data: Any) -> str:
    """One-line description of a stored architecture dict ("" for none; the raw dict if it no longer parses)."""
    if not data:
        return ""
    try:
        return arch_from_dict(data).describe()
    except (TypeError, ValueError):
        return str(data)


def build_model(arch: Architecture, *, num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """Build the network of ``arch`` (any family). Pure: ``arch`` is not modified.

    Raises:
        TypeError: ``arch`` is not an architecture record.
        ValueError: ``num_classes`` or ``in_channels`` below 1 or above the size bounds.
    """
    if not isinstance(arch, Architecture):
        raise TypeError(f"arch: expected an architecture record (MobileNetArch, ResNetArch, ...), got "
                        f"{type(arch).__name__}")
    check_int("num_classes", num_classes, 1, MAX_CLASSES)
    check_int("in_channels", in_channels, 1, MAX_CHANNELS)
    check_size(arch, num_classes=num_classes, in_channels=in_channels)
    return arch.build(num_classes=num_classes, in_channels=in_channels)


def check_size(arch: Architecture, *, num_classes: int, in_channels: int) -> int:
    """The number of parameters of ``arch``'s network, counted without allocating them.

    Raises:
        ValueError: more than ``MAX_PARAMS``.
    """
    import torch

    with torch.device("meta"):
        shapes = arch.build(num_classes=num_classes, in_channels=in_channels)
    params = sum(p.numel() for p in shapes.parameters())
    if params > MAX_PARAMS:
        raise ValueError(f"architecture: {params:,} parameters ({arch.describe()[:80]}); expected at most "
                         f"{MAX_PARAMS:,} (search_spaces.MAX_PARAMS)")
    return params


def preset(name: str) -> Architecture:
    """The named architecture of any family; unknown names raise ``ValueError`` listing valid ones."""
    try:
        return PRESETS[name].make()
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(PRESETS)}") from None


# --------------------------------------------------------------------------- validation helpers


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """``value`` is an int in ``[low, high]`` (a bool is not), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise ValueError(f"{name}: expected {bound}, got {value!r}")


def check_keys(where: str, data: dict[str, Any], cls: type) -> None:
    """No unknown keys and every required field of dataclass ``cls`` present."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid: {sorted(known)}")
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below it nor 10% under value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# --------------------------------------------------------------------------- records with stages


def stages_record_to_dict(record: Any) -> dict[str, Any]:
    """``to_dict`` of a family record whose ``stages`` is a tuple of stage dataclasses."""
    d = asdict(record)
    d["stages"] = [asdict(st) for st in record.stages]
    return {"family": record.family, **d}


def stages_record_from_dict(cls: type, stage_cls: type, data: Any, *, default_family: str | None = None) -> Any:
    """Inverse of ``stages_record_to_dict``: unknown or missing keys and bad values raise ``ValueError``.

    ``default_family`` is the family assumed when the key is absent (None: it is required).
    Errors inside a stage name it: ``stages[2].kernel: expected ...``.
    """
    if not isinstance(data, dict):
        raise ValueError(f"architecture: expected a JSON object, got {type(data).__name__}")
    data = dict(data)
    family = data.pop("family", default_family)
    if family != cls.family:
        raise ValueError(f"family: expected {cls.family!r}, got {family!r}")
    check_keys("architecture", data, cls)
    stages = data.get("stages")
    if not isinstance(stages, list):
        raise ValueError("stages: expected a list of stage objects")
    parsed = []
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            raise ValueError(f"stages[{i}]: expected an object")
        check_keys(f"stages[{i}]", st, stage_cls)
        try:
            parsed.append(stage_cls(**st))
        except ValueError as exc:
            raise ValueError(f"stages[{i}].{exc}") from None
    return cls(**{**data, "stages": tuple(parsed)})


# --------------------------------------------------------------------------- search spaces of stages


def check_skeleton(base_channels: tuple[int, ...], strides: tuple[int, ...], stem_base: int, max_depth: int) -> None:
    """The fixed part of a stage-wise space: one stride (1 or 2) per base width, sizes in bounds."""
    if len(base_channels) != len(strides) or not base_channels:
        raise ValueError(
            f"base_channels and strides: expected lists of the same non-zero length, "
            f"got {len(base_channels)} and {len(strides)}"
        )
    for st in strides:
        if st not in (1, 2):
            raise ValueError(f"strides: expected values 1 or 2, got {st!r}")
    for c in (*base_channels, stem_base):
        check_int("base_channels", c, 1, MAX_CHANNELS)
    check_int("max_depth", max_depth, 1, MAX_BLOCKS)


def space_from_options(cls: type, options: dict[str, Any]) -> Any:
    """A space dataclass from a config table (lists become tuples); unknown keys raise ``ValueError``."""
    known = {f.name for f in fields(cls)} - {"name"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for search space {cls.name!r}; valid: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
