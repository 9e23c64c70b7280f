"""The training loop: supervision modes, AdamW + warm-up + cosine, AMP, per-epoch checkpoints and resume.

Loss per step (crops of the annotated images; ``u`` extra unannotated pool crops for the KD term)::

    qu2019:  L = CE(seg, Voronoi) + CE(seg, cluster)                                       (Qu et al. 2019)
    donuseg: L = CE(seg, Voronoi) + CE(seg, cluster)                                      (= L_seg(M))
               + lambda_P CE(seg, P) + lambda_con L_con     (from donuseg.start_epoch; P refreshed every E)
               + lambda_det BCE(heat-map, Gaussian points)                               (every epoch)
    full:    L = CE(seg, ground truth) + lambda_det BCE(heat-map, Gaussian GT centres)     (upper bound)
    every mode: + kd_weight T^2 KL(teacher || image head)  on annotated and ``u`` pool crops (ActiveKD)

Reproducibility: the crop sampler of epoch e is ``numpy.random.default_rng([seed, e])`` and torch's RNG is
re-seeded from it at the start of every epoch, so a run resumed from the checkpoint of epoch e draws the
same crops as an uninterrupted one; on the CPU with deterministic algorithms the weights come out
bit-identical (tests/core/test_training.py). The checkpoint (written atomically after every epoch) holds
the model, optimiser, schedule, grad-scaler, the DoNuSeg pseudo labels and the history, plus a
fingerprint of the settings and data: resuming with other ones is refused.

Several processes (``torchrun``; :mod:`nucleate.training.distributed`): when a process group is
initialised, the model is wrapped in ``DistributedDataParallel`` with synchronised BatchNorm, each rank
trains on its equal share of the same global batch (``train.batch_size`` crops in all), and rank 0 alone
writes the checkpoint and validates on gold; a resume loads rank 0's checkpoint on every rank.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nucleate.config import DonusegParams, ModelParams, TrainParams
from nucleate.device import resolve_device
from nucleate.io.atomic import atomic_write_bytes
from nucleate.metrics import dice
from nucleate.models import ModelSpec, StudentNet, build_from_spec
from nucleate.pseudomask import IGNORE
from nucleate.training.data import MAP_NAMES, Batch, TrainingImage, sample_batch
from nucleate.training.distributed import (
    Ranks,
    all_reduce_sum,
    broadcast_object,
    plain_batchnorm,
    ranks,
    shard,
    sync_batchnorm,
)
from nucleate.training.donuseg import refresh_pseudo_labels
from nucleate.training.losses import contrastive_loss, heatmap_loss, kd_loss, seg_loss

__all__ = ["CHECKPOINT_FORMAT", "KdPool", "TrainError", "TrainResult", "heatmap_trained", "model_spec", "params_dict",
           "train"]

CHECKPOINT_FORMAT = "nucleate-train-checkpoint-1"

#: (N, C, p, p) float32 crops of unannotated pool images and their (N, C_cls) teacher probabilities
KdPool = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


class TrainError(RuntimeError):
    """Training cannot run as configured (out of memory, a checkpoint of another run, no data)."""


@dataclass
class TrainResult:
    """The trained model (eval mode, CPU) and one history row per epoch (the metrics CSV)."""

    model: StudentNet
    history: list[dict[str, float]]
    device: str
    seconds: float
    steps: int
    resumed_from: int | None = None
    donuseg: dict[str, Any] = field(default_factory=dict)  # the last pseudo-label refresh: blocks chosen, alphas
    world_size: int = 1  # processes that trained it together (torchrun)


def model_spec(model: ModelParams, num_classes: int) -> ModelSpec:
    """The :class:`ModelSpec` of params.yaml's ``model`` section for a teacher with ``num_classes`` classes."""
    return ModelSpec(encoder=model.encoder, num_classes=num_classes, pretrained=model.pretrained, width=model.width,
                     heatmap_decoder=model.heatmap_decoder)


def heatmap_trained(train: TrainParams, donuseg: DonusegParams) -> bool:
    """Whether the heat-map head gets a loss (predict then uses its peaks as watershed markers)."""
    return train.supervision != "qu2019" and donuseg.lambda_det > 0


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


def _epoch_seed(seed: int, epoch: int) -> tuple[np.random.Generator, int]:
    rng = np.random.default_rng([seed, epoch])
    return rng, int(rng.integers(0, 2**62))


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in str(exc) or "can't allocate memory" in str(exc)))


