"""Where every pipeline artifact lives: the one storage layout (DESIGN.md, "Data contracts").

CLI defaults, stage code and flows take their paths from :data:`LAYOUT` (or a :class:`Layout` rooted
elsewhere); ``dvc.yaml`` names the same paths, and ``tests/test_layout.py`` checks that they agree.
Each artifact also names the command that produces it, so a stage missing an input can say what to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ARTIFACTS", "LAYOUT", "Layout", "MissingInput", "produced_by"]

#: artifact name -> (path below the storage root, the command that produces it)
ARTIFACTS: dict[str, tuple[str, str]] = {
    "sample": ("sample", "`nucleate sample-data` (or `dvc repro sample_data`)"),
    "manifest": ("manifest.parquet", "`nucleate ingest FOLDER` (or `dvc repro ingest`)"),
    "teacher_probs": ("teacher_probs.parquet", "`nucleate teacher` (or `dvc repro teacher`)"),
    "teacher_cache": ("teacher_cache", "`nucleate teacher`"),
    "student_probs": ("student_probs.parquet", "`nucleate train` (or `dvc repro train`); until a student "
                      "exists, set select.space: teacher"),
    "student_features": ("student_features.parquet", "`nucleate train` (or `dvc repro train`), or set "
                         "select.probs_as_features: true"),
    "selection": ("selection.parquet", "`nucleate select` (or `dvc repro select`)"),
    "inflight": ("inflight.parquet", "`nucleate ls push`"),
    "annotations": ("annotations", "`nucleate ls pull` once annotators have finished tasks of a pushed round"),
    "points": ("points.parquet", "`nucleate points` (or `dvc repro points`) after `nucleate ls pull`"),
    "consensus": ("consensus.parquet", "`nucleate points` (or `dvc repro points`)"),
    "points_report": ("points_report.json", "`nucleate points` (or `dvc repro points`)"),
    "pseudomasks": ("pseudomasks", "`nucleate pseudomasks` (or `dvc repro pseudomasks`)"),
    "pseudomask_qc": ("pseudomask_qc.json", "`nucleate pseudomasks` (or `dvc repro pseudomasks`)"),
    "model": ("model", "`nucleate train` (or `dvc repro train`)"),
    "checkpoints": ("checkpoints", "`nucleate train` (one per epoch; `nucleate train --resume` continues from it)"),
    "predictions": ("predictions", "`nucleate predict` (or `dvc repro predict`)"),
    "metrics": ("metrics.json", "`nucleate evaluate` (or `dvc repro evaluate`)"),
    "plots": ("plots", "`nucleate evaluate` (or `dvc repro evaluate`)"),
    "open_round": ("open_round.json", "`nucleate round open` (the open-round flow) once it has selected"),
    "reports": ("reports", "`nucleate round close` (the close-round flow)"),
}


class MissingInput(FileNotFoundError):
    """A stage input does not exist yet; the message names it and the command that produces it."""


@dataclass(frozen=True)
class Layout:
    """Artifact paths below ``root`` (default ``storage``, relative to the project directory)."""

    root: Path = Path("storage")

    def path(self, name: str) -> Path:
        """Path of artifact ``name`` (a key of :data:`ARTIFACTS`)."""
        try:
            return self.root / ARTIFACTS[name][0]
        except KeyError:
            raise KeyError(f"unknown artifact {name!r}; known: {', '.join(ARTIFACTS)}") from None

    def round_dir(self, round: int) -> Path:  # noqa: A002 - the pipeline's word
        """Folder of one round's raw Label Studio export: ``annotations/round-NNN``."""
        return self.path("annotations") / f"round-{int(round):03d}"

    def require(self, name: str, path: str | Path | None = None) -> Path:
        """``path`` (default: artifact ``name``'s) if it exists, else :class:`MissingInput` in one line."""
        target = Path(path) if path is not None else self.path(name)
        if not target.exists():
            raise MissingInput(f"{target}: {name.replace('_', ' ')} not found; produce it with {produced_by(name)}")
        return target

    def __getattr__(self, name: str) -> Path:
        if name in ARTIFACTS:
            return self.path(name)
        raise AttributeError(name)


def produced_by(name: str) -> str:
    """How to produce artifact ``name`` (the command, in backticks, and any alternative)."""
    return ARTIFACTS[name][1]


#: the default layout (``storage/`` in the project directory)
LAYOUT = Layout()
