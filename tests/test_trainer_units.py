"""The trainer's parts with random tensors: BN folding, fake quantization and the integer model, target
encoding and decoding, augmentation geometry, losses, the device and config errors users meet."""

from __future__ import annotations

import itertools
import json

import cv2
import mxnet as mx
import numpy as np
import pytest
from aidi_trainer import quant
from aidi_trainer.data import Crop, ShardSampler, TrainBatches, det_targets
from aidi_trainer.engine import StepPlan, TrainingDiverged, train_step
from aidi_trainer.intmodel import IntNet
from aidi_trainer.losses import segmentation_loss
from aidi_trainer.model import AllHeads, HeadSpec, MultiTaskNet
from aidi_trainer.runtime import Runtime, parse_ctx
from aidi_trainer.train_config import SceneFiles, TaskConfig, check_classes, load_config, load_datasets
from aidi_trainer.validation import decode_detections, iou

from aidi.api.errors import SpecError
from aidi.errors import NotFoundError, UsageError

HEADS = [HeadSpec("det_a", "det", 3), HeadSpec("seg_b", "seg", 4)]
LAYERS = [(8, 2), (16, 1), (16, 2), (24, 2)]


def small_net() -> MultiTaskNet:
    mx.random.seed(1)
    net = MultiTaskNet(LAYERS, HEADS, head_channels=16)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    # Non-trivial BatchNorm statistics, as after training, so folding has something to fold.
    rng = np.random.default_rng(0)
    for name, param in net.collect_params().items():
        if name.endswith(("running_mean", "beta")):
            param.set_data(mx.nd.array(rng.normal(0, 0.3, param.shape)))
        elif name.endswith(("running_var", "gamma")):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, param.shape)))
    return net


def quantized_net() -> tuple[MultiTaskNet, mx.nd.NDArray]:
    net = small_net()
    x = mx.nd.random.uniform(-1, 1, (4, 3, 32, 48))
    quant.fold_and_quantize(net)
    for unit in quant.units(net):
        unit.calibrating = True
    for task in net.specs:
        net(x, task)
    for unit in quant.units(net):
        unit.finish_calibration()
    net.link_scales()
    return net, x


def test_folding_batchnorm_keeps_the_float_outputs():
    net = small_net()
    x = mx.nd.random.uniform(-1, 1, (2, 3, 32, 48))
    before = [net(x, task).asnumpy() for task in net.specs]
    quant.fold_and_quantize(net)
    for unit in quant.units(net):
        unit.mode = quant.FLOAT  # folded weights, no quantization: must equal conv → BN
    after = [net(x, task).asnumpy() for task in net.specs]
    for b, a in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_fake_quantization_stays_within_a_few_int8_steps_of_float():
    net, x = quantized_net()
    quantized = net(x, "seg_b").asnumpy()
    for unit in quant.units(net):
        unit.mode = quant.FLOAT
    floating = net(x, "seg_b").asnumpy()
    error = np.abs(quantized - floating).max() / np.abs(floating).max()
    # Measured 0.0087, about one int8 step (1/127) of the output's range; 0.03 allows ~4 steps, where a
    # coarser quantizer (say 4 bits) would land far above.
    assert 0 < error < 0.03


def test_the_integer_model_reproduces_fake_quantization_bit_for_bit():
    net, x = quantized_net()
    reference = AllHeads(net)
    reference.hybridize()
    integer = IntNet(net)
    integer.hybridize()
    for ref, got in zip(reference(x), integer(x), strict=True):
        assert float(ref.abs().max().asscalar()) > 0
        np.testing.assert_array_equal(got.asnumpy(), ref.asnumpy())
    # Between layers the integer model carries int8 values.
    feature = integer.body(integer.input(x)).asnumpy()
    assert np.array_equal(feature, np.round(feature)) and feature.min() >= 0 and feature.max() <= 127