def _gold_dice(model: StudentNet, gold: list[tuple[np.ndarray, np.ndarray]], device: torch.device) -> float:
    was_training = model.training
    model.eval()
    scores = []
    with torch.inference_mode():
        for x, truth in gold:
            seg = model(torch.from_numpy(x[None]).to(device)).seg
            scores.append(dice(truth, (seg[0, 1] > seg[0, 0]).cpu().numpy()))
    model.train(was_training)
    return float(np.mean(scores))


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise TrainError(f"{path}: unreadable checkpoint ({type(exc).__name__}); delete it and train again "
                         "without --resume") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path}: not a checkpoint of this nucleate version; delete it or train without --resume")
    if state.get("fingerprint") != fingerprint:
        raise TrainError(f"{path}: this checkpoint was written by a run with other params or data; train without "
                         "--resume (it is overwritten) or restore the params and data it was made with")
    return state


def _labelled_per_rank(batch: Batch, where: Ranks) -> dict[str, float] | None:
    """Labelled pixels of each map in the whole global batch / world size (the CE denominators of a rank)."""
    if not where.distributed:
        return None
    counts = torch.tensor([0.0 if batch.maps[name] is None else float((batch.maps[name] != IGNORE).sum())
                           for name in MAP_NAMES], dtype=torch.float64)
    all_reduce_sum(counts)
    return {name: float(c) / where.world_size for name, c in zip(MAP_NAMES, counts.tolist(), strict=True)}


