"""nucleate.training.distributed: shares of a global batch, and BatchNorm synchronised over gloo ranks.

The two-process check runs under torchrun (master on 127.0.0.1 at a free port, one torch thread each):
each rank normalises its half of one (4, 3, 5, 6) batch with :class:`CpuSyncBatchNorm`; the output, the
input gradient, the summed parameter gradients and the running statistics equal ``BatchNorm2d`` on the
whole batch in one process to 1e-5 (float32).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.local_service import free_port
from nucleate.training.data import sample_batch
from nucleate.training.distributed import CpuSyncBatchNorm, Ranks, plain_batchnorm, shard, sync_batchnorm

REPO = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent("""
    import torch, torch.distributed as dist
    from nucleate.training.distributed import CpuSyncBatchNorm, all_reduce_sum, ranks, shard
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    where = ranks()
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(4, 3, 5, 6, generator=g) * 3 + 1, torch.randn(4, 3, 5, 6, generator=g)
    ref = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5, generator=g), ref.bias.uniform_(-1, 1, generator=g)
    bn = CpuSyncBatchNorm(3)
    bn.load_state_dict(ref.state_dict())
    xf = x.clone().requires_grad_()
    yf = ref(xf)
    (yf * r).sum().backward()
    part = shard(4, where)
    xs = x[part].clone().requires_grad_()
    y = bn(xs)
    (y * r[part]).sum().backward()
    wg, bg = all_reduce_sum(bn.weight.grad.clone()), all_reduce_sum(bn.bias.grad.clone())
    diffs = [(y - yf[part]).abs().max(), (xs.grad - xf.grad[part]).abs().max(), (wg - ref.weight.grad).abs().max(),
             (bg - ref.bias.grad).abs().max(), (bn.running_mean - ref.running_mean).abs().max(),
             (bn.running_var - ref.running_var).abs().max()]
    with open(f"rank{where.rank}.txt", "w") as out:  # a file per rank: torchrun's shared stdout may interleave
        out.write(" ".join(f"{float(d):.2e}" for d in diffs))
    dist.destroy_process_group()
    assert max(float(d) for d in diffs) < 1e-5
""")


def test_shard_splits_evenly_or_refuses():
    assert [shard(8, Ranks(r, 4)) for r in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert shard(3, Ranks()) == slice(0, 3)
    with pytest.raises(ValueError, match="split evenly"):
        shard(3, Ranks(0, 2))


def test_shares_of_a_batch_are_the_batch_and_leave_the_generator_alike():
    from nucleate.training.prepare import prepare_image

    rng = np.random.default_rng(1)
    images = [prepare_image(f"i{k}", rng.integers(0, 4000, (70 + 10 * k, 80)).astype(np.uint16), scale=1.0,
                            patch_px=32, points_xy=np.array([[5.0, 5.0]]), heatmap_sigma_px=2.0,
                            voronoi=rng.integers(0, 2, (70 + 10 * k, 80)).astype(np.uint8)) for k in range(3)]
    whole_rng, part_rngs = np.random.default_rng(7), [np.random.default_rng(7) for _ in range(2)]
    whole = sample_batch(images, whole_rng, batch_size=4, patch_px=32, jitter=0.2)
    parts = [sample_batch(images, g, batch_size=4, patch_px=32, jitter=0.2, part=shard(4, Ranks(r, 2)))
             for r, g in enumerate(part_rngs)]
    assert np.array_equal(np.concatenate([p.x for p in parts]), whole.x)
    assert np.array_equal(np.concatenate([p.maps["voronoi"] for p in parts]), whole.maps["voronoi"])
    assert all(g.bit_generator.state == whole_rng.bit_generator.state for g in part_rngs)  # next batches agree too


def test_sync_batchnorm_swaps_back_and_forth_with_the_same_state():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    synced = sync_batchnorm(net, torch.device("cpu"))
    assert isinstance(synced[1], CpuSyncBatchNorm)
    x = torch.randn(2, 1, 6, 6)
    assert torch.equal(synced(x), torch.nn.Sequential(*[m for m in synced])(x))  # one process: plain BatchNorm
    back = plain_batchnorm(synced)
    assert type(back[1]) is torch.nn.BatchNorm2d and back.state_dict().keys() == state.keys()


def test_cpu_sync_batchnorm_over_two_processes_equals_one_batch(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("rank*.txt")) == ["rank0.txt", "rank1.txt"]
    for report in tmp_path.glob("rank*.txt"):
        assert max(float(d) for d in report.read_text().split()) < 1e-5, report.read_text()
