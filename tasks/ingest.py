"""Stage ``ingest``: scan an image folder (recursively) and write the manifest table.

Each readable PNG/TIFF/JPEG becomes one manifest row keyed by its content hash. Unreadable, empty,
truncated, unsupported and duplicate files are reported one line each (``skipped <path>: <reason>``)
and left out; with ``strict`` any such file fails the stage and nothing is written.

Whole-slide images in the same scan (:data:`nucleate.slides.SLIDE_SUFFIXES`, and pyramidal ``.tif`` /
``.tiff``: :func:`nucleate.slides.is_slide_file`) become one row per tile: the slide's tissue mask is
computed once, then :func:`nucleate.slides.tile_grid` with the ``slides`` params keeps the tiles with tissue.
A tile row's ``path`` is the slide file, ``width = height = slides.tile_px``, ``channels`` 3, ``dtype`` uint8,
``bytes`` the slide file's size, ``image_id`` :attr:`nucleate.slides.Tile.image_id` and the
:data:`nucleate.io.TILE_FIELDS` columns (``slide_id`` = the slide file's content id); those columns are null
on plain-image rows, and absent from a manifest without slides. Slides are opened one at a time and tiles
are never written out (stages read them with :func:`nucleate.slides.read_pool_image`). A slide without
any tissue tile is reported and adds nothing; a slide that cannot be read (truncated, no resolution
metadata and no ``slides.slide_mpp``, a format that needs openslide) is skipped like a bad image.

Re-ingesting the same folder gives the same manifest; new files are appended after the existing rows
(existing rows keep their order). Files listed in the manifest but gone from disk are reported and
kept, so points that refer to them are never orphaned. Images are decoded one at a time (a bounded
thread pool), so a pool of 100k files never sits in memory. A slide already in the manifest (same content,
same path) is not tiled again, whatever the ``slides`` params are now.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import pyarrow as pa
import typer

from nucleate.config import SlidesParams
from nucleate.io import (
    IMAGE_SUFFIXES,
    SCHEMAS,
    SPLITS,
    TILE_FIELDS,
    ImageError,
    content_id,
    image_files,
    read_image,
    read_table,
    table_metadata,
    write_table,
)
from nucleate.io.layout import LAYOUT
from nucleate.slides import SLIDE_SUFFIXES, SlideError, Tile, is_slide_file, open_slide, tile_grid, tissue_mask
from tasks._stage import Report, StageError, load_params_or_exit, logger, run_alone, stage_errors

__all__ = ["IngestError", "IngestReport", "run", "command", "main"]

_BATCH = 256  # files decoded per thread-pool batch (bounds memory)
_COLUMNS = ("image_id", "path", "width", "height", "channels", "dtype", "split", "bytes")
_SLIDE = object()  # _inspect's result for a whole-slide image (tiled in the main thread, one slide at a time)


class IngestError(StageError):
    """Strict ingest found problems, or the manifest belongs to another folder."""


@dataclass
class IngestReport(Report):
    """What one ingest did. ``added`` / ``unchanged`` count plain images; ``slides`` / ``tiles`` the slides tiled
    and the tile rows they added, ``slides_unchanged`` the slides already in the manifest, ``no_tissue`` the
    slides without any tissue tile. ``skipped`` holds (relative path, reason) pairs, ``missing`` paths."""

    manifest: Path
    added: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    slides: int = 0
    tiles: int = 0
    slides_unchanged: int = 0
    no_tissue: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.added + self.unchanged + len(self.missing)

    def lines(self) -> list[str]:
        slides = ""
        if self.slides or self.slides_unchanged or self.no_tissue:
            slides = (f"; slides: {self.slides} tiled ({self.tiles} tiles added), {self.slides_unchanged} unchanged, "
                      f"{len(self.no_tissue)} without tissue")
        return [f"ingest: {self.added} added, {self.unchanged} unchanged, {len(self.skipped)} skipped, "
                f"{len(self.missing)} missing{slides} -> {self.manifest}"]


def _split_for(rel: str, split: str) -> str:
    if split != "auto":
        return split
    first = rel.split("/", 1)[0]
    return first if "/" in rel and first in SPLITS else "pool"


def _inspect(path: Path, known: frozenset[str] | dict[str, str] = frozenset()) -> tuple[str, dict | str | None]:
    """(image_id, row fields) for a readable image, (image_id or "", reason) for a bad one,
    (image_id, None) without decoding when ``image_id`` is in ``known`` (already in the manifest) and
    (content id, _SLIDE) for a whole-slide image (tiled by the main thread, one slide at a time)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "", "empty file (0 bytes)"
        image_id = content_id(path)
    except OSError as exc:
        return "", f"cannot read ({exc.strerror})"
    if image_id in known:
        return image_id, None
    if is_slide_file(path):
        return image_id, _SLIDE
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