def test_the_integer_model_exports_int8_weights_int32_biases_and_only_the_documented_ops(tmp_path):
    net, x = quantized_net()
    integer = IntNet(net)
    integer.hybridize()
    expected = integer(x)
    integer.export(str(tmp_path / "int"))
    params = mx.nd.load(str(tmp_path / "int-0000.params"))
    weights = {k: v for k, v in params.items() if k.endswith("_weight")}
    assert weights and all(v.dtype == np.int8 for v in weights.values())
    assert all(v.dtype == np.int32 for k, v in params.items() if k.endswith("_bias"))
    assert params["arg:backbone_conv0_weight_scale"].shape == (8,)  # per output channel
    assert params["arg:backbone_conv0_input_scale"].shape == (1,)  # per tensor
    ops = {node["op"] for node in json.loads((tmp_path / "int-symbol.json").read_text())["nodes"]}
    assert ops - {"null"} == set(IntNet.OPS)
    loaded = mx.gluon.SymbolBlock.imports(str(tmp_path / "int-symbol.json"), ["data"],
                                          str(tmp_path / "int-0000.params"))
    for got, ref in zip(loaded(x), expected, strict=True):
        np.testing.assert_array_equal(got.asnumpy(), ref.asnumpy())


def test_encoded_boxes_decode_back():
    boxes = np.array([[10, 8, 40, 30], [50, 20, 90, 60]], np.float32)
    heatmap, box, mask = det_targets(boxes, np.array([0, 2]), 3, (12, 8), 8)
    assert mask.sum() == 2 and heatmap.max() == 1.0
    logits = np.where(heatmap == 1.0, 8.0, -8.0).astype(np.float32)
    output = mx.nd.array(np.concatenate([logits, box])[None])
    dets = decode_detections(output, stride=8)[0]
    assert sorted(dets[:, 0].tolist()) == [0.0, 2.0]
    for row in dets:
        truth = boxes[0] if row[0] == 0 else boxes[1]
        assert iou(truth, row[None, 2:])[0] > 0.99


def _det_targets_one_by_one(boxes, classes, num_classes, grid, stride):
    """The encoding written plainly, object by object (largest first, so the smallest wins a cell)."""
    gw, gh = grid
    heatmap, box, mask = (np.zeros((n, gh, gw), np.float32) for n in (num_classes, 4, 1))
    ys, xs = np.arange(gh, dtype=np.float32)[:, None], np.arange(gw, dtype=np.float32)[None, :]
    for i in np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable"):
        x0, y0, x1, y1 = boxes[i] / stride
        w, h, cx, cy = x1 - x0, y1 - y0, (x0 + x1) / 2, (y0 + y1) / 2
        ix, iy = min(int(cx), gw - 1), min(int(cy), gh - 1)
        sx, sy = max(w / 6, 0.5), max(h / 6, 0.5)
        gauss = np.exp(-((xs - ix) ** 2) / (2 * sx * sx) - ((ys - iy) ** 2) / (2 * sy * sy))
        np.maximum(heatmap[classes[i]], gauss, out=heatmap[classes[i]])
        box[:, iy, ix] = (np.log(max(w, 1e-3)), np.log(max(h, 1e-3)), cx - ix, cy - iy)
        mask[0, iy, ix] = 1.0
    for i in range(len(boxes)):
        x0, y0, x1, y1 = boxes[i] / stride
        heatmap[classes[i], min(int((y0 + y1) / 2), gh - 1), min(int((x0 + x1) / 2), gw - 1)] = 1.0
    return heatmap, box, mask


@pytest.mark.parametrize("seed", range(6))
def test_the_vectorised_target_encoding_matches_encoding_object_by_object(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(0, 12))
    corner = rng.uniform(0, 150, (count, 2))
    size = rng.uniform(3, 60, (count, 2))
    boxes = np.concatenate([corner, np.minimum(corner + size, [191, 127])], axis=1).astype(np.float32)
    if count > 3:
        boxes[1] = boxes[0] * 0.999 + 0.5  # a second box on the first one's centre cell: the smaller must win
    classes = rng.integers(0, 4, count)
    got = det_targets(boxes, classes, 4, (24, 16), 8)
    expected = _det_targets_one_by_one(boxes, classes, 4, (24, 16), 8)
    for ours, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    assert got[2].sum() == len({(int(min((b[1] + b[3]) / 16, 15)), int(min((b[0] + b[2]) / 16, 23))) for b in boxes})


