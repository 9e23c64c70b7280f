"""Training core: targets, crops, losses, DoNuSeg's CAM selection, the loop (overfit, resume, OOM line)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from skimage.draw import disk

from nucleate.config import DonusegParams, ModelParams, Params, TrainParams
from nucleate.models import StudentNet
from nucleate.pseudomask import IGNORE, from_points
from nucleate.training import (
    TrainError,
    gaussian_heatmap,
    prepare_image,
    pseudo_label,
    sample_batch,
    select_block,
    train,
)
from nucleate.training.losses import contrastive_loss, kd_loss, seg_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_MODEL = ModelParams(width=8, nucleus_radius_px=6.0)




def _disks(seed: int = 0, size: int = 96, radius: int = 6, n: int = 12):
    """uint16 image of bright disks on noise, their instance mask and centres (x, y)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), np.int32)
    centres = []
    while len(centres) < n:
        c = rng.uniform(radius + 2, size - radius - 2, 2)
        if all(np.hypot(*(c - o)) > 2 * radius + 3 for o in centres):
            centres.append(c)
            rr, cc = disk((c[1], c[0]), radius, shape=truth.shape)
            truth[rr, cc] = len(centres)
    image = (rng.normal(800, 40, truth.shape) + 2000 * (truth > 0)).clip(0, 65535).astype(np.uint16)
    return image, truth, np.array(centres)


def _items(supervision: str, n_images: int = 1, patch: int = 64):
    params = dataclasses.replace(Params().pseudomask, nucleus_radius_px=6.0)
    items = []
    for seed in range(n_images):
        image, truth, xy = _disks(seed)
        pm = from_points(image, xy, params=params, seed=0)
        items.append(prepare_image(f"img{seed}", image, scale=1.0, patch_px=patch, points_xy=xy, heatmap_sigma_px=2.0,
                                   voronoi=pm.voronoi, cluster=pm.cluster, semantic=pm.semantic,
                                   truth=truth if supervision == "full" else None))
    return items


def _train_params(**kw) -> TrainParams:
    base = dict(epochs=2, steps_per_epoch=3, batch_size=2, patch_px=64, lr=3e-3, warmup_steps=0, kd_weight=0.0,
                val_every=0, device="cpu", intensity_jitter=0.1)
    base.update(kw)
    return TrainParams(**base)


def test_gaussian_heatmap_peaks_at_points_and_clips_tails():
    heat = gaussian_heatmap((20, 30), np.array([[10.5, 5.5], [0.0, 0.0]]), 2.0)
    assert heat[5, 10] == pytest.approx(1.0)
    assert heat[5, 9] == pytest.approx(heat[5, 11]) and heat[4, 10] == pytest.approx(heat[6, 10])
    assert heat[15, 25] == 0.0 and heat.dtype == np.float32
    assert heat[heat > 0].min() >= 0.05


def test_crops_transform_image_and_maps_alike():
    labels = (np.arange(70 * 80).reshape(70, 80) * 7 % 251).astype(np.uint8)
    image = labels.astype(np.uint16) * 200  # the image is a monotone function of the map, pixel by pixel
    item = prepare_image("a", image, scale=1.0, patch_px=32, points_xy=np.zeros((0, 2)), heatmap_sigma_px=1.0,
                         semantic=labels)
    batch = sample_batch([item], np.random.default_rng(3), batch_size=6, patch_px=32, jitter=0.0)
    assert batch.x.shape == (6, 1, 32, 32) and batch.maps["semantic"].shape == (6, 32, 32)
    for x, m in zip(batch.x[:, 0], batch.maps["semantic"], strict=True):
        inside = (x > 0) & (x < 1)  # not clipped by the percentile stretch
        order = np.argsort(x[inside], kind="stable")
        assert np.all(np.diff(m[inside][order].astype(int)) >= 0)  # after rot90 / flip, still pixel-aligned


def test_small_image_is_padded_with_ignore():
    image, truth, xy = _disks(size=40, n=2)
    item = prepare_image("a", image, scale=1.0, patch_px=64, points_xy=xy, heatmap_sigma_px=2.0, truth=truth,
                         voronoi=np.zeros_like(truth, np.uint8))
    assert item.shape == (64, 64) and item.valid_shape == (40, 40)
    assert (item.voronoi[40:] == IGNORE).all() and (item.full[:, 40:] == IGNORE).all()