def _tiles(path: Path, slide_id: str, params: SlidesParams) -> list[Tile]:
    """The slide's tiles with tissue: its tissue mask (one low-resolution read), then the tile grid."""
    with open_slide(path, slide_id=slide_id, default_mpp=params.slide_mpp) as slide:
        return tile_grid(slide, tissue_mask(slide, params), params)


def run(
    slides: SlidesParams | None = None,
    *,
    folder: str | Path,
    manifest: str | Path,
    strict: bool = False,
    split: str = "auto",
    workers: int = 2,
    log: logging.Logger | None = None,
) -> IngestReport:
    """Scan ``folder`` and write/extend the manifest at ``manifest``.

    ``slides``: the ``slides`` params (tile size and resolution, tissue detection) used for whole-slide images
    found in the folder; None = :class:`nucleate.config.SlidesParams` as params.yaml documents them.
    ``split`` is ``pool``, ``gold``, ``test`` or ``auto`` (a top-level sub-folder named after a split
    sets it; everything else is ``pool``). Paths in the manifest are relative to ``folder``
    (POSIX separators); ``folder`` itself is stored in the table metadata as ``root``. ``workers`` only sets
    how many threads decode images.
    """
    log = log or logger("ingest")
    slides = SlidesParams() if slides is None else slides
    root = Path(folder)
    manifest = Path(manifest)
    if split != "auto" and split not in SPLITS:
        raise ValueError(f"split must be auto or one of {', '.join(SPLITS)}, got {split!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found; give the folder of your images "
                                f"(or run `nucleate sample-data` for the sample images)")
    report = IngestReport(manifest)

    rows: dict[str, list] = {name: [] for name in _COLUMNS + tuple(TILE_FIELDS.names)}  # new rows only
    by_id: dict[str, str] = {}  # plain image: content id -> path
    by_path: dict[str, str] = {}  # path -> content id (of the image, or of the slide)
    slide_paths: dict[str, str] = {}  # slide content id -> path
    old: pa.Table | None = None  # the existing rows stay an Arrow table (a million tiles are not Python objects)
    if manifest.exists():
        old = read_table("manifest", manifest)
        old_root = table_metadata(old).get("root")
        if old_root is not None and Path(old_root).resolve() != root.resolve():
            raise IngestError(
                f"{manifest}: built from folder '{old_root}', not '{root}'; ingest '{old_root}' "
                "again or write a new manifest with --manifest"
            )
        old_slide_ids = (old.column("slide_id").to_pylist() if "slide_id" in old.column_names
                         else [None] * old.num_rows)
        for image_id, rel, slide_id in zip(old.column("image_id").to_pylist(), old.column("path").to_pylist(),
                                           old_slide_ids, strict=True):
            if slide_id is None:
                by_id[image_id] = rel
            else:
                slide_paths[slide_id] = rel
            by_path[rel] = image_id if slide_id is None else slide_id

    seen: set[str] = set()
    files = image_files(root, IMAGE_SUFFIXES + SLIDE_SUFFIXES)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while batch := list(islice(files, _BATCH)):
            results = pool.map(_inspect, batch, [by_id] * len(batch))
            for path, (image_id, result) in zip(batch, results, strict=True):
                rel = path.relative_to(root).as_posix()
                seen.add(rel)
                reason = None
                if result is _SLIDE:
                    _ingest_slide(path, rel, image_id, _split_for(rel, split), slides, rows, by_path, slide_paths,
                                  report, log)
                    continue
                if isinstance(result, str):
                    reason = result
                else:
                    reason = _known(image_id, rel, by_id, by_path)
                    if reason is _UNCHANGED:
                        report.unchanged += 1
                        continue
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
                for key in TILE_FIELDS.names:
                    rows[key].append(None)
                report.added += 1
            if len(seen) % (_BATCH * 40) == 0:
                log.info(f"ingest: {len(seen)} files scanned")

    for rel in by_path:  # each path once (a slide's, not once per tile); new rows' paths are all seen
        if rel not in seen:
            report.missing.append(rel)
            log.warning(f"missing {rel}: listed in {manifest.name} but not found under {root}; row kept")

    if strict and (report.skipped or report.missing):
        raise IngestError(
            f"--strict: {len(report.skipped)} file(s) skipped, {len(report.missing)} missing; "
            f"{manifest} not written (see the lines above)"
        )
    write_table("manifest", _table(old, rows, any_slide=bool(slide_paths)), manifest, metadata={"root": str(root)})
    for line in report.lines():
        log.info(line)
    return report


