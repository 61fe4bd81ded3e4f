"""Which torch device a model runs on."""

from __future__ import annotations

import torch


class DeviceUnavailableError(RuntimeError):
    """The configured device cannot be used on this machine."""


def resolve_device(setting: str) -> torch.device:
    """Turn a config ``device`` setting into a torch device.

    ``"auto"`` gives CUDA when ``torch.cuda.is_available()`` and the CPU otherwise; ``"cuda"``
    on a machine without CUDA raises ``DeviceUnavailableError`` instead of silently falling back,
    so a GPU worker that lost its GPU is noticed.
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"model config asks for device 'cuda' but this torch ({torch.__version__}) sees "
                "no CUDA device; use device 'auto' (CUDA when available, else CPU) or 'cpu'"
            )
        return torch.device("cuda")
    raise DeviceUnavailableError(
        f"unknown device setting {setting!r}; expected one of 'auto', 'cpu', 'cuda'"
    )


def rng_devices(device: torch.device) -> list[int]:
    """The CUDA device ids whose RNG ``torch.random.fork_rng`` must save for ``device``."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
