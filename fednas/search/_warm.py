"""Warm start: a new study begins with the best candidates of an earlier one (``study.warm_start``).

The practical form of meta-learning a search (and with compression labels, a compression
policy): what an earlier study on related data or another device found good is tried first.
Its COMPLETE trials are ranked by non-domination on *its* objectives (ties: the earlier
trial first), and the labels of the best ``warm_start_trials`` of them are enqueued in the new
study (``optuna.Study.enqueue_trial``), restricted to the labels the new study searches; a
trial whose value of one of them lies outside the new domain is skipped, as are duplicates.
Enqueued candidates are trained and scored by the new study's own data, federation and
objectives: nothing of the earlier study's figures is copied, so the new front stays honest,
and every sampler then learns from them as from its own trials. Done once, when the study is
created; the study records what it took (user attribute ``warm_start``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from fednas.config import ConfigError, StudyConfig
from fednas.search._samplers import _oriented, pareto_ranks
from fednas.study import StorageError, open_storage, study_names
from search_spaces import Fixed, domain_from_config, get_search_space, with_compression

__all__ = ["warm_start"]


def _earlier(config: StudyConfig) -> optuna.Study:
    url, name = config.study.warm_start, config.study.warm_start_study
    try:
        storage = open_storage(url, create=False)
    except StorageError as exc:
        raise ConfigError(f"study.warm_start: {exc}") from None
    names = study_names(storage)
    if not name:
        if len(names) != 1:
            raise ConfigError(f"study.warm_start: {url} holds {len(names)} studies {names}; name one with "
                              "study.warm_start_study")
        name = names[0]
    elif name not in names:
        raise ConfigError(f"study.warm_start_study: {name!r} is not in {url}; it holds {names}")
    return optuna.load_study(study_name=name, storage=storage)


def warm_start(study: optuna.Study, config: StudyConfig) -> list[int]:
    """Enqueue the best earlier candidates in ``study``; returns the earlier trial numbers taken.

    Raises:
        ConfigError: the earlier storage or study cannot be opened (naming the key).
    """
    old = _earlier(config)
    done = [t for t in old.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if isinstance(t.user_attrs.get("labels"), dict) and t.values]
    if not done:
        study.set_user_attr("warm_start", {"storage": config.study.warm_start, "study": old.study_name,
                                           "trials": []})
        return []
    ranks = pareto_ranks(_oriented(old, done))
    order = sorted(range(len(done)), key=lambda i: (int(ranks[i]), done[i].number))
    space = with_compression(get_search_space(config.space.name, config.space.options))
    domains = space.resolve({k: domain_from_config(v, k) for k, v in config.space.labels.items()})
    searched = {k: d for k, d in domains.items() if not isinstance(d, Fixed)}
    taken: list[int] = []
    seen: set[str] = set()
    for i in order:
        labels: dict[str, Any] = done[i].user_attrs["labels"]
        params = {k: labels[k] for k in searched if k in labels}
        if len(params) < len(searched) or not all(searched[k].contains(v) for k, v in params.items()):
            continue
        key = json.dumps(params, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        study.enqueue_trial(params, user_attrs={"warm_start": f"{old.study_name}#{done[i].number}"})
        taken.append(done[i].number)
        if len(taken) >= config.study.warm_start_trials:
            break
    study.set_user_attr("warm_start", {"storage": config.study.warm_start, "study": old.study_name,
                                       "trials": taken, "front": int(np.sum(ranks == 0))})
    return taken
