"""Which torch device the network runs on (issue #22): ``resolve_device``.

"cpu" (the default), "cuda", "cuda:N" or a ``torch.device``. The network (eager and ``model/fast.py``) and the
training steps run there; the electronic-structure numerics (PySCF integrals, the eigenproblem, energies) stay on
the CPU in float64, and every result comes back as CPU float64.
"""
from __future__ import annotations

import torch

__all__ = ["DeviceError", "resolve_device", "to_device", "to_cpu"]


class DeviceError(ValueError):
    """A device that is not understood or not present here (a ValueError: CLI errors exit 2)."""


def resolve_device(device=None) -> torch.device:
    """``device`` (None/"cpu", "cuda", "cuda:N", a ``torch.device``) as a ``torch.device``, checked: CUDA must be
    available (and the index present); anything else is refused. Raises ``DeviceError``."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device.strip().lower())
        except (RuntimeError, ValueError):
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda"):
            raise DeviceError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N' (a CUDA GPU index)")
    else:
        raise DeviceError(f"device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}")
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise DeviceError(f"device {str(dev)!r} is not supported: use 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise DeviceError(f"device={str(device)!r} was asked for but torch.cuda.is_available() is False: this "
                          "machine has no CUDA GPU (or torch is a CPU build); use device='cpu'")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise DeviceError(f"device={str(device)!r} was asked for but this machine has {n} CUDA GPU(s) "
                          f"(cuda:0 to cuda:{n - 1})")
    return dev


def to_device(x, device):
    """Tensors in ``x`` (a tensor, dict, list or tuple) moved to ``device`` (differentiable)."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


def to_cpu(x):
    """Tensors in ``x`` moved to the CPU (differentiable: gradients flow back to the device)."""
    return to_device(x, torch.device("cpu"))
