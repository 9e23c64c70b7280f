"""Data-parallel training across processes (``torchrun``): ranks, collectives, synchronised BatchNorm.

The process group itself is started by the caller (``tasks/train.py`` reads torchrun's ``WORLD_SIZE`` /
``RANK`` / ``LOCAL_RANK``; this core module never reads the environment). :func:`ranks` describes the
group this process is in (one process of one when there is none).

How one optimiser step over W processes equals the single-process step of the same global batch
(:func:`nucleate.training.train`):

* every rank draws the same global batch from the same epoch generator and keeps its contiguous share
  (``batch_size / W`` crops: :func:`shard`), as a ``DistributedSampler`` with a shared seed would;
* gradients are averaged by ``DistributedDataParallel``; every loss term is a mean over equal per-rank
  shares, except the cross-entropy with ignored pixels, which the loop divides by the labelled-pixel count
  of the whole global batch (summed over ranks) instead of the rank's own;
* BatchNorm uses the statistics of the global batch: :func:`sync_batchnorm` puts torch's
  ``SyncBatchNorm`` on CUDA and :class:`CpuSyncBatchNorm` (an all-reduce of the per-channel sums, forward
  and backward) on the CPU, where torch's refuses to run.

Left per rank: DoNuSeg's contrastive term samples ``donuseg.con_pixels`` pixels from the rank's share
(same expectation, another draw). Floating-point sums run in another order, so weights agree to a
tolerance, not bit for bit (tests/stages/test_train_ddp.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["CpuSyncBatchNorm", "Ranks", "all_reduce_sum", "barrier", "broadcast_object", "plain_batchnorm", "ranks",
           "shard", "sync_batchnorm"]


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group: ``rank`` in 0 .. ``world_size`` - 1 (0 writes the files)."""

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints, the model and the log (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks() -> Ranks:
    """The initialised default process group's rank and size, else ``Ranks()`` (one process)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def shard(n: int, where: Ranks) -> slice:
    """The contiguous share of ``n`` items (crops of one global batch) that rank ``where.rank`` keeps.

    ``n`` must split evenly (the caller checks it and names the setting); shares are equal so that the
    mean of per-rank means is the global mean.
    """
    if n % where.world_size:
        raise ValueError(f"{n} items do not split evenly over {where.world_size} processes")
    size = n // where.world_size
    return slice(where.rank * size, (where.rank + 1) * size)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place (and returned); unchanged in a single process.

    NCCL reduces CUDA tensors only: a CPU tensor travels through the current CUDA device and back.
    """
    if not ranks().distributed:
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_device = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
        return tensor.copy_(on_device.cpu())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait until every rank arrives (no-op in a single process)."""
    if ranks().distributed:
        dist.barrier()


def broadcast_object(value: Any, device: torch.device | None = None) -> Any:
    """Rank 0's ``value`` on every rank (pickled; a checkpoint's state, an error message)."""
    if not ranks().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]


class _SyncBatchNormFn(torch.autograd.Function):
    """Training-mode batch norm over the union of every rank's batch (per-channel sums all-reduced)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum):  # noqa: D401
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64)
        total = float(all_reduce_sum(count).item())
        mean = all_reduce_sum(x.sum(dims, dtype=torch.float64)) / total
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - mean.to(x.dtype).view(shape)
        var = all_reduce_sum((centred.double() ** 2).sum(dims)) / total
        invstd = torch.rsqrt(var + eps).to(x.dtype)
        xhat = centred * invstd.view(shape)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                unbiased = var * total / max(total - 1.0, 1.0)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.total = total
        return xhat * weight.view(shape) + bias.view(shape)

    @staticmethod
    def backward(ctx, grad):
        xhat, weight, invstd = ctx.saved_tensors
        dims = [0, *range(2, grad.dim())]
        shape = [1, -1] + [1] * (grad.dim() - 2)
        sum_dy = grad.sum(dims)
        sum_dy_xhat = (grad * xhat).sum(dims)
        # the parameters' own gradients stay per rank: DistributedDataParallel averages them
        both = all_reduce_sum(torch.stack([sum_dy, sum_dy_xhat]).double()) / ctx.total
        mean_dy, mean_dy_xhat = (v.to(grad.dtype).view(shape) for v in both)
        dx = (weight * invstd).view(shape) * (grad - mean_dy - xhat * mean_dy_xhat)
        return dx, sum_dy_xhat, sum_dy, None, None, None, None


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics span every rank's batch (gloo on the CPU).

    Same parameters and buffers as ``BatchNorm2d`` (state dicts interchange); eval mode and a single
    process behave exactly like it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and ranks().distributed):
            return super().forward(x)
        momentum = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        stats = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        return _SyncBatchNormFn.apply(x, self.weight, self.bias, *stats, self.eps, momentum or 0.0)


def _swap(module: nn.Module, make) -> nn.Module:
    new = make(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        module.add_module(name, _swap(child, make))
    return module


def _copy_bn(old: nn.modules.batchnorm._BatchNorm, cls: type) -> nn.Module:
    new = cls(old.num_features, old.eps, old.momentum, old.affine, old.track_running_stats)
    new.load_state_dict(old.state_dict())
    new.train(old.training)
    return new.to(old.weight.device if old.weight is not None else "cpu")


def sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` with every ``BatchNorm2d`` synchronised across the ranks (CUDA: torch's; CPU: ours)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return _swap(net, lambda m: _copy_bn(m, CpuSyncBatchNorm)
                 if isinstance(m, nn.BatchNorm2d) and not isinstance(m, CpuSyncBatchNorm) else None)


def plain_batchnorm(net: nn.Module) -> nn.Module:
    """``net`` with synchronised BatchNorm layers back to ``BatchNorm2d`` (same weights and statistics)."""
    return _swap(net, lambda m: _copy_bn(m, nn.BatchNorm2d)
                 if isinstance(m, CpuSyncBatchNorm | nn.SyncBatchNorm) else None)
