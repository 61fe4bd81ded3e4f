"""Weights to bytes and back; storage (hashing, blobs, rows) belongs to the layer above."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import torch

from activeseg.models.config import ModelConfig
from activeseg.models.inference import Predictor
from activeseg.models.unet import UNet

StateDict = dict[str, torch.Tensor]


def state_to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise one member's ``state_dict`` (tensors moved to the CPU) with ``torch.save``."""
    cpu_state = {name: tensor.detach().cpu() for name, tensor in state.items()}
    buffer = io.BytesIO()
    torch.save(cpu_state, buffer)
    return buffer.getvalue()


def state_from_bytes(data: bytes) -> StateDict:
    """Inverse of ``state_to_bytes``; ``weights_only=True`` refuses pickled code."""
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"weights blob holds a {type(state).__name__}, expected a state dict")
    return state


def build_members(config: ModelConfig, states: Sequence[Mapping[str, torch.Tensor]]) -> list[UNet]:
    """One ``UNet`` per state dict, with a clear error when a state does not fit the config."""
    members = []
    for index, state in enumerate(states):
        member = UNet.from_config(config)
        try:
            member.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"weights of member {index} do not fit the model config "
                f"(in_channels={config.in_channels}, n_classes={config.n_classes}, "
                f"depth={config.depth}, base_channels={config.base_channels}, "
                f"norm={config.norm!r}): {exc}"
            ) from exc
        members.append(member)
    return members


def build_predictor(
    config: ModelConfig, member_bytes: Sequence[bytes], temperature: float | None = None
) -> Predictor:
    """A ``Predictor`` on ``config.device`` from the stored weights of each member."""
    states = [state_from_bytes(data) for data in member_bytes]
    return Predictor(build_members(config, states), config, temperature)
