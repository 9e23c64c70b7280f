"""nucleate.device.resolve_device: the one auto/cpu/cuda rule, and the callers that use it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucleate.device import DeviceError, resolve_device
from nucleate.selection.kcenter import resolve_backend

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


def test_cpu_is_the_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@no_cuda
def test_auto_without_cuda_is_the_cpu_and_cuda_is_an_error_naming_the_setting():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="^train.device is 'cuda' but torch sees no CUDA device; set train.device "
                                          "to auto or cpu$"):
        resolve_device("cuda", setting="train.device")
    with pytest.raises(DeviceError, match="cuda:1"):
        resolve_device("cuda:1")


def test_auto_with_cuda_is_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"torch sees 2 CUDA device\(s\) \(cuda:0 \.\. cuda:1\)"):
        resolve_device("cuda:2")
    # the k-center backend follows the same rule: auto -> torch on CUDA, cpu -> numba
    assert resolve_backend("auto", None) == ("torch", "cuda")
    assert resolve_backend("auto", "cpu") == ("numba", None)
    assert resolve_backend("torch", "cuda") == ("torch", "cuda")


@pytest.mark.parametrize("value", ["gpu", "tpu", "mps", ""])
def test_unknown_values_are_named(value):
    with pytest.raises(DeviceError, match=f"select.device must be one of auto, cpu, cuda .*got '{value}'"):
        resolve_device(value, setting="select.device")


@no_cuda
def test_callers_share_the_rule():
    """kcenter (the selection API) and the pixel teachers raise the resolver's error, naming their setting."""
    from nucleate.selection import select

    assert resolve_backend("auto", None) == ("numba", None)
    assert resolve_backend("torch", None) == ("torch", "cpu")
    with pytest.raises(DeviceError, match="^device is 'cuda' but torch sees no CUDA device"):
        select("pcoreset", np.eye(3), budget=1, backend="torch", device="cuda")
    with pytest.raises(DeviceError, match="^device is 'cuda'"):
        select("pcoreset", np.eye(3), budget=1, backend="auto", device="cuda")
    assert select("pcoreset", np.eye(3), budget=1, backend="auto", device="cpu").tolist() == [0]
