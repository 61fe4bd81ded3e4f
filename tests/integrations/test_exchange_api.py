"""Export and import over real HTTP: COCO (pycocotools decodes it exactly), PNG masks in a
zip, Label Studio tasks; export -> import -> export gives the same bytes; bad files store
nothing."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from pycocotools import mask as mask_utils

from tests.conftest import Stack
from tests.integrations.helpers import add_scored_model, hand_mask, project_with_images, put_mask
from tests.utils import image_bytes, make_project, upload

H, W = 24, 32


@pytest.fixture
def labelled(stack: Stack, admin) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Three images, two of them labelled with hand-made masks."""
    project, images = project_with_images(admin, n=3, h=H, w=W, seed=10)
    masks = {}
    for k, im in enumerate(images[:2]):
        masks[im["id"]] = hand_mask(H, W, seed=k)
        put_mask(admin, im["id"], masks[im["id"]])
    return {"pid": project["id"], "images": images, "masks": masks}


def export(client: httpx.Client, pid: int, fmt: str) -> bytes:
    r = client.get(f"/projects/{pid}/export", params={"format": fmt})
    assert r.status_code == 200, r.text
    return r.content


def import_(client: httpx.Client, pid: int, fmt: str, data: bytes) -> httpx.Response:
    return client.post(
        f"/projects/{pid}/import", params={"format": fmt}, files={"file": ("f", data)}
    )


def mask_of(client: httpx.Client, image_id: int) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(client.get(f"/images/{image_id}/mask").content)))


def twin_project(client: httpx.Client) -> dict[str, Any]:
    """A second project with the same classes and the same images (uploaded in reverse)."""
    project = make_project(client, n_classes=3)
    files = [(f"img{i}.png", image_bytes(H, W, seed=10 + i)) for i in reversed(range(3))]
    assert upload(client, project["id"], *files).status_code == 201
    return project


def test_coco_export_decodes_exactly_with_pycocotools(admin, labelled) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(export(admin, labelled["pid"], "coco"))
    assert [c["name"] for c in doc["categories"]] == ["class0", "class1", "class2"]
    by_sha = {im["activeseg"]["sha256"]: im for im in doc["images"]}
    assert len(by_sha) == 3
    for image in labelled["images"]:
        entry = by_sha[image["sha256"]]
        assert (entry["file_name"], entry["height"], entry["width"]) == (image["filename"], H, W)
        rebuilt = np.full((H, W), 255, np.uint8)
        for ann in (a for a in doc["annotations"] if a["image_id"] == entry["id"]):
            seg = ann["segmentation"]
            binary = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
            assert ann["area"] == int(binary.sum())
            rebuilt[binary.astype(bool)] = ann["category_id"] - 1
        expected = labelled["masks"].get(image["id"], np.full((H, W), 255, np.uint8))
        assert np.array_equal(rebuilt, expected)


@pytest.mark.parametrize("fmt", ["coco", "png", "labelstudio"])
def test_export_import_export_is_byte_stable(admin, labelled, fmt: str) -> None:  # type: ignore[no-untyped-def]
    first = export(admin, labelled["pid"], fmt)
    assert export(admin, labelled["pid"], fmt) == first  # deterministic
    r = import_(admin, labelled["pid"], fmt, first)  # into the same project: nothing changes
    assert r.status_code == 200, r.text
    assert r.json()["updated"] == 0
    assert export(admin, labelled["pid"], fmt) == first
    if fmt == "labelstudio":
        return  # its image URLs name this project's image ids
    twin = twin_project(admin)
    r = import_(admin, twin["id"], fmt, first)
    assert r.status_code == 200, r.text
    assert r.json()["updated"] == 2
    assert export(admin, twin["id"], fmt) == first
    for image in admin.get(f"/projects/{twin['id']}/images").json()["data"]:
        src = next(i for i in labelled["images"] if i["sha256"] == image["sha256"])
        want = labelled["masks"].get(src["id"], np.full((H, W), 255, np.uint8))
        assert np.array_equal(mask_of(admin, image["id"]), want)


def test_png_zip_layout(admin, labelled) -> None:  # type: ignore[no-untyped-def]
    with zipfile.ZipFile(io.BytesIO(export(admin, labelled["pid"], "png"))) as zf:
        names = zf.namelist()
        assert names[0] == "classes.json" and names[-1] == "images.json"
        assert sorted(n for n in names if n.startswith("masks/")) == [
            "masks/img0.png",
            "masks/img1.png",
        ]
        meta = json.loads(zf.read("classes.json"))
        assert meta["ignore_index"] == 255 and len(meta["classes"]) == 3
        image0 = next(i for i in labelled["images"] if i["filename"] == "img0.png")
        arr = np.asarray(PILImage.open(io.BytesIO(zf.read("masks/img0.png"))))
        assert np.array_equal(arr, labelled["masks"][image0["id"]])


