"""The live status line: on a terminal one line per finished trial stays, the running one is rewritten."""

from __future__ import annotations

import io
import time
from pathlib import Path

import optuna

from fednas.fl.server_app import RoundRecord
from fednas.search._progress import Progress, objective_text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        """What a terminal shows: a carriage return goes back to the line start, ESC[2K clears the line."""
        lines, current = [], ""
        for chunk in self.getvalue().replace("\033[2K", "\0").split("\n"):
            current = ""
            for part in chunk.split("\r"):
                current = part.replace("\0", "") if "\0" in part else (part if part else current)
            lines.append(current)
        return [ln for ln in lines if ln]


def _round(n: int) -> RoundRecord:
    return RoundRecord(round=n, accuracy=0.5, loss=1.0, train_loss=1.0, download_bytes=10, upload_bytes=10,
                       replies=3, failures=0, dropped=0, seconds=0.1)


def test_each_finished_trial_keeps_its_line_on_a_terminal() -> None:
    term = _Terminal()
    p = Progress(target=3, done=0, rounds=2, stream=term)
    for number in range(3):
        p.trial_started(number)
        p.round_done(_round(1))
        p.round_done(_round(2))
        p.trial_finished("COMPLETE", objective_text({"accuracy": 0.9, "macs": 35576}), number=number)
    p.trial_started(3)
    p.round_done(_round(1))  # still running: its line is the last one, rewritten in place
    screen = term.screen()
    assert [s.split("]")[0] for s in screen] == ["[trial 1/3 #0", "[trial 2/3 #1", "[trial 3/3 #2", "[trial 3/3 #3"]
    assert all("complete accuracy=0.9000 macs=35,576" in s for s in screen[:3]), screen
    assert "round 1/2" in screen[3]


def test_halving_lines_name_their_trial_count_evaluated_ones_and_continue_the_round_count() -> None:
    out = io.StringIO()
    p = Progress(target=4, done=0, rounds=4, stream=out)
    p.trial_started(5)
    p.trial_finished("PRUNED", "halving: not among the best", number=2, counted=True)
    p.trial_finished("PRUNED", "max_macs", number=3)
    p.trial_started(5, first_round=3)
    p.round_done(_round(1))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[trial 1/4 #2] pruned halving") and lines[1].startswith("[trial 1/4 #3] pruned")
    assert "round 3/4" in lines[2] and lines[2].startswith("[trial 2/4 #5]")


def test_an_asked_trial_gets_optunas_own_heartbeat(tmp_path: Path) -> None:
    from fednas.search._recovery import beating
    from fednas.search._study import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat=1)
    study = optuna.create_study(storage=storage, directions=["maximize"])
    trial = study.ask()
    backend = getattr(storage, "_backend", storage)
    assert backend._get_stale_trial_ids(study._study_id) == []  # never beat: Optuna cannot judge it
    with beating(trial, 0.2, asked=True):
        time.sleep(0.5)
    time.sleep(5)  # grace period 3 x 1 s after the last beat (SQLite timestamps have whole seconds)
    assert trial._trial_id in backend._get_stale_trial_ids(study._study_id)
