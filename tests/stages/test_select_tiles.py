"""Stage ``select`` on a pool of whole-slide tiles (hand-made manifest rows) and plain images: select.per_slide_cap."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from logcapture import LineLog

from nucleate.config import SelectParams
from nucleate.io import TILE_FIELDS, probs_table, read_table, table_metadata, write_table
from nucleate.slides import Tile
from tasks import select as stage

SLIDES = ("a" * 32, "b" * 32, "c" * 32)  # slide content ids
TILES_PER_SLIDE, PLAIN = 8, 6


def _manifest_rows():
    rows = []
    for k, slide_id in enumerate(SLIDES):
        for j in range(TILES_PER_SLIDE):
            tile = Tile(slide_id=slide_id, x0=1024 * (j % 4), y0=1024 * (j // 4), width0=1024.0, height0=1024.0,
                        tile_px=512, mpp=0.5, level=0, tissue_fraction=0.9)
            rows.append({"image_id": tile.image_id, "path": f"slides/s{k}.tif", "width": 512, "height": 512,
                         "channels": 3, "dtype": "uint8", "split": "pool", "bytes": 10_000, **tile.manifest_columns()})
    for j in range(PLAIN):
        rows.append({"image_id": f"plain-{j}", "path": f"img/{j}.png", "width": 256, "height": 256, "channels": 3,
                     "dtype": "uint8", "split": "pool", "bytes": 1000, **dict.fromkeys(TILE_FIELDS.names)})
    return rows


@pytest.fixture
def pool(tmp_path):
    rows = _manifest_rows()
    write_table("manifest", pa.Table.from_pylist(rows), tmp_path / "tiles.parquet")
    plain = [{k: v for k, v in r.items() if k not in TILE_FIELDS.names} for r in rows]
    write_table("manifest", pa.Table.from_pylist(plain), tmp_path / "plain.parquet")  # same pool, no tile columns
    ids = [r["image_id"] for r in rows]
    probs = np.random.default_rng(3).dirichlet([0.4, 0.4, 0.4], size=len(ids)).astype(np.float32)
    write_table("teacher_probs", probs_table(ids, probs, classes=["n", "m", "b"], teacher_id="t"),
                tmp_path / "teacher_probs.parquet")
    slide_of = {r["image_id"]: r["slide_id"] for r in rows}
    return tmp_path, slide_of


def _select(path, manifest, **params):
    log = LineLog()
    report = stage.run(replace(SelectParams(device="cpu"), **params), 0, manifest=path / manifest,
                       probs=path / "teacher_probs.parquet", out=path / "selection.parquet", log=log)
    return report, read_table("selection", path / "selection.parquet"), log.lines


@pytest.mark.parametrize("strategy", ["pcoreset", "entropy"])
def test_no_slide_gives_more_tiles_than_the_cap(pool, strategy):
    path, slide_of = pool
    free, _, _ = _select(path, "tiles.parquet", strategy=strategy, budget=11)
    assert max(Counter(slide_of[i] for i in free.image_ids if slide_of[i]).values()) > 2  # the cap matters here
    report, table, lines = _select(path, "tiles.parquet", strategy=strategy, budget=11, per_slide_cap=2)
    per_slide = Counter(slide_of[i] for i in report.image_ids)
    assert len(report.image_ids) == 11 and all(per_slide[s] <= 2 for s in SLIDES)
    assert report.image_ids[0] == free.image_ids[0] and lines == []
    assert table_metadata(table)["per_slide_cap"] == 2

    # 3 slides x 2 tiles + 6 plain images = 12 < 14: a smaller batch and one line saying why
    report, table, lines = _select(path, "tiles.parquet", strategy=strategy, budget=14, per_slide_cap=2)
    assert len(report.image_ids) == 12 and table.num_rows == 12
    assert Counter(slide_of[i] for i in report.image_ids) == {None: PLAIN, **dict.fromkeys(SLIDES, 2)}
    assert lines == ["select: select.per_slide_cap = 2 limited the batch to 12 of 14 image(s): every other "
                     "candidate is a tile of a slide that already has 2 pick(s)"]


@pytest.mark.parametrize("strategy", ["pcoreset", "entropy"])
def test_without_tile_columns_the_cap_changes_nothing(pool, strategy):
    path, _ = pool
    _, before, _ = _select(path, "tiles.parquet", strategy=strategy, budget=11)
    _, after, _ = _select(path, "plain.parquet", strategy=strategy, budget=11, per_slide_cap=1)
    for name in ("image_id", "rank", "min_distance"):
        assert after.column(name).equals(before.column(name))  # bit for bit (min_distance float64)
