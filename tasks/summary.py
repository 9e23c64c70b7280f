"""``nucleate summary``: images (and annotated nuclei) per split, read from the manifest and points."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import typer

from nucleate.io import SPLITS, read_table
from nucleate.io.layout import LAYOUT
from tasks._stage import Report, stage_errors

__all__ = ["SummaryReport", "run", "command"]


@dataclass
class SummaryReport(Report):
    """``counts`` = ``{split: {"images": n, "pixels": total pixels[, "nuclei": points on those images]}}``."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        with_nuclei = any("nuclei" in c for c in self.counts.values())
        out = [f"{'split':6s} {'images':>7s} {'megapixels':>11s}" + (f" {'nuclei':>7s}" if with_nuclei else "")]
        for split, c in self.counts.items():
            line = f"{split:6s} {c['images']:7d} {c['pixels'] / 1e6:11.2f}"
            out.append(line + (f" {c['nuclei']:7d}" if with_nuclei else ""))
        return out


def run(*, manifest: str | Path, points: str | Path | None = None) -> SummaryReport:
    """Images, pixels and (with a points table) nuclei per split.

    ``nuclei`` is present only when a points table is given; points whose image is not in the
    manifest are not counted.
    """
    table = read_table("manifest", LAYOUT.require("manifest", manifest))
    splits = np.asarray(table.column("split").to_pylist())
    pixels = (pc.multiply(pc.cast(table.column("width"), "int64"), pc.cast(table.column("height"), "int64"))
              .to_numpy())
    out = {s: {"images": int((splits == s).sum()), "pixels": int(pixels[splits == s].sum())} for s in SPLITS}
    if points is not None:
        pts = read_table("points", points)
        split_of = dict(zip(table.column("image_id").to_pylist(), splits.tolist(), strict=True))
        counts = {s: 0 for s in SPLITS}
        for image_id in pts.column("image_id").to_pylist():
            if image_id in split_of:
                counts[split_of[image_id]] += 1
        for s in SPLITS:
            out[s]["nuclei"] = counts[s]
    return SummaryReport(out)


def command(
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest table."),
    points: Path | None = typer.Option(None, help="Points table to count nuclei from (e.g. ground truth)."),
) -> None:
    """Print images, megapixels and (with --points) nuclei per split."""
    with stage_errors():
        for line in run(manifest=manifest, points=points).lines():
            typer.echo(line)
