"""Stage ``select``: pick this round's images to send to annotators and write the ``selection`` table.

Inputs (paths come from ``dvc.yaml`` or the command line, hyper-parameters from ``params.yaml``):

* **manifest** — the candidates are its ``pool`` images (``gold`` and ``test`` images are never selected).
* **probabilities** — a ``teacher_probs`` table: the teacher's (``select.space: teacher``) or the current
  student's (``select.space: student``, same schema). Pool images without a row cannot be selected (counted
  in the log); rows for images not in the manifest are ignored.
* **points** (optional file) — every image with at least one point is *labeled*.
* **in-flight** (optional file) — images already pushed to annotators and not annotated yet.

Labeled and in-flight images are never selected again and are the initial centres of the k-center
strategies (PCoreSet covers the probability space *around* what is or soon will be labeled). Image ids are
content hashes, so a duplicate file of a labeled image is the same image and is excluded too. A missing
points or in-flight file means "none yet" and is logged, so the first round needs neither.

**In-flight file contract** (``storage/inflight.parquet``; written by whoever pushes tasks, e.g. the Label
Studio flow, with :func:`write_inflight`): a Parquet table with a non-null string column ``image_id``
(one row per image pushed and not yet annotated; listing annotated images too is harmless) and an optional
int32 column ``round`` (the round that pushed it). Written atomically; extra columns are ignored.

**Features file** (optional, for ``coreset`` / ``badge``): Parquet with ``image_id`` (string) and
``features`` (list of floats, same length on every row). Without one, those strategies use the probability
rows as features and say so in the log.

Output: the ``selection`` table (``round``, ``rank`` 0 first, ``image_id``, ``strategy``, ``min_distance``:
the distance to the nearest centre when picked, for ``pcoreset`` / ``coreset``; null otherwise and for a
cold-start first pick). Schema metadata: budget, space, seed, teacher id, candidate/labeled/in-flight counts.
``round`` defaults to 1 + the largest round found in the points and in-flight tables (1 when neither has one).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer

from nucleate.config import ParamsError, load_params
from nucleate.io import TableError, atomic_path, probs_array, read_table, table_metadata, write_table
from nucleate.selection import STRATEGIES, select_scored
from tasks._stage import fail, run_alone

__all__ = ["SelectError", "SelectReport", "INFLIGHT_SCHEMA", "read_inflight", "write_inflight", "run", "command",
           "main"]

INFLIGHT_SCHEMA = pa.schema([pa.field("image_id", pa.string(), nullable=False),
                             pa.field("round", pa.int32(), nullable=False)])


class SelectError(RuntimeError):
    """The stage cannot produce a selection (nothing left to select, missing probabilities...)."""


@dataclass
class SelectReport:
    """What one ``select`` run did."""

    out: Path
    round: int
    strategy: str
    image_ids: list[str] = field(default_factory=list)
    min_distance: list[float | None] = field(default_factory=list)
    candidates: int = 0
    labeled: int = 0
    inflight: int = 0


def write_inflight(path: str | Path, image_ids: list[str], round: int) -> None:  # noqa: A002 - table column
    """Write the in-flight file (see the module docstring) atomically: ``image_ids`` pushed in ``round``."""
    table = pa.table({"image_id": pa.array(list(image_ids), pa.string()),
                      "round": pa.array([int(round)] * len(image_ids), pa.int32())}, schema=INFLIGHT_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_inflight(path: str | Path) -> tuple[set[str], int]:
    """(image ids in flight, largest round listed or 0) from an in-flight file; errors name file, column, row."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TableError(f"{path}: not a readable Parquet file ({exc})") from None
    if "image_id" not in table.column_names:
        raise TableError(f"{path}: in-flight table needs an 'image_id' column (string); columns present: "
                         f"{', '.join(table.column_names) or 'none'}")
    ids = table.column("image_id")
    if not pa.types.is_string(ids.type) and not pa.types.is_large_string(ids.type):
        raise TableError(f"{path}: column 'image_id' has type {ids.type}, expected string")
    if ids.null_count:
        row = int(np.flatnonzero(pc.is_null(ids).to_numpy(zero_copy_only=False))[0])
        raise TableError(f"{path}: column 'image_id' is empty (null) at row {row}")
    last_round = 0
    if "round" in table.column_names and table.num_rows:
        rounds = table.column("round")
        if not pa.types.is_integer(rounds.type) or rounds.null_count:
            raise TableError(f"{path}: column 'round' must be non-null integers, got {rounds.type} "
                             f"with {rounds.null_count} null(s)")
        last_round = int(pc.max(rounds).as_py())
    return set(ids.to_pylist()), last_round


