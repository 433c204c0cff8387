"""The synthetic adas_mini: deterministic, in the documented layout, with classes a model can tell apart."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from aidi.cli import aidi_main
from aidi.pack import load_config
from aidi.sample import SCENE_NAMES, SCENES, generate
from aidi.sample.scenes import DETECTION_CLASSES, PARSING_CLASSES

REPO = Path(__file__).resolve().parent.parent


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adas_mini")
    assert aidi_main.main(["sample", "adas-mini", "--out", str(out), "--images", "12", "--seed", "5"]) == 0
    return out


def test_same_seed_same_bytes_and_more_images_keep_the_first(sample, tmp_path):
    again = generate(tmp_path / "again", images=12, seed=5, jobs=1)  # the bytes do not depend on -j
    assert again.images == dict.fromkeys(SCENE_NAMES, 12)
    assert _digest(tmp_path / "again") == _digest(sample)
    generate(tmp_path / "other", images=12, seed=6, scenes=["vehicle"])
    assert _digest(tmp_path / "other" / "vehicle") != _digest(sample / "vehicle")
    generate(tmp_path / "more", images=14, seed=5, scenes=["lane_parsing"])
    first = sample / "lane_parsing" / "masks" / "lane_parsing_000011.png"
    assert (tmp_path / "more" / "lane_parsing" / "masks" / first.name).read_bytes() == first.read_bytes()


def test_detection_scenes_are_coco_with_boxes_inside_their_images(sample):
    for scene in (s for s in SCENE_NAMES if SCENES[s].kind == "detection"):
        coco = COCO(str(sample / scene / "annotations.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SCENES[scene].classes)
        assert len(coco.getImgIds()) == 12 and len(coco.getAnnIds()) >= 12
        for image in coco.loadImgs(coco.getImgIds()):
            with Image.open(sample / scene / image["file_name"]) as picture:
                assert picture.format == "JPEG" and picture.size == (image["width"], image["height"]) == (192, 128)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
                x, y, w, h = ann["bbox"]
                assert min(x, y) >= 0 and w > 0 and h > 0 and x + w <= 192 and y + h <= 128


def test_objects_are_drawn_in_their_class_colour_where_the_box_says():
    """The box's centre row holds the class colour (shapes fill their box; frame is hollow, so its edge)."""
    from aidi.sample.adas_mini import detection_image

    for scene, classes in DETECTION_CLASSES.items():
        picture, objects = detection_image(scene, 3, seed=1, size=(192, 128))
        pixels = np.asarray(picture, dtype=int)
        for cls, (x0, y0, x1, y1) in objects:
            row = pixels[(y0 + y1) // 2, x0:x1] if classes[cls].shape != "frame" else pixels[y0, x0:x1]
            nearest = np.abs(row - np.array(classes[cls].colour)).sum(axis=1).min()
            assert nearest < 80, (scene, classes[cls].name)


def test_every_class_has_its_own_colour_and_shape():
    det = [c for classes in DETECTION_CLASSES.values() for c in classes]
    assert len({c.colour for c in det}) == len({c.shape for c in det}) == len(det) == 7
    for classes in PARSING_CLASSES.values():
        assert len({colour for _, colour in classes}) == len(classes)
    assert len(PARSING_CLASSES["default_parsing"]) == 12 and len(PARSING_CLASSES["lane_parsing"]) == 4


def test_parsing_masks_pair_with_images_and_use_every_class(sample):
    for scene in ("default_parsing", "lane_parsing"):
        seen: set[int] = set()
        for image in sorted((sample / scene / "images").iterdir()):
            mask = Image.open(sample / scene / "masks" / (image.stem + ".png"))
            assert mask.mode == "L" and mask.size == Image.open(image).size
            seen |= set(np.unique(np.asarray(mask)).tolist())
        assert seen == set(range(len(SCENES[scene].classes))), scene


def test_pack_configs_list_the_sample_classes():
    for scene in SCENE_NAMES:
        config = load_config(REPO / "configs" / f"4pe_{scene}" / "train.py")
        assert (config.scene, config.task, tuple(config.classes)) == (scene, SCENES[scene].kind, SCENES[scene].classes)


def test_sample_cli_json_and_bad_arguments(tmp_path, capsys):
    assert aidi_main.main(["sample", "adas-mini", "--out", str(tmp_path), "--images", "2", "--scene", "vehicle",
                           "--size", "64x48", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == {"vehicle": 2} and summary["size"] == [64, 48]
    assert aidi_main.main(["sample", "adas-mini", "--out", str(tmp_path), "--scene", "bus"]) == 2
    assert "unknown scene(s) bus; choose from cyclist" in capsys.readouterr().err


def test_a_rerun_keeps_unchanged_files_and_removes_images_of_a_larger_run(tmp_path):
    generate(tmp_path, images=5, seed=2, scenes=["default_parsing", "cyclist"])
    mask = tmp_path / "default_parsing" / "masks" / "default_parsing_000001.png"
    mtime = mask.stat().st_mtime_ns
    generate(tmp_path, images=3, seed=2, scenes=["default_parsing", "cyclist"])
    assert mask.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (tmp_path / "default_parsing" / "masks").iterdir()) == [
        f"default_parsing_00000{i}.png" for i in range(3)]
    assert len(list((tmp_path / "cyclist" / "images").iterdir())) == 3
