"""The attack registry: what a malicious client of ``federation.attack`` does, and its strength.

Attacks exist to test robust aggregation: a seeded ``federation.attack_fraction`` of the
clients (the same ones every round of a run) are malicious, and each one, after training
on its shard as usual, sends instead:

* ``label_flip``: the model trained with ``strength`` of its labels flipped (``y -> C - 1 - y``);
* ``sign_flip``:  ``w_global - strength * (w_local - w_global)``, its update reversed;
* ``gaussian``:   ``w_global + N(0, strength**2)`` per weight, noise in place of its update;
* ``scaling``:    ``w_global + strength * (w_local - w_global)``, its update boosted.

Only floating-point weights are attacked (batch-norm counters stay honest). The attack acts
on what the client would send, so update codecs (``uplink_codec``) encode the attacked
weights, and in a supernet round a node attacks its own subnet's slice. The tensor code
is in ``fednas.fl._attacks``; this module is plain data.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ATTACKS", "Attack"]


@dataclass(frozen=True)
class Attack:
    name: str
    default_strength: float
    strength_means: str


ATTACKS: dict[str, Attack] = {a.name: a for a in (
    Attack("none", 0.0, "-"),
    Attack("label_flip", 1.0, "fraction of the client's labels flipped, in (0, 1]"),
    Attack("sign_flip", 1.0, "factor on the reversed update"),
    Attack("gaussian", 1.0, "standard deviation of the noise sent as the update"),
    Attack("scaling", 10.0, "factor on the update"),
)}
