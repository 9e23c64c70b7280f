"""Stage ``sample_data``: lay out the real mnfinder nuclei images as a nucleate data folder.

Output (``out``, default ``storage/sample``)::

    images/{pool,gold,test}/<set>_<n>.tif   the original TIFF bytes (uint8 or uint16, gray)
    masks/{pool,gold,test}/<set>_<n>.tif    ground-truth instance masks, int32, 0 = background
    points.parquet                          ground-truth centroids, ``points`` schema
                                            (origin ``ground_truth``, annotator ``ground_truth``,
                                            round 0, created_at = 1970-01-01 UTC)

Expected: 30 / 3 / 16 images and 2,388 / 235 / 606 nuclei in pool / gold / test. The folder is built
beside ``out`` and swapped in whole, so an interrupted run never leaves a partial layout.
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

import typer

from nucleate.annotations import centroids_xy, points_table
from nucleate.datasets.mnfinder import iter_mnfinder
from nucleate.io import atomic_dir, content_id, write_labels, write_table
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


def run(*, out: str | Path, install: bool = True, log: logging.Logger | None = None) -> SampleReport:
    """Write the sample layout to ``out`` (no hyper-parameters); the report counts images and nuclei per split.

    ``install``: pip-install the mnfinder data package (``--no-deps``) when it is missing.
    """
    log = log or logger("sample_data")
    out = Path(out)
    package = locate_mnfinder(install=install, log=log)
    out.parent.mkdir(parents=True, exist_ok=True)
    images, nuclei = Counter(), Counter()
    columns: dict[str, list] = {"image_id": [], "x": [], "y": []}
    with atomic_dir(out) as staging:
        for item in iter_mnfinder(package):
            image_path = staging / "images" / item.split / f"{item.name}.tif"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.source, image_path)
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
        write_table("points", table, staging / "points.parquet", metadata={"source": MNFINDER_REQUIREMENT})
    report = SampleReport(out, {split: {"images": images[split], "nuclei": nuclei[split]} for split in images})
    for line in report.lines():
        log.info(line)
    return report


def command(
    out: Path = typer.Option(LAYOUT.sample, help="Folder to (re)create with images, masks, points."),
    install: bool = typer.Option(True, help="pip-install the mnfinder data package (--no-deps) if missing."),
) -> None:
    """Lay out the real mnfinder nuclei data (49 fluorescence images, 3,229 nuclei) for the demo/tests."""
    with stage_errors(subprocess.CalledProcessError):
        run(out=out, install=install)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.sample_data [--out ...]``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
