"""`aidi pack` / tools/pipeline.sh: every record read back by MXNet, labels and masks exact, bad input
reported file by file, nothing half-written, re-runs idempotent."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from aidi import recordio
from aidi.cli import aidi_main
from aidi.errors import UsageError
from aidi.pack import PackFailed, load_config, pack_scene, read_manifest
from aidi.sample import SCENE_NAMES, SCENES, generate

REPO = Path(__file__).resolve().parent.parent
DETECTION = [s for s in SCENE_NAMES if SCENES[s].kind == "detection"]
IMAGES = 32


def config_file(scene: str) -> Path:
    return REPO / "configs" / f"4pe_{scene}" / "train.py"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The seed's workflow: adas_mini under data/, then `bash tools/pipeline.sh --all` from that folder."""
    root = tmp_path_factory.mktemp("toolkit")
    generate(root / "data" / "adas_mini", images=IMAGES, seed=0)
    done = subprocess.run(["bash", str(REPO / "tools" / "pipeline.sh"), "--all", "-j", "2"], cwd=root,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("packed 32 (") == 8, done.stdout
    return root


def _rec(workdir: Path, scene: str, split: str) -> tuple[str, str]:
    folder = workdir / "data" / "rec" / scene
    return str(folder / f"{split}.idx"), str(folder / f"{split}.rec")


def _expected_labels(workdir: Path, scene: str) -> dict[int, tuple[str, np.ndarray]]:
    """COCO image id → (file, the float32 labels the record must carry), computed from the annotations."""
    coco = json.loads((workdir / "data" / "adas_mini" / scene / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    classes = list(SCENES[scene].classes)
    out = {}
    for image in coco["images"]:
        w, h = image["width"], image["height"]
        labels = [4, 5, w, h]
        for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            x, y, bw, bh = ann["bbox"]
            labels += [classes.index(names[ann["category_id"]]), x / w, y / h, (x + bw) / w, (y + bh) / h]
        out[image["id"]] = (image["file_name"], np.array(labels, np.float32))
    return out


def test_mxnet_reads_every_detection_record_with_exact_labels_and_untouched_jpegs(workdir):
    for scene in DETECTION:
        expected = _expected_labels(workdir, scene)
        manifest = read_manifest(workdir / "data" / "rec" / scene)
        seen = set()
        for split in ("train", "val"):
            reader = mx.recordio.MXIndexedRecordIO(*_rec(workdir, scene, split), "r")
            assert len(reader.keys) == manifest["counts"][split] == manifest["files"][f"{split}.rec"]["records"]
            for key in reader.keys:
                header, payload = mx.recordio.unpack(reader.read_idx(key))
                file_name, labels = expected[header.id2]
                assert header.id == key
                assert np.array_equal(header.label, labels), (scene, file_name)
                assert payload == (workdir / "data" / "adas_mini" / scene / file_name).read_bytes()
                seen.add(header.id2)
            reader.close()
        assert seen == set(expected), scene
        assert manifest["classes"] == list(SCENES[scene].classes)


def test_image_det_record_iter_yields_the_annotated_boxes(workdir):
    for scene in ("vehicle_rear", "traffic_sign"):
        idx, rec = _rec(workdir, scene, "train")
        expected = _expected_labels(workdir, scene)
        order = [recordio.unpack(r)[0].id2 for r in recordio.RecordReader(rec)]
        it = mx.io.ImageDetRecordIter(path_imgrec=rec, path_imgidx=idx, data_shape=(3, 128, 192), batch_size=4,
                                      shuffle=False, label_pad_width=64, round_batch=False)
        position = 0
        for batch in it:
            assert batch.data[0].shape == (4, 3, 128, 192)
            for row in batch.label[0].asnumpy()[:4 - batch.pad]:
                # The iterator puts its own 4 values first (..., data height, data width, ...), then our labels.
                assert tuple(row[1:3]) == (128, 192)
                want = expected[order[position]][1]
                assert np.array_equal(row[4:4 + len(want)], want), (scene, position)
                assert (row[4 + len(want):] == -1).all()
                position += 1
        assert position == len(order)


def test_parsing_records_carry_the_jpeg_and_the_exact_mask(workdir):
    for scene in ("default_parsing", "lane_parsing"):
        source = workdir / "data" / "adas_mini" / scene
        names = sorted(p.name for p in (source / "images").iterdir())
        count = 0
        for split in ("train", "val"):
            reader = mx.recordio.MXIndexedRecordIO(*_rec(workdir, scene, split), "r")
            for key in reader.keys:
                header, payload = mx.recordio.unpack(reader.read_idx(key))
                assert header.flag == 2
                image_nbytes, mask_nbytes = (int(v) for v in header.label)
                assert image_nbytes + mask_nbytes == len(payload)
                name = names[header.id2]
                assert payload[:image_nbytes] == (source / "images" / name).read_bytes()
                mask = cv2.imdecode(np.frombuffer(payload[image_nbytes:], np.uint8), cv2.IMREAD_UNCHANGED)
                original = np.asarray(Image.open(source / "masks" / name.replace(".jpg", ".png")))
                assert mask.dtype == np.uint8 and np.array_equal(mask, original)
                assert mx.image.imdecode(payload[:image_nbytes]).shape == (*original.shape, 3)
                count += 1
        assert count == IMAGES


def test_manifest_names_every_file_with_its_sha256(workdir):
    for scene in SCENE_NAMES:
        folder = workdir / "data" / "rec" / scene
        manifest = read_manifest(folder)
        assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "train.idx", "train.rec", "val.idx",
                                                             "val.rec"]
        for name, info in manifest["files"].items():
            assert info["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert manifest["counts"]["train"] + manifest["counts"]["val"] == IMAGES
        assert manifest["settings"]["resize"] is None and manifest["task"] == SCENES[scene].kind


def test_rerun_is_a_no_op_and_force_gives_the_same_bytes_with_one_or_two_workers(workdir, capsys):
    folder = workdir / "data" / "rec" / "vehicle"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}
    args = ["pack", "--config", str(config_file("vehicle")), "--source", str(workdir / "data/adas_mini/vehicle"),
            "--output", str(folder)]
    assert aidi_main.main(args) == 0
    assert "vehicle: up to date (" in capsys.readouterr().out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()} == before
    assert aidi_main.main([*args, "--force", "-j", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["up_to_date"] is False and summary["packed"] == IMAGES and summary["errors"] == 0
    for name in ("train.rec", "train.idx", "val.rec", "val.idx"):
        assert (folder / name).read_bytes() == before[name][1]


def test_resize_reencodes_images_and_masks_consistently(workdir, tmp_path):
    for scene in ("vehicle", "default_parsing"):
        config = load_config(config_file(scene), source=str(workdir / "data/adas_mini" / scene),
                             output=str(tmp_path / scene), resize=96, jpeg_quality=80)
        result = pack_scene(config, jobs=2)
        assert result.packed == IMAGES
        for record in recordio.RecordReader(tmp_path / scene / "train.rec"):
            if scene == "vehicle":
                det = recordio.unpack_detection(record)
                assert (det.width, det.height) == (144, 96)
                original = _expected_labels(workdir, scene)[det.id2][1]
                assert np.array_equal(np.array([4, 5, 144, 96], np.float32), original[:4] * [1, 1, 0.75, 0.75])
                got = np.array([v for obj in det.objects for v in obj], np.float32)
                assert np.array_equal(got, original[4:])
                assert Image.open(io.BytesIO(det.image)).size == (144, 96)
            else:
                parsing = recordio.unpack_parsing(record)
                mask = Image.open(io.BytesIO(parsing.mask))
                assert Image.open(io.BytesIO(parsing.image)).size == mask.size == (144, 96)
                # Class ids resized as ids (nearest), never blended: exactly the source mask, resized so.
                source = workdir / "data/adas_mini" / scene
                name = sorted(p.name for p in (source / "images").iterdir())[parsing.id2]
                expected = Image.open(source / "masks" / name.replace(".jpg", ".png")).resize(
                    (144, 96), Image.Resampling.NEAREST)
                assert np.array_equal(np.asarray(mask), np.asarray(expected))


def _broken_vehicle(workdir: Path, tmp_path: Path) -> Path:
    scene = shutil.copytree(workdir / "data" / "adas_mini" / "vehicle", tmp_path / "vehicle")
    images = sorted((scene / "images").iterdir())
    images[1].unlink()
    images[2].write_bytes(images[2].read_bytes()[:-600])
    images[3].write_bytes(b"this is not an image")
    coco = json.loads((scene / "annotations.json").read_text())
    coco["categories"].append({"id": 9, "name": "bus"})
    by_image = {a["image_id"]: a for a in coco["annotations"]}
    by_image[5]["category_id"] = 9          # images/vehicle_000004.jpg
    by_image[6]["bbox"][0] = 190            # images/vehicle_000005.jpg
    (scene / "annotations.json").write_text(json.dumps(coco))
    return scene


BAD_VEHICLE = [
    ("vehicle_000001.jpg", "file not found"),
    ("vehicle_000002.jpg", "truncated JPEG: the end-of-image marker is missing"),
    ("vehicle_000003.jpg", "not an image (no format Pillow knows: JPEG, PNG, ...)"),
    ("vehicle_000004.jpg", "unknown class 'bus'; the config's classes are vehicle"),
    ("vehicle_000005.jpg", "(x, y, width, height) lies outside the 192×128 image"),
]


def test_bad_detection_input_fails_with_the_full_list_and_keeps_the_previous_set(workdir, tmp_path, capsys):
    source = _broken_vehicle(workdir, tmp_path)
    output = tmp_path / "rec"
    shutil.copytree(workdir / "data" / "rec" / "vehicle", output)
    previous = {p.name: p.read_bytes() for p in output.iterdir()}
    config = load_config(config_file("vehicle"), source=str(source), output=str(output))
    with pytest.raises(PackFailed) as failure:
        pack_scene(config, jobs=2, force=True)
    assert len(failure.value.problems) == len(BAD_VEHICLE)
    for (file, reason), (name, expected) in zip(failure.value.problems, BAD_VEHICLE, strict=True):
        assert file.endswith(f"images/{name}") and expected in reason, (file, reason)
    assert {p.name: p.read_bytes() for p in output.iterdir()} == previous  # no temp files, old set intact

    fresh = tmp_path / "fresh"
    assert aidi_main.main(["pack", "-c", str(config_file("vehicle")), "--source", str(source),
                           "--output", str(fresh)]) == 1
    err = capsys.readouterr().err
    assert "scene vehicle: 5 bad input(s), nothing written" in err and "--skip-bad" in err
    assert all(name in err for name, _ in BAD_VEHICLE)
    assert not fresh.exists() or list(fresh.iterdir()) == []


def test_skip_bad_packs_the_rest_and_lists_the_rejects(workdir, tmp_path):
    source = _broken_vehicle(workdir, tmp_path)
    config = load_config(config_file("vehicle"), source=str(source), output=str(tmp_path / "rec"))
    result = pack_scene(config, jobs=2, skip_bad=True)
    assert (result.packed, result.skipped, len(result.problems)) == (IMAGES - 5, 5, 5)
    lines = (tmp_path / "rec" / "rejects.txt").read_text().splitlines()
    assert [line.split("\t")[0].rsplit("/", 1)[1] for line in lines] == [name for name, _ in BAD_VEHICLE]
    keys = mx.recordio.MXIndexedRecordIO(str(tmp_path / "rec/train.idx"), str(tmp_path / "rec/train.rec"), "r").keys
    assert len(keys) == result.counts["train"]
    assert read_manifest(tmp_path / "rec")["counts"]["skipped"] == 5
    # Without --skip-bad the same inputs are reported again, not passed off as up to date.
    with pytest.raises(PackFailed):
        pack_scene(config, jobs=1)
    assert pack_scene(config, jobs=1, skip_bad=True).up_to_date


def test_bad_masks_are_reported_with_the_file_and_reason(workdir, tmp_path):
    source = shutil.copytree(workdir / "data" / "adas_mini" / "lane_parsing", tmp_path / "lane")
    masks = sorted((source / "masks").iterdir())
    Image.open(masks[0]).resize((100, 100)).save(masks[0])
    Image.fromarray(np.full((128, 192), 7, np.uint8)).save(masks[1])
    Image.open(masks[2]).convert("RGB").save(masks[2])
    masks[3].unlink()
    masks[4].write_bytes(masks[4].read_bytes()[:100])
    config = load_config(config_file("lane_parsing"), source=str(source), output=str(tmp_path / "rec"))
    with pytest.raises(PackFailed) as failure:
        pack_scene(config, jobs=2)
    reasons = [reason for _, reason in failure.value.problems]
    assert reasons == [
        f"mask {masks[0]}: mask size 100×100 differs from the image's 192×128",
        f"mask {masks[1]}: mask has class ids 7 but the scene has 4 classes (0–3; 255 = ignore)",
        f"mask {masks[2]}: expected an 8-bit one-channel mask (PNG mode L or P, pixel = class id), got mode RGB",
        f"mask {masks[3]}: file not found",
        f"mask {masks[4]}: not a readable image (image file is truncated)",
    ]
    assert not (tmp_path / "rec").exists() or not any((tmp_path / "rec").iterdir())


def test_config_mistakes_name_the_field(tmp_path):
    typo = tmp_path / "train.py"
    typo.write_text(config_file("vehicle").read_text() + "\nval_fractoin = 0.2\n")
    with pytest.raises(UsageError, match=r"train.py: 1 problem\n  - val_fractoin: unknown field; did you mean "
                                         r"`val_fraction`\?"):
        load_config(typo)
    with pytest.raises(UsageError, match="resize must be positive"):
        load_config(config_file("vehicle"), resize=0)
    missing = load_config(config_file("vehicle"), source=str(tmp_path / "nowhere"), output=str(tmp_path / "o"))
    with pytest.raises(Exception, match="aidi sample adas-mini --out data/adas_mini"):
        pack_scene(missing)


def test_pipeline_sh_explains_a_missing_config(tmp_path):
    done = subprocess.run(["bash", str(REPO / "tools" / "pipeline.sh")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ})
    assert done.returncode == 2 and "give --config configs/4pe_<scene>/train.py, or --all" in done.stderr


def test_an_image_without_objects_packs_and_iterates(workdir, tmp_path):
    source = shutil.copytree(workdir / "data" / "adas_mini" / "vehicle", tmp_path / "vehicle")
    coco = json.loads((source / "annotations.json").read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 1]
    (source / "annotations.json").write_text(json.dumps(coco))
    config = load_config(config_file("vehicle"), source=str(source), output=str(tmp_path / "rec"), val_fraction=0.0)
    assert pack_scene(config, jobs=2).counts["train"] == IMAGES
    rec, idx = str(tmp_path / "rec/train.rec"), str(tmp_path / "rec/train.idx")
    first = recordio.unpack_detection(recordio.IndexedRecordReader(rec, idx).read_idx(0))
    assert (first.id2, first.objects) == (1, [])
    it = mx.io.ImageDetRecordIter(path_imgrec=rec, path_imgidx=idx, data_shape=(3, 128, 192), batch_size=8,
                                  shuffle=False, label_pad_width=32)
    rows = next(iter(it)).label[0].asnumpy()
    assert list(rows[0][4:9]) == [4, 5, 192, 128, -1] and (rows[0][9:] == -1).all()
    assert rows[1][8] == 0  # the next image's first object: class 0


def test_palette_masks_are_stored_as_grey_class_ids(workdir, tmp_path):
    source = shutil.copytree(workdir / "data" / "adas_mini" / "lane_parsing", tmp_path / "lane")
    mask_path = sorted((source / "masks").iterdir())[0]
    values = np.asarray(Image.open(mask_path))
    palette = Image.fromarray(values, "L").convert("P")
    palette.putpalette([255 - i for i in range(256) for _ in range(3)])  # colours unrelated to the ids
    palette.save(mask_path)
    assert np.array_equal(np.asarray(Image.open(mask_path)), values)
    config = load_config(config_file("lane_parsing"), source=str(source), output=str(tmp_path / "rec"),
                         val_fraction=0.0)
    pack_scene(config, jobs=1)
    record = recordio.unpack_parsing(recordio.IndexedRecordReader(tmp_path / "rec/train.rec",
                                                                  tmp_path / "rec/train.idx").read_idx(0))
    stored = Image.open(io.BytesIO(record.mask))
    assert stored.mode == "L" and np.array_equal(np.asarray(stored), values)
    assert np.array_equal(cv2.imdecode(np.frombuffer(record.mask, np.uint8), cv2.IMREAD_GRAYSCALE), values)


def test_a_failing_worker_stops_the_run_with_its_traceback_and_writes_nothing(workdir, tmp_path, monkeypatch):
    from aidi.pack import workers

    def broken(item, config):
        raise ValueError(f"cannot encode {item.name}")

    monkeypatch.setattr(workers, "encode", broken)  # the forked workers inherit it
    config = load_config(config_file("vehicle"), source=str(workdir / "data/adas_mini/vehicle"),
                         output=str(tmp_path / "rec"), resize=96)
    with pytest.raises(RuntimeError, match=r"(?s)a packing worker failed on batch 0:.*ValueError: cannot encode"):
        pack_scene(config, jobs=2)
    assert list((tmp_path / "rec").iterdir()) == []


def test_png_images_are_stored_as_jpeg_even_in_pass_through(workdir, tmp_path):
    source = shutil.copytree(workdir / "data" / "adas_mini" / "vehicle", tmp_path / "vehicle")
    coco = json.loads((source / "annotations.json").read_text())
    first = coco["images"][0]
    Image.open(source / first["file_name"]).save(source / "images" / "first.png")
    first["file_name"] = "images/first.png"
    (source / "annotations.json").write_text(json.dumps(coco))
    config = load_config(config_file("vehicle"), source=str(source), output=str(tmp_path / "rec"), val_fraction=0.0)
    pack_scene(config, jobs=2)
    record = recordio.unpack_detection(recordio.IndexedRecordReader(tmp_path / "rec/train.rec",
                                                                    tmp_path / "rec/train.idx").read_idx(0))
    assert record.image[:3] == b"\xff\xd8\xff" and Image.open(io.BytesIO(record.image)).size == (192, 128)
    assert np.array_equal(np.array([v for obj in record.objects for v in obj], np.float32),
                          _expected_labels(workdir, "vehicle")[first["id"]][1][4:])


def test_a_disk_filling_up_is_an_error_naming_the_file_and_leaves_the_previous_set(workdir, tmp_path, monkeypatch,
                                                                                   capsys):
    """The pipelined writer writes on its own thread: a full disk there still ends the run cleanly."""
    import errno

    output = tmp_path / "rec"
    shutil.copytree(workdir / "data" / "rec" / "vehicle", output)
    previous = {p.name: p.read_bytes() for p in output.iterdir()}

    class FillingUp(io.FileIO):
        def write(self, data):  # room for 1 KB, then ENOSPC, as a full device answers
            if self.tell() + len(data) > 1024:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    monkeypatch.setattr(recordio, "open", lambda path, mode: FillingUp(path, mode), raising=False)
    monkeypatch.setattr(recordio.RecordWriter, "BLOCK_BYTES", 4096)
    code = aidi_main.main(["pack", "-c", str(config_file("vehicle")), "--source",
                           str(workdir / "data" / "adas_mini" / "vehicle"), "--output", str(output), "--force"])
    assert code == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(output / ".train.rec.tmp-") in err and "free space" in err
    assert "internal error" not in err
    assert {p.name: p.read_bytes() for p in output.iterdir()} == previous  # no temp files, old set intact


def _photo(width: int, height: int) -> Image.Image:
    """A real photograph (scikit-image's astronaut) cut to ``width``×``height``: detail at every scale."""
    import skimage.data

    return Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.LANCZOS)


@pytest.mark.parametrize(("size", "resize", "packed"), [
    ((1280, 720), 300, (533, 300)),     # decoded at 1/2 (640×360), then bilinear
    ((1280, 720), 90, (160, 90)),       # decoded at 1/8 (160×90): nothing left to resize
    ((720, 1280), 300, (300, 533)),     # portrait stays portrait
    ((640, 360), 500, (889, 500)),      # enlarged
    ((1000, 500), (320, 200), (320, 200)),  # exact size, aspect changed as asked
])
def test_resize_gives_the_size_asked_and_the_picture_of_a_high_quality_resize(size, resize, packed):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from aidi.pack.images import reencode

    photo = _photo(*size)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=95)
    data, original, target = reencode(buffer.getvalue(), resize, 95)
    assert (original, target) == (size, packed)
    out = Image.open(io.BytesIO(data))
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == packed
    # Against Pillow's LANCZOS from the full decode: colours in order (a BGR/RGB swap scores ~15 dB),
    # no aliasing or shift (either drops SSIM well below 0.9).
    reference = np.asarray(Image.open(buffer).resize(packed, Image.Resampling.LANCZOS))
    got = np.asarray(out)
    assert peak_signal_noise_ratio(reference, got) > 30
    assert structural_similarity(reference, got, channel_axis=2) > 0.9
    # MXNet decodes it to the same size (height, width, channels).
    assert mx.image.imdecode(data).shape == (packed[1], packed[0], 3)


def test_resize_keeps_the_stored_pixel_order_of_a_jpeg_with_an_exif_rotation():
    """As in pass-through: the boxes refer to the pixels as stored, so an EXIF orientation is not applied."""
    from aidi.pack.images import reencode

    photo = _photo(800, 400)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    data, original, target = reencode(buffer.getvalue(), 200, 95)
    assert (original, target) == ((800, 400), (400, 200))
    assert Image.open(io.BytesIO(data)).size == (400, 200)


def test_resize_of_png_and_grey_sources_and_bad_data():
    from aidi.pack.images import BadImage, reencode

    photo = _photo(1600, 1200)
    png = io.BytesIO()
    photo.save(png, format="PNG")  # no DCT scaling for PNG: area-averaged from full size
    data, original, target = reencode(png.getvalue(), 150, 90)
    assert (original, target) == ((1600, 1200), (200, 150))
    reference = np.asarray(photo.resize(target, Image.Resampling.LANCZOS))
    assert np.abs(np.asarray(Image.open(io.BytesIO(data)), np.float32) - reference).mean() < 6
    grey = io.BytesIO()
    photo.convert("L").save(grey, format="JPEG")
    data, _, target = reencode(grey.getvalue(), 300, 90)
    assert Image.open(io.BytesIO(data)).mode == "RGB" and target == (400, 300)
    gif = io.BytesIO()
    photo.convert("P").save(gif, format="GIF")  # OpenCV 4.10 reads no GIF: Pillow decodes it
    assert reencode(gif.getvalue(), 120, 90)[2] == (160, 120)
    with pytest.raises(BadImage, match="not an image"):
        reencode(b"this is not an image", 100, 90)
    jpeg = io.BytesIO()
    photo.save(jpeg, format="JPEG")
    with pytest.raises(BadImage, match="truncated JPEG"):
        reencode(jpeg.getvalue()[:-500], 100, 90)


@pytest.mark.parametrize(("size", "save"), [
    ((1001, 563), {"subsampling": "4:2:0"}),      # odd sizes: the DCT-scaled sizes round up
    ((1001, 563), {"subsampling": "4:4:4"}),
    ((999, 601), {"subsampling": "4:2:2", "progressive": True}),
    ((803, 451), {"mode": "L"}),
])
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_jpeg_decode_gives_opencvs_pixels_at_every_dct_scale(size, save, scale):
    """JPEGs are decoded by simplejpeg (faster); the pixels and scaled sizes must be OpenCV's as before."""
    from aidi.pack import images

    buffer = io.BytesIO()
    photo = _photo(*size)
    photo.convert(save.get("mode", "RGB")).save(buffer, format="JPEG", quality=90,
                                                 **{k: v for k, v in save.items() if k != "mode"})
    data = buffer.getvalue()
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}[scale]
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    got = images._decode(data, (*size, size[0] // scale, size[1] // scale))
    assert got.shape == expected.shape == (-(-size[1] // scale), -(-size[0] // scale), 3)
    assert np.abs(got.astype(np.int16) - expected).max() <= 1


def test_a_cmyk_jpeg_keeps_its_colours():
    from skimage.metrics import peak_signal_noise_ratio

    from aidi.pack.images import reencode

    photo = _photo(640, 480)
    buffer = io.BytesIO()
    photo.convert("CMYK").save(buffer, format="JPEG", quality=95)
    data, original, target = reencode(buffer.getvalue(), 240, 95)
    assert (original, target) == ((640, 480), (320, 240))
    reference = np.asarray(photo.resize(target, Image.Resampling.LANCZOS))
    assert peak_signal_noise_ratio(reference, np.asarray(Image.open(io.BytesIO(data)))) > 30


def test_a_jpeg_with_damaged_scan_data_packs_as_opencv_decodes_it(monkeypatch):
    """simplejpeg refuses it (strict); OpenCV decodes what it can, as the packer did before simplejpeg."""
    from aidi.pack import images

    buffer = io.BytesIO()
    _photo(512, 512).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    for i in range(len(data) // 2, len(data) // 2 + 40, 3):
        data[i] = 0 if data[i] == 0xFF else 0xFF  # stray markers inside the entropy-coded data
    with pytest.raises(ValueError):
        images._simplejpeg().decode_jpeg(bytes(data), "BGR")
    assert images.reencode(bytes(data), 256, 90)[1:] == ((512, 512), (256, 256))
