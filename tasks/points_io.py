"""``nucleate points export | import``: point annotations to and from QuPath GeoJSON, COCO keypoints, CSV.

(``nucleate points`` without a sub-command runs the ``points`` stage, :mod:`tasks.points`.)

* ``export --format qupath``: one GeoJSON file per image (``<image path without suffix>.geojson``, so
  the folders mirror the image folders), pixel units, loadable in QuPath (File > Import objects). Points on
  whole-slide tiles go to one file per *slide* (``<slide path without suffix>.geojson``) in the slide's
  full-resolution (level-0) px, one ``MultiPoint`` annotation per label, as QuPath's Points tool writes them.
* ``export --format coco``: one COCO keypoints JSON for all images of the manifest.
* ``import --format qupath|coco|csv``: existing point annotations -> a points table. A GeoJSON file is
  matched to its image or slide by name (QuPath names exports after the image: stem, then parent/stem,
  ...; ``x.ome.tif`` also answers to ``x``) or ``--image``. On a slide (level-0 px; MultiPoint or Point
  features) each point goes to the kept tile that contains it (``x, y`` in tile px, ``slide_x, slide_y``
  kept); points on no kept tile are counted in one line. Points outside their image or with a label not in
  params ``labels`` are rejected one line each, the rest are kept; with ``--strict`` any rejection writes
  nothing.

Conventions in :mod:`nucleate.annotations.formats`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import typer

from nucleate.annotations.formats import (
    ImportResult,
    from_coco,
    from_csv,
    from_qupath,
    from_qupath_slides,
    to_coco,
    to_qupath,
    to_qupath_slides,
)
from nucleate.io import (
    LAYOUT,
    TILE_FIELDS,
    TableError,
    atomic_write_text,
    empty_table,
    read_table,
    write_table,
)
from nucleate.slides import Tile, is_tile_row
from tasks import points as points_stage
from tasks._stage import fail, load_params_or_exit

__all__ = ["export_points", "import_points", "image_names", "slide_names", "app", "main"]

FORMATS = ("qupath", "coco", "csv")


def _name_keys(path: str) -> set[str]:
    """The names a file answers to: relative path (with and without suffix), file name and stem (and, for
    ``x.ome.tif``, ``x``: QuPath drops the whole extension)."""
    p = Path(path)
    keys = {path, p.with_suffix("").as_posix(), p.name, p.stem}
    if p.stem.lower().endswith(".ome"):
        keys |= {Path(p.stem).stem, p.with_suffix("").with_suffix("").as_posix()}
    return keys


def _unambiguous(pairs: list[tuple[str, str]]) -> dict[str, str]:
    names: dict[str, str] = {}
    clash: set[str] = set()
    for path, target in pairs:
        for key in _name_keys(path):
            if key in names and names[key] != target:
                clash.add(key)
            names[key] = target
    for key in clash:
        names.pop(key, None)
    return names


def image_names(manifest: pa.Table) -> dict[str, str]:
    """Ways to name a plain image -> image_id: relative path (with and without suffix), file name and file stem
    (unambiguous ones only). Tile rows are left out (their path is their slide's: :func:`slide_names`)."""
    rows = _rows(manifest)
    return _unambiguous([(r["path"], r["image_id"]) for r in rows if not is_tile_row(r)])


def slide_names(manifest: pa.Table) -> dict[str, str]:
    """Ways to name a slide of the manifest's tile rows -> slide_id (as :func:`image_names`)."""
    return _unambiguous([(r["path"], r["slide_id"]) for r in _rows(manifest) if is_tile_row(r)])


def _rows(manifest: pa.Table) -> list[dict]:
    """The manifest's rows: id, path, size and, where present, the tile columns."""
    cols = ["image_id", "path", "width", "height"] + [c for c in TILE_FIELDS.names if c in manifest.column_names]
    return manifest.select(cols).to_pylist()


def _tiles(rows: list[dict]) -> dict[str, Tile]:
    """image_id -> Tile of the manifest's tile rows."""
    return {r["image_id"]: Tile.from_manifest(r) for r in rows if is_tile_row(r)}


def export_points(points: str | Path, manifest: str | Path, fmt: str, out: str | Path,
                  labels: Sequence[str] = ()) -> list[Path]:
    """Write ``points`` as ``fmt`` (``qupath``: a folder of GeoJSON files, one per plain image and one per slide
    in level-0 px; ``coco``: one JSON file). ``labels`` (params ``labels``) fixes label colours and COCO
    category order. Returns the files written (each written atomically)."""
    table = read_table("points", points)
    man = read_table("manifest", manifest)
    all_rows = _rows(man)
    rows = {r["image_id"]: r for r in all_rows}
    unknown = sorted(set(table.column("image_id").to_pylist()) - set(rows))
    if unknown:
        raise ValueError(f"{points}: {len(unknown)} image id(s) are not in {manifest}, e.g. {unknown[0]}")
    out = Path(out)
    if fmt == "qupath":
        tiles = _tiles(all_rows)
        on_tile = pa.array([i in tiles for i in table.column("image_id").to_pylist()], pa.bool_())
        slide_path = {r["slide_id"]: r["path"] for r in reversed(all_rows) if is_tile_row(r)}
        docs = [(Path(rows[i]["path"]), doc) for i, doc in to_qupath(table.filter(pa.compute.invert(on_tile)),
                                                                      labels).items()]
        docs += [(Path(slide_path[s]), doc) for s, doc in to_qupath_slides(table.filter(on_tile), tiles,
                                                                           labels).items()]
        targets = [out / path.with_suffix(".geojson") for path, _ in docs]  # mirrors the image folders
        seen: dict[Path, Path] = {}
        for (path, _), target in zip(docs, targets, strict=True):
            if target in seen:
                raise ValueError(f"{seen[target]} and {path} would both be exported to {target}; rename one")
            seen[target] = path
        for (_, doc), target in zip(docs, targets, strict=True):
            atomic_write_text(target, json.dumps(doc, indent=1) + "\n")
        return targets
    if fmt == "coco":
        images = [{"image_id": i, "file_name": r["path"], "width": r["width"], "height": r["height"]}
                  for i, r in rows.items()]
        atomic_write_text(out, json.dumps(to_coco(table, images, labels)) + "\n")
        return [out]
    raise ValueError(f"export format must be qupath or coco, got {fmt!r}")


def import_points(
    files: Sequence[str | Path],
    fmt: str,
    manifest: str | Path,
    out: str | Path,
    *,
    labels: Sequence[str] | None,
    default_label: str | None = None,
    annotator: str | None = None,
    round: int = 0,
    image: str | None = None,
    strict: bool = False,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> ImportResult:
    """Read ``files`` (``qupath``, ``coco`` or ``csv``) into one points table written to ``out``; points with a
    label not in ``labels`` (params ``labels``) are rejected. QuPath files made on a slide of the manifest's
    tile rows are read in level-0 px onto its kept tiles (the table then has ``slide_id, slide_x, slide_y``,
    null on points of plain images)."""
    man = read_table("manifest", manifest)
    rows = _rows(man)
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in rows}
    names, slides = image_names(man), slide_names(man)
    tiles = _tiles(rows)
    parts: list[ImportResult] = []
    for f in map(Path, files):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: file not found")
        text = f.read_text(encoding="utf-8")
        if fmt == "csv":
            parts.append(from_csv(text, source=str(f), sizes=sizes, names=names, labels=labels,
                                  default_label=default_label, annotator=annotator or "csv", round=round))
            continue
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{f}: not valid JSON ({exc})") from None
        if fmt == "qupath":
            kind, target = _target_for(f, image, names, slides, sizes)
            common = {"labels": labels, "default_label": default_label, "annotator": annotator or "qupath",
                      "round": round}
            if kind == "slide":
                parts.append(from_qupath_slides([(str(f), target, doc)], tiles=tiles, **common))
            else:
                parts.append(from_qupath([(str(f), target, doc)], sizes=sizes, **common))
        elif fmt == "coco":
            parts.append(from_coco(doc, sizes=sizes, names=names, labels=labels,
                                   annotator=annotator or "coco", round=round))
        else:
            raise ValueError(f"import format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    rejected = [line for p in parts for line in p.rejected]
    n_rejected = sum(p.n_rejected for p in parts)
    table = _concat([p.points for p in parts])
    for line in rejected:
        log(f"rejected {line}")
    if strict and rejected:
        raise ValueError(f"--strict: {n_rejected} point(s) rejected (see above); {out} not written")
    table = write_table("points", table, out)
    log(f"import: {table.num_rows} point(s) kept, {n_rejected} rejected -> {out}")
    return ImportResult(table, rejected, n_rejected)


def _concat(tables: list[pa.Table]) -> pa.Table:
    """One points table; parts without the optional slide columns get them as nulls (Arrow's promotion; the
    nullability of a column may differ between parts)."""
    return pa.concat_tables(tables, promote_options="permissive") if tables else empty_table("points")


def _target_for(path: Path, image: str | None, names: dict[str, str], slides: dict[str, str],
                sizes: dict) -> tuple[str, str]:
    """What a GeoJSON file belongs to, ``("image", image_id)`` or ``("slide", slide_id)``: ``image`` when given,
    else the file's stem, then parent/stem, ... (the first name that is unambiguous in the manifest; a name of
    both a plain image and a slide is ambiguous)."""
    if image:
        keys = [image]
    else:
        parts = path.with_suffix("").parts
        keys = ["/".join(parts[-k:]) for k in range(1, len(parts) + 1)]
    slide_ids = set(slides.values())
    for key in keys:
        if key in names and key in slides:
            continue
        if key in names:
            return "image", names[key]
        if key in slides:
            return "slide", slides[key]
        if key in sizes:
            return "image", key
        if key in slide_ids:
            return "slide", key
    raise ValueError(f"{path}: no image or slide in the manifest is called {keys[0]!r} (or the name is "
                     "ambiguous); name the file after its image or slide, or pass --image")


#: ``nucleate points``: without a sub-command, the ``points`` stage (:func:`tasks.points.command`)
app = typer.Typer(help="The points stage (no sub-command: saved Label Studio exports -> points tables), and "
                  "export/import of point annotations (QuPath GeoJSON, COCO, CSV).")
app.callback(invoke_without_command=True)(points_stage.command)


@app.command("export")
def export_command(
    points: Path = typer.Option(LAYOUT.points, help="Points table to export."),
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest (image names and sizes)."),
    fmt: str = typer.Option(..., "--format", help="qupath (folder of .geojson: one per image, one per slide in "
                            "level-0 px) | coco (one .json)."),
    out: Path = typer.Option(..., help="Output folder (qupath) or file (coco)."),
    params: Path = typer.Option(Path("params.yaml"), help="params file (labels: label order and colours)."),
) -> None:
    """Export a points table as QuPath GeoJSON or COCO keypoints (pixel units).

    QuPath: one file per plain image (a Point per point) and one per slide (full-resolution px, a MultiPoint per label).
    """
    labels = load_params_or_exit(params).labels
    try:
        written = export_points(points, manifest, fmt, out, labels)
    except (FileNotFoundError, ValueError, TableError) as exc:
        fail(exc)
    typer.echo(f"export: {len(written)} file(s) -> {out}")


@app.command("import")
def import_command(
    files: list[Path] = typer.Argument(..., help="GeoJSON / COCO JSON / CSV files."),
    fmt: str = typer.Option(..., "--format", help="qupath | coco | csv."),
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest (image ids and sizes)."),
    out: Path = typer.Option(..., help="Points table to write."),
    image: str = typer.Option(None, help="qupath: the image or slide (file name, path, image id or slide id) of "
                              "every file."),
    default_label: str = typer.Option(None, help="Label for unlabeled points (default: the first of labels)."),
    annotator: str = typer.Option(None, help="annotator column (default: the format name)."),
    round: int = typer.Option(0, help="round column."),
    strict: bool = typer.Option(False, help="Write nothing if any point is rejected."),
    params: Path = typer.Option(Path("params.yaml"), help="params file (labels = allowed point labels)."),
) -> None:
    """Import point annotations (QuPath GeoJSON, COCO keypoints, CSV) into a points table.

    QuPath on a slide: full-resolution px; each point goes to the kept tile holding it (slide_x / slide_y kept).
    """
    labels = load_params_or_exit(params).labels
    try:
        import_points(files, fmt, manifest, out, labels=labels, default_label=default_label or labels[0],
                      annotator=annotator, round=round, image=image, strict=strict)
    except (FileNotFoundError, ValueError, TableError) as exc:
        fail(exc)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.points_io export|import ...``."""
    app(argv)


if __name__ == "__main__":
    main()
