"""nucleate.inference: sliding-window blending, instances from maps, nucleus-scale estimate, one image end to end."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from torch import nn

from nucleate.config import PredictParams
from nucleate.inference import (
    blend_weights,
    estimate_nucleus_radius,
    instances_from_maps,
    predict_maps,
    segment_image,
    window_starts,
)
from nucleate.models import LoadedModel, ModelError, StudentOutput, build_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")




class PixelNet(nn.Module):
    """A student stand-in whose maps are pixel-local (1x1 convolutions): windows cannot change its output."""

    def __init__(self, nucleus_gain: float | None = None):
        super().__init__()
        self.seg, self.heat, self.head = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 1, 1), nn.Linear(1, 3)
        if nucleus_gain is not None:  # nucleus logit = gain * (x - 0.5), background logit 0; heat-map ~0
            with torch.no_grad():
                self.seg.weight.zero_()
                self.seg.bias.zero_()
                self.seg.weight[1] = nucleus_gain
                self.seg.bias[1] = -nucleus_gain / 2
                self.heat.weight.zero_()
                self.heat.bias.fill_(-10.0)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        x = x.mean(1, keepdim=True)
        embedding = x.mean((2, 3))
        return StudentOutput(self.seg(x), self.heat(x), self.head(embedding), embedding)


def _disks(shape, centres, radius):
    """int32 labels: disk i + 1 of ``radius`` px around (x, y) = centres[i] (corner-origin pixels)."""
    rows, cols = np.mgrid[:shape[0], :shape[1]] + 0.5
    labels = np.zeros(shape, np.int32)
    for i, (x, y) in enumerate(centres):
        labels[(cols - x) ** 2 + (rows - y) ** 2 <= radius**2] = i + 1
    return labels


def _smooth_noise(shape, seed=0):
    x = ndi.gaussian_filter(np.random.default_rng(seed).random(shape, dtype=np.float32), 3)
    return ((x - x.min()) / (x.max() - x.min()))[None].astype(np.float32)


def test_windows_cover_the_axis_and_the_last_is_flush_with_the_edge():
    assert window_starts(100, 64, 32) == [0, 32, 36]
    assert window_starts(128, 64, 64) == [0, 64]
    assert window_starts(50, 64, 32) == [0]
    w = blend_weights(10, 3)
    assert w.min() > 0 and w.max() == 1 and np.array_equal(w, w[::-1])
    assert np.allclose(w[:4], [0.25, 0.5, 0.75, 1.0])
    assert np.array_equal(blend_weights(5, 0), np.ones(5, np.float32))


@pytest.mark.parametrize(("window", "overlap"), [(32, 0.5), (32, 0.0), (48, 0.25), (40, 0.9)])
def test_blending_is_exact_for_a_pixel_local_model(window, overlap):
    torch.manual_seed(0)
    model = PixelNet()
    x = _smooth_noise((70, 90))
    whole = predict_maps(model, x, window_px=128, overlap=0.25, batch_size=4, device="cpu")
    assert model.shapes == [(1, 1, 70, 90)]  # fits one window: one forward pass on the whole image
    model.shapes.clear()
    tiled = predict_maps(model, x, window_px=window, overlap=overlap, batch_size=3, device="cpu")
    assert len(model.shapes) > 1 and all(s[0] <= 3 and s[2:] == (window, window) for s in model.shapes)
    np.testing.assert_allclose(tiled.foreground, whole.foreground, atol=1e-6)
    np.testing.assert_allclose(tiled.heatmap, whole.heatmap, atol=1e-6)
    assert tiled.foreground.dtype == np.float32 and tiled.foreground.shape == (70, 90)
    assert tiled.image_probs.shape == (3,) and abs(float(tiled.image_probs.sum()) - 1) < 1e-5
    assert tiled.embedding.shape == (1,)


def test_sliding_windows_match_whole_image_inference_of_the_student():
    """Not exact (a window sees less context and its own padding). Measured on this eval-mode random student
    (heads x30, so probabilities span 0.07..0.94): mean |foreground difference| 0.0017 (0.0009..0.0032 over
    6 window / overlap settings), max 0.31 at a few pixels, heat-map 0.0003, thresholded masks agree on 99.8 %
    of pixels (>= 99.7 % in all settings), image probs within 0.0005 (0.003). Asserted: 3x those margins."""
    torch.manual_seed(0)
    model = build_student("resnet", 3, width=8).eval()
    with torch.no_grad():
        model.seg_head.weight.mul_(30)
        model.heat_head.weight.mul_(30)
    x = _smooth_noise((128, 136))
    whole = predict_maps(model, x, window_px=256, overlap=0.25, batch_size=4, device="cpu")
    tiled = predict_maps(model, x, window_px=64, overlap=0.5, batch_size=4, device="cpu")
    assert whole.foreground.max() - whole.foreground.min() > 0.8  # the comparison is not between flat maps
    assert np.abs(tiled.foreground - whole.foreground).mean() < 0.005
    assert np.abs(tiled.heatmap - whole.heatmap).mean() < 0.002
    assert ((tiled.foreground >= 0.5) == (whole.foreground >= 0.5)).mean() > 0.99
    assert np.abs(tiled.image_probs - whole.image_probs).max() < 0.01


def _maps_of(labels, centres, sigma=4.0):
    fg = np.where(labels > 0, 0.9, 0.05).astype(np.float32)
    rows, cols = np.mgrid[:labels.shape[0], :labels.shape[1]] + 0.5
    heat = np.zeros(labels.shape, np.float32)
    for x, y in centres:
        heat = np.maximum(heat, np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2)))
    return fg, heat


OPTS = dict(threshold=0.5, peak_threshold=0.35, peak_distance_px=5, min_area_px=20)


def test_heatmap_peaks_split_two_touching_nuclei():
    centres = [(30.0, 32.0), (50.0, 32.0)]
    truth = _disks((64, 80), centres, 12)
    assert ndi.label(truth > 0)[1] == 1  # one connected blob
    fg, heat = _maps_of(truth, centres)
    labels, xy, scores = instances_from_maps(fg, heat, markers="heatmap", **OPTS)
    assert labels.dtype == np.int32 and labels.max() == 2 and xy.shape == (2, 2)
    assert np.array_equal(labels > 0, truth > 0)
    assert sorted(np.round(xy[:, 0]).tolist()) == pytest.approx([30, 50], abs=1.5)
    np.testing.assert_allclose(scores, 0.9, atol=1e-6)
    one, _, _ = instances_from_maps(fg, np.zeros_like(heat), markers="heatmap", **OPTS)
    assert one.max() == 1  # no peak at all: the blob without a marker is still one instance


def test_distance_markers_split_a_dumbbell():
    truth = _disks((48, 96), [(24.0, 24.0), (72.0, 24.0)], 12)
    truth[22:26, 24:72] = 3  # a thin bridge
    fg = np.where(truth > 0, 0.9, 0.0).astype(np.float32)
    labels, xy, _ = instances_from_maps(fg, np.zeros_like(fg), markers="distance", **OPTS)
    assert labels.max() == 2
    assert sorted(xy[:, 0].tolist()) == pytest.approx([24, 72], abs=3)


def test_small_instances_are_removed_and_ids_stay_sequential():
    truth = _disks((40, 80), [(12.0, 12.0), (60.0, 20.0)], 8)
    truth[30:33, 30:33] = 5  # 9 px
    fg = np.where(truth > 0, 0.8, 0.1).astype(np.float32)
    labels, xy, scores = instances_from_maps(fg, np.zeros_like(fg), markers="distance", **OPTS)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2] and len(xy) == len(scores) == 2
    assert not labels[30:33, 30:33].any()


def test_centres_are_corner_origin_centroids_in_instance_order_and_scores_mean_probability():
    fg = np.zeros((20, 30), np.float32)
    fg[10:13, 20:23] = 0.6
    fg[11, 21] = 0.9
    labels, xy, scores = instances_from_maps(fg, np.zeros_like(fg), markers="distance", **dict(OPTS, min_area_px=1))
    assert labels.max() == 1
    np.testing.assert_allclose(xy, [[21.5, 11.5]])
    np.testing.assert_allclose(scores, [(8 * 0.6 + 0.9) / 9], rtol=1e-6)
    empty = instances_from_maps(np.zeros_like(fg), np.zeros_like(fg), markers="heatmap", **OPTS)
    assert empty[0].max() == 0 and empty[1].shape == (0, 2) and empty[2].shape == (0,)
    with pytest.raises(ValueError, match="markers must be one of heatmap, distance"):
        instances_from_maps(fg, fg, markers="peaks", **OPTS)


def _nuclei_image(shape, radius, n, seed=0, dtype=np.uint16):
    """Well-separated bright disks on a noisy dark background; (image, centres)."""
    rng = np.random.default_rng(seed)
    step = 4 * radius
    grid = [(x, y) for y in range(2 * radius, shape[0] - 2 * radius + 1, step)
            for x in range(2 * radius, shape[1] - 2 * radius + 1, step)]
    centres = [(x + rng.uniform(-2, 2), y + rng.uniform(-2, 2)) for x, y in grid[:n]]
    labels = _disks(shape, centres, radius)
    top = 4000 if dtype == np.uint16 else 200
    image = np.where(labels > 0, top, top // 10) + rng.normal(0, top / 40, shape)
    return np.clip(image, 0, None).astype(dtype), np.array(centres), labels


def test_estimate_nucleus_radius_of_disks_of_radius_8():
    image, _, _ = _nuclei_image((128, 160), 8, 12)
    assert estimate_nucleus_radius(image) == pytest.approx(8, rel=0.15)
    dark = np.repeat((255 - (image // 16).clip(0, 255)).astype(np.uint8)[..., None], 3, axis=-1)  # H&E-like
    assert estimate_nucleus_radius(dark) == pytest.approx(8, rel=0.15)
    with pytest.raises(ValueError, match="pass --nucleus-radius-px"):
        estimate_nucleus_radius(np.full((32, 32), 7, np.uint8))


def _loaded(model, **extra):
    info = {"classes": ["a", "b", "c"], "nucleus_radius_px": 10.0, "data_nucleus_radius_px": 10.0,
            "heatmap_trained": False, "supervision": "qu2019", "round": 1}
    return LoadedModel(model, None, {**info, **extra})


def test_segment_image_rescales_to_the_model_nucleus_scale_and_back():
    image, centres, truth = _nuclei_image((200, 160), 20, 6)
    params = PredictParams(device="cpu")
    model = PixelNet(nucleus_gain=20.0)
    seg = segment_image(_loaded(model), image, params, nucleus_radius_px=20.0)
    assert model.shapes == [(1, 1, 100, 80)] and seg.scale == 0.5  # radius 20 px -> the model's 10 px
    assert seg.labels.shape == (200, 160) and seg.labels.dtype == np.int32
    assert seg.labels.max() == len(centres) == len(seg.centres) == len(seg.scores)
    order = np.argmin(np.linalg.norm(seg.centres[:, None] - centres[None], axis=-1), axis=1)
    assert sorted(order.tolist()) == list(range(len(centres)))
    np.testing.assert_allclose(seg.centres, centres[order], atol=1.5)
    for k, i in enumerate(order):  # instance k + 1 is row k
        a, b = seg.labels == k + 1, truth == i + 1
        assert (a & b).sum() / (a | b).sum() > 0.85
    model.shapes.clear()
    same = segment_image(_loaded(model, data_nucleus_radius_px=20.0), image, params, nucleus_radius_px=None)
    assert model.shapes == [(1, 1, 100, 80)] and np.array_equal(same.labels, seg.labels)
    est = segment_image(_loaded(model), image, params, nucleus_radius_px="estimate")
    assert est.nucleus_radius_px == pytest.approx(20, rel=0.15) and est.labels.max() == len(centres)
    with pytest.raises(ModelError, match="nucleus_radius_px"):
        segment_image(_loaded(model, nucleus_radius_px=None), image, params, nucleus_radius_px=None)
    assert math.isclose(segment_image(_loaded(model), image, params, nucleus_radius_px=10.0).scale, 1.0)
