"""Stage ``sample_data``: lay out the real mnfinder nuclei images as a nucleate data folder.

Output (``out``, default ``storage/sample``)::

    images/{pool,gold,test}/<set>_<n>.tif   the original TIFF bytes (uint8 or uint16, gray)
    masks/{pool,gold,test}/<set>_<n>.tif    ground-truth instance masks, int32, 0 = background
    points.parquet                          ground-truth centroids, ``points`` schema
                                            (origin ``ground_truth``, annotator ``ground_truth``,
                                            round 0, created_at = 1970-01-01 UTC)

Expected: 30 / 3 / 16 images and 2,388 / 235 / 606 nuclei in pool / gold / test. The folder is built
beside ``out`` and swapped in whole, so an interrupted run never leaves a partial layout.

``--he``: the same layout with every image rendered as pseudo-H&E (:func:`nucleate.datasets.he.pseudo_he`,
8-bit RGB TIFF under the same name; one ``numpy.random.default_rng(he_seed)`` draws the eosin texture of the
images in path order). Masks and point coordinates are identical to the fluorescence layout's; the
``image_id`` of the points follows the new image bytes.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import typer

from nucleate.annotations import centroids_xy, points_table
from nucleate.datasets.he import pseudo_he
from nucleate.datasets.mnfinder import iter_mnfinder
from nucleate.io import atomic_dir, content_id, write_image, write_labels, write_table
from nucleate.io.layout import LAYOUT
from tasks._stage import Report, logger, run_alone, stage_errors

__all__ = ["MNFINDER_REQUIREMENT", "SampleReport", "locate_mnfinder", "run", "command", "main"]

MNFINDER_REQUIREMENT = "mnfinder==1.2.3"


@dataclass
class SampleReport(Report):
    """What ``sample_data`` wrote: ``counts`` = ``{split: {"images": n, "nuclei": m}}``."""

    out: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        rows = [f"{split:5s} {c['images']:3d} images {c['nuclei']:5d} nuclei" for split, c in self.counts.items()]
        return [*rows, f"-> {self.out}"]


def locate_mnfinder(install: bool = True, log: logging.Logger | None = None) -> Path:
    """Folder of the installed ``mnfinder`` package (never imported: it would import TensorFlow).

    With ``install`` and the package missing, runs ``pip install --no-deps mnfinder==1.2.3`` (its data
    only; ``make setup`` already does this, so tests and the demo never download).
    """
    spec = importlib.util.find_spec("mnfinder")
    if spec is None and install:
        (log or logger("sample_data")).info(f"sample-data: installing {MNFINDER_REQUIREMENT} (data only, --no-deps)")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", MNFINDER_REQUIREMENT], check=True
        )
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("mnfinder")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the mnfinder data package is not installed; run `pip install --no-deps {MNFINDER_REQUIREMENT}`"
        )
    return Path(spec.submodule_search_locations[0])


def run(*, out: str | Path, install: bool = True, he: bool = False, he_seed: int = 0,
        log: logging.Logger | None = None) -> SampleReport:
    """Write the sample layout to ``out`` (no hyper-parameters); the report counts images and nuclei per split.

    ``install``: pip-install the mnfinder data package (``--no-deps``) when it is missing. ``he``: pseudo-H&E
    images (module docstring), their eosin texture drawn from ``numpy.random.default_rng(he_seed)``.
    """
    log = log or logger("sample_data")
    out = Path(out)
    package = locate_mnfinder(install=install, log=log)
    out.parent.mkdir(parents=True, exist_ok=True)
    images, nuclei = Counter(), Counter()
    columns: dict[str, list] = {"image_id": [], "x": [], "y": []}
    rng = np.random.default_rng(he_seed) if he else None
    with atomic_dir(out) as staging:
        for item in iter_mnfinder(package):
            image_path = staging / "images" / item.split / f"{item.name}.tif"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            if rng is None:
                shutil.copyfile(item.source, image_path)
            else:
                write_image(image_path, pseudo_he(item.image, rng))
            write_labels(staging / "masks" / item.split / f"{item.name}.tif", item.labels)
            _, xy = centroids_xy(item.labels)
            image_id = content_id(image_path)
            columns["image_id"].extend([image_id] * len(xy))
            columns["x"].extend(xy[:, 0].tolist())
            columns["y"].extend(xy[:, 1].tolist())
            images[item.split] += 1
            nuclei[item.split] += len(xy)
        table = points_table({**columns, "label": "nucleus", "annotator": "ground_truth", "round": 0,
                              "origin": "ground_truth"}, source="sample points")
        source = MNFINDER_REQUIREMENT + (f" pseudo-H&E seed {he_seed}" if he else "")
        write_table("points", table, staging / "points.parquet", metadata={"source": source})
    report = SampleReport(out, {split: {"images": images[split], "nuclei": nuclei[split]} for split in images})
    for line in report.lines():
        log.info(line)
    return report


def command(
    out: Path = typer.Option(LAYOUT.sample, help="Folder to (re)create with images, masks, points."),
    install: bool = typer.Option(True, help="pip-install the mnfinder data package (--no-deps) if missing."),
    he: bool = typer.Option(False, "--he", help="Render the images as pseudo-H&E (RGB); masks and points unchanged."),
    he_seed: int = typer.Option(0, min=0, help="--he: seed of the numpy Generator drawing the eosin texture."),
) -> None:
    """Lay out the real mnfinder nuclei data (49 fluorescence images, 3,229 nuclei) for the demo/tests."""
    with stage_errors(subprocess.CalledProcessError):
        run(out=out, install=install, he=he, he_seed=he_seed)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.sample_data [--out ...]``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