def test_select_block_takes_the_highest_alpha_and_last_ignores_it():
    initial = np.full((20, 20), IGNORE, np.uint8)
    initial[2:8, 2:8] = 1
    initial[12:18, 12:18] = 0
    good = np.zeros((20, 20))
    good[2:8, 2:8] = 0.9
    partial = np.zeros((20, 20))
    partial[2:5, 2:8] = 0.9
    everything = np.ones((20, 20))
    cams = [partial, good, everything, np.zeros((20, 20))]
    k, alphas = select_block(cams, initial, DonusegParams(similarity="iou"))
    assert k == 1 and alphas[1] == pytest.approx(1.0) and alphas[0] == pytest.approx(0.5)
    assert alphas[2] == pytest.approx(36 / 72)  # all-nucleus map: IoU over the labeled pixels only
    k_miou, alphas_miou = select_block(cams, initial, DonusegParams(similarity="miou"))
    assert k_miou == 1 and alphas_miou[2] == pytest.approx(0.25)  # miou also counts the background it gets wrong
    # coverage cannot tell the all-nucleus map from the right one: ties go to the deeper block
    k_cov, _ = select_block(cams, initial, DonusegParams(similarity="coverage"))
    assert k_cov == 2
    assert select_block(cams, initial, DonusegParams(cam_selection="last"))[0] == 3
    filled = pseudo_label(good, initial, DonusegParams())
    assert (filled[initial != IGNORE] == initial[initial != IGNORE]).all()
    assert filled[0, 0] == 0 and filled.dtype == np.uint8
    replaced = pseudo_label(good, initial, DonusegParams(pseudo_label="replace"))
    assert replaced[15, 15] == 0 and replaced[3, 3] == 1 and replaced[10, 10] == 0


def test_losses_behave():
    logits = torch.zeros(1, 2, 4, 4)
    labels = torch.full((1, 4, 4), IGNORE, dtype=torch.uint8)
    assert float(seg_loss(logits, labels)) == 0.0
    labels[0, 0, 0] = 1
    assert float(seg_loss(logits, labels)) == pytest.approx(np.log(2))
    probs = torch.tensor([[0.7, 0.2, 0.1]])
    assert float(kd_loss(torch.log(probs), probs, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(torch.zeros(1, 3), probs, 2.0)) > 0
    pseudo = torch.zeros(1, 4, 4, dtype=torch.uint8)
    pseudo[0, :2] = 1
    cam = pseudo.float()
    apart = torch.zeros(1, 2, 4, 4)
    apart[0, 0, :2], apart[0, 1, 2:] = 1.0, 1.0
    mixed = torch.ones(1, 2, 4, 4)
    kw = dict(confidence=0.7, temperature=0.1, pixels=8)
    assert float(contrastive_loss(apart, pseudo, cam, **kw)) < float(contrastive_loss(mixed, pseudo, cam, **kw))
    assert float(contrastive_loss(apart, torch.ones_like(pseudo), cam, **kw)) == 0.0


@pytest.mark.parametrize("supervision", ["qu2019", "full"])
def test_tiny_run_overfits_one_image(supervision):
    items = _items(supervision)
    tp = _train_params(supervision=supervision, epochs=6, steps_per_epoch=5, val_every=6)
    gold = [(items[0].x, _disks(0)[1] > 0)]
    result = train(items, model=TINY_MODEL, train=tp, donuseg=DonusegParams(), seed=0, num_classes=3,
                   fingerprint="t", gold=gold, progress=False)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.6 * losses[0], losses
    assert result.history[-1]["gold_dice"] > 0.8, result.history[-1]
    assert not result.model.training and next(result.model.parameters()).device.type == "cpu"


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    """Killed after epoch 1, resumed: weights equal the uninterrupted run's exactly (tolerance 0 on the CPU)."""
    tp = _train_params(supervision="donuseg", epochs=3, steps_per_epoch=2)
    dp = DonusegParams(start_epoch=1, refresh_epochs=1, con_pixels=16)
    kw = dict(model=TINY_MODEL, train=tp, donuseg=dp, seed=5, num_classes=3, fingerprint="f", progress=False)
    whole = train(_items("donuseg"), checkpoint=tmp_path / "a.pt", **kw)

    def kill(epoch, _model):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_items("donuseg"), checkpoint=tmp_path / "b.pt", on_epoch_end=kill, **kw)
    resumed = train(_items("donuseg"), checkpoint=tmp_path / "b.pt", resume=True, **kw)
    assert resumed.resumed_from == 1
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in whole.history] == [r["loss"] for r in resumed.history]
    with pytest.raises(TrainError, match="other params or data"):
        train(_items("donuseg"), checkpoint=tmp_path / "b.pt", resume=True, **{**kw, "fingerprint": "other"})


def test_out_of_memory_gives_one_line(monkeypatch):
    def boom(self, x, return_features=False):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(StudentNet, "forward", boom)
    with pytest.raises(TrainError) as info:
        train(_items("qu2019"), model=TINY_MODEL, train=_train_params(batch_size=16, patch_px=64),
              donuseg=DonusegParams(), seed=0, num_classes=3, fingerprint="t", progress=False)
    message = str(info.value)
    assert "\n" not in message and "out of memory" in message
    assert "batch_size 8" in message and "patch_px 32" in message


def test_no_images_and_too_small_crops_are_errors():
    kw = dict(model=TINY_MODEL, donuseg=DonusegParams(), seed=0, num_classes=3, fingerprint="t", progress=False)
    with pytest.raises(TrainError, match="no training images"):
        train([], train=_train_params(), **kw)
    with pytest.raises(TrainError, match="smaller than train.patch_px 128"):
        train(_items("qu2019"), train=_train_params(patch_px=128), **kw)
