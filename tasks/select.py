"""Stage ``select``: pick this round's images to send to annotators and write the ``selection`` table.

Inputs (paths from :data:`nucleate.io.layout.LAYOUT` / ``dvc.yaml``, hyper-parameters from ``params.yaml``
``select`` and ``seed``):

* **manifest** — the candidates are its ``pool`` images (``gold`` and ``test`` images are never selected).
* **probabilities** — the ``teacher_probs`` table (``select.space: teacher``) or the ``student_probs`` table
  (``select.space: student``; same schema). Pool images without a row cannot be selected (counted in the
  log); rows for images not in the manifest are ignored.
* **points** (optional file) — every image with at least one point is *labeled*.
* **points report** (optional file, ``storage/points_report.json`` of the ``points`` stage) — its
  ``finished_image_ids`` (annotated with no point, or skipped in Label Studio) are labeled too, and its
  ``last_round`` counts for the round number.
* **in-flight** (optional file) — the ``inflight`` table (``image_id``, ``round``, ``task_id``) that the Label
  Studio push writes: images pushed to annotators and not finished yet.
* **features** — the ``student_features`` table, needed by ``coreset`` and ``badge`` only. Without it they
  stop with one line naming the file and how to produce it, unless ``select.probs_as_features: true``, in
  which case they use the probability rows as features (logged).

Whole-slide tiles (manifest rows with a ``slide_id``): ``select.per_slide_cap`` keeps at most that many tiles of
one slide in the round's picks, for every strategy (:mod:`nucleate.selection.cap`: once a slide is full its other
tiles are left out and picking goes on among the rest); when that leaves too few candidates the batch is smaller
(one log line). Plain images are never capped.

Labeled and in-flight images are never selected again and are the initial centres of the k-center
strategies (PCoreSet covers the probability space *around* what is or soon will be labeled). Image ids are
content hashes, so a duplicate file of a labeled image is the same image and is excluded too. A missing
points or in-flight file means "none yet" and is logged, so the first round needs neither.

Output: the ``selection`` table (``round``, ``rank`` 0 first, ``image_id``, ``strategy``, ``min_distance``:
the distance to the nearest centre when picked, for ``pcoreset`` / ``coreset``; null otherwise and for a
cold-start first pick). Schema metadata: budget, per_slide_cap, space, seed, the probabilities' teacher /
model id, the features source, candidate/labeled/in-flight counts. ``round`` defaults to 1 + the largest round found in
the points and in-flight tables (1 when neither has one).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import typer

from nucleate.config import SelectParams
from nucleate.device import resolve_device
from nucleate.io.layout import LAYOUT
from nucleate.io.tables import features_array, probs_array, read_table, table_metadata, write_table
from nucleate.selection import STRATEGIES, select_scored
from tasks._stage import Report, StageError, load_params_or_exit, logger, run_alone, stage_errors

__all__ = ["SelectReport", "run", "command", "main"]


@dataclass
class SelectReport(Report):
    """What one ``select`` run did: the picks in rank order and the counts behind them."""

    out: Path
    round: int
    strategy: str
    image_ids: list[str] = field(default_factory=list)
    min_distance: list[float | None] = field(default_factory=list)
    candidates: int = 0
    labeled: int = 0
    inflight: int = 0

    def lines(self) -> list[str]:
        """A summary line, then one ``rank  image_id  [min_distance]`` line per pick."""
        head = (f"select: round {self.round}: {self.strategy} picked {len(self.image_ids)} of {self.candidates} "
                f"candidate(s) ({self.labeled} labeled, {self.inflight} in flight) -> {self.out}")
        picks = [f"{rank:4d}  {image_id}" + ("" if dist is None else f"  {dist:.4f}")
                 for rank, (image_id, dist) in enumerate(zip(self.image_ids, self.min_distance, strict=True))]
        return [head, *picks]


def _listed(kind: str, path: Path | None, log: logging.Logger, absent: str) -> tuple[set[str], int]:
    """(image ids listed in the ``kind`` table at ``path``, its largest round or 0); a missing file = none yet
    (logged with ``absent``, a %-format taking the path)."""
    if path is None:
        return set(), 0
    if not Path(path).is_file():
        log.info(absent, path)
        return set(), 0
    table = read_table(kind, path)
    last = int(pc.max(table.column("round")).as_py()) if table.num_rows else 0
    return set(table.column("image_id").to_pylist()), last


def _finished(report: Path | None, log: logging.Logger) -> tuple[set[str], int]:
    """(image ids whose task is finished, last round) from the ``points`` stage's report; a missing file = none.

    Finished = annotated (also with no point: an image without nuclei) or skipped in Label Studio; such an
    image has no point rows but must not be selected again.
    """
    if report is None or not Path(report).is_file():
        return set(), 0
    try:
        doc = json.loads(Path(report).read_text())
        ids = doc.get("finished_image_ids", [])
        last = int(doc.get("last_round") or 0)
    except (ValueError, TypeError, AttributeError) as exc:
        raise StageError(f"{report}: not a points report ({exc}); rerun `nucleate points` (or `dvc repro points`)") \
            from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise StageError(f"{report}: finished_image_ids must be a list of image ids; rerun `nucleate points`")
    return set(ids), last


def _features(path: Path, wanted: list[str]) -> np.ndarray:
    """Feature rows (float32) for the image ids ``wanted``, in that order, from a ``student_features`` table."""
    table = read_table("student_features", path)
    index = {image_id: row for row, image_id in enumerate(table.column("image_id").to_pylist())}
    missing = [i for i in wanted if i not in index]
    if missing:
        raise StageError(f"{path}: no features for {len(missing)} of the {len(wanted)} image(s) selection needs "
                         f"(e.g. {missing[0]}); recompute the student features for every image with probabilities, "
                         "or set select.probs_as_features: true")
    return features_array(table)[[index[i] for i in wanted]]


def _slide_groups(manifest: pa.Table, image_ids: list[str]) -> np.ndarray | None:
    """Slide code per image of ``image_ids`` ((n,) int64, -1 = plain image); None when the manifest has no tile
    columns."""
    if "slide_id" not in manifest.column_names:
        return None
    slide_of = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("slide_id").to_pylist(),
                        strict=True))
    codes: dict[str, int] = {}
    return np.asarray([-1 if (s := slide_of[i]) is None else codes.setdefault(s, len(codes)) for i in image_ids],
                      dtype=np.int64)


def run(
    select: SelectParams,
    seed: int,
    *,
    manifest: str | Path,
    probs: str | Path,
    points: str | Path | None = None,
    inflight: str | Path | None = None,
    points_report: str | Path | None = None,
    features: str | Path | None = None,
    out: str | Path,
    round: int | None = None,  # noqa: A002 - the table's column name
    log: logging.Logger | None = None,
) -> SelectReport:
    """Select up to ``select.budget`` pool images with ``select.strategy``; write the selection table to ``out``.

    ``probs`` is the probability table of ``select.space`` (``teacher_probs`` or ``student_probs``);
    ``points`` / ``inflight`` / ``points_report`` None = not used, a missing file = none yet; images the report
    lists as finished (annotated without points, or skipped) count as labeled. ``features`` (default
    ``LAYOUT.student_features``) is read only by strategies that need features. ``round`` overrides the
    round number. When fewer than ``budget`` images are left, all of them are selected (logged); when none is
    left, :class:`StageError`. ``select.per_slide_cap`` caps the tiles of one slide (may shorten the batch).
    A missing manifest, probabilities or features table raises
    :class:`nucleate.io.layout.MissingInput` naming the command that produces it.
    """
    log = log or logger("select")
    strategy, budget, space = select.strategy, select.budget, select.space
    if strategy not in STRATEGIES:
        raise StageError(f"select.strategy {strategy!r} is not a known strategy; known: {', '.join(STRATEGIES)}")
    if round is not None and round < 0:
        raise ValueError(f"round must be >= 0, got {round}")
    device = resolve_device(select.device, setting="select.device")
    probs_kind = f"{space}_probs"
    manifest = LAYOUT.require("manifest", manifest)
    probs = LAYOUT.require(probs_kind, probs)
    use_features = STRATEGIES[strategy].needs_features and not select.probs_as_features
    if use_features:
        features = LAYOUT.require("student_features", LAYOUT.student_features if features is None else features)
    out = Path(out)

    man = read_table("manifest", manifest)
    man_ids = man.column("image_id").to_pylist()
    in_manifest = set(man_ids)
    pool = [i for i, s in zip(man_ids, man.column("split").to_pylist(), strict=True) if s == "pool"]
    table = read_table(probs_kind, probs)
    row_of = {image_id: r for r, image_id in enumerate(table.column("image_id").to_pylist())}
    stale = sum(1 for i in row_of if i not in in_manifest)
    if stale:
        log.info("select: %d row(s) of %s are for images not in %s; ignored", stale, probs, manifest)

    labeled, points_round = _listed("points", None if points is None else Path(points), log,
                                    "select: no points table at %s yet: no image is labeled")
    finished, report_round = _finished(None if points_report is None else Path(points_report), log)
    labeled |= finished
    points_round = max(points_round, report_round)
    flying, inflight_round = _listed("inflight", None if inflight is None else Path(inflight), log,
                                     "select: no in-flight table at %s: no image is waiting for annotators")
    unknown = len((labeled | flying) - in_manifest)
    if unknown:
        log.info("select: %d labeled or in-flight image id(s) are not in %s; ignored", unknown, manifest)

    taken = (labeled | flying) & in_manifest
    no_probs = [i for i in pool if i not in row_of]
    if no_probs:
        log.info("select: %d pool image(s) have no row in %s (e.g. %s) and cannot be selected; rerun the "
                 "%s stage to include them", len(no_probs), probs, no_probs[0], space)
    candidates = [i for i in pool if i in row_of and i not in taken]
    centres = [i for i in man_ids if i in taken and i in row_of]
    if len(centres) < len(taken):
        log.info("select: %d labeled/in-flight image(s) have no probabilities and cannot act as coverage centres",
                 len(taken) - len(centres))
    if not candidates:
        raise StageError(f"nothing left to select: all {len(pool)} pool image(s) are labeled, in flight "
                         f"or lack probabilities ({len(no_probs)}); ingest more images")
    if budget > len(candidates):
        log.info("select: only %d selectable image(s) left; selecting all of them (select.budget = %d)",
                 len(candidates), budget)
        budget = len(candidates)

    rows = np.asarray([row_of[i] for i in candidates + centres], dtype=np.int64)
    matrix = probs_array(table)
    columns = np.empty((matrix.shape[1], rows.size), dtype=np.float32)  # (C, n): Fortran-ordered (n, C)
    np.take(matrix.T, rows, axis=1, out=columns)
    del matrix
    feats, feats_from = None, None
    if STRATEGIES[strategy].needs_features:
        if not use_features:
            feats, feats_from = columns.T, probs_kind
            log.info("select: %s uses the %s probability rows as features (select.probs_as_features: true)",
                     strategy, space)
        else:
            feats, feats_from = _features(features, candidates + centres), "student_features"
    groups = _slide_groups(man, candidates + centres)
    sel = select_scored(strategy, columns.T, budget=budget, seed=seed, features=feats, backend="auto",
                        device=str(device),
                        labeled=np.arange(len(candidates), len(candidates) + len(centres), dtype=np.int64),
                        groups=groups, group_cap=select.per_slide_cap)
    if len(sel.indices) < budget:
        log.info("select: select.per_slide_cap = %d limited the batch to %d of %d image(s): every other candidate "
                 "is a tile of a slide that already has %d pick(s)", select.per_slide_cap, len(sel.indices), budget,
                 select.per_slide_cap)
    picked = [candidates[i] for i in sel.indices.tolist()]
    if sel.score_name == "min_distance":
        dist = [None if np.isnan(d) else float(d) for d in sel.scores.tolist()]
    else:
        dist = [None] * len(picked)
    this_round = max(points_round, inflight_round) + 1 if round is None else int(round)
    meta_in = table_metadata(table)
    meta = {"budget": budget, "per_slide_cap": select.per_slide_cap or None, "space": space, "seed": seed,
            "teacher_id": meta_in.get("teacher_id"),
            "model_id": meta_in.get("model_id"), "features": feats_from, "candidates": len(candidates),
            "labeled": len(labeled & in_manifest), "inflight": len((flying - labeled) & in_manifest)}
    write_table("selection", {"round": [this_round] * len(picked), "rank": list(range(len(picked))),
                              "image_id": picked, "strategy": [strategy] * len(picked), "min_distance": dist},
                out, metadata=meta)
    return SelectReport(out, this_round, strategy, picked, dist, len(candidates), meta["labeled"], meta["inflight"])


def command(
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml: select.* and seed."),
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest table (candidates: its pool images)."),
    teacher_probs: Path = typer.Option(LAYOUT.teacher_probs, help="Teacher probabilities (select.space: teacher)."),
    student_probs: Path = typer.Option(LAYOUT.student_probs, help="Student probabilities (select.space: student)."),
    points: Path = typer.Option(LAYOUT.points, help="Points table: images with points are labeled "
                                "(a missing file = none yet)."),
    inflight: Path = typer.Option(LAYOUT.inflight, help="In-flight table: images pushed to annotators and not "
                                  "finished (a missing file = none)."),
    points_report: Path = typer.Option(LAYOUT.points_report, help="Report of the points stage: images annotated "
                                       "without points or skipped count as labeled (a missing file = none)."),
    features: Path = typer.Option(LAYOUT.student_features, help="Student features table (coreset and badge)."),
    out: Path = typer.Option(LAYOUT.selection, help="Selection table to write."),
    round: int | None = typer.Option(None, "--round", min=0,  # noqa: A002
                                     help="Round number (default: 1 + last round in points/in-flight)."),
) -> None:
    """Pick this round's images to annotate (PCoreSet over the teacher's probabilities by default)."""
    with stage_errors():
        cfg = load_params_or_exit(params)
        probs = teacher_probs if cfg.select.space == "teacher" else student_probs
        report = run(cfg.select, cfg.seed, manifest=manifest, probs=probs, points=points, inflight=inflight,
                     points_report=points_report, features=features, out=out, round=round)
    for line in report.lines():
        typer.echo(line)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.select [--params ...] [--round N] ...``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
