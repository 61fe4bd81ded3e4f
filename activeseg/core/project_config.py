"""Validated per-project settings (regions, acquisition, annotation, model)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from activeseg.config_compat import DEFAULT_STEPS, upgrade_model_keys
from activeseg.uncertainty.labels import MAX_CLASS_ID
from activeseg.uncertainty.measures import DEFAULT_MEASURE, get_measure

_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


class ClassDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=0, le=MAX_CLASS_ID)
    name: str = Field(min_length=1, max_length=100)
    colour: str = Field(default="#808080", description="hex colour, e.g. #ff8800")

    @field_validator("colour")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _COLOUR.match(v):
            raise ValueError(f"colour must look like '#ff8800', got {v!r}")
        return v.lower()


def validate_classes(classes: list[ClassDef]) -> list[ClassDef]:
    if len(classes) < 2:
        raise ValueError(
            "a segmentation project needs at least 2 classes, e.g. "
            '[{"id": 0, "name": "background"}, {"id": 1, "name": "cell"}]'
        )
    ids = [c.id for c in classes]
    if sorted(ids) != list(range(len(ids))):
        raise ValueError(f"class ids must be 0..{len(ids) - 1} without gaps, got {sorted(ids)}")
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique")
    return sorted(classes, key=lambda c: c.id)


class ModelSettings(BaseModel):
    """Network and training settings; see activeseg.models.config.ModelConfig for all of them.

    Settings stored before the step budget (``epochs``, ``max_steps``, ``warm_start``,
    ``augment``, ``class_weighted``) are mapped on load by ``activeseg.config_compat``.
    """

    # NaN/Infinity (Python's json reads them) fit no setting, and PostgreSQL's JSON refuses them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    method: Literal["mc_dropout", "ensemble", "single"] = "mc_dropout"
    ensemble_size: int = Field(default=5, ge=2, le=20)
    mc_samples: int = Field(default=10, ge=2, le=100)
    depth: int = Field(default=4, ge=1, le=6)
    base_channels: int = Field(default=16, ge=4, le=128)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    dropout_blocks: int = Field(
        default=1, ge=0, le=6, description="Dropout2d positions from the bottleneck up"
    )
    steps: int = Field(
        default=DEFAULT_STEPS, ge=1, le=10_000_000, description="optimiser steps per member"
    )
    warmup_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    batch_size: int = Field(default=8, ge=1, le=512)
    patch_size: int = Field(default=128, ge=8, le=4096)
    lr: float = Field(default=1e-3, gt=0, le=1)
    weight_decay: float = Field(default=1e-4, ge=0, le=1)
    class_weights: Literal["none", "val"] = "none"
    class_weight_power: float = Field(default=0.5, ge=0.0, le=1.0)
    augment_flip: bool = True
    augment_rotate: bool = True
    augment_shift: bool = True
    augment_intensity: bool = True
    patience: int | None = Field(default=None, ge=1, le=10_000, description="val checks")
    eval_every: int = Field(default=100, ge=1, le=10_000_000)
    init: Literal["cold", "warm", "shrink_perturb"] = "cold"
    shrink: float = Field(default=0.4, ge=0.0, le=1.0)
    perturb: float = Field(default=0.1, ge=0.0, le=1.0)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)  # numpy and torch seeds are 32-bit

    @model_validator(mode="before")
    @classmethod
    def _upgrade_old_keys(cls, data: Any) -> Any:
        return upgrade_model_keys(data)


class ProjectSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    region_kind: Literal["superpixel", "grid"] = "superpixel"
    region_size: int = Field(default=16, ge=2, le=1024, description="tile side or SLIC side")
    measure: str = DEFAULT_MEASURE
    pooling: Literal["mean", "max", "class_balanced"] = "mean"
    strategy: Literal["top_k", "random", "power", "softmax", "softrank"] = "power"
    beta: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=20, ge=1, le=10_000, description="regions queued per round")
    per_image_cap: int | None = Field(default=3, ge=1, le=100_000)
    min_distance: float | None = Field(default=None, ge=0)
    auto_retrain_every: int | None = Field(
        default=None, ge=1, le=10_000_000, description="labels per retrain"
    )
    auto_activate: bool = True
    lease_seconds: int = Field(default=600, ge=5, le=86_400)
    overlap: int = Field(
        default=1,
        ge=1,
        le=10,
        description="answers per task, each from a different annotator; the label is their "
        "consensus (activeseg.core.services.overlap)",
    )
    agreement_threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="with overlap > 1: a task whose answers agree on less than this share of "
        "its labelled pixels is held back from training as 'disputed'",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**32 - 1,
        description=(
            "seed of every random draw of the project outside training: the import split "
            "(a permutation seeded with it) and each round's queue: with a model, the "
            "selection and control keys are hashed from (seed, model version, image, "
            "region) and the interleaving drawn from np.random.default_rng([seed, round "
            "number]); day-one random rounds draw from that generator too; two projects "
            "with different seeds draw different queues"
        ),
    )
    slic_sigma: float = Field(
        default=1.0,
        ge=0.0,
        le=10.0,
        description=(
            "Gaussian smoothing (pixels) before SLIC superpixels; 0 = none. Smoothing raises "
            "region purity (digits, size 12: 0.57 without, 0.66 with sigma 1). Ignored by grid"
        ),
    )
    control_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description=(
            "share of every model round drawn uniformly at random from the candidates not "
            "selected (round(batch_size * control_fraction) tasks), interleaved at random in "
            "the lease order: the yardstick GET /projects/{id}/rounds compares the queue with"
        ),
    )
    model: ModelSettings = Field(default_factory=ModelSettings)

    @field_validator("measure")
    @classmethod
    def _known_measure(cls, v: str) -> str:
        return get_measure(v).name

    @model_validator(mode="after")
    def _measure_fits_model(self) -> ProjectSettings:
        if get_measure(self.measure).needs_samples and self.model.method == "single":
            raise ValueError(
                f"measure {self.measure!r} needs several members or samples; set "
                '"model": {"method": "mc_dropout"} or "ensemble", or pick a softmax measure '
                f"such as {DEFAULT_MEASURE!r}"
            )
        return self


def merge_settings(current: dict[str, Any], patch: dict[str, Any]) -> ProjectSettings:
    """Apply a partial update (nested for ``model``) and validate the result."""
    merged = {**current, **{k: v for k, v in patch.items() if k != "model"}}
    if "model" in patch:
        merged["model"] = {**current.get("model", {}), **(patch["model"] or {})}
    return ProjectSettings.model_validate(merged)
