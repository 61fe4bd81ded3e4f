"""Building a project from a dataset (``digits``, ``nuclei``, ``folder:PATH``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from activeseg.core.imaging import encode_png
from activeseg.core.project_config import ClassDef, ProjectSettings
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


def split_for(index: int, n: int, val_fraction: float, test_fraction: float) -> Split:
    """Deterministic split: the first images of the list go to test, then val, then pool."""
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    if index < n_test:
        return Split.test
    if index < n_test + n_val:
        return Split.val
    return Split.pool


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
    label_val_and_test: bool = True,
    label_pool: bool = False,
    max_pixels: int = 40_000_000,
) -> Imported:
    """Create project ``name`` with every sample of ``dataset``. Val and test images get their
    ground-truth masks as label revisions (held-out evaluation needs labels); pool images stay
    unlabelled unless ``label_pool`` (fully supervised baseline)."""
    classes = [ClassDef(id=c.id, name=c.name, colour=c.colour) for c in dataset.classes]
    project = create_project(
        session, owner, name, classes, f"imported from {dataset.name}", settings
    )
    samples = list(dataset)
    images: list[Image] = []
    truth: dict[int, np.ndarray] = {}
    for i, sample in enumerate(samples):
        split = split_for(i, len(samples), val_fraction, test_fraction)
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
        if (split != Split.pool and label_val_and_test) or (split == Split.pool and label_pool):
            labels.save_revision(
                session, store, image, sample.mask, source="import", author_id=owner.id
            )
    return Imported(project, images, truth)
