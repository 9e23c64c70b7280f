"""``nucleate points export | import``: point annotations to and from QuPath GeoJSON, COCO keypoints, CSV.

(``nucleate points`` without a sub-command runs the ``points`` stage, :mod:`tasks.points`.)

* ``export --format qupath``: one GeoJSON file per image (``<image path without suffix>.geojson``, so
  the folders mirror the image folders), pixel units, loadable in QuPath (File > Import objects).
* ``export --format coco``: one COCO keypoints JSON for all images of the manifest.
* ``import --format qupath|coco|csv``: existing point annotations -> a points table. A GeoJSON file is
  matched to its image by name (QuPath names exports after the image: stem, then parent/stem, ...) or
  ``--image``. Points outside their image or with a label not in params ``labels`` are rejected one line
  each, the rest are kept; with ``--strict`` any rejection writes nothing.

Conventions in :mod:`nucleate.annotations.formats`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import typer

from nucleate.annotations.formats import ImportResult, from_coco, from_csv, from_qupath, to_coco, to_qupath
from nucleate.io import LAYOUT, TableError, atomic_write_text, empty_table, read_table, write_table
from tasks import points as points_stage
from tasks._stage import fail, load_params_or_exit

__all__ = ["export_points", "import_points", "image_names", "app", "main"]

FORMATS = ("qupath", "coco", "csv")


def image_names(manifest: pa.Table) -> dict[str, str]:
    """Ways to name an image -> image_id: relative path (with and without suffix), file name and file stem
    (unambiguous ones only)."""
    names: dict[str, str] = {}
    clash: set[str] = set()
    for row in manifest.select(["image_id", "path"]).to_pylist():
        path = Path(row["path"])
        for key in {row["path"], path.with_suffix("").as_posix(), path.name, path.stem}:
            if key in names and names[key] != row["image_id"]:
                clash.add(key)
            names[key] = row["image_id"]
    for key in clash:
        names.pop(key, None)
    return names


def export_points(points: str | Path, manifest: str | Path, fmt: str, out: str | Path,
                  labels: Sequence[str] = ()) -> list[Path]:
    """Write ``points`` as ``fmt`` (``qupath``: a folder of GeoJSON files; ``coco``: one JSON file).
    ``labels`` (params ``labels``) fixes label colours and COCO category order. Returns the files written
    (each written atomically)."""
    table = read_table("points", points)
    man = read_table("manifest", manifest)
    rows = {r["image_id"]: r for r in man.select(["image_id", "path", "width", "height"]).to_pylist()}
    unknown = sorted(set(table.column("image_id").to_pylist()) - set(rows))
    if unknown:
        raise ValueError(f"{points}: {len(unknown)} image id(s) are not in {manifest}, e.g. {unknown[0]}")
    out = Path(out)
    if fmt == "qupath":
        written = []
        for image_id, doc in to_qupath(table, labels).items():
            path = out / Path(rows[image_id]["path"]).with_suffix(".geojson")  # mirrors the image folders
            atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
            written.append(path)
        return written
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
    label not in ``labels`` (params ``labels``) are rejected."""
    man = read_table("manifest", manifest)
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in
             man.select(["image_id", "width", "height"]).to_pylist()}
    names = image_names(man)
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
            image_id = _image_for(f, image, names, sizes)
            parts.append(from_qupath([(str(f), image_id, doc)], sizes=sizes, labels=labels,
                                     default_label=default_label, annotator=annotator or "qupath", round=round))
        elif fmt == "coco":
            parts.append(from_coco(doc, sizes=sizes, names=names, labels=labels,
                                   annotator=annotator or "coco", round=round))
        else:
            raise ValueError(f"import format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    rejected = [line for p in parts for line in p.rejected]
    # promote: files with and without the optional slide columns combine (absent values read as null)
    table = pa.concat_tables([p.points for p in parts], promote_options="default") if parts else empty_table("points")
    for line in rejected:
        log(f"rejected {line}")
    if strict and rejected:
        raise ValueError(f"--strict: {len(rejected)} point(s) rejected (see above); {out} not written")
    table = write_table("points", table, out)
    log(f"import: {table.num_rows} point(s) kept, {len(rejected)} rejected -> {out}")
    return ImportResult(table, rejected)


def _image_for(path: Path, image: str | None, names: dict[str, str], sizes: dict) -> str:
    """The image a GeoJSON file belongs to: ``image`` when given, else the file's stem, then parent/stem,
    ... (the first name that is unambiguous in the manifest)."""
    if image:
        keys = [image]
    else:
        parts = path.with_suffix("").parts
        keys = ["/".join(parts[-k:]) for k in range(1, len(parts) + 1)]
    for key in keys:
        if key in names:
            return names[key]
        if key in sizes:
            return key
    raise ValueError(f"{path}: no image in the manifest is called {keys[0]!r} (or the name is ambiguous); "
                     "name the file after its image or pass --image")


#: ``nucleate points``: without a sub-command, the ``points`` stage (:func:`tasks.points.command`)
app = typer.Typer(help="The points stage (no sub-command: saved Label Studio exports -> points tables), and "
                  "export/import of point annotations (QuPath GeoJSON, COCO, CSV).")
app.callback(invoke_without_command=True)(points_stage.command)


@app.command("export")
def export_command(
    points: Path = typer.Option(LAYOUT.points, help="Points table to export."),
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest (image names and sizes)."),
    fmt: str = typer.Option(..., "--format", help="qupath (folder of .geojson) | coco (one .json)."),
    out: Path = typer.Option(..., help="Output folder (qupath) or file (coco)."),
    params: Path = typer.Option(Path("params.yaml"), help="params file (labels: label order and colours)."),
) -> None:
    """Export a points table as QuPath GeoJSON or COCO keypoints (pixel units)."""
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
    image: str = typer.Option(None, help="qupath: the image (file name, path or image id) of every file."),
    default_label: str = typer.Option(None, help="Label for unlabeled points (default: the first of labels)."),
    annotator: str = typer.Option(None, help="annotator column (default: the format name)."),
    round: int = typer.Option(0, help="round column."),
    strict: bool = typer.Option(False, help="Write nothing if any point is rejected."),
    params: Path = typer.Option(Path("params.yaml"), help="params file (labels = allowed point labels)."),
) -> None:
    """Import point annotations (QuPath GeoJSON, COCO keypoints, CSV) into a points table."""
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