def _read_features(path: Path, wanted: list[str]) -> np.ndarray:
    """Feature rows for ``wanted`` image ids, in that order, from a features file (module docstring)."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TableError(f"{path}: not a readable Parquet file ({exc})") from None
    for name in ("image_id", "features"):
        if name not in table.column_names:
            raise TableError(f"{path}: features table needs columns image_id and features (list of floats); "
                             f"missing '{name}'")
    col = table.column("features").combine_chunks()
    if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
        raise TableError(f"{path}: column 'features' has type {col.type}, expected a list of floats")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise TableError(f"{path}: features row {row} has {lengths[row]} values, row 0 has {lengths[0]}")
    ids = table.column("image_id").to_pylist()
    index = {}
    for row, image_id in enumerate(ids):
        if image_id in index:
            raise TableError(f"{path}: image_id {image_id!r} repeats (rows {index[image_id]} and {row})")
        index[image_id] = row
    missing = [i for i in wanted if i not in index]
    if missing:
        raise SelectError(f"{path}: no features for {len(missing)} selectable image(s), e.g. {missing[0]}; "
                          "compute features for every image that has probabilities")
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ids), -1)
    return flat[[index[i] for i in wanted]]


def _resolve_device(device: str) -> tuple[str, str | None]:
    return {"auto": ("auto", None), "cpu": ("numpy", None), "cuda": ("torch", "cuda")}[device]


def run(
    manifest: str | Path,
    probs: str | Path,
    out: str | Path,
    *,
    strategy: str = "pcoreset",
    budget: int = 5,
    points: str | Path | None = None,
    inflight: str | Path | None = None,
    features: str | Path | None = None,
    round: int | None = None,  # noqa: A002 - the table's column name
    seed: int = 0,
    space: str = "teacher",
    device: str = "auto",
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> SelectReport:
    """Select up to ``budget`` pool images with ``strategy`` and write the selection table to ``out``.

    ``probs`` is the probability table of ``space`` (teacher or student). When fewer than ``budget``
    images are left, all of them are selected (logged); when none is left, :class:`SelectError`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    out = Path(out)
    man = read_table("manifest", manifest)
    man_ids = man.column("image_id").to_pylist()
    in_manifest = set(man_ids)
    pool = [i for i, s in zip(man_ids, man.column("split").to_pylist(), strict=True) if s == "pool"]

    probs_path = Path(probs)
    if not probs_path.is_file():
        hint = ("run `nucleate teacher` first" if space == "teacher" else
                "student probabilities exist only after a student is trained; set select.space: teacher")
        raise FileNotFoundError(f"{probs_path}: {space} probabilities not found; {hint}")
    table = read_table("teacher_probs", probs_path)
    row_of = {image_id: r for r, image_id in enumerate(table.column("image_id").to_pylist())}
    stale = sum(1 for i in row_of if i not in in_manifest)
    if stale:
        log(f"select: {stale} row(s) of {probs_path} are for images not in {manifest}; ignored")

    labeled: set[str] = set()
    last_round = 0
    if points is not None and Path(points).is_file():
        pts = read_table("points", points)
        labeled = set(pts.column("image_id").unique().to_pylist())
        if pts.num_rows:
            last_round = int(pc.max(pts.column("round")).as_py())
    elif points is not None:
        log(f"select: no points table at {points} yet: no image is labeled")
    flying: set[str] = set()
    if inflight is not None and Path(inflight).is_file():
        flying, inflight_round = read_inflight(inflight)
        last_round = max(last_round, inflight_round)
    elif inflight is not None:
        log(f"select: no in-flight table at {inflight}: no image is waiting for annotators")
    unknown = len((labeled | flying) - in_manifest)
    if unknown:
        log(f"select: {unknown} labeled or in-flight image id(s) are not in {manifest}; ignored")

    taken = (labeled | flying) & in_manifest
    no_probs = [i for i in pool if i not in row_of]
    if no_probs:
        log(f"select: {len(no_probs)} pool image(s) have no row in {probs_path} (e.g. {no_probs[0]}) and "
            "cannot be selected; rerun the probabilities stage to include them")
    candidates = [i for i in pool if i in row_of and i not in taken]
    centres = [i for i in man_ids if i in taken and i in row_of]
    if len(centres) < len(taken):
        log(f"select: {len(taken) - len(centres)} labeled/in-flight image(s) have no probabilities and "
            "cannot act as coverage centres")
    if not candidates:
        raise SelectError(f"nothing left to select: all {len(pool)} pool image(s) are labeled, in flight "
                          f"or lack probabilities ({len(no_probs)}); ingest more images")
    if budget > len(candidates):
        log(f"select: only {len(candidates)} selectable image(s) left; selecting all of them "
            f"(select.budget = {budget})")
        budget = len(candidates)

    rows = np.asarray([row_of[i] for i in candidates + centres], dtype=np.int64)
    matrix = probs_array(table)
    columns = np.empty((matrix.shape[1], rows.size), dtype=np.float32)  # (C, n): Fortran-ordered (n, C)
    np.take(matrix.T, rows, axis=1, out=columns)
    del matrix
    feats = None
    if STRATEGIES[strategy].needs_features:
        if features is not None:
            feats = _read_features(Path(features), candidates + centres)
        else:
            feats = columns.T
            log(f"select: no features file given; {strategy} uses the {space} probability rows as features")
    backend, dev = _resolve_device(device)
    sel = select_scored(strategy, columns.T, budget=budget, seed=seed, features=feats, backend=backend, device=dev,
                        labeled=np.arange(len(candidates), len(candidates) + len(centres), dtype=np.int64))
    picked = [candidates[i] for i in sel.indices.tolist()]
    if sel.score_name == "min_distance":
        dist = [None if np.isnan(d) else float(d) for d in sel.scores.tolist()]
    else:
        dist = [None] * len(picked)
    this_round = last_round + 1 if round is None else int(round)
    if this_round < 0:
        raise ValueError(f"round must be >= 0, got {this_round}")
    meta = {"budget": budget, "space": space, "seed": seed, "teacher_id": table_metadata(table).get("teacher_id"),
            "candidates": len(candidates), "labeled": len(labeled & in_manifest),
            "inflight": len((flying - labeled) & in_manifest)}
    write_table("selection", {"round": [this_round] * len(picked), "rank": list(range(len(picked))),
                              "image_id": picked, "strategy": [strategy] * len(picked), "min_distance": dist},
                out, metadata=meta)
    log(f"select: round {this_round}: {strategy} picked {len(picked)} of {len(candidates)} candidate(s) "
        f"({meta['labeled']} labeled, {meta['inflight']} in flight) -> {out}")
    return SelectReport(out, this_round, strategy, picked, dist, len(candidates), meta["labeled"], meta["inflight"])


