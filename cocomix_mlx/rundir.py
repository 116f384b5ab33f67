"""A training run's directory, for the language-model and the SAE trainers alike: who may write it
(``--resume`` / ``--force``), its metrics log (cut back to the checkpoint on resume), its atomic
saves and their recovery after a crash between the two renames of a save."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

from . import files
from .errors import ConfigError, TrainingDiverged

METRICS = "metrics.jsonl"
STATE = "trainer_state.json"


def _row_step(line: str):
    """The step of a metrics row, or None for a line a crash tore (or any non-row)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row.get("step", 0) if isinstance(row, dict) else None


def largest_magnitude(tree) -> float:
    """The largest magnitude among the arrays of ``tree`` (NaN if any entry is NaN): checked
    before a save, so a checkpoint never holds weights an update broke."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    return mx.max(mx.stack([mx.abs(a).max() for _, a in tree_flatten(tree)])).item()


class RunDirectory:
    """``path`` as a run directory; ``writer`` is False on the processes that only read it."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path, self.writer = Path(path), writer

    @staticmethod
    def check(path: str | Path, resume: bool, force: bool) -> None:
        """Refuse what would lose or mix runs: ``--resume`` with ``--force``, ``--resume`` of
        nothing, and a new run over a non-empty directory without ``--force`` (after putting
        back a checkpoint an interrupted save left aside, and removing the temporary
        directories of saves that never finished)."""
        path = Path(path)
        if resume and force:
            raise ConfigError("--resume and --force exclude each other")
        files.recover(path)  # a crash between a save's two renames left the run as .NAME.old
        files.remove_stale(path)
        if resume and not path.exists():
            raise ConfigError(f"nothing to resume in {path}; drop --resume to start a new run")
        if not resume and path.exists() and any(path.iterdir()) and not force:
            raise ConfigError(f"{path} already exists; pass --resume to continue it or --force "
                              "to replace it")

    def has_checkpoint(self) -> bool:
        return (files.recover(self.path) / STATE).exists()

    def clear(self) -> None:
        """Remove what a new run replaces (called once the new run is built)."""
        if self.writer and self.path.exists():
            shutil.rmtree(self.path)

    def state(self) -> dict[str, Any]:
        """The saved ``trainer_state.json`` (after recovering an interrupted save)."""
        return files.read_json(files.recover(self.path) / STATE)

    def save(self, write: Callable[[Path], None], state: dict[str, Any]) -> None:
        """Build the checkpoint with ``write(tmp)`` plus the state and the metrics so far beside
        the directory, and swap it in."""
        if not self.writer:
            return
        metrics = self.path / METRICS

        def build(tmp: Path) -> None:
            write(tmp)
            files.write_json(tmp / STATE, state)
            if metrics.exists():
                (tmp / METRICS).write_bytes(metrics.read_bytes())

        files.atomic_directory(self.path, build)

    def log(self, row: dict[str, Any]) -> None:
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
            with open(self.path / METRICS, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def truncate(self, step: int) -> None:
        """Drop the metrics rows after ``step`` (logged after the checkpoint a run resumes)."""
        path = self.path / METRICS
        if not self.writer or not path.exists():
            return
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        keep = [line for line, at in zip(lines, map(_row_step, lines))
                if at is not None and at <= step]
        path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    def check_finite(self, value: float, step: int, hint: str, what: str = "loss") -> None:
        """Stop a diverged run before it saves, keeping its last checkpoint."""
        if not math.isfinite(value):
            kept = (f"the last good checkpoint in {self.path} is kept" if self.has_checkpoint()
                    else "no checkpoint was saved yet")
            raise TrainingDiverged(f"{what} became {value} at step {step}; {kept}; {hint}")