def test_training_batches_run_on_across_passes_and_start_at_any_batch():
    # What the loaders handed out before: one shuffled pass after another, leftovers rolled over.
    passes = mx.gluon.data.BatchSampler(ShardSampler(11, rank=1, num_workers=2, seed=7), 4, "rollover")
    expected = [batch for _ in range(5) for batch in passes]
    assert len(expected) == 6 and len({i % 11 for b in expected for i in b}) == 5  # this worker's 5 samples
    endless = TrainBatches(11, 4, rank=1, num_workers=2, seed=7)
    assert list(itertools.islice(endless, len(expected))) == expected
    for start in range(len(expected) - 2):
        resumed = TrainBatches(11, 4, rank=1, num_workers=2, seed=7, start=start)
        assert list(itertools.islice(resumed, 2)) == expected[start:start + 2], start


def test_a_flipped_random_crop_moves_the_box_with_the_pixels():
    image = np.zeros((64, 96, 3), np.uint8)
    image[16:40, 20:50] = 255
    box = np.array([[20 / 96, 16 / 64, 50 / 96, 40 / 64]], np.float32)
    crop = Crop(8.0, 4.0, 88.0, 60.0, flip=True)
    out = crop.apply(image, (96, 64), cv2.INTER_LINEAR)
    x0, y0, x1, y1 = crop.boxes(box, 96, 64, (96, 64))[0]
    ys, xs = np.nonzero(out[..., 0] > 127)
    assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1
    assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1


def test_segmentation_loss_ignores_255():
    output = mx.nd.random.normal(shape=(1, 4, 2, 2))
    label = mx.nd.array([[[1, 255], [255, 255]]])
    expected = -mx.nd.log_softmax(output, axis=1)[0, 1, 0, 0].asscalar()
    assert segmentation_loss(output, label)["ce"].asscalar() == pytest.approx(expected, rel=1e-5)


def test_a_non_finite_loss_stops_the_run_with_the_loss_breakdown(tmp_path):
    net = small_net()
    net.backbone.body[0].weight.set_data(mx.nd.full(net.backbone.body[0].weight.shape, np.nan))
    batch = (mx.nd.zeros((2, 3, 32, 48)), mx.nd.zeros((2, 3, 4, 6)), mx.nd.zeros((2, 4, 4, 6)),
             mx.nd.zeros((2, 1, 4, 6)))
    seg_batch = (mx.nd.zeros((2, 3, 32, 48)), mx.nd.zeros((2, 4, 6)))
    batches = {"det_a": iter([batch]), "seg_b": iter([seg_batch])}
    plan = StepPlan("with-bn", 0, 1, 1, 1e-3, 0.0, {"det_a": 1.0, "seg_b": 1.0}, 1)
    with pytest.raises(TrainingDiverged, match=r"det_a\.hm = nan.*seg_b\.ce = nan.*lr"):
        train_step(net, plan, Runtime([mx.cpu()], None), batches, tmp_path)
    assert not list(tmp_path.iterdir()), "nothing is checkpointed from a diverged iteration"


def test_asking_for_gpus_on_a_machine_without_them_names_ctx_cpu():
    with pytest.raises(UsageError, match="--ctx cpu"):
        parse_ctx("0,1,2,3")
    with pytest.raises(UsageError, match="expected `cpu` or GPU ids"):
        parse_ctx("gpu0")
    assert parse_ctx("cpu") == [mx.cpu()]


def test_config_mistakes_name_the_file_and_field(tmp_path):
    config = tmp_path / "multitask.py"
    config.write_text("input_size = (96, 64)\nbackbone = [(8, 2)]\nsteps = {}\n")
    with pytest.raises(SpecError) as raised:
        load_config(config)
    assert raised.value.render() == (
        f"{config}: 1 problem\n"
        "  - tasks: required field is missing; add `tasks:` under the top level "
        "({branch: {kind, scenes, weight, flip}})")
    config.write_text("input_size = (96, 64)\nbackbone = [(8, 2)]\nsteps = {}\ntasks = {'d': {'kind': 'det', "
                      "'scenes': {'a': ['a']}}}\n")
    with pytest.raises(UsageError, match="steps needs 'with-bn', 'fusion-bn-c1', 'fusion-bn-c2'"):
        load_config(config)
    config.write_text("tasks = {'det_x': {'kind': 'box', 'scenes': {'a': ['a']}}}\n")
    with pytest.raises(UsageError, match=r"tasks\.det_x\.kind: 'box' is not one of 'det' or 'seg'"):
        load_config(config)
    with pytest.raises(NotFoundError, match="pass --config"):
        load_config(tmp_path / "nope.py")


