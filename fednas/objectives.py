"""The objective registry: every metric a study can optimize, with its direction, unit and phase.

One entry per objective; the config's valid ``[objectives]`` names, the stored metric
attributes, the tables of ``fednas pareto``, the plots' axes and the model card all read
this registry. ``phase`` says when a value is known:

* ``static``: from the built model before training (a bound on it skips training);
* ``trained``: after the federation;
* ``post``: after extra work on the trained model (post-training int8 quantization).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DIRECTIONS", "OBJECTIVES", "PHASES", "Objective", "get_objective", "objective_names", "register_objective"]

DIRECTIONS = ("maximize", "minimize")
PHASES = ("static", "trained", "post")


@dataclass(frozen=True)
class Objective:
    """One metric of a trial.

    Attributes:
        name: key in ``[objectives]`` and in the trial's stored attributes.
        direction: its natural direction (a study may still choose the other).
        unit: "fraction" (shown in %), "MACs", "B" (bytes), "eps" (a privacy loss), "ms" (a time) or "" (a count).
        phase: "static", "trained" or "post" (see the module docstring).
        title: what it measures, for axes and tables.
        description: one sentence for the README and ``--help``.
    """

    name: str
    direction: str
    unit: str
    phase: str
    title: str
    description: str

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"objective {self.name!r}: direction must be one of {DIRECTIONS}")
        if self.phase not in PHASES:
            raise ValueError(f"objective {self.name!r}: phase must be one of {PHASES}")


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    if objective.name in OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is already registered")
    OBJECTIVES[objective.name] = objective
    return objective


for _o in (
    Objective("accuracy", "maximize", "fraction", "trained", "held-out accuracy",
              "held-out accuracy of the final global model (server-side)"),
    Objective("macs", "minimize", "MACs", "static", "MACs per image",
              "multiply-accumulates of conv and linear layers for one input"),
    Objective("params", "minimize", "", "static", "parameters", "number of parameters"),
    Objective("bytes", "minimize", "B", "static", "model size", "model size in bytes (all state-dict tensors)"),
    Objective("comm_bytes", "minimize", "B", "trained", "communication, both ways",
              "bytes of all message records, both directions, all rounds"),
    Objective("upload_bytes", "minimize", "B", "trained", "upload, client to server",
              "bytes of client -> server message records"),
    Objective("download_bytes", "minimize", "B", "trained", "download, server to client",
              "bytes of server -> client message records"),
    Objective("model_bytes", "minimize", "B", "post", "int8 model size",
              "bytes of the final model after post-training int8 quantization (serialized state dict)"),
    Objective("accuracy_int8", "maximize", "fraction", "post", "held-out accuracy after int8",
              "held-out accuracy of the final model after post-training int8 quantization"),
    Objective("weight_bytes", "minimize", "B", "post", "packed weight size",
              "bytes of the final model with its conv/linear weights packed at the candidate's precision "
              "(weight_bits, s{i}_wbits: float32, float16, or 8/6/4-bit codes with a float16 scale per output "
              "channel), everything else at float32"),
    Objective("accuracy_quantized", "maximize", "fraction", "post", "held-out accuracy at its precision",
              "held-out accuracy of the final model with its weights at the candidate's precision (weight-only "
              "post-training quantization; the float accuracy when every weight is float32)"),
    Objective("latency_ms", "minimize", "ms", "static", "latency per image",
              "median single-image latency on [latency] runtime (ONNX Runtime, 1 thread by default), measured "
              "after warm-up on pinned threads, or predicted from a [latency] table made on the target device"),
    Objective("epsilon", "minimize", "eps", "trained", "privacy loss \u03b5",
              "(epsilon, delta)-DP at privacy.delta from an RDP accountant: user level for [privacy] mode = "
              "'central' (the rounds actually released), record level for 'local' (the largest of any client's "
              "DP-SGD steps)"),
):
    register_objective(_o)


def objective_names(phase: str | None = None) -> tuple[str, ...]:
    """Registered names, in registry order (only those of ``phase`` when given)."""
    return tuple(n for n, o in OBJECTIVES.items() if phase is None or o.phase == phase)


def get_objective(name: str) -> Objective:
    """Raises: ValueError listing the valid names."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}") from None