def _losses(out, batch: Batch, n: int, dev: torch.device, *, supervision: str, epoch: int, train: TrainParams,
            donuseg: DonusegParams, kd_probs: torch.Tensor | None,
            generator: torch.Generator, labelled: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """The loss terms of one step (module docstring); ``n`` = annotated crops at the front of the batch.

    ``labelled`` (several processes): per map, the labelled pixels of the global batch / world size; the
    cross-entropies divide their sums by it, so the ranks' mean is the global batch's mean.
    """
    seg = out.seg[:n]
    maps = {k: (None if v is None else torch.from_numpy(v).to(dev)) for k, v in batch.maps.items()}
    labelled = labelled or {}
    terms: dict[str, torch.Tensor] = {}
    if supervision == "full":
        terms["seg"] = seg_loss(seg, maps["full"], total=labelled.get("full"))
    else:
        terms["seg"] = seg_loss(seg, maps["voronoi"], total=labelled.get("voronoi"))
        if maps["cluster"] is not None:
            terms["seg"] = terms["seg"] + seg_loss(seg, maps["cluster"], total=labelled.get("cluster"))
    if supervision == "donuseg" and epoch >= donuseg.start_epoch and maps["pseudo"] is not None:
        if donuseg.lambda_p > 0:
            terms["pseudo"] = donuseg.lambda_p * seg_loss(seg, maps["pseudo"], total=labelled.get("pseudo"))
        if donuseg.lambda_con > 0 and batch.cam is not None:
            terms["con"] = donuseg.lambda_con * contrastive_loss(
                out.decoder_features[:n], maps["pseudo"], torch.from_numpy(batch.cam).to(dev),
                confidence=donuseg.con_confidence, temperature=donuseg.con_temperature, pixels=donuseg.con_pixels,
                generator=generator)
    if heatmap_trained(train, donuseg):
        terms["det"] = donuseg.lambda_det * heatmap_loss(out.heatmap[:n], torch.from_numpy(batch.heatmap).to(dev))
    if kd_probs is not None:
        logits = out.image_logits if kd_probs.shape[0] == out.image_logits.shape[0] else out.image_logits[n:]
        terms["kd"] = train.kd_weight * kd_loss(logits, kd_probs, train.kd_temperature)
    return terms


def train(
    images: list[TrainingImage],
    *,
    model: ModelParams,
    train: TrainParams,
    donuseg: DonusegParams,
    seed: int,
    num_classes: int,
    fingerprint: str,
    checkpoint: Path | None = None,
    resume: bool = False,
    kd_pool: KdPool | None = None,
    gold: list[tuple[np.ndarray, np.ndarray]] | None = None,
    log: logging.Logger | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, StudentNet], None] | None = None,
) -> TrainResult:
    """Train a fresh student on ``images`` (each at least ``train.patch_px`` a side: :func:`data.pad_to`).

    ``gold``: (x (C, h, w), ground-truth foreground (h, w) bool) pairs at the model's scale, scored every
    ``train.val_every`` epochs (pixel Dice). ``kd_pool`` draws unannotated crops for the KD term.
    ``checkpoint``: file rewritten after every epoch; ``resume`` continues from it. ``on_epoch_end(e, model)``
    is called after epoch e's checkpoint (tests inject a kill there). Raises :class:`TrainError`.

    Inside an initialised process group (``torchrun``; module docstring) every rank calls this with the
    same arguments; ``train.batch_size`` (and ``train.kd_unlabeled`` with a KD pool) is the global count
    and must split evenly over the ranks.
    """
    log = log or logging.getLogger("nucleate.train")
    if not images:
        raise TrainError("no training images: nothing annotated yet (or no image matched the points / masks)")
    if any(min(im.shape) < train.patch_px for im in images):
        raise TrainError(f"an image is smaller than train.patch_px {train.patch_px}; pad it first (data.pad_to)")
    where = ranks()
    kd_on = train.kd_weight > 0
    if where.distributed:
        for setting, count in (("train.batch_size", train.batch_size),
                               ("train.kd_unlabeled", train.kd_unlabeled if kd_on and kd_pool is not None else 0)):
            if count % where.world_size:
                raise TrainError(f"{setting} {count} does not split evenly over {where.world_size} processes: "
                                 f"set it to a multiple of {where.world_size} (it is the global count; each "
                                 f"process takes {setting} / {where.world_size})")
    device = resolve_device(train.device, setting="train.device")
    cuda = device.type == "cuda"
    if cuda and where.distributed:
        device = torch.device("cuda", torch.cuda.current_device())  # the caller set it to LOCAL_RANK
    deterministic = torch.are_deterministic_algorithms_enabled()
    if not cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    net = build_from_spec(model_spec(model, num_classes)).to(device)
    if where.distributed:
        net = sync_batchnorm(net, device)
    if cuda and train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    amp_dtype = None
    if cuda and train.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    optimizer = torch.optim.AdamW(net.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    area = sum(im.shape[0] * im.shape[1] for im in images)
    steps = train.steps_per_epoch or max(1, math.ceil(area / train.patch_px**2 / train.batch_size))
    total = steps * train.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, train.warmup_steps, total))
    history: list[dict[str, float]] = []
    first_epoch, resumed_from, refresh = 0, None, {}
    state, problem = None, None
    if resume and checkpoint is not None and where.main and checkpoint.is_file():
        try:
            state = _load_checkpoint(checkpoint, fingerprint)
        except TrainError as exc:
            problem = str(exc)
    if resume and where.distributed:  # rank 0's checkpoint (or its error) on every rank
        state, problem = broadcast_object((state, problem), device if cuda else None)
    if problem is not None:
        raise TrainError(problem)
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        refresh = dict(state.get("refresh") or {})
        by_id = {im.image_id: im for im in images}
        for image_id, (pseudo, cam) in state["pseudo"].items():
            by_id[image_id].pseudo, by_id[image_id].cam = pseudo.numpy(), cam.numpy()
        first_epoch = resumed_from = int(state["epoch"])
        log.info(f"train: resumed from {checkpoint} after epoch {first_epoch}/{train.epochs}")
    elif resume:
        log.info(f"train: no checkpoint at {checkpoint}; starting from scratch")
    stepper: torch.nn.Module = net
    if where.distributed:  # heads without a loss in some modes (heat-map, image head): find_unused_parameters
        stepper = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None,
                                                            find_unused_parameters=True)
    local_batch = train.batch_size // where.world_size
    crops = shard(train.batch_size, where)
    need_features = train.supervision == "donuseg" and donuseg.lambda_con > 0
    bar = tqdm(total=total, initial=first_epoch * steps, disable=not (progress and where.main), desc="train",
               unit="step", dynamic_ncols=True, leave=False)
    started = time.perf_counter()
    net.train()
    try:
        for epoch in range(first_epoch, train.epochs):
            rng, torch_seed = _epoch_seed(seed, epoch)
            torch.manual_seed(torch_seed)
            generator = torch.Generator().manual_seed(torch_seed)
            if train.supervision == "donuseg" and epoch >= donuseg.start_epoch \
                    and (epoch - donuseg.start_epoch) % donuseg.refresh_epochs == 0:
                refresh = refresh_pseudo_labels(net, images, donuseg, device)
                log.info(f"train: epoch {epoch + 1}: pseudo labels refreshed; blocks chosen {refresh['blocks']}, "
                         f"mean alpha per block {refresh['alpha']}")
            sums: dict[str, float] = {}
            data_s = step_s = 0.0
            epoch_start = time.perf_counter()
            for _ in range(steps):
                t0 = time.perf_counter()
                batch = sample_batch(images, rng, batch_size=train.batch_size, patch_px=train.patch_px,
                                     jitter=train.intensity_jitter, part=crops if where.distributed else None)
                x = batch.x
                kd_probs = batch.teacher_probs if kd_on else None
                if kd_on and kd_pool is not None and train.kd_unlabeled:
                    ux, uprobs = kd_pool(rng, train.kd_unlabeled)
                    if where.distributed:
                        part = shard(train.kd_unlabeled, where)
                        ux, uprobs = ux[part], uprobs[part]
                    if ux.shape[1] != x.shape[1]:
                        channels = max(ux.shape[1], x.shape[1])
                        x, ux = (np.repeat(a, channels // a.shape[1], axis=1) for a in (x, ux))
                    x = np.concatenate([x, ux])
                    kd_probs = uprobs if kd_probs is None else np.concatenate([kd_probs, uprobs])
                labelled = _labelled_per_rank(batch, where)
                t1 = time.perf_counter()
                try:
                    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        out = stepper(xt, return_features=need_features)
                        terms = _losses(out, batch, local_batch, device, supervision=train.supervision,
                                        epoch=epoch, train=train, donuseg=donuseg,
                                        kd_probs=None if kd_probs is None else torch.from_numpy(kd_probs).to(device),
                                        generator=generator, labelled=labelled)
                    loss = sum(terms.values())
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    schedule.step()
                except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                    if not _is_oom(exc):
                        raise
                    raise TrainError(
                        f"out of memory on {device} with train.batch_size {train.batch_size}"
                        + (f" ({local_batch} per process)" if where.distributed else "") + " and train.patch_px "
                        f"{train.patch_px}: lower one of them in params.yaml (e.g. batch_size "
                        f"{max(1, train.batch_size // 2)} or patch_px {max(32, train.patch_px // 2)})") from None
                if cuda:
                    torch.cuda.synchronize(device)
                t2 = time.perf_counter()
                data_s += t1 - t0
                step_s += t2 - t1
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
            if where.distributed:  # the epoch's mean terms over the global batch = the mean of the ranks' means
                keys = sorted(sums)
                summed = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
                sums = {k: v / where.world_size for k, v in zip(keys, summed.tolist(), strict=True)}
            seconds = time.perf_counter() - epoch_start
            row = {"epoch": epoch + 1, "lr": schedule.get_last_lr()[0],
                   **{k: round(v / steps, 5) for k, v in sums.items()},
                   "crops_per_s": round(steps * train.batch_size / seconds, 2), "seconds": round(seconds, 2),
                   "data_s": round(data_s, 3), "step_s": round(step_s, 3)}
            if gold and where.main and train.val_every and ((epoch + 1) % train.val_every == 0
                                                            or epoch + 1 == train.epochs):
                row["gold_dice"] = round(_gold_dice(net, gold, device), 4)
            history.append(row)
            log.info(f"train: epoch {epoch + 1}/{train.epochs}: loss {row['loss']:.4f} ("
                     + ", ".join(f"{k} {row[k]:.3f}" for k in ("seg", "pseudo", "con", "det", "kd") if k in row)
                     + f"), {row['crops_per_s']} crops/s" + (f", gold Dice {row['gold_dice']:.3f}" if "gold_dice"
                                                            in row else ""))
            if checkpoint is not None and where.main:
                _save_checkpoint(checkpoint, {
                    "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": epoch + 1,
                    "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": schedule.state_dict(), "scaler": scaler.state_dict(), "history": history,
                    "refresh": refresh,
                    "pseudo": {im.image_id: (torch.from_numpy(im.pseudo), torch.from_numpy(im.cam))
                               for im in images if im.pseudo is not None and im.cam is not None},
                })
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, net)
    finally:
        bar.close()
        if not cuda:
            torch.use_deterministic_algorithms(deterministic)
    if where.distributed:
        net = plain_batchnorm(net)
    net = net.to("cpu", memory_format=torch.contiguous_format).eval()
    return TrainResult(net, history, str(device), time.perf_counter() - started, steps * train.epochs,
                       resumed_from, refresh, where.world_size)


def params_dict(*sections: Any) -> dict[str, Any]:
    """JSON-ready dicts of params dataclasses, keyed by their class name without ``Params`` (for model cards)."""
    return {type(s).__name__.removesuffix("Params").lower(): dataclasses.asdict(s) for s in sections}