def test_png_masks_without_images_json_match_by_file_name(admin, labelled) -> None:  # type: ignore[no-untyped-def]
    twin = twin_project(admin)
    buf = io.BytesIO()
    new = np.zeros((H, W), np.uint8)
    new[5:9, 5:9] = 2
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(
            "labels/classes.json",
            json.dumps({"classes": [{"id": 0, "name": "class0"}, {"id": 7, "name": "class2"}]}),
        )
        png = io.BytesIO()
        PILImage.fromarray(np.where(new == 2, 7, 0).astype(np.uint8)).save(png, format="PNG")
        zf.writestr("labels/masks/img2.png", png.getvalue())
    r = import_(admin, twin["id"], "png", buf.getvalue())
    assert r.status_code == 200, r.text
    image = next(
        i
        for i in admin.get(f"/projects/{twin['id']}/images").json()["data"]
        if i["filename"] == "img2.png"
    )
    assert np.array_equal(mask_of(admin, image["id"]), new)  # file class 7 -> project class 2


def test_labelstudio_export_has_annotations_and_predictions(stack: Stack, admin, labelled) -> None:  # type: ignore[no-untyped-def]
    pid, images = labelled["pid"], labelled["images"]
    pred = np.ones((H, W), np.uint8)
    image_id = images[2]["id"]
    add_scored_model(stack, pid, {image_id: pred}, {image_id: 0.3}, {image_id: 0.4375})
    tasks = json.loads(export(admin, pid, "labelstudio"))
    assert len(tasks) == 3
    by_sha = {t["data"]["activeseg_sha256"]: t for t in tasks}
    scored = by_sha[images[2]["sha256"]]
    [prediction] = scored["predictions"]
    assert prediction["model_version"] == f"activeseg-p{pid}-v1"
    assert prediction["score"] == 0.4375  # the stored expected IoU, as /ls/{id}/predict says
    assert "annotations" not in scored
    labelled0 = by_sha[images[0]["sha256"]]
    # a signed link (tests/api/test_signed_links.py checks that it opens without a token)
    image_path, query = labelled0["data"]["image"].split("?")
    assert image_path.endswith(f"/images/{images[0]['id']}/file")
    assert sorted(p.split("=")[0] for p in query.split("&")) == ["exp", "kid", "sig"]
    assert {r["value"]["brushlabels"][0] for r in labelled0["annotations"][0]["result"]} == {
        "class0",
        "class1",
        "class2",
    }


def test_bad_imports_are_refused_and_store_nothing(admin, labelled) -> None:  # type: ignore[no-untyped-def]
    pid = labelled["pid"]
    doc = json.loads(export(admin, pid, "coco"))
    twin = twin_project(admin)
    # one image the twin lacks: the whole import is refused, even the images it has
    doc["images"].append({"id": 99, "file_name": "missing.png", "width": W, "height": H})
    r = import_(admin, twin["id"], "coco", json.dumps(doc).encode())
    assert r.status_code == 422 and "missing.png" in r.json()["detail"]
    cases = [
        ("coco", b"{not json", "not a COCO JSON"),
        ("coco", json.dumps({**doc, "categories": [{"id": 1, "name": "dog"}]}).encode(), "dog"),
        ("png", b"PK-not-a-zip", "not a zip"),
        ("labelstudio", b'[{"nodata": 1}]', "data"),
    ]
    for fmt, data, words in cases:
        r = import_(admin, twin["id"], fmt, data)
        assert r.status_code == 422, (fmt, r.text)
        assert words in r.json()["detail"]
    # overlapping classes in one image
    doc["images"].pop()
    first = next(a for a in doc["annotations"])
    clash = dict(first, id=999, category_id=first["category_id"] % 3 + 1)
    doc["annotations"].append(clash)
    r = import_(admin, twin["id"], "coco", json.dumps(doc).encode())
    assert r.status_code == 422 and "another class" in r.json()["detail"]
    for image in admin.get(f"/projects/{twin['id']}/images").json()["data"]:
        assert image["current_revision"] == 0


def test_export_streams_and_needs_membership(stack: Stack, admin, labelled) -> None:  # type: ignore[no-untyped-def]
    with admin.stream("GET", f"/projects/{labelled['pid']}/export", params={"format": "png"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/zip"
        assert "content-length" not in r.headers  # chunked: written image by image
        assert b"".join(r.iter_bytes()).startswith(b"PK")
    r = admin.get(f"/projects/{labelled['pid']}/export", params={"format": "xml"})
    assert r.status_code == 422
