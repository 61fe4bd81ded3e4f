"""``activeseg simulate``: the whole active-learning loop against a real service.

Each seed starts its own embedded service (``activeseg serve``: API + Celery worker, SQLite,
blob folder) in a fresh folder, builds a project from a dataset over HTTP, and then a
simulated annotator answers every queued region from the ground truth, round after round:
bootstrap queue -> label -> retrain -> re-score -> queue. The annotator follows one of two
protocols: ``dominant`` (one label per region, its majority class) or ``exact`` (a mask patch
with the region's ground-truth pixels). The learning curve (test mIoU vs labelled pixels and
vs labelled regions) and the seconds each step of a round took go to CSV and PNG.

The seed varies every random draw: the dataset (generated ones), the val/test/pool split, the
model's initialisation and batches (``model.seed``) and the queue's draws (``seed``).
"""

from __future__ import annotations

import base64
import csv
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from activeseg.client.http import ApiError, Client
from activeseg.core.tables import Split
from activeseg.uncertainty.labels import UNLABELLED
from activeseg.uncertainty.measures import DEFAULT_MEASURE

log = logging.getLogger(__name__)

Protocol = Literal["dominant", "exact"]
PROTOCOLS: tuple[Protocol, ...] = ("dominant", "exact")
IGNORE = UNLABELLED  # "unlabelled" in masks and patches

# Several images per upload request; both stay under the service's defaults
# (ACTIVESEG_MAX_IMAGES_PER_UPLOAD = 500, ACTIVESEG_MAX_UPLOAD_BYTES = 64 MiB per request).
UPLOAD_FILES_PER_REQUEST = 100
UPLOAD_BYTES_PER_REQUEST = 16 * 1024 * 1024


@dataclass
class SimulationConfig:
    dataset: str = "digits"
    count: int = 120
    measure: str = DEFAULT_MEASURE
    strategy: str = "power"
    region_kind: str = "superpixel"
    region_size: int = 12
    rounds: int = 4
    budget: int = 40
    seeds: list[int] = field(default_factory=lambda: [0])
    per_image_cap: int | None = 3
    model: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    workers: int = 1
    protocol: Protocol = "dominant"
    control_fraction: float | None = None  # ProjectSettings.control_fraction; None: its default

    @property
    def label(self) -> str:
        what = "random" if self.strategy == "random" else f"{self.measure}/{self.strategy}"
        how = self.region_kind if self.protocol == "dominant" else f"{self.region_kind}, exact"
        return f"{what} ({how})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def embedded_service(data_dir: Path, workers: int = 1, demo: bool = False) -> Iterator[Client]:
    """Start ``activeseg serve`` on the embedded default in ``data_dir``; yield an admin client
    (``demo``: with the digits demo project that ``serve`` makes on a fresh folder).

    The service is the simulation's own, with no other client, so its per-token rate limits
    are off: with them, every seed would wait out its own upload limit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVESEG_")}
    env["ACTIVESEG_DATA_DIR"] = str(data_dir)
    env["ACTIVESEG_RATE_LIMIT_UPLOADS_PER_MINUTE"] = "0"
    env["ACTIVESEG_RATE_LIMIT_TASKS_PER_MINUTE"] = "0"
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = (data_dir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "activeseg.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--demo" if demo else "--no-demo",
        ],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        token_file = data_dir / "admin-token"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"activeseg serve exited; see {data_dir / 'serve.log'}")
            try:
                if token_file.exists() and Client(base).get("/health")["database"] == "ok":
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("activeseg serve did not come up within 180 s")
            time.sleep(0.3)
        with Client(base, token_file.read_text().strip()) as client:
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log_file.close()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def project_settings(
    cfg: SimulationConfig, seed: int, model_defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The settings of the project the simulation creates for ``seed``; ``model_defaults``
    (the dataset's, e.g. digits: no flips) apply where ``cfg.model`` leaves a setting unset."""
    settings: dict[str, Any] = {
        "region_kind": cfg.region_kind,
        "region_size": cfg.region_size,
        "measure": cfg.measure,
        "strategy": cfg.strategy,
        "batch_size": cfg.budget,
        "per_image_cap": cfg.per_image_cap,
        "auto_activate": True,
        "seed": seed,
        "model": {**(model_defaults or {}), "seed": seed, **cfg.model},
    }
    if cfg.control_fraction is not None:
        settings["control_fraction"] = cfg.control_fraction
    return settings


