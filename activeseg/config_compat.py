"""Shared, torch-free model-settings helpers: the step default and the upgrade of old keys.

Settings written before the step-budget trainer (issue 13) still load: model versions and
projects keep their model settings as JSON; both ``ModelConfig`` and the project's
``ModelSettings`` forbid unknown keys, so old keys are mapped here, in one place, before
validation. Pure Python (no torch, no pydantic): the core layer imports it without loading
the models layer.

Old key            -> new setting
``epochs``         -> dropped: training length is ``steps`` now (epochs over a growing labelled
                      set gave later rounds more training, not better training)
``max_steps``      -> ``steps`` (unless ``steps`` is given)
``patience``       -> dropped when ``epochs`` is present: it counted epochs, a unit that is gone
``warm_start``     -> ``init``: true -> ``"warm"``, false -> ``"cold"``
``augment``        -> false turns every ``augment_*`` switch off; true keeps their defaults
``class_weighted`` -> true -> ``class_weights="val"``; false -> ``"none"``
"""

from __future__ import annotations

from typing import Any

DEFAULT_STEPS = 1000
"""Default optimiser steps per member (``ModelConfig.steps``, ``ModelSettings.steps``); see
``benchmarks/trainer_convergence.py`` and BENCHMARKS.md for what it buys on digits."""

AUGMENT_SWITCHES = ("augment_flip", "augment_rotate", "augment_shift", "augment_intensity")
"""The separate augmentation switches that replaced the single ``augment`` flag."""


def upgrade_model_keys(data: Any) -> Any:
    """A copy of the stored model settings ``data`` with pre-issue-13 keys mapped (see module).

    Anything other than a dict passes through unchanged, so validation still reports it.
    Explicit new keys win over the old ones they would map to.
    """
    if not isinstance(data, dict):
        return data
    out = dict(data)
    legacy_epochs = "epochs" in out
    out.pop("epochs", None)
    if legacy_epochs:
        out.pop("patience", None)
    if "max_steps" in out:
        max_steps = out.pop("max_steps")
        if max_steps is not None:
            out.setdefault("steps", max_steps)
    if "warm_start" in out:
        warm = out.pop("warm_start")
        out.setdefault("init", "warm" if warm else "cold")
    if "augment" in out:
        augment = out.pop("augment")
        if augment is False:
            for switch in AUGMENT_SWITCHES:
                out.setdefault(switch, False)
    if "class_weighted" in out:
        weighted = out.pop("class_weighted")
        out.setdefault("class_weights", "val" if weighted else "none")
    return out
