from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from activeseg.datasets import FolderDatasetError, folder, load_dataset


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path)


@pytest.fixture()
def dataset_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for index in range(3):
        image = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
        mask = rng.integers(0, 3, size=(20, 30)).astype(np.uint8)
        mask[:2] = 255
        write_png(tmp_path / f"img{index}.png", image)
        write_png(tmp_path / "masks" / f"img{index}.png", mask)
    return tmp_path


def test_folder_round_trip(dataset_dir: Path) -> None:
    dataset = folder(dataset_dir)
    samples = list(dataset)
    assert [s.name for s in samples] == ["img0", "img1", "img2"]
    assert dataset.in_channels == 1 and dataset.n_classes == 3
    assert [c.name for c in dataset.classes] == ["background", "class 1", "class 2"]
    for index, sample in enumerate(samples):
        expected_image = np.asarray(Image.open(dataset_dir / f"img{index}.png"))
        expected_mask = np.asarray(Image.open(dataset_dir / "masks" / f"img{index}.png"))
        np.testing.assert_array_equal(sample.image, expected_image)
        np.testing.assert_array_equal(sample.mask, expected_mask)
    assert len(list(load_dataset(f"folder:{dataset_dir}", count=2))) == 2


def test_classes_json_rgb_tiff_palette_masks_and_unlabelled_images(tmp_path: Path) -> None:
    rgb = np.zeros((8, 10, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    write_png(tmp_path / "a.png", rgb)
    tifffile.imwrite(tmp_path / "b.tif", (np.arange(80).reshape(8, 10) * 800).astype(np.uint16))
    write_png(tmp_path / "c.jpg", rgb)
    palette_mask = Image.fromarray(np.full((8, 10), 3, dtype=np.uint8), mode="L").convert("P")
    (tmp_path / "masks").mkdir()
    palette_mask.save(tmp_path / "masks" / "a.png")
    write_png(tmp_path / "masks" / "b.png", np.full((8, 10), 255, dtype=np.uint8))
    classes = [
        {"id": i, "name": n, "colour": c}
        for i, n, c in [
            (0, "bg", "#000000"),
            (1, "x", "#ff0000"),
            (2, "y", "#00ff00"),
            (3, "z", "#0000ff"),
        ]
    ]
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    dataset = folder(tmp_path)
    samples = {s.name: s for s in dataset}
    assert dataset.in_channels == 3 and [c.name for c in dataset.classes] == ["bg", "x", "y", "z"]
    assert samples["a"].image.shape == (8, 10, 3)
    assert set(np.unique(samples["a"].mask).tolist()) == {3}
    assert samples["b"].image.dtype == np.uint8 and samples["b"].image.max() == 255
    assert np.all(samples["c"].mask == 255)  # no mask file: the whole image is unlabelled
    with pytest.raises(FolderDatasetError, match="c.jpg has no mask"):
        folder(tmp_path, require_masks=True)


def test_errors_name_the_file(dataset_dir: Path) -> None:
    write_png(dataset_dir / "masks" / "img1.png", np.zeros((5, 5), dtype=np.uint8))
    with pytest.raises(FolderDatasetError, match=r"masks/img1.png is 5x5 but its image is 20x30"):
        list(folder(dataset_dir))
    write_png(dataset_dir / "masks" / "img1.png", np.zeros((20, 30, 3), dtype=np.uint8))
    with pytest.raises(FolderDatasetError, match=r"img1.png has shape \(20, 30, 3\).*index mask"):
        list(folder(dataset_dir))
    write_png(dataset_dir / "masks" / "img1.png", np.full((20, 30), 7, dtype=np.uint8))
    (dataset_dir / "classes.json").write_text(
        json.dumps(
            [
                {"id": 0, "name": "bg", "colour": "#000000"},
                {"id": 1, "name": "fg", "colour": "#ffffff"},
                {"id": 2, "name": "edge", "colour": "#00ffff"},
            ]
        )
    )
    with pytest.raises(FolderDatasetError, match=r"img1.png holds class ids \[7\]"):
        list(folder(dataset_dir))
    (dataset_dir / "classes.json").write_text(json.dumps([{"id": 0, "name": "bg"}, {"id": 2}]))
    with pytest.raises(FolderDatasetError, match=r"classes.json: entry 1"):
        folder(dataset_dir)
    (dataset_dir / "classes.json").write_text(
        json.dumps([{"id": 0, "name": "bg", "colour": "red"}, {"id": 1, "name": "fg"}])
    )
    with pytest.raises(FolderDatasetError, match=r"colour must look like '#1f77b4'"):
        folder(dataset_dir)
    (dataset_dir / "img0.png").write_bytes(b"not a png")
    (dataset_dir / "classes.json").unlink()
    write_png(dataset_dir / "masks" / "img1.png", np.zeros((20, 30), dtype=np.uint8))
    with pytest.raises(FolderDatasetError, match=r"cannot read image .*img0.png"):
        folder(dataset_dir)
    with pytest.raises(FolderDatasetError, match="does not exist"):
        folder(dataset_dir / "nowhere")
