"""Factories for the integration tests: projects with images, labels and a scored model."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from sqlalchemy import select

from activeseg.core.tables import ImageScore, ModelState, ModelVersion, Project
from activeseg.integrations.brush_rle import mask_to_rle
from activeseg.jobs.score_pool import encode_heatmaps
from tests.conftest import Stack
from tests.utils import image_bytes, make_project, png_bytes, upload


def project_with_images(
    client: httpx.Client, n: int = 3, h: int = 24, w: int = 32, seed: int = 0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    project = make_project(client, n_classes=3)
    files = [(f"img{i}.png", image_bytes(h, w, seed=seed + i)) for i in range(n)]
    r = upload(client, project["id"], *files)
    assert r.status_code == 201, r.text
    return project, [d["image"] for d in r.json()["data"]]


def hand_mask(h: int, w: int, seed: int) -> np.ndarray:
    """A mask with all three classes in blocks and an unlabelled (255) band."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2, w // 3 :] = 1
    mask[h // 2 :, : w // 2] = 2
    mask[rng.integers(0, h), :] = 255
    mask[:, rng.integers(0, w)] = 255
    return mask


def put_mask(client: httpx.Client, image_id: int, mask: np.ndarray) -> None:
    r = client.put(f"/images/{image_id}/mask", files={"file": ("m.png", png_bytes(mask))})
    assert r.status_code == 201, r.text


def add_scored_model(
    stack: Stack,
    project_id: int,
    predictions: dict[int, np.ndarray],
    uncertainty: dict[int, float],
    expected_iou: dict[int, float] | None = None,
) -> int:
    """A ready, active model version whose stored scores say ``predictions[image_id]`` with a
    constant ``entropy`` of ``uncertainty[image_id]`` and an expected IoU of
    ``expected_iou[image_id]`` (default ``1 - uncertainty``); no network involved, and no
    weights: images without stored scores cannot be predicted on demand."""
    with stack.db.session() as s:  # type: ignore[attr-defined]
        mv = ModelVersion(
            project_id=project_id,
            version=1,
            state=ModelState.ready.value,
            config={"method": "mc_dropout", "mc_samples": 4},
            member_keys=[],
            metrics={"miou": 0.5},
        )
        s.add(mv)
        s.flush()
        for image_id, pred in predictions.items():
            ent = np.full(pred.shape, uncertainty[image_id], np.float32)
            iou = (expected_iou or {}).get(image_id, 1.0 - uncertainty[image_id])
            key = stack.store.put(encode_heatmaps({"entropy": ent}, pred, iou))  # type: ignore[attr-defined]
            s.add(
                ImageScore(
                    model_version_id=mv.id,
                    image_id=image_id,
                    measure="entropy",
                    mean=float(ent.mean()),
                    heatmap_key=key,
                    prediction_key=key,
                )
            )
        project = s.scalar(select(Project).where(Project.id == project_id))
        assert project is not None
        project.active_model_id = mv.id
        return mv.id


@dataclass
class Receiver:
    """A real HTTP receiver on 127.0.0.1 that answers with ``statuses`` in turn (then 200)."""

    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    times: list[float] = field(default_factory=list)  # time.monotonic() of each request


@contextmanager
def receiver(statuses: list[int] | None = None) -> Iterator[Receiver]:
    rec = Receiver(list(statuses or []))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            rec.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            rec.times.append(time.monotonic())
            code = rec.statuses.pop(0) if rec.statuses else 200
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


def brush_results(mask: np.ndarray, from_name: str, to_name: str) -> list[dict[str, Any]]:
    """Label Studio brush results painting each class of ``mask`` (255 = nothing painted),
    class ``c`` under the label ``class{c}``, as its editor saves them."""
    height, width = mask.shape
    return [
        {
            "id": f"r{cls}",
            "from_name": from_name,
            "to_name": to_name,
            "type": "brushlabels",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {
                "format": "rle",
                "rle": mask_to_rle((mask == cls).astype(np.uint8) * 255),
                "brushlabels": [f"class{cls}"],
            },
        }
        for cls in sorted(set(np.unique(mask).tolist()) - {255})
    ]
