"""The fednas ServerApp: a Flower strategy's rounds with server-side evaluation.

``run_server`` is the whole server side of one federated run and reads top to bottom:
build the initial model and the strategy, then per round let the strategy configure the
train messages, send them through a ``CountingGrid`` (so the bytes of every message are
measured, whatever runtime carries them), check the replies, let the strategy aggregate
(and, with federated pruning, prune), pool batch-norm statistics from the clients when
due, evaluate the global model on the held-out split and record the round. The loop is
``Strategy.start``'s own (``configure_train`` -> ``send_and_receive`` -> ``aggregate_train``;
the client-side evaluation round is off), written out so that each step is visible and
its outcome kept. The ServerApp's ``main`` calls it and leaves the outcome in
``context.state``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from fednas._seeds import derive_seed
from fednas.compress import from_torch, to_torch
from fednas.fl._grid import CountingGrid, Exchange, NodeSubset
from fednas.fl._pruning import KEEP_ZEROS_KEY, MASKS_KEY
from fednas.fl._spec import FederatedData, RunSpec, federated_data
from fednas.fl._strategies import make_strategy
from fednas.models import build_run_model, example_input
from fednas.train import apply_batchnorm_moments, evaluate, resolve_device
from search_spaces import arch_from_dict

__all__ = ["OUTCOME_FILE", "OUTCOME_WEIGHTS", "OUT_KEY", "FederationError", "RoundRecord", "RunHooks", "ServerOutcome", "app",
           "run_hooks", "run_server", "save_outcome"]

app = ServerApp()



class FederationError(RuntimeError):
    """A round could not complete (e.g. no client replied successfully)."""


@dataclass
class RoundRecord:
    """What one round did and what it achieved."""

    round: int
    accuracy: float
    loss: float
    train_loss: float
    download_bytes: int
    upload_bytes: int
    replies: int
    failures: int
    dropped: int
    seconds: float
    attackers: int = 0  # replies from malicious clients (``federation.attack``)
    epsilon: float | None = None  # central DP: the privacy spent after this round (None: privacy off)
    released: bool = True  # central DP: False when the round's aggregate was withheld (a reply missing)
    secagg_clipped: int = 0  # SecAgg+: weighted values the clients clipped to the quantization range


@dataclass
class ServerOutcome:
    """Result of ``run_server``: final weights, per-round records, bytes each way."""

    arrays: ArrayRecord
    rounds: list[RoundRecord] = field(default_factory=list)
    download_bytes: int = 0
    upload_bytes: int = 0
    seconds: float = 0.0
    # message type ("train", "query.bn_moments", ...) -> {"download_bytes": .., "upload_bytes": ..}
    bytes_by_type: dict[str, dict[str, int]] = field(default_factory=dict)
    # federated pruning: the encoded channel masks applied after ``pruned_round`` ("" / 0: not pruned);
    # ``arrays`` then fit ``build_run_model`` + ``fednas.compress.apply_channel_masks`` of these masks
    prune_masks: str = ""
    pruned_round: int = 0
    # central DP (``[privacy]``): what the run spent (``fednas.fl._privacy.PrivacyReport.to_dict``); {} when off
    privacy: dict[str, Any] = field(default_factory=dict)
    # secure aggregation (``privacy.secure_aggregation``): the protocol and its measured cost; {} when off
    secure: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.rounds[-1].accuracy if self.rounds else float("nan")

    @property
    def comm_bytes(self) -> int:
        return self.download_bytes + self.upload_bytes


@dataclass
class RunHooks:
    """Set by in-process callers (``run_federation``, ``run_supernet``) to follow, seed and collect a run.

    Attributes:
        on_round: called with each round's record (a ``RoundRecord``; with a supernet run,
            ``(SupernetRound, Supernet)``).
        outcomes: the run's outcome is appended here.
        initial: a state dict the global model starts from instead of its initialization
            (fine-tuning inherited weights).
        start: a supernet run's checkpoint ``(Supernet, rounds done)`` to resume from.
        nodes: the node ids that take part (default: all the grid's).
    """

    on_round: Callable[..., None] | None = None
    outcomes: list[Any] = field(default_factory=list)
    initial: dict[str, torch.Tensor] | None = None
    start: Any = None
    nodes: list[int] | None = None  # only these nodes take part (a device tier's)


# ``flwr run`` leaves it unset: the outcome then only goes to the log and context.state.
run_hooks: contextvars.ContextVar[RunHooks | None] = contextvars.ContextVar("fednas_run_hooks", default=None)


OUT_KEY = "out-dir"  # run config: where the ServerApp of a deployed run saves the final model (its machine)
OUTCOME_FILE, OUTCOME_WEIGHTS = "outcome.json", "model.safetensors"


def save_outcome(out_dir: str, spec: RunSpec, outcome: ServerOutcome) -> Path:
    """Write the run's final weights and record into ``out_dir`` (created; files replaced atomically).

    ``outcome.json`` holds the spec, the per-round records, bytes, pruning masks and the privacy
    and secure-aggregation reports; ``load_outcome`` reads both back.
    """
    import json
    import os
    from dataclasses import asdict

    from safetensors.torch import save_file

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in to_torch(outcome.arrays).items()}
    doc = {"spec": json.loads(spec.to_run_config()["fednas-run"]), "rounds": [asdict(r) for r in outcome.rounds],
           "download_bytes": outcome.download_bytes, "upload_bytes": outcome.upload_bytes,
           "seconds": outcome.seconds, "bytes_by_type": outcome.bytes_by_type, "prune_masks": outcome.prune_masks,
           "pruned_round": outcome.pruned_round, "privacy": outcome.privacy, "secure": outcome.secure}
    for name, write in ((OUTCOME_WEIGHTS, lambda p: save_file(state, p)),
                        (OUTCOME_FILE, lambda p: Path(p).write_text(json.dumps(doc, indent=2) + "\n"))):
        tmp = folder / f".{name}.tmp"
        write(str(tmp))
        os.replace(tmp, folder / name)
    return folder


@app.main()
def main(grid: Grid, context: Context) -> None:
    spec = RunSpec.from_run_config(context.run_config)
    hooks = run_hooks.get()
    if hooks and hooks.nodes is not None:
        grid = NodeSubset(grid, hooks.nodes)
    if spec.supernet:
        _supernet_main(grid, context, spec, hooks)
        return
    outcome = run_server(grid, spec, on_round=hooks.on_round if hooks else None,
                         initial=hooks.initial if hooks else None)
    if hooks:
        hooks.outcomes.append(outcome)
    if out_dir := str(context.run_config.get(OUT_KEY, "") or ""):
        save_outcome(out_dir, spec, outcome)
    context.state["fednas-arrays"] = outcome.arrays
    context.state["fednas-metrics"] = MetricRecord(
        {"accuracy": outcome.accuracy, "download_bytes": outcome.download_bytes, "upload_bytes": outcome.upload_bytes}
    )
    logging.getLogger(__name__).info("final accuracy %.4f, %d bytes (%s, compression %s)", outcome.accuracy,
                                     outcome.comm_bytes, arch_from_dict(spec.arch).family, spec.compression.describe())


def _supernet_main(grid: Grid, context: Context, spec: RunSpec, hooks: RunHooks | None) -> None:
    """A supernet run (``RunSpec.supernet`` set): phase 1 of a supernet study, or ``flwr run`` of one."""
    from fednas.compress import to_array_record
    from fednas.fl._supernet import run_supernet_server

    outcome = run_supernet_server(grid, spec, start=hooks.start if hooks else None,
                                  on_round=hooks.on_round if hooks else None)
    if hooks:
        hooks.outcomes.append(outcome)
    last = outcome.rounds[-1]
    context.state["fednas-arrays"] = to_array_record(outcome.supernet.state)
    context.state["fednas-metrics"] = MetricRecord(
        {"accuracy_largest": last.accuracy_largest, "accuracy_smallest": last.accuracy_smallest,
         "download_bytes": outcome.download_bytes, "upload_bytes": outcome.upload_bytes,
         "client_epochs": outcome.client_epochs})
    logging.getLogger(__name__).info(
        "supernet trained for %d rounds (%d client-epochs, %d bytes): largest subnet %.4f, smallest %.4f",
        len(outcome.rounds), outcome.client_epochs, outcome.download_bytes + outcome.upload_bytes,
        last.accuracy_largest, last.accuracy_smallest)


def initial_model(spec: RunSpec, data: FederatedData) -> torch.nn.Module:
    """The global model at round 0, initialized from the run seed (factorized if low-rank is on)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(spec.seed, "init"))
        return build_run_model(
            spec.arch, spec.compression, num_classes=data.train.num_classes, in_channels=data.train.in_channels
        )