def test_datasets_yaml_problems_say_what_to_pack(tmp_path):
    datasets = tmp_path / "datasets.yaml"
    datasets.write_text("root: rec\nscenes:\n  vehicle: {train: vehicle/train.rec, val: vehicle/val.rec}\n")
    with pytest.raises(NotFoundError, match=r"scenes\.vehicle\.train .*pipeline\.sh --config configs/4pe_vehicle"):
        load_datasets(datasets, ["vehicle"], "train")
    with pytest.raises(UsageError, match=r"scenes\.pedestrian\.train is missing"):
        load_datasets(datasets, ["pedestrian"], "train")


def test_classes_that_differ_from_the_packed_manifest_are_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": ["vehicle_rear", "vehicle_front"]}))
    files = {"vehicle_rear": SceneFiles("vehicle_rear", tmp_path / "train.rec", tmp_path / "train.idx")}
    task = TaskConfig("det_rear", "det", {"vehicle_rear": ("vehicle_front", "vehicle_rear")})
    with pytest.raises(UsageError, match="packed with"):
        check_classes({"det_rear": task}, files)


def test_data_parallel_devices_stay_in_step_through_the_device_kvstore(tmp_path):
    # Two CPU contexts stand in for --ctx 0,1: batches split over them, gradients summed by the kvstore.
    ctxs = [mx.cpu(0), mx.cpu(1)]
    net = MultiTaskNet(LAYERS, HEADS, head_channels=16)
    net.initialize(mx.init.Xavier(magnitude=2.0), ctx=ctxs)
    net.hybridize()
    rng = np.random.default_rng(0)

    def det_batch():
        heatmap, box, mask = det_targets(np.array([[4, 4, 20, 20], [24, 8, 44, 30]], np.float32), np.array([0, 1]),
                                         3, (6, 4), 8)
        return (mx.nd.array(rng.uniform(-1, 1, (4, 3, 32, 48))), *(mx.nd.array(np.stack([a] * 4))
                                                                   for a in (heatmap, box, mask)))

    def seg_batch():
        return mx.nd.array(rng.uniform(-1, 1, (4, 3, 32, 48))), mx.nd.array(rng.integers(0, 4, (4, 4, 6)))

    batches = {"det_a": iter([det_batch() for _ in range(3)]), "seg_b": iter([seg_batch() for _ in range(3)])}
    before = net.backbone.body[0].weight.data(ctxs[0]).asnumpy()
    plan = StepPlan("with-bn", 0, 1, 3, 1e-2, 0.0, {"det_a": 1.0, "seg_b": 1.0}, 1)
    result = train_step(net, plan, Runtime(ctxs, mx.kv.create("device")), batches, tmp_path)
    assert result.iterations == 3 and np.isfinite(result.last_loss)
    for name, param in net.collect_params().items():
        if "running" in name:
            continue  # BatchNorm statistics are per device (each sees its shard); folding averages them
        replicas = [param.data(ctx).asnumpy() for ctx in ctxs]
        np.testing.assert_allclose(replicas[1], replicas[0], rtol=1e-6, atol=1e-7, err_msg=name)
    assert not np.allclose(net.backbone.body[0].weight.data(ctxs[0]).asnumpy(), before)
    assert (tmp_path / "with-bn-0001.params").is_file()
    # Folding uses the devices' mean statistics and leaves identical weights on both.
    unit = net.backbone.body[0]
    means = [unit.bn.running_mean.data(ctx).asnumpy() for ctx in ctxs]
    assert not np.allclose(means[0], means[1])
    quant.fold_and_quantize(net)
    for ctx in ctxs[1:]:
        np.testing.assert_array_equal(unit.bias.data(ctx).asnumpy(), unit.bias.data(ctxs[0]).asnumpy())
