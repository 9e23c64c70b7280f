"""Where torch work runs: the one rule mapping a ``device`` setting to a :class:`torch.device`.

Settings (``teacher.device``, ``select.device``, ``train.device`` in ``params.yaml``):

* ``auto`` — CUDA (the current CUDA device) when torch sees one, else the CPU;
* ``cpu`` — the CPU;
* ``cuda`` or ``cuda:N`` — that CUDA device; an error naming the setting when torch sees no CUDA device
  (or fewer than N + 1), never a silent fall-back to the CPU.

torch is imported when a device is resolved, not when this module is imported, so code that only
may use torch (the numpy k-center backend) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["DEVICES", "DeviceError", "resolve_device"]

#: the values a ``device`` setting in params.yaml takes
DEVICES = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    """A device setting names a device torch cannot use; the message names the setting and the fix."""


def resolve_device(device: str | torch.device = "auto", *, setting: str = "device") -> torch.device:
    """The :class:`torch.device` for ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a torch.device).

    ``setting`` names the option in error messages (e.g. ``teacher.device``). Raises :class:`DeviceError`
    for an unknown value or a CUDA device torch does not see.
    """
    import torch

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"{setting} must be one of {', '.join(DEVICES)} (or cuda:N); got {device!r}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise DeviceError(f"{setting} must be one of {', '.join(DEVICES)} (or cuda:N); got {device!r}")
    if not torch.cuda.is_available():
        raise DeviceError(f"{setting} is {str(device)!r} but torch sees no CUDA device; set {setting} to auto or cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"{setting} is {str(device)!r} but torch sees {torch.cuda.device_count()} CUDA "
                          f"device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return dev