def upload_images(
    client: Client, pid: int, files: list[tuple[str, bytes]], split: Split
) -> list[int]:
    """Upload ``files`` (name, bytes) to ``split``, many per request; their image ids, in order
    (a duplicate gets the id of the image it repeats). A service with smaller per-request limits
    than ours answers 413; the request is then sent again in halves."""
    ids: list[int] = []
    per_request, start = UPLOAD_FILES_PER_REQUEST, 0
    while start < len(files):
        end, size = start, 0
        while (
            end < len(files)
            and end - start < per_request
            and (end == start or size + len(files[end][1]) <= UPLOAD_BYTES_PER_REQUEST)
        ):
            size += len(files[end][1])
            end += 1
        try:
            r = client.request(
                "POST",
                f"/projects/{pid}/images",
                idempotent=True,  # images are kept by content: a resent batch adds nothing
                data={"split": split.value},
                files=[("files", (name, data)) for name, data in files[start:end]],
            )
        except ApiError as exc:
            if exc.status != 413 or end - start == 1:
                raise
            per_request = (end - start) // 2
            continue
        ids.extend(int(item["image"]["id"]) for item in r.json()["data"])
        start = end
    return ids


def setup_project(
    client: Client, cfg: SimulationConfig, seed: int
) -> tuple[int, dict[int, np.ndarray]]:
    """Create the project over HTTP; upload images (one request per split and batch); val/test
    images get their masks. The split is the one ``activeseg`` import makes for ``seed``: a
    seeded permutation (:func:`activeseg.datasets.importer.splits_for`)."""
    from activeseg.datasets.importer import splits_for
    from activeseg.datasets.registry import load_dataset

    dataset = load_dataset(cfg.dataset, count=cfg.count, seed=seed)
    project = client.post(
        "/projects",
        json={
            "name": f"sim-{cfg.dataset}-{seed}-{uuid.uuid4().hex[:6]}",
            "classes": [{"id": c.id, "name": c.name, "colour": c.colour} for c in dataset.classes],
            "settings": project_settings(cfg, seed, dataset.model_defaults),
        },
    )
    pid = project["id"]
    samples = list(dataset)
    splits = splits_for(len(samples), cfg.val_fraction, cfg.test_fraction, seed)
    truth: dict[int, np.ndarray] = {}
    for split in (Split.test, Split.val, Split.pool):
        mine = [s for s, sp in zip(samples, splits, strict=True) if sp == split]
        if not mine:
            continue
        ids = upload_images(client, pid, [(f"{s.name}.png", _png(s.image)) for s in mine], split)
        for image_id, sample in zip(ids, mine, strict=True):
            truth[image_id] = sample.mask
            if split != Split.pool:
                client.request(
                    "PUT",
                    f"/images/{image_id}/mask",
                    files={"file": ("mask.png", _png(sample.mask))},
                )
    return pid, truth


def annotate_queue(
    client: Client, pid: int, truth: dict[int, np.ndarray], protocol: Protocol = "dominant"
) -> int:
    """Lease and answer every queued task from the ground truth; the number answered.

    ``dominant``: one label for the task's region, the majority class of its pixels.
    ``exact``: a mask patch over the task's bbox with the region's ground-truth pixels (255
    outside the region)."""
    done = 0
    while True:
        r = client.request("POST", f"/projects/{pid}/tasks/next")
        if r.status_code == 204:
            return done
        lease = r.json()
        y0, x0, y1, x1 = lease["bbox"]
        inside = np.asarray(
            Image.open(io.BytesIO(base64.b64decode(lease["region_mask_png"])))
        ).astype(bool)
        window = truth[lease["task"]["image_id"]][y0:y1, x0:x1]
        answer: dict[str, Any]
        if protocol == "exact":
            patch = np.where(inside, window, IGNORE).astype(np.uint8)
            if not (patch != IGNORE).any():  # nothing labelled under the region: skip it
                client.post(f"/tasks/{lease['task']['id']}/skip", json={"reason": "unclear"})
                continue
            answer = {"patch_png": base64.b64encode(_png(patch)).decode()}
        else:
            gt = window[inside]
            gt = gt[gt != IGNORE]
            if gt.size == 0:  # nothing labelled under the region: leave it for later rounds
                client.post(f"/tasks/{lease['task']['id']}/skip", json={"reason": "unclear"})
                continue
            answer = {"classes": {str(lease["task"]["regions"][0]): int(np.bincount(gt).argmax())}}
        client.post(
            f"/tasks/{lease['task']['id']}/submit",
            json={**answer, "idempotency_key": uuid.uuid4().hex},
        )
        done += 1


def labelled_totals(client: Client, pid: int) -> tuple[int, int]:
    pixels, total, offset = 0, 0, 0
    while True:
        page = client.get(
            f"/projects/{pid}/images", params={"split": "pool", "offset": offset, "limit": 500}
        )
        for im in page["data"]:
            pixels += im["labelled_pixels"]
            total += im["width"] * im["height"]
        offset += len(page["data"])
        if offset >= page["count"] or not page["data"]:
            return pixels, total


