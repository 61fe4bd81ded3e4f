"""``activeseg simulate``: the whole active-learning loop against a real service.

Each seed starts its own embedded service (``activeseg serve``: API + Celery worker, SQLite,
blob folder) in a fresh folder, builds a project from a dataset over HTTP, and then a
simulated annotator answers every queued region from the ground truth (one dominant label
per region), round after round: bootstrap queue -> label -> retrain -> re-score -> queue.
The learning curve (test mIoU vs labelled pixels and vs labelled regions) goes to CSV and PNG.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from activeseg.client.http import Client

log = logging.getLogger(__name__)


@dataclass
class SimulationConfig:
    dataset: str = "digits"
    count: int = 120
    measure: str = "entropy"
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

    @property
    def label(self) -> str:
        what = "random" if self.strategy == "random" else f"{self.measure}/{self.strategy}"
        return f"{what} ({self.region_kind})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def embedded_service(data_dir: Path, workers: int = 1, demo: bool = False) -> Iterator[Client]:
    """Start ``activeseg serve`` on the embedded default in ``data_dir``; yield an admin client
    (``demo``: with the digits demo project that ``serve`` makes on a fresh folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVESEG_")}
    env["ACTIVESEG_DATA_DIR"] = str(data_dir)
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = (data_dir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "activeseg.client.cli",
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


def setup_project(
    client: Client, cfg: SimulationConfig, seed: int
) -> tuple[int, dict[int, np.ndarray]]:
    """Create the project over HTTP; upload images; val/test images get their masks."""
    from activeseg.core.services.importer import split_for
    from activeseg.datasets.registry import load_dataset

    dataset = load_dataset(cfg.dataset, count=cfg.count, seed=seed)
    settings = {
        "region_kind": cfg.region_kind,
        "region_size": cfg.region_size,
        "measure": cfg.measure,
        "strategy": cfg.strategy,
        "batch_size": cfg.budget,
        "per_image_cap": cfg.per_image_cap,
        "auto_activate": True,
        "model": {"seed": seed, **cfg.model},
    }
    project = client.post(
        "/projects",
        json={
            "name": f"sim-{cfg.dataset}-{seed}-{uuid.uuid4().hex[:6]}",
            "classes": [{"id": c.id, "name": c.name, "colour": c.colour} for c in dataset.classes],
            "settings": settings,
        },
    )
    pid = project["id"]
    samples = list(dataset)
    truth: dict[int, np.ndarray] = {}
    for i, sample in enumerate(samples):
        split = split_for(i, len(samples), cfg.val_fraction, cfg.test_fraction).value
        r = client.request(
            "POST",
            f"/projects/{pid}/images",
            data={"split": split},
            files=[("files", (f"{sample.name}.png", _png(sample.image)))],
        )
        image_id = r.json()["data"][0]["image"]["id"]
        truth[image_id] = sample.mask
        if split != "pool":
            client.request(
                "PUT", f"/images/{image_id}/mask", files={"file": ("mask.png", _png(sample.mask))}
            )
    return pid, truth


def annotate_queue(client: Client, pid: int, truth: dict[int, np.ndarray]) -> int:
    """Lease and answer every queued task from the ground truth: the region's majority class."""
    done = 0
    while True:
        r = client.request("POST", f"/projects/{pid}/tasks/next")
        if r.status_code == 204:
            return done
        lease = r.json()
        y0, x0, y1, x1 = lease["bbox"]
        inside = np.asarray(Image.open(io.BytesIO(base64.b64decode(lease["region_mask_png"]))))
        gt = truth[lease["task"]["image_id"]][y0:y1, x0:x1][inside.astype(bool)]
        answer = int(np.bincount(gt).argmax())
        client.post(
            f"/tasks/{lease['task']['id']}/submit",
            json={
                "classes": {str(lease["task"]["regions"][0]): answer},
                "idempotency_key": uuid.uuid4().hex,
            },
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
    pid, truth = setup_project(client, cfg, seed)
    job = client.post(f"/projects/{pid}/rounds", json={"request_id": "bootstrap"})
    client.wait_job(job["id"])
    rows: list[dict[str, Any]] = []
    regions = 0
    for rnd in range(1, cfg.rounds + 1):
        regions += annotate_queue(client, pid, truth)
        job = client.post(f"/projects/{pid}/retrain", json={"request_id": f"round-{rnd}"})
        model_id = client.wait_job(job["id"])["result"]["model_version_id"]
        client.wait_idle(pid)
        model = client.get(f"/models/{model_id}")
        pixels, total = labelled_totals(client, pid)
        test = model["metrics"].get("test") or {}
        rows.append(
            {
                "label": cfg.label,
                "dataset": cfg.dataset,
                "measure": cfg.measure,
                "strategy": cfg.strategy,
                "region_kind": cfg.region_kind,
                "seed": seed,
                "round": rnd,
                "labelled_regions": regions,
                "labelled_pixels": pixels,
                "labelled_fraction": pixels / max(total, 1),
                "test_miou": test.get("miou"),
                "val_miou": model["metrics"].get("miou"),
                "model_version": model["version"],
            }
        )
        log.info(
            "seed %s round %s: %s regions, %.3f labelled, test mIoU %s",
            seed,
            rnd,
            regions,
            pixels / max(total, 1),
            test.get("miou"),
        )
    return rows


def run_simulation(
    cfg: SimulationConfig, workdir: Path | None = None, keep: bool = False
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    root = Path(workdir or tempfile.mkdtemp(prefix="activeseg-sim-"))
    try:
        for seed in cfg.seeds:
            with embedded_service(root / f"seed-{seed}", cfg.workers) as client:
                rows.extend(simulate_seed(client, cfg, seed))
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
    "seed",
    "round",
    "labelled_regions",
    "labelled_pixels",
    "labelled_fraction",
    "test_miou",
    "val_miou",
    "model_version",
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
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "Learning curves (mean ± std over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
