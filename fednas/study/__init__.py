"""A stored study, read-only: storage opening, the one trial record, the one Pareto front, picks.

``search`` writes studies; ``pareto``, ``export``, ``plot`` and ``dashboard`` read them
through this package alone. Nothing here imports torch or Flower, so reading a study for
a table or a plot stays cheap.
"""

from __future__ import annotations

from fednas.study._front import (crowding_distance, hypervolume, knee_index, nondominated_ranks, normalized_losses,
                                 pareto_mask, select_by_rank, statuses, to_losses)
from fednas.study._picks import PICKS, artifact_path, pick_trial, weights_path
from fednas.study._read import (CONFIG_ATTR, FINETUNE_ATTR, SUPERNET_ATTR, StudyView, config_from_stored, load_front,
                                metric_direction, open_study, read_study, tier_fronts)
from fednas.study._record import TrialRecord, record_of
from fednas.study._storage import (StorageError, artifact_dir_for, artifact_store, open_storage,
                                   probe_writable, sqlite_path, storage_file, study_names)

__all__ = [
    "crowding_distance",
    "nondominated_ranks",
    "select_by_rank",
    "FINETUNE_ATTR",
    "SUPERNET_ATTR",
    "tier_fronts",
    "CONFIG_ATTR",
    "PICKS",
    "StorageError",
    "StudyView",
    "TrialRecord",
    "artifact_dir_for",
    "artifact_store",
    "config_from_stored",
    "hypervolume",
    "knee_index",
    "load_front",
    "metric_direction",
    "normalized_losses",
    "open_storage",
    "open_study",
    "pareto_mask",
    "pick_trial",
    "read_study",
    "record_of",
    "probe_writable",
    "sqlite_path",
    "storage_file",
    "statuses",
    "study_names",
    "to_losses",
    "weights_path",
    "artifact_path",
]
