"""Model configuration: one validated object for the network, the uncertainty method and training.

A project stores this as JSON next to each model version; every field has a default except the
two that depend on the data (``in_channels`` and ``n_classes``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Method = Literal["ensemble", "mc_dropout", "single"]
DeviceSetting = Literal["auto", "cpu", "cuda"]
Norm = Literal["group", "batch"]

EXAMPLE_CONFIG: dict[str, Any] = {
    "in_channels": 1,
    "n_classes": 3,
    "method": "mc_dropout",
    "mc_samples": 10,
    "dropout": 0.1,
    "epochs": 40,
    "batch_size": 8,
}
"""A valid configuration shown in every configuration error message."""


class ModelConfigError(ValueError):
    """A model configuration was rejected; the message says why and shows a correct example."""


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"])
        if not where:  # a cross-field rule: the whole input is not worth repeating
            lines.append(f"  - {err['msg'].removeprefix('Value error, ')}")
        elif err["type"] == "missing":
            lines.append(f"  - {where}: required field is missing")
        else:
            lines.append(f"  - {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


class ModelConfig(BaseModel):
    """Network shape, uncertainty method and training settings of one project's model.

    ``method`` decides how many probability maps a prediction has: ``ensemble`` trains
    ``ensemble_size`` (K) independent members (Lakshminarayanan et al. 2017), ``mc_dropout``
    trains one network and samples ``mc_samples`` (T) dropout masks at inference (Gal and
    Ghahramani 2016), ``single`` gives one softmax map.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Data-dependent, required.
    in_channels: Literal[1, 3] = Field(description="1 for grey images, 3 for RGB")
    n_classes: int = Field(ge=2, le=255, description="number of classes, background included")

    # Network.
    depth: int = Field(4, ge=1, le=6, description="number of 2x downsamplings")
    base_channels: int = Field(16, ge=2, le=256, description="channels at full resolution")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout2d probability")
    norm: Norm = Field("batch", description="BatchNorm (trains faster here) or GroupNorm")

    # Uncertainty method.
    method: Method = "mc_dropout"
    ensemble_size: int = Field(5, ge=1, le=32, description="K members when method=ensemble")
    mc_samples: int = Field(10, ge=1, le=256, description="T dropout samples when mc_dropout")

    # Training.
    epochs: int = Field(40, ge=1, le=100_000, description="passes over the labelled images")
    max_steps: int | None = Field(None, ge=1, description="cap on optimiser steps per member")
    batch_size: int = Field(8, ge=1, le=1024)
    patch_size: int = Field(128, ge=8, le=4096, description="side of the random training crops")
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    class_weighted: bool = Field(False, description="inverse-frequency class weights in the CE")
    class_weight_power: float = Field(
        0.5, ge=0.0, le=1.0, description="weight = (1 / class frequency) ** power"
    )
    augment: bool = True
    patience: int | None = Field(10, ge=1, description="epochs without val improvement")
    seed: int = Field(0, ge=0, lt=2**31)

    # Runtime.
    device: DeviceSetting = "auto"
    threads: int | None = Field(None, ge=1, le=512, description="torch.set_num_threads")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ModelConfigError(
                f"invalid model config:\n{_format_errors(exc)}\n"
                f"a correct example: {json.dumps(EXAMPLE_CONFIG)}"
            ) from exc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from stored JSON; raises ModelConfigError (a ValueError) with an example."""
        if not isinstance(data, Mapping):
            raise ModelConfigError(
                f"model config must be a JSON object, got {type(data).__name__}; "
                f"a correct example: {json.dumps(EXAMPLE_CONFIG)}"
            )
        return cls(**dict(data))

    @model_validator(mode="after")
    def _check_method(self) -> ModelConfig:
        if self.method == "mc_dropout" and self.dropout <= 0.0:
            raise ValueError(
                "method 'mc_dropout' needs dropout > 0 (e.g. 0.1); "
                "use method 'single' for a network without dropout"
            )
        if self.method == "mc_dropout" and self.mc_samples < 2:
            raise ValueError("method 'mc_dropout' needs mc_samples >= 2 (e.g. 10)")
        if self.method == "ensemble" and self.ensemble_size < 2:
            raise ValueError("method 'ensemble' needs ensemble_size >= 2 (e.g. 5)")
        return self

    @property
    def n_members(self) -> int:
        """Number of trained networks: K for an ensemble, else 1."""
        return self.ensemble_size if self.method == "ensemble" else 1

    @property
    def n_samples(self) -> int:
        """Probability maps per image at inference: K, T or 1 (the S of ``[S, C, H, W]``)."""
        if self.method == "ensemble":
            return self.ensemble_size
        if self.method == "mc_dropout":
            return self.mc_samples
        return 1
