"""Stage ``ingest``: scan an image folder (recursively) and write the manifest table.

Each readable PNG/TIFF/JPEG becomes one manifest row keyed by its content hash. Unreadable, empty,
truncated, unsupported and duplicate files are reported one line each (``skipped <path>: <reason>``)
and left out; with ``strict`` any such file fails the stage and nothing is written.

Re-ingesting the same folder gives the same manifest; new files are appended after the existing rows
(existing rows keep their order). Files listed in the manifest but gone from disk are reported and
kept, so points that refer to them are never orphaned. Images are decoded one at a time (a bounded
thread pool), so a pool of 100k files never sits in memory.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import pyarrow as pa
import typer

from nucleate.io import (
    SPLITS,
    ImageError,
    content_id,
    image_files,
    read_image,
    read_table,
    table_metadata,
    write_table,
)
from nucleate.io.layout import LAYOUT
from tasks._stage import Report, StageError, logger, run_alone, stage_errors

__all__ = ["IngestError", "IngestReport", "run", "command", "main"]

_BATCH = 256  # files decoded per thread-pool batch (bounds memory)


class IngestError(StageError):
    """Strict ingest found problems, or the manifest belongs to another folder."""


@dataclass
class IngestReport(Report):
    """What one ingest did. ``skipped`` and ``missing`` hold (relative path, reason) pairs."""

    manifest: Path
    added: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.added + self.unchanged + len(self.missing)

    def lines(self) -> list[str]:
        return [f"ingest: {self.added} added, {self.unchanged} unchanged, {len(self.skipped)} skipped, "
                f"{len(self.missing)} missing -> {self.manifest}"]


def _split_for(rel: str, split: str) -> str:
    if split != "auto":
        return split
    first = rel.split("/", 1)[0]
    return first if "/" in rel and first in SPLITS else "pool"


def _inspect(path: Path, known: frozenset[str] | dict[str, str] = frozenset()) -> tuple[str, dict | str | None]:
    """(image_id, row fields) for a readable image, (image_id or "", reason) for a bad one, and
    (image_id, None) without decoding when ``image_id`` is in ``known`` (already in the manifest)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "", "empty file (0 bytes)"
        image_id = content_id(path)
    except OSError as exc:
        return "", f"cannot read ({exc.strerror})"
    if image_id in known:
        return image_id, None
    try:
        array = read_image(path)
    except ImageError as exc:
        return image_id, str(exc).split(": ", 1)[-1]
    return image_id, {
        "width": array.shape[1],
        "height": array.shape[0],
        "channels": 1 if array.ndim == 2 else array.shape[2],
        "dtype": str(array.dtype),
        "bytes": size,
    }


def run(
    *,
    folder: str | Path,
    manifest: str | Path,
    strict: bool = False,
    split: str = "auto",
    workers: int = 2,
    log: logging.Logger | None = None,
) -> IngestReport:
    """Scan ``folder`` and write/extend the manifest at ``manifest``.

    ``split`` is ``pool``, ``gold``, ``test`` or ``auto`` (a top-level sub-folder named after a split
    sets it; everything else is ``pool``). Paths in the manifest are relative to ``folder``
    (POSIX separators); ``folder`` itself is stored in the table metadata as ``root``. Ingest has no
    hyper-parameters (no params section); ``workers`` only sets how many threads decode images.
    """
    log = log or logger("ingest")
    root = Path(folder)
    manifest = Path(manifest)
    if split != "auto" and split not in SPLITS:
        raise ValueError(f"split must be auto or one of {', '.join(SPLITS)}, got {split!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found; give the folder of your images "
                                f"(or run `nucleate sample-data` for the sample images)")
    report = IngestReport(manifest)

    rows: dict[str, list] = {name: [] for name in ("image_id", "path", "width", "height", "channels",
                                                   "dtype", "split", "bytes")}
    by_id: dict[str, str] = {}
    by_path: dict[str, str] = {}
    if manifest.exists():
        old = read_table("manifest", manifest)
        old_root = table_metadata(old).get("root")
        if old_root is not None and Path(old_root).resolve() != root.resolve():
            raise IngestError(
                f"{manifest}: built from folder '{old_root}', not '{root}'; ingest '{old_root}' "
                "again or write a new manifest with --manifest"
            )
        for name in rows:
            rows[name].extend(old.column(name).to_pylist())
        by_id = dict(zip(rows["image_id"], rows["path"], strict=True))
        by_path = {p: i for i, p in by_id.items()}

    seen: set[str] = set()
    files = image_files(root)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while batch := list(islice(files, _BATCH)):
            results = pool.map(_inspect, batch, [by_id] * len(batch))
            for path, (image_id, result) in zip(batch, results, strict=True):
                rel = path.relative_to(root).as_posix()
                seen.add(rel)
                reason = None
                if isinstance(result, str):
                    reason = result
                elif image_id in by_id:
                    if by_id[image_id] == rel:
                        report.unchanged += 1
                        continue
                    reason = f"duplicate of {by_id[image_id]} (same content)"
                elif rel in by_path:
                    reason = (f"content changed since it was ingested as {by_path[rel]}; restore it, "
                              "or save the new version under a new name")
                if reason:
                    report.skipped.append((rel, reason))
                    log.warning(f"skipped {rel}: {reason}")
                    continue
                by_id[image_id] = rel
                rows["image_id"].append(image_id)
                rows["path"].append(rel)
                rows["split"].append(_split_for(rel, split))
                for key, value in result.items():
                    rows[key].append(value)
                report.added += 1
            if len(seen) % (_BATCH * 40) == 0:
                log.info(f"ingest: {len(seen)} files scanned")

    for rel in rows["path"]:
        if rel not in seen:
            report.missing.append(rel)
            log.warning(f"missing {rel}: listed in {manifest.name} but not found under {root}; row kept")

    if strict and (report.skipped or report.missing):
        raise IngestError(
            f"--strict: {len(report.skipped)} file(s) skipped, {len(report.missing)} missing; "
            f"{manifest} not written (see the lines above)"
        )
    write_table("manifest", pa.table(rows), manifest, metadata={"root": str(root)})
    for line in report.lines():
        log.info(line)
    return report


def command(
    folder: Path = typer.Argument(..., help="Folder of PNG/TIFF/JPEG images, scanned recursively."),
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest table to write or extend."),
    strict: bool = typer.Option(False, help="Fail (write nothing) if any file is skipped or missing."),
    split: str = typer.Option(
        "auto", help="pool | gold | test | auto (auto: a top-level sub-folder named pool/gold/test sets it)."
    ),
    workers: int = typer.Option(2, min=1, help="Threads decoding images (one image in memory per thread)."),
) -> None:
    """Scan FOLDER for images and write the manifest (one row per unique image, content-hash id)."""
    with stage_errors():
        run(folder=folder, manifest=manifest, strict=strict, split=split, workers=workers)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.ingest FOLDER [--manifest ...]``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