def run_server(grid: Grid, spec: RunSpec, *, on_round: Callable[[RoundRecord], None] | None = None,
               initial: dict[str, torch.Tensor] | None = None) -> ServerOutcome:
    """Run the federated training of ``spec`` over ``grid`` and return its outcome.

    ``initial``: a state dict of the candidate's model to start from (default: its seeded
    initialization).

    Raises:
        FederationError: when a training round gets too few successful replies.
    """
    fed = spec.federation
    data = federated_data(spec.data, fed.num_clients, spec.seed)
    arch_json = arch_from_dict(spec.arch).to_json()
    counting = CountingGrid(grid)
    pruner = _ServerPruning(spec, data, counting, arch_json, initial_model(spec, data))
    if initial is not None:
        pruner.model.load_state_dict(initial)
    strategy = make_strategy(fed, spec.compression, seed=spec.seed, prune_fn=pruner, privacy=spec.privacy)
    private = spec.privacy.central
    local_epsilon = 0.0  # local DP: the largest epsilon a client reported so far
    secure = _secure_rounds(spec, data)
    arrays = from_torch(pruner.model.state_dict())
    outcome = ServerOutcome(arrays=arrays)
    train_config = ConfigRecord({"arch": arch_json, "lr": fed.lr})  # strategies add their keys each round
    start, seen = time.perf_counter(), 0
    with _flower_quiet():
        for rnd in range(1, fed.rounds + 1):
            messages = list(strategy.configure_train(rnd, arrays, train_config, counting))
            if secure is not None:  # the weighted mean by SecAgg+ or CKKS: the strategy never sees an update
                aggregated = secure(rnd, messages, arrays, counting)
                if aggregated is None:
                    raise FederationError(f"round {rnd}: {secure.failure}")
                train_ex = _check_round(counting, rnd, fed.min_train_nodes)
            else:
                replies = counting.send_and_receive(messages)
                train_ex = _check_round(counting, rnd, fed.min_train_nodes)
                aggregated, _ = strategy.aggregate_train(rnd, replies)  # prunes at prune_round (see _ServerPruning)
            if aggregated is not None:
                arrays = aggregated
            model = pruner.model
            model.load_state_dict(to_torch(arrays))
            if private:
                from fednas.fl._privacy import repair_batchnorm

                repair_batchnorm(model)
            if fed.bn_recalibration == "every_round" or (fed.bn_recalibration == "final" and rnd == fed.rounds):
                _pool_batchnorm(counting, model, arrays, arch_json, pruner.masks)  # evaluation only: not fed back
            loss, acc = evaluate(model, data.test.x, data.test.y, device=resolve_device(fed.device))
            record = _round_record(rnd, acc, loss, train_ex, counting.traffic.exchanges[seen:])
            if private:
                record.epsilon = strategy.report(spec.privacy, fed.num_clients).epsilon
                record.released = aggregated is not None
            elif spec.privacy.local:
                from fednas.fl._dpsgd import EPSILON_KEY

                local_epsilon = max(local_epsilon, train_ex.maxima.get(EPSILON_KEY, 0.0))
                record.epsilon = local_epsilon
            seen = len(counting.traffic.exchanges)
            outcome.rounds.append(record)
            outcome.arrays = from_torch(model.state_dict())
            if on_round:
                on_round(record)
    outcome.prune_masks, outcome.pruned_round = pruner.masks, pruner.pruned_round
    if secure is not None:
        outcome.secure = secure.report(counting.traffic.exchanges)
    if private:
        outcome.privacy = strategy.report(spec.privacy, fed.num_clients).to_dict()
    elif spec.privacy.local:
        outcome.privacy = _local_report(spec, local_epsilon)
    outcome.download_bytes, outcome.upload_bytes = counting.traffic.download_bytes, counting.traffic.upload_bytes
    for ex in counting.traffic.exchanges:
        kind = outcome.bytes_by_type.setdefault(ex.message_type, {"download_bytes": 0, "upload_bytes": 0})
        kind["download_bytes"] += ex.download_bytes
        kind["upload_bytes"] += ex.upload_bytes
    outcome.seconds = time.perf_counter() - start
    return outcome


