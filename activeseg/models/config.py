"""Model configuration: one validated object for the network, the uncertainty method and training.

A project stores this as JSON next to each model version; every field has a default except the
two that depend on the data (``in_channels`` and ``n_classes``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from activeseg.config_compat import DEFAULT_STEPS, upgrade_model_keys
from activeseg.uncertainty.labels import UNLABELLED

Method = Literal["ensemble", "mc_dropout", "single"]
DeviceSetting = Literal["auto", "cpu", "cuda"]
Norm = Literal["group", "batch"]
Init = Literal["cold", "warm", "shrink_perturb"]
ClassWeights = Literal["none", "val"]

EXAMPLE_CONFIG: dict[str, Any] = {
    "in_channels": 1,
    "n_classes": 3,
    "method": "mc_dropout",
    "mc_samples": 10,
    "dropout": 0.1,
    "steps": DEFAULT_STEPS,
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
    n_classes: int = Field(
        ge=2, le=UNLABELLED, description="number of classes, background included"
    )

    # Network.
    depth: int = Field(4, ge=1, le=6, description="number of 2x downsamplings")
    base_channels: int = Field(16, ge=2, le=256, description="channels at full resolution")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout2d probability")
    dropout_blocks: int = Field(
        1,
        ge=0,
        le=6,
        description="Dropout2d at this many lowest-resolution positions: 1 = after the "
        "bottleneck only, 2 = also after the lowest decoder block, ...; never after the "
        "full-resolution block that feeds the classifier (at most depth)",
    )
    norm: Norm = Field("batch", description="BatchNorm (trains faster here) or GroupNorm")

    # Uncertainty method.
    method: Method = "mc_dropout"
    ensemble_size: int = Field(5, ge=1, le=32, description="K members when method=ensemble")
    mc_samples: int = Field(10, ge=1, le=256, description="T dropout samples when mc_dropout")

    # Training: a fixed budget of optimiser steps, whatever the number of labelled images.
    steps: int = Field(DEFAULT_STEPS, ge=1, le=10_000_000, description="optimiser steps per member")
    warmup_fraction: float = Field(
        0.05, ge=0.0, lt=1.0, description="linear warm-up over this part of the steps"
    )
    batch_size: int = Field(8, ge=1, le=1024)
    patch_size: int = Field(128, ge=8, le=4096, description="side of the random training crops")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    class_weights: ClassWeights = Field(
        "none",
        description="'val': inverse-frequency weights from the fully labelled val masks "
        "(independent of which pixels the selection labelled); 'none': plain CE",
    )
    class_weight_power: float = Field(
        0.5, ge=0.0, le=1.0, description="weight = (1 / class frequency) ** power"
    )
    augment_flip: bool = Field(True, description="random horizontal and vertical flips")
    augment_rotate: bool = Field(True, description="random 90-degree rotations")
    augment_shift: bool = Field(True, description="random shift (crop padded back)")
    augment_intensity: bool = Field(True, description="random gain and offset of the image")
    patience: int | None = Field(
        None,
        ge=1,
        description="opt-in early stopping: validation checks (every eval_every steps) without "
        "improvement; None trains all steps and keeps the final weights",
    )
    eval_every: int = Field(100, ge=1, description="steps between validation checks")
    init: Init = Field(
        "cold",
        description="how a retrain starts when a previous version exists: 'cold' (fresh "
        "weights), 'warm' (its weights), 'shrink_perturb' (Ash and Adams 2020)",
    )
    shrink: float = Field(
        0.4, ge=0.0, le=1.0, description="shrink_perturb: lambda in lambda*theta + p*theta_init"
    )
    perturb: float = Field(
        0.1, ge=0.0, le=1.0, description="shrink_perturb: p in lambda*theta + p*theta_init"
    )
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

    @model_validator(mode="before")
    @classmethod
    def _upgrade_old_keys(cls, data: Any) -> Any:
        # Stored versions and projects written before the step budget (issue 13).
        return upgrade_model_keys(data)

    @model_validator(mode="after")
    def _check_method(self) -> ModelConfig:
        if self.dropout_blocks > self.depth:
            raise ValueError(
                f"dropout_blocks={self.dropout_blocks} exceeds depth={self.depth}: there are "
                "depth positions (the bottleneck and all decoder blocks but the one feeding the "
                "classifier); use e.g. dropout_blocks=1"
            )
        if self.method == "mc_dropout" and (self.dropout <= 0.0 or self.dropout_blocks == 0):
            raise ValueError(
                "method 'mc_dropout' needs dropout > 0 and dropout_blocks >= 1 (e.g. 0.1 and 1); "
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