def _table(old: pa.Table | None, rows: dict[str, list], any_slide: bool) -> pa.Table:
    """The manifest: the ``old`` rows, then the new ``rows``; the tile columns (nulls on plain images) iff
    ``any_slide``, so a manifest without slides keeps exactly its columns."""
    fields = list(SCHEMAS["manifest"]) + (list(TILE_FIELDS) if any_slide else [])
    schema = pa.schema(fields)
    new = pa.Table.from_arrays([pa.array(rows[f.name], f.type) for f in fields], schema=schema)
    if old is None:
        return new
    columns = [old.column(f.name).cast(f.type) if f.name in old.column_names else pa.nulls(old.num_rows, f.type)
               for f in fields]
    return pa.concat_tables([pa.Table.from_arrays(columns, schema=schema), new])


_UNCHANGED = "unchanged"  # _known: the file is in the manifest under this path


def _known(content: str, rel: str, paths_by_content: dict[str, str], by_path: dict[str, str]) -> str | None:
    """What the manifest already says of the file ``rel`` with content id ``content``: :data:`_UNCHANGED` (the same
    file), a reason to skip it (a duplicate of another file, or new content under a known path), or None (new)."""
    if content in paths_by_content:
        if paths_by_content[content] == rel:
            return _UNCHANGED
        return f"duplicate of {paths_by_content[content]} (same content)"
    if rel in by_path:
        return (f"content changed since it was ingested as {by_path[rel]}; restore it, "
                "or save the new version under a new name")
    return None


def _ingest_slide(path: Path, rel: str, slide_id: str, split: str, params: SlidesParams, rows: dict[str, list],
                  by_path: dict[str, str], slide_paths: dict[str, str], report: IngestReport,
                  log: logging.Logger) -> None:
    """Append the tile rows of the slide at ``path`` (``rel`` under the folder, content id ``slide_id``) unless it
    is in the manifest already; a slide that cannot be used goes to ``report.skipped`` (one line)."""
    tiles: list[Tile] = []
    reason = _known(slide_id, rel, slide_paths, by_path)
    if reason is _UNCHANGED:
        report.slides_unchanged += 1
        return
    if reason is None:
        try:
            tiles = _tiles(path, slide_id, params)
        except SlideError as exc:
            reason = str(exc).split(": ", 1)[-1]
    if reason:
        report.skipped.append((rel, reason))
        log.warning(f"skipped {rel}: {reason}")
        return
    if not tiles:
        report.no_tissue.append(rel)
        log.warning(f"slide {rel}: no tile has tissue on at least slides.tissue_threshold {params.tissue_threshold} "
                    "of it; nothing added (lower the threshold if the slide has tissue)")
        return
    size = path.stat().st_size
    for tile in tiles:
        for key, value in (("image_id", tile.image_id), ("path", rel), ("width", tile.tile_px),
                           ("height", tile.tile_px), ("channels", 3), ("dtype", "uint8"), ("split", split),
                           ("bytes", size), *tile.manifest_columns().items()):
            rows[key].append(value)
    slide_paths[slide_id] = rel
    by_path[rel] = slide_id
    report.slides += 1
    report.tiles += len(tiles)


def command(
    folder: Path = typer.Argument(..., help="Folder of PNG/TIFF/JPEG images and whole-slide images, scanned "
                                  "recursively."),
    params: Path = typer.Option(Path("params.yaml"), help="params file (section `slides`: how slides are tiled)."),
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest table to write or extend."),
    strict: bool = typer.Option(False, help="Fail (write nothing) if any file is skipped or missing."),
    split: str = typer.Option(
        "auto", help="pool | gold | test | auto (auto: a top-level sub-folder named pool/gold/test sets it)."
    ),
    workers: int = typer.Option(2, min=1, help="Threads decoding images (one image in memory per thread)."),
) -> None:
    """Scan FOLDER for images and slides and write the manifest (one row per unique image, content-hash id;
    one row per tissue tile of each slide)."""
    with stage_errors():
        cfg = load_params_or_exit(params)
        run(cfg.slides, folder=folder, manifest=manifest, strict=strict, split=split, workers=workers)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.ingest FOLDER [--manifest ...]``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
