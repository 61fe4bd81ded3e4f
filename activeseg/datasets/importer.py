"""Building a project from a dataset (``digits``, ``nuclei``, ``folder:PATH``).

Here rather than in ``core.services``: it reads a :class:`~activeseg.datasets.base.Dataset`
and calls core's services, and ``datasets`` sits above ``core`` in the layers (pyproject.toml,
``[tool.importlinter]``), so core never imports a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from activeseg.core.imaging import encode_png
from activeseg.core.project_config import ClassDef, ModelSettings, ProjectSettings
from activeseg.core.services import labels
from activeseg.core.services.images import UploadedFile, upload_images
from activeseg.core.services.projects import create_project
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Image, Project, Split, User
from activeseg.datasets.base import Dataset


@dataclass(frozen=True)
class Imported:
    project: Project
    images: list[Image]
    ground_truth: dict[int, np.ndarray]  # image id -> full mask (kept out of the labels)


def splits_for(
    n: int, val_fraction: float, test_fraction: float, seed: int = 0, train_fraction: float = 0.0
) -> list[Split]:
    """The split of each of ``n`` images: ``round(n * test_fraction)`` test,
    ``round(n * val_fraction)`` val, ``round(n * train_fraction)`` train, the rest pool, placed
    by a permutation drawn from ``np.random.default_rng(seed)`` (the project's ``seed``
    setting). The same seed always gives the same split; another seed gives another one, so
    runs over several seeds do not all evaluate on the same images. ``train_fraction=0`` (the
    default) gives exactly the splits made before train images existed."""
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    n_train = round(n * train_fraction)
    if n_test + n_val + n_train > n:
        raise ValueError(
            f"test ({n_test}) + val ({n_val}) + train ({n_train}) images exceed the {n} images"
        )
    order = np.random.default_rng(seed).permutation(n)  # order[i]: the slot of image i
    bounds = (
        (n_test, Split.test),
        (n_test + n_val, Split.val),
        (n_test + n_val + n_train, Split.train),
    )
    return [
        next((split for end, split in bounds if slot < end), Split.pool) for slot in order.tolist()
    ]


def split_for(
    index: int, n: int, val_fraction: float, test_fraction: float, seed: int = 0
) -> Split:
    """The split of image ``index`` of ``n`` (see :func:`splits_for`; O(n) a call, so use
    :func:`splits_for` for a whole list)."""
    return splits_for(n, val_fraction, test_fraction, seed)[index]


def with_dataset_defaults(settings: ProjectSettings, dataset: Dataset) -> ProjectSettings:
    """``settings`` with the dataset's model defaults (e.g. digits: no flips or rotations) for
    every model setting the caller did not set explicitly."""
    model = settings.model
    unset = {k: v for k, v in dataset.model_defaults.items() if k not in model.model_fields_set}
    if not unset:
        return settings
    merged = {**model.model_dump(exclude_unset=True), **unset}
    return settings.model_copy(update={"model": ModelSettings.model_validate(merged)})


def import_dataset(
    session: Session,
    store: BlobStore,
    owner: User,
    name: str,
    dataset: Dataset,
    settings: ProjectSettings,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_fraction: float = 0.0,
    label_val_and_test: bool = True,
    label_pool: bool = False,
    max_pixels: int = 40_000_000,
) -> Imported:
    """Create project ``name`` with every sample of ``dataset``. Val and test images get their
    ground-truth masks as label revisions (held-out evaluation needs labels); train images
    (``train_fraction``, none by default) always do: they are the labelled start a first
    model trains on (the demo's). Pool images stay unlabelled unless ``label_pool`` (fully
    supervised baseline). The split is a permutation seeded with ``settings.seed``
    (:func:`splits_for`)."""
    classes = [ClassDef(id=c.id, name=c.name, colour=c.colour) for c in dataset.classes]
    settings = with_dataset_defaults(settings, dataset)
    project = create_project(
        session, owner, name, classes, f"imported from {dataset.name}", settings
    )
    samples = list(dataset)
    images: list[Image] = []
    truth: dict[int, np.ndarray] = {}
    splits = splits_for(len(samples), val_fraction, test_fraction, settings.seed, train_fraction)
    for sample, split in zip(samples, splits, strict=True):
        [result] = upload_images(
            session,
            store,
            project,
            [UploadedFile(f"{sample.name}.png", encode_png(sample.image))],
            split=split,
            max_pixels=max_pixels,
            max_files=1,
        )
        image = result.image
        images.append(image)
        truth[image.id] = sample.mask
        if (
            split == Split.train
            or (split in (Split.val, Split.test) and label_val_and_test)
            or (split == Split.pool and label_pool)
        ):
            labels.save_revision(
                session, store, image, sample.mask, source="import", author_id=owner.id
            )
    return Imported(project, images, truth)
