"""Export and import of a project's labels: COCO JSON, PNG masks (zip), Label Studio tasks.

Exports stream: images are read page by page in a fixed order (sha256), each image's mask is
decoded, written and dropped before the next; nothing holds a whole project's masks. The
bytes depend only on the labels (sorted keys, fixed order, no timestamps), so export ->
import -> export gives the same file. One exception, in the Label Studio tasks: each image URL
is a signed link (activeseg.core.services.links) so that Label Studio opens it without a
token; its expiry is rounded up to a whole UTC day, so the file stays the same all day and
changes only at midnight UTC or when the signing key is rotated.

Imports check every item first and only then store anything, in the caller's one transaction:
a bad file stores nothing. An image whose mask equals its current labels gets no revision.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from activeseg.core.db import Database
from activeseg.core.errors import Invalid, TooLarge
from activeseg.core.imaging import decode_mask, encode_png
from activeseg.core.services import labels, links
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Image, ImageScore, ModelVersion, Project, User
from activeseg.integrations import coco, label_studio, label_studio_annotations, png_masks
from activeseg.integrations.png_masks import canonical_json
from activeseg.uncertainty.labels import UNLABELLED
from activeseg.uncertainty.measures import DEFAULT_MEASURE

Format = Literal["coco", "png", "labelstudio"]
FORMATS: tuple[str, ...] = ("coco", "png", "labelstudio")
MEDIA_TYPES = {
    "coco": "application/json",
    "png": "application/zip",
    "labelstudio": "application/json",
}
EXTENSIONS = {"coco": "coco.json", "png": "masks.zip", "labelstudio": "labelstudio.json"}
PAGE = 100
LINK_TTL_DAYS = 30
"""Default life of the signed image links in a Label Studio export, before rounding up."""


# --- reading the project -------------------------------------------------------------------


def iter_images(db: Database, project_id: int, page: int = PAGE) -> Iterator[Image]:
    """The project's images ordered by sha256 (an order that does not depend on ids, upload
    order or collation), fetched ``page`` rows at a time."""
    last = ""
    while True:
        with db.session() as s:
            rows = list(
                s.scalars(
                    select(Image)
                    .where(Image.project_id == project_id, Image.sha256 > last)
                    .order_by(Image.sha256)
                    .limit(page)
                )
            )
            for row in rows:
                s.expunge(row)
        if not rows:
            return
        yield from rows
        last = rows[-1].sha256


def _mask(db: Database, store: BlobStore, image: Image) -> np.ndarray:
    with db.session() as s:
        return labels.current_mask(s, store, image)


def _project(db: Database, project_id: int) -> Project:
    with db.session() as s:
        project = s.get(Project, project_id)
        assert project is not None
        s.expunge(project)
        return project


# --- export --------------------------------------------------------------------------------


def export_stream(
    db: Database,
    store: BlobStore,
    project_id: int,
    fmt: str,
    base_url: str = "",
    link_ttl_days: int = LINK_TTL_DAYS,
    now: datetime | None = None,
) -> Iterator[bytes]:
    """The export's bytes, streamed. ``base_url``, ``link_ttl_days`` and ``now`` make the
    Label Studio tasks' signed image links (see :func:`_export_labelstudio`)."""
    project = _project(db, project_id)
    if fmt == "coco":
        return _export_coco(db, store, project)
    if fmt == "png":
        return _export_png(db, store, project)
    if fmt == "labelstudio":
        expires_at = links.day_ceiling((now or datetime.now(UTC)) + timedelta(days=link_ttl_days))
        return _export_labelstudio(db, store, project, base_url.rstrip("/"), expires_at)
    raise Invalid(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _export_coco(db: Database, store: BlobStore, project: Project) -> Iterator[bytes]:
    classes = list(project.classes)
    head = {"categories": coco.categories(classes), "info": coco.INFO}
    yield canonical_json(head)[:-1] + b',"images":['
    ordinal: dict[str, int] = {}  # sha256 -> COCO image id, for the annotation pass
    for n, image in enumerate(iter_images(db, project.id), start=1):
        ordinal[image.sha256] = n
        entry = {
            "id": n,
            "file_name": image.filename,
            "width": image.width,
            "height": image.height,
            "activeseg": {"sha256": image.sha256, "split": image.split},
        }
        yield (b"," if n > 1 else b"") + canonical_json(entry)
    yield b'],"annotations":['
    ann_id = 0
    for image in iter_images(db, project.id):
        if image.sha256 not in ordinal or image.labelled_pixels == 0:
            continue
        for ann in coco.mask_annotations(_mask(db, store, image), classes):
            ann_id += 1
            ann.update(id=ann_id, image_id=ordinal[image.sha256])
            yield (b"," if ann_id > 1 else b"") + canonical_json(ann)
    yield b"]}"


def _export_png(db: Database, store: BlobStore, project: Project) -> Iterator[bytes]:
    zs = png_masks.ZipStream()
    yield zs.add(
        png_masks.CLASSES_JSON,
        canonical_json({"classes": list(project.classes), "ignore_index": project.ignore_index}),
    )
    stems = Counter(png_masks.mask_stem(im.filename) for im in iter_images(db, project.id))
    duplicated = {stem for stem, k in stems.items() if k > 1}
    for image in iter_images(db, project.id):
        if image.labelled_pixels == 0:
            continue
        name = png_masks.mask_entry(image.filename, image.sha256, duplicated)
        yield zs.add(name, encode_png(_mask(db, store, image)))

    def listing() -> Iterator[bytes]:
        yield b"["
        first = True
        for image in iter_images(db, project.id):
            if image.labelled_pixels == 0:
                continue
            entry = {
                "file_name": image.filename,
                "height": image.height,
                "mask": png_masks.mask_entry(image.filename, image.sha256, duplicated),
                "sha256": image.sha256,
                "split": image.split,
                "width": image.width,
            }
            yield (b"" if first else b",") + canonical_json(entry)
            first = False
        yield b"]"

    yield from zs.add_lines(png_masks.IMAGES_JSON, listing())
    yield zs.close()


def _export_labelstudio(
    db: Database, store: BlobStore, project: Project, base_url: str, expires_at: datetime
) -> Iterator[bytes]:
    """Label Studio tasks. ``data.image`` is an absolute link to the stored file signed until
    ``expires_at`` (a whole UTC day, see :func:`export_stream`): Label Studio's editor opens
    it without a token, and :func:`label_studio.resolve_image` still finds the image in it."""
    classes = list(project.classes)
    with db.session() as s:  # one key signs every task's link (made here on the first use)
        key = links.signing_key(s)  # detached: id and secret only
    config = label_studio.DEFAULT_CONFIG
    with db.session() as s:
        mv = s.get(ModelVersion, project.active_model_id) if project.active_model_id else None
        if mv is not None:
            s.expunge(mv)
    version = label_studio.model_version_name(project, mv)
    measure = project.settings.get("measure", DEFAULT_MEASURE)
    yield b"["
    for n, image in enumerate(iter_images(db, project.id)):
        path = f"/images/{image.id}/file"
        task: dict[str, Any] = {
            "data": {
                "image": f"{base_url}{path}?{links.sign_with(key, path, {}, expires_at)}",
                "activeseg_file_name": image.filename,
                "activeseg_sha256": image.sha256,
            }
        }
        if image.labelled_pixels > 0:
            mask = _mask(db, store, image)
            result = label_studio.prediction_results(mask, classes, config)
            task["annotations"] = [{"result": result, "ground_truth": False}]
        if mv is not None:
            with db.session() as s:
                row = s.scalar(
                    select(ImageScore)
                    .where(
                        ImageScore.model_version_id == mv.id,
                        ImageScore.image_id == image.id,
                    )
                    .order_by(ImageScore.measure != measure, ImageScore.measure)
                    .limit(1)
                )
                if row is not None:
                    s.expunge(row)
            if row is not None:
                prediction, score = label_studio.stored_score(store.get(row.heatmap_key))
                result = label_studio.prediction_results(prediction, classes, config)
                shown = round(score, 6) if score is not None else None  # as /ls/{id}/predict
                task["predictions"] = [{"model_version": version, "result": result, "score": shown}]
        yield (b"," if n else b"") + canonical_json(task)
    yield b"]"


# --- import --------------------------------------------------------------------------------

MaskSource = Callable[[], np.ndarray]


@dataclass(frozen=True)
class ImportItem:
    image: Image
    mask: MaskSource  # decodes the item's mask on demand (twice: check, then store)


@dataclass(frozen=True)
class ImportSummary:
    format: str
    images: int
    updated: int
    unchanged: int


def import_labels(
    session: Session,
    store: BlobStore,
    project: Project,
    user: User,
    fmt: str,
    data: bytes,
    *,
    max_entry_bytes: int,
) -> ImportSummary:
    """Check every item of ``data``, then store each changed mask as a new revision (source
    ``import``). Raises Invalid (422) naming the first problem; nothing is stored then."""
    try:
        items = _checked_items(session, project, fmt, data, max_entry_bytes)
    except _MALFORMED as exc:
        # The checks above name the usual mistakes; a file shaped in a way none of them
        # foresaw (a list where an id belongs, a corrupt zip entry) is still the file's fault.
        raise Invalid(f"the {fmt} file is malformed ({type(exc).__name__}: {exc})") from None
    updated = 0
    for item in items:
        mask = item.mask()
        if np.array_equal(mask, labels.current_mask(session, store, item.image)):
            continue
        labels.save_revision(session, store, item.image, mask, source="import", author_id=user.id)
        updated += 1
    return ImportSummary(fmt, len(items), updated, len(items) - updated)


# What parsing a malformed file can raise beyond the checks' own Invalid (no I/O, no database).
_MALFORMED = (
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
    RecursionError,
    EOFError,
    NotImplementedError,
    zipfile.BadZipFile,
    zlib.error,
)


def _checked_items(
    session: Session, project: Project, fmt: str, data: bytes, max_entry_bytes: int
) -> list[ImportItem]:
    if fmt == "coco":
        items = _coco_items(session, project, _json(data, "COCO"))
    elif fmt == "png":
        items = _png_items(session, project, data, max_entry_bytes)
    elif fmt == "labelstudio":
        items = _labelstudio_items(session, project, _json(data, "Label Studio"))
    else:
        raise Invalid(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    seen: dict[int, int] = {}
    for n, item in enumerate(items):
        if item.image.id in seen:
            raise Invalid(
                f"image {item.image.filename!r} appears twice in the file "
                f"(items {seen[item.image.id] + 1} and {n + 1})"
            )
        seen[item.image.id] = n
        item.mask()  # decode and check now, store nothing yet
    return items


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Invalid(f"not a {what} JSON file: {exc}") from None


class _Finder:
    """Finds project images by sha256 or by (unique) file name."""

    def __init__(self, session: Session, project: Project) -> None:
        self.session, self.project = session, project

    def find(self, sha256: Any, file_name: Any, where: str) -> Image:
        # A NUL names no stored image, and PostgreSQL cannot even compare text holding one.
        if isinstance(sha256, str) and sha256 and "\x00" not in sha256:
            image = self.session.scalar(
                select(Image).where(Image.project_id == self.project.id, Image.sha256 == sha256)
            )
            if image is not None:
                return image
        if isinstance(file_name, str) and file_name and "\x00" not in file_name:
            rows = list(
                self.session.scalars(
                    select(Image)
                    .where(Image.project_id == self.project.id, Image.filename == file_name)
                    .limit(2)
                )
            )
            if len(rows) == 1:
                return rows[0]
            if len(rows) > 1:
                raise Invalid(
                    f"{where}: several images of the project are named {file_name!r}; "
                    "give its sha256 to choose one"
                )
        raise Invalid(
            f"{where}: image {file_name or sha256!r} is not in project {self.project.id}; "
            "upload the images first, then import their labels"
        )


def _check_size(image: Image, height: Any, width: Any, where: str) -> None:
    if (height, width) != (image.height, image.width) and (height, width) != (None, None):
        raise Invalid(
            f"{where}: size {width}x{height} differs from the image's {image.width}x{image.height}"
        )


def _coco_items(session: Session, project: Project, doc: Any) -> list[ImportItem]:
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise Invalid('a COCO file is an object with "images", "annotations" and "categories"')
    by_name = {c["name"]: int(c["id"]) for c in project.classes}
    cat_to_class: dict[int, int] = {}
    for cat in doc.get("categories") or []:
        name = cat.get("name") if isinstance(cat, dict) else None
        if name not in by_name:
            raise Invalid(
                f"category {name!r} is not a class of this project; classes: {', '.join(by_name)}"
            )
        cat_to_class[cat.get("id")] = by_name[name]
    anns = doc.get("annotations") or []
    if not isinstance(anns, list):
        raise Invalid('"annotations" must be a list')
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in anns:
        if not isinstance(ann, dict):
            raise Invalid("every annotation must be an object")
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    finder = _Finder(session, project)
    items: list[ImportItem] = []
    ids = set()
    for entry in doc["images"]:
        if not isinstance(entry, dict):
            raise Invalid("every COCO image must be an object")
        where = f"COCO image {entry.get('id')!r}"
        extra = entry.get("activeseg")
        extra = extra if isinstance(extra, dict) else {}
        image = finder.find(extra.get("sha256"), entry.get("file_name"), where)
        _check_size(image, entry.get("height"), entry.get("width"), where)
        ids.add(entry.get("id"))
        group = by_image.get(entry.get("id"), [])

        def source(image: Image = image, group: list[Any] = group, where: str = where) -> Any:
            return coco.annotations_to_mask(
                group, cat_to_class, image.height, image.width, project.ignore_index, where
            )

        items.append(ImportItem(image, source))
    orphans = [k for k in by_image if k not in ids]
    if orphans:
        raise Invalid(f'annotations refer to image ids not in "images": {orphans[:10]}')
    return items


def _png_items(
    session: Session, project: Project, data: bytes, max_entry_bytes: int
) -> list[ImportItem]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise Invalid(
            "not a zip file; the png format is a zip of classes.json, masks/*.png and "
            "(optionally) images.json"
        ) from None
    entries = {i.filename: i for i in zf.infolist() if not i.is_dir()}
    for info in entries.values():
        if info.file_size > max_entry_bytes:
            raise TooLarge(f"{info.filename}: {info.file_size} bytes unpacked is over the limit")
    # Accept the files at the top of the zip or inside one folder (a zipped export folder).
    prefix = ""
    if png_masks.CLASSES_JSON not in entries:
        found = [n for n in entries if n.endswith("/" + png_masks.CLASSES_JSON)]
        if len(found) != 1:
            raise Invalid('the zip has no classes.json (a {"classes": [...]} file)')
        prefix = found[0][: -len(png_masks.CLASSES_JSON)]
    meta = _json(zf.read(prefix + png_masks.CLASSES_JSON), "classes.json")
    file_classes = meta.get("classes") if isinstance(meta, dict) else None
    if not isinstance(file_classes, list):
        raise Invalid('classes.json must be {"classes": [{"id": 0, "name": ...}, ...]}')
    by_name = {c["name"]: int(c["id"]) for c in project.classes}
    ignore = int(meta.get("ignore_index", UNLABELLED))
    lut = np.full(256, UNLABELLED, dtype=np.uint8)  # file value -> project class id
    known = np.zeros(256, dtype=bool)
    for c in file_classes:
        name, cid = (c.get("name"), c.get("id")) if isinstance(c, dict) else (None, None)
        if name not in by_name or not isinstance(cid, int) or not 0 <= cid < UNLABELLED:
            raise Invalid(
                f"classes.json: class {c!r} does not match a class of this project "
                f"({', '.join(by_name)})"
            )
        lut[cid], known[cid] = by_name[name], True
    lut[ignore], known[ignore] = project.ignore_index, True
    finder = _Finder(session, project)
    listing: list[dict[str, Any]]
    if prefix + png_masks.IMAGES_JSON in entries:
        listing = _json(zf.read(prefix + png_masks.IMAGES_JSON), "images.json")
        if not isinstance(listing, list):
            raise Invalid("images.json must be a list of {mask, file_name, sha256}")
    else:  # masks named after the images: masks/<stem>.png matches <stem>.<any extension>
        listing = [
            {"mask": n[len(prefix) :], "stem": n[len(prefix) + len(png_masks.MASK_DIR) : -4]}
            for n in sorted(entries)
            if n.startswith(prefix + png_masks.MASK_DIR) and n.lower().endswith(".png")
        ]
    items: list[ImportItem] = []
    for entry in listing:
        name = entry.get("mask") if isinstance(entry, dict) else None
        if not isinstance(name, str) or prefix + name not in entries:
            raise Invalid(f"images.json: mask {name!r} is not in the zip")
        if "stem" in entry:
            image = _by_stem(session, project, entry["stem"], name)
        else:
            image = finder.find(entry.get("sha256"), entry.get("file_name"), name)
        _check_size(image, entry.get("height"), entry.get("width"), name)

        def source(image: Image = image, name: str = name) -> Any:
            raw = zf.read(prefix + name)
            arr = decode_mask(raw, name, image.height, image.width, UNLABELLED, UNLABELLED)
            bad = np.unique(arr[~known[arr]])
            if bad.size:
                raise Invalid(
                    f"{name}: values {bad[:10].tolist()} are neither a class of classes.json "
                    f"nor {ignore} (unlabelled)"
                )
            return lut[arr]

        items.append(ImportItem(image, source))
    return items


def _by_stem(session: Session, project: Project, stem: str, where: str) -> Image:
    rows = [
        im
        for im in session.scalars(
            select(Image)
            .where(Image.project_id == project.id, Image.filename.startswith(stem))
            .limit(50)
        )
        if png_masks.mask_stem(im.filename) == stem
    ]
    if len(rows) != 1:
        raise Invalid(
            f"{where}: {'no' if not rows else 'more than one'} image of the project is named "
            f"{stem}.*; add an images.json mapping masks to sha256 or file names"
        )
    return rows[0]


def _labelstudio_items(session: Session, project: Project, doc: Any) -> list[ImportItem]:
    tasks = [doc] if isinstance(doc, dict) else doc
    if not isinstance(tasks, list):
        raise Invalid('a Label Studio file is a list of tasks: [{"data": {...}, ...}]')
    finder = _Finder(session, project)
    classes = list(project.classes)
    items: list[ImportItem] = []
    for n, task in enumerate(tasks):
        where = f"task {n + 1}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise Invalid(f'{where}: a task needs a "data" object')
        listed = task.get("annotations") or []
        if not isinstance(listed, list):
            raise Invalid(f'{where}: "annotations" must be a list of annotation objects')
        annotations = [a for a in listed if isinstance(a, dict) and not a.get("was_cancelled")]
        if not annotations:
            continue  # an unannotated task leaves the image's labels alone
        sha = data.get("activeseg_sha256")
        url = data.get("image")
        image = None
        if not sha and isinstance(url, str):
            image = label_studio.resolve_image(session, project, url)
        image = image or finder.find(sha, data.get("activeseg_file_name"), where)
        result = annotations[-1].get("result") or []

        def source(image: Image = image, result: Any = result, where: str = where) -> Any:
            try:
                return label_studio_annotations.annotation_mask(
                    result, classes, image.height, image.width
                )
            except Invalid as exc:
                raise Invalid(f"{where}: {exc.detail}") from None

        items.append(ImportItem(image, source))
    return items