def command(
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml: select.* and seed."),
    manifest: Path = typer.Option(Path("storage/manifest.parquet"), help="Manifest table (candidates: pool)."),
    teacher_probs: Path = typer.Option(Path("storage/teacher_probs.parquet"), help="Teacher probabilities."),
    student_probs: Path = typer.Option(Path("storage/student_probs.parquet"),
                                       help="Student probabilities (used when select.space is student)."),
    points: Path = typer.Option(Path("storage/points.parquet"), help="Points table: images with points are "
                                "labeled (a missing file = none yet)."),
    inflight: Path = typer.Option(Path("storage/inflight.parquet"), help="Images pushed to annotators and not "
                                  "annotated yet (a missing file = none)."),
    features: Path | None = typer.Option(None, help="Features table for coreset/badge (image_id, features)."),
    out: Path = typer.Option(Path("storage/selection.parquet"), help="Selection table to write."),
    strategy: str | None = typer.Option(None, help="Override select.strategy."),
    budget: int | None = typer.Option(None, min=1, help="Override select.budget."),
    round: int | None = typer.Option(None, "--round", min=0,  # noqa: A002
                                     help="Round number (default: 1 + last round in points/in-flight)."),
) -> None:
    """Pick this round's images to annotate (PCoreSet over the teacher's probabilities by default)."""
    try:
        cfg = load_params(params)
        sel = cfg.select
        report = run(manifest, teacher_probs if sel.space == "teacher" else student_probs, out,
                     strategy=strategy or sel.strategy, budget=budget or sel.budget, points=points,
                     inflight=inflight, features=features, round=round, seed=cfg.seed, space=sel.space,
                     device=sel.device)
    except ParamsError as exc:
        for line in exc.problems:
            typer.echo(f"error: {params}: {line}", err=True)
        raise typer.Exit(1) from None
    except (SelectError, FileNotFoundError, ValueError) as exc:
        fail(exc)
    for rank, (image_id, dist) in enumerate(zip(report.image_ids, report.min_distance, strict=True)):
        typer.echo(f"{rank:4d}  {image_id}" + ("" if dist is None else f"  {dist:.4f}"))


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.select [--params ...] [--budget N] ...``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