def simulate_seed(client: Client, cfg: SimulationConfig, seed: int) -> list[dict[str, Any]]:
    """One seed's learning curve: a CSV row per round, with the seconds its steps took."""
    started = time.monotonic()
    pid, truth = setup_project(client, cfg, seed)
    job = client.post(f"/projects/{pid}/rounds", json={"request_id": "bootstrap"})
    client.wait_job(job["id"])
    setup_s = time.monotonic() - started
    rows: list[dict[str, Any]] = []
    regions = 0
    for rnd in range(1, cfg.rounds + 1):
        t_round = time.monotonic()
        regions += annotate_queue(client, pid, truth, cfg.protocol)
        t_retrain = time.monotonic()
        job = client.post(f"/projects/{pid}/retrain", json={"request_id": f"round-{rnd}"})
        model_id = client.wait_job(job["id"])["result"]["model_version_id"]
        t_requeue = time.monotonic()
        client.wait_idle(pid)  # the new model's scoring and queue
        t_done = time.monotonic()
        model = client.get(f"/models/{model_id}")
        pixels, total = labelled_totals(client, pid)
        test = model["metrics"].get("test") or {}
        ended = time.monotonic()
        rows.append(
            {
                "label": cfg.label,
                "dataset": cfg.dataset,
                "measure": cfg.measure,
                "strategy": cfg.strategy,
                "region_kind": cfg.region_kind,
                "protocol": cfg.protocol,
                "seed": seed,
                "round": rnd,
                "labelled_regions": regions,
                "labelled_pixels": pixels,
                "labelled_fraction": pixels / max(total, 1),
                "test_miou": test.get("miou"),
                "val_miou": model["metrics"].get("miou"),
                "model_version": model["version"],
                "label_s": round(t_retrain - t_round, 3),
                "retrain_s": round(t_requeue - t_retrain, 3),
                "requeue_s": round(t_done - t_requeue, 3),
                "round_s": round(ended - t_round, 3),
                "seed_elapsed_s": round(ended - started, 3),
            }
        )
        log.info(
            "seed %s round %s: %s regions, %.3f labelled, test mIoU %s; %.1f s (label %.1f, "
            "retrain %.1f, re-score/queue %.1f)",
            seed,
            rnd,
            regions,
            pixels / max(total, 1),
            test.get("miou"),
            ended - t_round,
            t_retrain - t_round,
            t_requeue - t_retrain,
            t_done - t_requeue,
        )
    total_s = time.monotonic() - started
    log.info(
        "seed %s: %.1f s (project setup and bootstrap queue %.1f s, %s rounds %.1f s)",
        seed,
        total_s,
        setup_s,
        cfg.rounds,
        total_s - setup_s,
    )
    return rows


def run_simulation(
    cfg: SimulationConfig, workdir: Path | None = None, keep: bool = False
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    root = Path(workdir or tempfile.mkdtemp(prefix="activeseg-sim-"))
    try:
        for seed in cfg.seeds:
            started = time.monotonic()
            with embedded_service(root / f"seed-{seed}", cfg.workers) as client:
                log.info("seed %s: service up in %.1f s", seed, time.monotonic() - started)
                rows.extend(simulate_seed(client, cfg, seed))
            log.info(
                "seed %s: %.1f s in all, service start and stop included",
                seed,
                time.monotonic() - started,
            )
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return rows


CSV_FIELDS = [
    "label",
    "dataset",
    "measure",
    "strategy",
    "region_kind",
    "protocol",
    "seed",
    "round",
    "labelled_regions",
    "labelled_pixels",
    "labelled_fraction",
    "test_miou",
    "val_miou",
    "model_version",
    "label_s",  # the simulated annotator answering the round's queue
    "retrain_s",  # the retrain job, requested to done
    "requeue_s",  # then until the project is idle: re-scoring the pool, building the queue
    "round_s",  # all of the round, the above plus reading the metrics
    "seed_elapsed_s",  # since the seed began (project setup, bootstrap queue) to round's end
]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def plot_learning_curves(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Test mIoU vs labelled pixel fraction and vs labelled regions; mean +- std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = sorted({str(r["label"]) for r in rows})
    for label in labels:
        mine = [r for r in rows if r["label"] == label and r["test_miou"] not in (None, "")]
        rounds = sorted({int(r["round"]) for r in mine})
        for ax, xkey, scale in (
            (axes[0], "labelled_fraction", 100.0),
            (axes[1], "labelled_regions", 1.0),
        ):
            xs, means, stds = [], [], []
            for rnd in rounds:
                at = [r for r in mine if int(r["round"]) == rnd]
                xs.append(np.mean([float(r[xkey]) for r in at]) * scale)
                vals = [float(r["test_miou"]) for r in at]
                means.append(np.mean(vals))
                stds.append(np.std(vals))
            m, sd = np.asarray(means), np.asarray(stds)
            ax.plot(xs, m, marker="o", label=label)
            ax.fill_between(xs, m - sd, m + sd, alpha=0.2)
    axes[0].set_xlabel("labelled pixels of the pool (%)")
    axes[1].set_xlabel("labelled regions")
    for ax in axes:
        ax.set_ylabel("test mIoU")
        # The whole mIoU range: an axis fitted to the data makes a flat curve look steep.
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")  # the 0-1 axis leaves no corner always free
    fig.suptitle(title or "Learning curves (mean ± std over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