@contextlib.contextmanager
def _flower_quiet() -> Iterator[None]:
    """Flower's INFO lines (sampling, aggregation) are noise inside a trial."""
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        flwr_log.setLevel(level)


class _ServerPruning:
    """The server's prune step (``PruningMixin``'s ``prune_fn``) and the model structure it leaves.

    By ``prune_granularity``: ``channel`` and ``neuron`` remove output channels (of convs and
    hidden linears, or of hidden linears only) through NNI, ranked on the server (l1/l2/fpgm,
    data-free) or by first-order Taylor scores that the clients compute on their own data and
    the server sums; ``block`` removes whole residual blocks (``fednas.compress.block_scores``;
    the clients' channel Taylor scores summed per block for taylor); ``weight`` zeroes the
    smallest weights of each layer, keeps the shape, re-applies its masks after every later
    aggregation (``reapply``) and asks the clients to keep their zeros (``train_config``).
    """

    def __init__(self, spec: RunSpec, data: FederatedData, grid: CountingGrid, arch_json: str,
                 model: torch.nn.Module) -> None:
        self.spec, self.data, self.grid, self.arch_json = spec, data, grid, arch_json
        self.model = model  # the global model's structure: replaced by the pruned one
        self.masks, self.pruned_round = "", 0
        self.weight_masks: dict[str, torch.Tensor] = {}

    def __call__(self, server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord, str]:
        from fednas import compress as C

        comp, train = self.spec.compression, self.data.train
        self.model.load_state_dict(to_torch(arrays))
        example = example_input(train.in_channels, train.resolution)
        granularity, method = comp.prune_granularity, comp.prune_method
        scores = _pool_taylor_scores(self.grid, arrays, self.arch_json) if method == "taylor" else None
        self.pruned_round = server_round
        if granularity == "weight":
            self.weight_masks = C.weight_masks(self.model, comp.prune_sparsity, method=method)
            C.apply_weight_masks(self.model, self.weight_masks)
            return from_torch(self.model.state_dict()), ""
        if granularity == "block":
            arch = arch_from_dict(self.spec.arch)
            chosen = C.choose_blocks(C.block_scores(self.model, arch, method, scores), comp.prune_sparsity)
            if not chosen:
                logging.getLogger(__name__).info("block pruning removes nothing: %g of %d removable blocks rounds to 0",
                            comp.prune_sparsity, len(C.removable_blocks(arch)))
            self.masks = C.block_plan(chosen)
            self.model = C.drop_blocks(self.model, chosen)
            return from_torch(self.model.state_dict()), self.masks
        kinds = (torch.nn.Linear,) if granularity == "neuron" else (torch.nn.Conv2d, torch.nn.Linear)
        if scores is not None:
            masks = C.masks_from_scores(self.model, scores, comp.prune_sparsity, example_input=example, kinds=kinds)
            pruned = C.apply_channel_masks(self.model, masks, example)
        else:
            pruned, masks = C.prune_channels_with_masks(self.model, comp.prune_sparsity, method=method,
                                                        example_input=example, kinds=kinds)
        self.model, self.masks = pruned, C.encode_channel_masks(masks)
        return from_torch(pruned.state_dict()), self.masks

    def reapply(self, arrays: ArrayRecord) -> ArrayRecord:
        """An aggregate after the pruning round with the pruned weights zero again (unstructured pruning)."""
        if not self.weight_masks:
            return arrays
        from fednas.compress import apply_weight_masks

        state = to_torch(arrays)
        self.model.load_state_dict(state)
        apply_weight_masks(self.model, self.weight_masks)
        return from_torch(self.model.state_dict())

    def train_config(self) -> dict[str, Any]:
        """Keys later train messages carry: unstructured pruning asks the clients to keep their zeros."""
        return {KEEP_ZEROS_KEY: True} if self.weight_masks else {}


