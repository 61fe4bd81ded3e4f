"""`activeseg simulate`: its split, project settings, uploads, annotator protocols and curve."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from activeseg.admin import simulation as simulate
from activeseg.admin.simulation import (
    CSV_FIELDS,
    SimulationConfig,
    annotate_queue,
    plot_learning_curves,
    project_settings,
    setup_project,
)
from activeseg.client.http import Client
from activeseg.core.project_config import ProjectSettings
from activeseg.core.tables import Split
from activeseg.datasets.importer import splits_for
from activeseg.datasets.registry import load_dataset
from tests.conftest import Stack
from tests.utils import build_queue_inline

TINY_MODEL = {"method": "single", "depth": 1, "base_channels": 4, "steps": 2}


def split_of_names(spec: str, seed: int) -> dict[str, Split]:
    samples = list(load_dataset(spec, seed=seed))
    splits = splits_for(len(samples), 0.1, 0.2, seed)
    return {s.name: sp for s, sp in zip(samples, splits, strict=True)}


def test_the_seed_varies_the_split_of_a_folder_dataset(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    spec = f"folder:{tmp_path}"
    seed0, seed1 = split_of_names(spec, 0), split_of_names(spec, 1)
    assert seed0 == split_of_names(spec, 0)  # one seed, one split
    assert seed0 != seed1
    for split in (seed0, seed1):
        got = sorted(sp.value for sp in split.values())
        assert got == sorted(["test"] * 6 + ["val"] * 3 + ["pool"] * 21)


def test_the_project_gets_the_seed_and_the_control_fraction() -> None:
    cfg = SimulationConfig(model={"steps": 20}, control_fraction=0.25)
    dataset_defaults = {"augment_flip": False, "steps": 5}
    settings = ProjectSettings.model_validate(project_settings(cfg, 7, dataset_defaults))
    assert settings.seed == 7 and settings.model.seed == 7
    assert settings.model.steps == 20 and not settings.model.augment_flip  # cfg wins
    assert settings.control_fraction == 0.25
    default = project_settings(SimulationConfig(), 3)
    assert "control_fraction" not in default  # the project's own default
    assert ProjectSettings.model_validate(default).seed == 3


def test_the_embedded_service_runs_without_rate_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, str] = {}

    class Exited:
        pid = 0

        def __init__(self, args: list[str], env: dict[str, str], **kw: Any) -> None:
            seen.update(env)

        def poll(self) -> int:
            return 1

        def terminate(self) -> None:
            pass

        def wait(self, timeout: float | None = None) -> int:
            return 1

    monkeypatch.setenv("ACTIVESEG_RATE_LIMIT_UPLOADS_PER_MINUTE", "5")
    monkeypatch.setattr(simulate.subprocess, "Popen", Exited)
    with pytest.raises(RuntimeError, match="exited"), simulate.embedded_service(tmp_path):
        pass
    assert seen["ACTIVESEG_RATE_LIMIT_UPLOADS_PER_MINUTE"] == "0"
    assert seen["ACTIVESEG_RATE_LIMIT_TASKS_PER_MINUTE"] == "0"


def api_client(stack: Stack) -> Client:
    return Client(stack.base_url, stack.admin_token)


def test_setup_uploads_many_files_per_request_and_keeps_each_split(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Above the test server's 20 files per request: the first pool request is refused (413)
    # and sent again in halves.
    monkeypatch.setattr(simulate, "UPLOAD_FILES_PER_REQUEST", 50)
    cfg = SimulationConfig(count=30, region_kind="grid", region_size=16, model=TINY_MODEL)
    client = api_client(stack)
    uploads: list[int] = []
    request = client.request

    def counting(method: str, url: str, **kw: Any) -> Any:
        if method == "POST" and url.endswith("/images"):
            uploads.append(len(kw["files"]))
        return request(method, url, **kw)

    monkeypatch.setattr(client, "request", counting)
    pid, truth = setup_project(client, cfg, seed=4)
    assert len(truth) == 30
    assert uploads == [6, 3, 21, 10, 10, 1]  # test, val, pool (refused), pool in halves
    expected = split_of_names_digits(cfg, seed=4)
    images = client.get(f"/projects/{pid}/images", params={"limit": 100})["data"]
    assert {im["filename"]: im["split"] for im in images} == expected
    for im in images:
        held_out = im["split"] != "pool"
        assert (im["labelled_pixels"] == im["width"] * im["height"]) == held_out
    assert client.get(f"/projects/{pid}")["settings"]["seed"] == 4


def split_of_names_digits(cfg: SimulationConfig, seed: int) -> dict[str, str]:
    samples = list(load_dataset(cfg.dataset, count=cfg.count, seed=seed))
    splits = splits_for(len(samples), cfg.val_fraction, cfg.test_fraction, seed)
    return {f"{s.name}.png": sp.value for s, sp in zip(samples, splits, strict=True)}


def labelled_pool_masks(client: Client, pid: int) -> dict[int, np.ndarray]:
    images = client.get(f"/projects/{pid}/images", params={"split": "pool", "limit": 100})
    return {
        im["id"]: np.asarray(
            Image.open(io.BytesIO(client.request("GET", f"/images/{im['id']}/mask").content))
        )
        for im in images["data"]
        if im["labelled_pixels"] > 0
    }


def annotated_project(
    stack: Stack, protocol: simulate.Protocol, **cfg: Any
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """A 16-image digits project whose bootstrap queue (8 regions) the annotator answered:
    (pool masks of the labelled images, ground truth), by image id."""
    client = api_client(stack)
    pid, truth = setup_project(client, SimulationConfig(count=16, budget=8, **cfg), seed=1)
    build_queue_inline(stack, pid)
    assert annotate_queue(client, pid, truth, protocol) == 8
    return labelled_pool_masks(client, pid), truth


def test_the_exact_protocol_answers_the_ground_truth_pixels(stack: Stack) -> None:
    masks, truth = annotated_project(stack, "exact", region_kind="superpixel", region_size=12)
    assert masks
    for image_id, mask in masks.items():
        labelled = mask != 255
        np.testing.assert_array_equal(mask[labelled], truth[image_id][labelled])


def test_the_dominant_protocol_answers_a_regions_majority_class(stack: Stack) -> None:
    masks, truth = annotated_project(
        stack, "dominant", region_kind="grid", region_size=16, per_image_cap=None
    )
    assert sum(int((m != 255).sum()) for m in masks.values()) == 8 * 16 * 16
    for image_id, mask in masks.items():
        for y in range(0, mask.shape[0], 16):
            for x in range(0, mask.shape[1], 16):
                tile, gt = mask[y : y + 16, x : x + 16], truth[image_id][y : y + 16, x : x + 16]
                if (tile != 255).any():
                    assert (tile == np.bincount(gt.ravel()).argmax()).all()


def test_the_curve_keeps_miou_on_a_zero_to_one_axis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    limits: list[tuple[float, float]] = []

    def record(fig: Figure, *args: Any, **kw: Any) -> None:
        limits.extend(ax.get_ylim() for ax in fig.axes)

    monkeypatch.setattr(Figure, "savefig", record)
    rows = [
        {"label": "random", "round": r, "labelled_fraction": r / 10, "labelled_regions": 10 * r}
        | {"test_miou": 0.50 + 0.001 * r, "seed": 0}
        for r in (1, 2, 3)
    ]
    plot_learning_curves(rows, tmp_path / "curve.png")
    assert limits == [(0.0, 1.0), (0.0, 1.0)]


def test_csv_columns_time_each_round_and_name_the_protocol() -> None:
    for column in ("protocol", "label_s", "retrain_s", "requeue_s", "round_s", "seed_elapsed_s"):
        assert column in CSV_FIELDS
