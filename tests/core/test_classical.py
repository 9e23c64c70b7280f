"""The classical baseline (Otsu + distance-transform watershed) on synthetic disks: splits touching nuclei,
handles both polarities, RGB and flat images, and drops specks."""

import numpy as np
import pytest

from nucleate.classical import MIN_AREA, segment_classical
from nucleate.metrics import segmentation_scores

R = 10.0


def _disks(shape, centres, radius=R):
    """Instance image of disks (later disks overwrite earlier ones where they overlap)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = i
    return labels


def _fluorescence(labels, seed=0):
    rng = np.random.default_rng(seed)
    image = np.where(labels > 0, 180.0, 30.0) + rng.normal(0, 8, labels.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_two_touching_disks_are_split_into_two():
    truth = _disks((64, 80), [(32, 28), (32, 46)])  # centres 18 px apart, radius 10: they touch (overlap 2 px)
    assert len(np.unique(truth)) == 3
    labels = segment_classical(_fluorescence(truth), R)
    assert labels.dtype == np.int32 and labels.shape == truth.shape
    assert labels.max() == 2 and set(np.unique(labels)) == {0, 1, 2}
    s = segmentation_scores(truth, labels)
    assert s.dice > 0.9 and s.aji > 0.8 and s.pq.tp == 2
    # each true disk is mostly covered by a different predicted instance
    majority = [np.bincount(labels[truth == i]).argmax() for i in (1, 2)]
    assert sorted(majority) == [1, 2]


def test_separate_disks_in_16_bit_gray():
    truth = _disks((96, 96), [(20, 20), (20, 70), (70, 30), (72, 74)])
    image = (_fluorescence(truth).astype(np.uint16) * 200)
    labels = segment_classical(image, R)
    s = segmentation_scores(truth, labels)
    assert labels.max() == 4 and s.dice > 0.9 and s.pq.pq > 0.8


def test_dark_nuclei_on_bright_rgb_are_found_by_the_polarity_rule():
    truth = _disks((64, 80), [(32, 28), (32, 46)])
    gray = 255 - _fluorescence(truth)  # H&E-like: dark nuclei on a bright background
    rgb = np.stack([gray, (gray * 0.8).astype(np.uint8), gray], axis=-1)
    labels = segment_classical(rgb, R)
    s = segmentation_scores(truth, labels)
    assert labels.max() == 2 and s.dice > 0.9


def test_specks_below_the_minimum_area_are_removed():
    truth = _disks((64, 64), [(32, 32)])
    image = _fluorescence(truth)
    image[5:7, 5:7] = 250  # 4 px bright speck, far below MIN_AREA * R^2 = 20 px
    assert 4 < MIN_AREA * R * R
    labels = segment_classical(image, R)
    assert labels.max() == 1 and labels[5:7, 5:7].max() == 0


def test_flat_image_gives_no_nucleus_and_bad_input_is_refused():
    assert segment_classical(np.full((32, 32), 7, np.uint8), R).max() == 0
    with pytest.raises(ValueError, match="nucleus_radius_px"):
        segment_classical(np.zeros((8, 8), np.uint8), 0)
    with pytest.raises(ValueError, match="shape"):
        segment_classical(np.zeros((8, 8, 2), np.uint8), R)
