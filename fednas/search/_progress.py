"""Live progress of a search: trial n of N, round, latest objectives, elapsed, remaining."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from fednas.fl import RoundRecord

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Writes one status line per event; on a terminal the line is rewritten in place.

    Remaining time is the mean time of the trials completed in this session times the
    trials still to complete, minus the time already spent on the current trial.
    """

    def __init__(
        self, *, target: int, done: int, rounds: int, stream: TextIO | None = None, enabled: bool = True, prefix: str = ""
    ) -> None:
        self.prefix = prefix
        self.target, self.done, self.rounds = target, done, rounds
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.trial_start = self.start
        self.finished_here = 0
        self.trained_seconds = 0.0
        self.trained = 0
        self.trial_number = -1
        self.round = self.round_offset = 0

    def trial_started(self, number: int, first_round: int = 1) -> None:
        """A trial (or, in successive halving, a trial's next rung from ``first_round``) starts."""
        self.trial_number, self.trial_start = number, time.perf_counter()
        self.round, self.round_offset = first_round - 1, first_round - 1

    def round_done(self, record: RoundRecord) -> None:
        self.round = record.round + self.round_offset
        self._emit(
            f"round {self.round}/{self.rounds} acc={record.accuracy:.4f} "
            f"loss={record.loss:.3f} bytes={_mb(record.download_bytes + record.upload_bytes)}"
        )

    def trial_finished(self, state: str, summary: str, *, number: int | None = None,
                       counted: bool | None = None) -> None:
        """A trial ended; its line stays on the terminal. ``number``: the trial, when it is not the one
        running; ``counted``: it counts towards the target (default: COMPLETE ones do)."""
        if number is not None:
            self.trial_number = number
        if state == "COMPLETE":
            self.trained += 1
            self.trained_seconds += time.perf_counter() - self.trial_start
        if state == "COMPLETE" if counted is None else counted:
            self.done += 1
        self.finished_here += 1
        self._emit(f"{state.lower()} {summary}", final=True)

    def note(self, text: str) -> None:
        if self.enabled:
            self._write(text, final=True)

    def _emit(self, detail: str, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self.start
        line = (
            f"[trial {min(self.done + (0 if final else 1), self.target)}/{self.target} #{self.trial_number}] "
            f"{detail} | elapsed {format_duration(elapsed)} remaining {self._remaining(now)}"
        )
        self._write(line, final)

    def _remaining(self, now: float) -> str:
        if not self.trained:
            return "?"
        per_trial = self.trained_seconds / self.trained
        left = max(self.target - self.done, 0) * per_trial
        if self.round < self.rounds and self.trial_number >= 0:
            left -= min(now - self.trial_start, per_trial)
        return "~" + format_duration(max(left, 0))

    def _write(self, line: str, final: bool) -> None:
        line = self.prefix + line
        if self.tty:
            self.stream.write("\r\033[2K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def objective_text(values: dict[str, float]) -> str:
    """``accuracy=0.9120 macs=35,576``: a finished trial's objectives, as every status line shows them."""
    from fednas._format import number

    return " ".join(f"{k}={number(float(v), fixed=True) if isinstance(v, (int, float)) and not isinstance(v, bool) else v}"
                    for k, v in values.items())


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}MB"