def _local_report(spec: RunSpec, epsilon: float) -> dict[str, Any]:
    """What a local-DP (DP-SGD) run spent: the largest epsilon any client reported, and how."""
    comp = spec.compression
    z = comp.dp_noise_multiplier if comp.dp_noise_multiplier is not None else spec.privacy.noise_multiplier
    return {"mode": "local", "epsilon": epsilon, "delta": spec.privacy.delta, "noise_multiplier": z,
            "clipping_norm": spec.privacy.clipping_norm, "batch_size": spec.federation.batch_size,
            "accountant": "Opacus RDP accountant of each client's Poisson-sampled DP-SGD steps over all its rounds; "
                          "the largest epsilon of any client"}


def _secure_rounds(spec: RunSpec, data: FederatedData) -> Any:
    """The run's secure aggregation (``privacy.secure_aggregation``), or None when it is off."""
    if not spec.privacy.secure:
        return None
    fed = spec.federation
    most = max(len(s) for s in data.shards) * fed.local_epochs  # the most examples a client can report
    if fed.local_steps:
        most = min(most, fed.local_steps * fed.batch_size)
    if spec.privacy.secure_aggregation == "ckks":
        from fednas.fl._ckks import CkksRound

        return CkksRound(most)
    from fednas.fl._secure import SecAggPlusRound

    return SecAggPlusRound(spec.privacy, most)


