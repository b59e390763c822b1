"""fednas: neural architecture search for lightweight models trained by federated learning.

The Python API mirrors the CLI::

    import fednas
    config = fednas.load_config("studies/quickstart.toml", ["federation.rounds=3"])
    result = fednas.run_search(config)                  # fednas search
    front = fednas.load_front(result.storage, "quickstart")   # fednas pareto
    model = fednas.build_model(fednas.load_architecture("mobilenet_v3_small"), num_classes=10)
    cost = fednas.measure(model, in_channels=3, resolution=224)  # fednas arch info

Names are imported lazily so that ``fednas --help`` does not load torch, Flower and Optuna.
"""

from __future__ import annotations

from fednas._lazy import lazy_attributes

__version__ = "0.1.0"

_API = {
    "ConfigError": "fednas.config",
    "StudyConfig": "fednas.config",
    "load_config": "fednas.config",
    "parse_config": "fednas.config",
    "Cost": "fednas.cost",
    "measure": "fednas.cost",
    "run_search": "fednas.search",
    "SearchResult": "fednas.search",
    "TrialSummary": "fednas.search",
    "load_front": "fednas.study",
    "read_study": "fednas.study",
    "TrialRecord": "fednas.study",
    "Candidate": "fednas.pipeline",
    "run_candidate": "fednas.pipeline",
    "run_federation": "fednas.fl",
    "RunSpec": "fednas.fl",
    "load_dataset": "fednas.data",
    "partition": "fednas.data",
    "build_model": "search_spaces",
    "load_architecture": "search_spaces",
    "arch_from_dict": "search_spaces",
    "get_search_space": "search_spaces",
    "MobileNetArch": "search_spaces",
    "ResNetArch": "search_spaces",
    "load_model": "fednas.models",
}

__all__ = sorted(_API)


__getattr__, __dir__ = lazy_attributes(__name__, _API)