def _round_record(rnd: int, acc: float, loss: float, train_ex: Exchange, new: list[Exchange]) -> RoundRecord:
    """What round ``rnd`` did: its training exchange's replies, and the bytes of every exchange it made."""
    return RoundRecord(
        round=rnd,
        accuracy=acc,
        loss=loss,
        train_loss=train_ex.metrics.get("train_loss", float("nan")),
        download_bytes=sum(e.download_bytes for e in new),
        upload_bytes=sum(e.upload_bytes for e in new),
        replies=train_ex.replies - train_ex.errors,
        failures=train_ex.errors,
        dropped=train_ex.sent - train_ex.replies,
        seconds=sum(e.seconds for e in new),
        attackers=train_ex.attackers,
        secagg_clipped=train_ex.clipped,
    )


def _check_round(counting: CountingGrid, server_round: int, min_replies: int, *, first_round: int = 1) -> Exchange:
    """The round's training exchange; fewer successful replies than the minimum fail the run.

    ``first_round``: the round the grid's traffic started at (a resumed run's).
    """
    train = [e for e in counting.traffic.exchanges if e.message_type == "train"]
    if len(train) < server_round - first_round + 1:
        raise FederationError(f"round {server_round}: no training messages were sent")
    ex = train[-1]
    ok = ex.replies - ex.errors
    if ok == 0 or ok < min_replies:
        why = f"; first error: {ex.error_reasons[0]}" if ex.error_reasons else ""
        raise FederationError(
            f"round {server_round}: {ok} of {ex.sent} clients returned a model update "
            f"({ex.errors} failed, {ex.sent - ex.replies} dropped), fewer than min_train_nodes={min_replies}"
            + (" (no client returned a model update)" if ok == 0 else "") + why
        )
    return ex


def _pool_taylor_scores(grid: CountingGrid, arrays: ArrayRecord, arch_json: str) -> dict[str, torch.Tensor]:
    """Sum of the clients' first-order Taylor channel scores of the global model."""
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"arch": arch_json})})
    messages = [Message(content, node, "query.taylor_scores") for node in grid.get_node_ids()]
    replies = [r for r in grid.send_and_receive(messages) if not r.has_error()]
    if not replies:
        reasons = grid.last_errors[:1]
        raise FederationError("Taylor pruning: no client replied" + (f": {reasons[0]}" if reasons else ""))
    keys = list(replies[0].content["scores"].keys())
    return {k: sum(torch.from_numpy(r.content["scores"][k].numpy()) for r in replies) for k in keys}


def _pool_batchnorm(grid: CountingGrid, model: torch.nn.Module, arrays: ArrayRecord, arch_json: str,
                    prune_masks: str = "", *, nodes: list[int] | None = None) -> None:
    """Replace running statistics by the exact pooled statistics of the clients' data (``nodes``: default all)."""
    config = ConfigRecord({"arch": arch_json, MASKS_KEY: prune_masks} if prune_masks else {"arch": arch_json})
    content = RecordDict({"arrays": arrays, "config": config})
    targets = list(grid.get_node_ids()) if nodes is None else nodes
    messages = [Message(content, node, "query.bn_moments") for node in targets]
    replies = [r for r in grid.send_and_receive(messages) if not r.has_error()]
    if not replies:
        reasons = grid.last_errors[:1]
        raise FederationError("batch-norm pooling: no client replied" + (f": {reasons[0]}" if reasons else ""))
    keys = list(replies[0].content["moments"].keys())
    pooled = [sum(torch.from_numpy(r.content["moments"][k].numpy()) for r in replies) for k in keys]
    apply_batchnorm_moments(model, pooled)

