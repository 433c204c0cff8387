"""``aidi compile``: the integer-inference model (step 3) as an ONNX QDQ model, checked against MXNet.

The ONNX graph is built from the int-inference export's own parameters (docs/trainer.md lists what each
layer stores), so it carries the very integers MXNet runs:

    data ─QuantizeLinear(s_in)─DequantizeLinear─┐                 per conv layer:
    int8 weight ─DequantizeLinear(s_w, axis 0)──┼─ Conv ─[Relu]─QuantizeLinear(s_out)─DequantizeLinear─▶
    int32 bias ─DequantizeLinear(s_in·s_w)──────┘   (a head's last conv: Conv → the float output)

This is the standard QDQ form deployment toolchains read as an int8 model. It equals the MXNet integer
model up to two rounding conventions, both measured by the check rather than assumed away: ONNX
``QuantizeLinear`` rounds half to even and saturates to [-128, 127], MXNet's ``round`` rounds half away
from zero and the trainer clips to [-127, 127]. Because ReLU outputs are clipped at 127 (not 255),
onnxruntime keeps Relu + int8 QDQ as float convolutions; ``fuse_relu`` trades that exactness for the
uint8 form it runs as integer ``QLinearConv`` kernels (``build_qdq``).

The check runs both models on sample images and reports, per output, the max abs difference (and
relative to the output's range), the detection agreement (the trainer's own decoding and NMS on both,
matched by class at IoU 0.5) and, for segmentation, the share of pixels with the same arg-max.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
import onnx  # the [compile] extra; imported here so `aidi compile` says what to install when it is missing
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from aidi.errors import NotFoundError, UsageError

log = logging.getLogger(__name__)

OPSET = 13
DET_AGREEMENT_MIN = 0.95
SEG_AGREEMENT_MIN = 0.99
CHECK_SCORE = 0.3      # detections compared: those the trainer's validation counts (evaluate.SCORE_THRESHOLD)


@dataclass
class IntLayer:
    prefix: str
    source: str            # the producing layer's prefix, or "input"
    kernel: int
    stride: int
    pad: int
    channels: int
    requantize: bool
    relu: bool


@dataclass
class IntGraph:
    input_scale: float
    layers: list[IntLayer]
    outputs: list[str]                 # prefix of the layer behind each graph output, in order
    params: dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------ reading


def read_int_model(prefix: str | Path) -> IntGraph:
    """Parse ``<prefix>-symbol.json`` and ``-0000.params`` of an int-inference export."""
    prefix = str(prefix)
    symbol_file, params_file = Path(prefix + "-symbol.json"), Path(prefix + "-0000.params")
    for file in (symbol_file, params_file):
        if not file.is_file():
            raise NotFoundError(f"{file} does not exist; --model is the int-inference export prefix, e.g. "
                                "output/int-inference-export-last")
    params = {k.split(":", 1)[-1]: v.asnumpy() for k, v in mx.nd.load(str(params_file)).items()}
    nodes = json.loads(symbol_file.read_text())["nodes"]
    heads = json.loads(symbol_file.read_text())["heads"]
    if "backbone_input_scale" not in params or not any(n["op"] == "Convolution" for n in nodes):
        raise UsageError(f"{prefix}: not an int-inference export (no backbone_input_scale / convolutions); compile "
                         "int-inference-export-last, the model step 3 of the trainer writes")
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for src, *_ in node.get("inputs", []):
            consumers.setdefault(src, []).append(i)

    def var_name(index: int) -> str:
        node = nodes[index]
        while node["op"] != "null":
            node = nodes[node["inputs"][0][0]]
        return node["name"]

    def producer(index: int) -> str:
        node = nodes[index]
        while node["op"] not in ("Convolution", "null"):
            node = nodes[node["inputs"][0][0]]
        return "input" if node["op"] == "null" else layer_of[id(node)]

    layer_of: dict[int, str] = {}
    layers: list[IntLayer] = []
    for i, node in enumerate(nodes):
        if node["op"] != "Convolution":
            continue
        weight = var_name(node["inputs"][1][0])
        if not weight.endswith("weight"):
            raise UsageError(f"{symbol_file}: convolution {node['name']} reads {weight}, not an int8 weight; is this "
                             "the int-inference export?")
        prefix_ = weight[: -len("weight")]
        layer_of[id(node)] = prefix_
        attrs = node.get("attrs", {})
        requantize = f"{prefix_}output_scale" in params
        relu = False
        if requantize:  # follow the chain conv → mul → round → clip to read clip's lower bound
            cur = i
            while True:
                nxt = [c for c in consumers.get(cur, []) if nodes[c]["op"] != "Convolution"]
                if not nxt:
                    break
                cur = nxt[0]
                if nodes[cur]["op"] == "clip":
                    relu = float(nodes[cur]["attrs"]["a_min"]) == 0.0
                    break
        layers.append(IntLayer(prefix_, producer(node["inputs"][0][0]), _first(attrs["kernel"]),
                               _first(attrs.get("stride", "(1, 1)")), _first(attrs.get("pad", "(0, 0)")),
                               int(attrs["num_filter"]), requantize, relu))
    outputs = [producer(head[0]) for head in heads]
    return IntGraph(float(params["backbone_input_scale"].reshape(-1)[0]), layers, outputs, params)


def _first(text: str) -> int:
    return int(str(text).strip("()").split(",")[0])


# ------------------------------------------------------------------------------------------ building


def build_qdq(graph: IntGraph, input_size: tuple[int, int], output_names: list[str],
              fuse_relu: bool = False) -> Any:
    """The ONNX QDQ model of ``graph`` (module docstring).

    ``fuse_relu`` writes a ReLU layer's output as ``QuantizeLinear`` to uint8 with zero point 0 instead of
    ``Relu`` + int8: the form onnxruntime fuses into integer ``QLinearConv`` kernels. It saturates at
    255 steps where the trainer clips at 127, so activations above the calibrated range differ; the
    check measures whether that matters for this model.
    """
    width, height = input_size
    inits: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    zero_int8 = const("zero_point_int8", np.array(0, np.int8))
    zero_uint8 = const("zero_point_uint8", np.array(0, np.uint8))

    def qdq(x: str, scale: float, name: str, unsigned: bool = False) -> str:
        s = const(f"{name}_scale", np.array(scale, np.float32))
        zero = zero_uint8 if unsigned else zero_int8
        nodes.append(helper.make_node("QuantizeLinear", [x, s, zero], [f"{name}_q"], name=f"{name}_quantize"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", s, zero], [f"{name}_dq"],
                                      name=f"{name}_dequantize"))
        return f"{name}_dq"

    tensors = {"input": qdq("data", graph.input_scale, "input")}
    out_of = dict(zip(graph.outputs, output_names, strict=True))
    for layer in graph.layers:
        p = graph.params
        name = layer.prefix.rstrip("_")
        w_int = p[f"{layer.prefix}weight"].astype(np.int8)
        w_scale = p[f"{layer.prefix}weight_scale"].astype(np.float32).reshape(-1)
        in_scale = float(p[f"{layer.prefix}input_scale"].reshape(-1)[0])
        b_int = p[f"{layer.prefix}bias"].astype(np.int32).reshape(-1)
        w = const(f"{name}_weight_int8", w_int)
        ws = const(f"{name}_weight_scale", w_scale)
        wz = const(f"{name}_weight_zero", np.zeros(len(w_scale), np.int8))
        nodes.append(helper.make_node("DequantizeLinear", [w, ws, wz], [f"{name}_weight"], axis=0,
                                      name=f"{name}_weight_dequantize"))
        b = const(f"{name}_bias_int32", b_int)
        # The bias scale is s_in·s_w computed in float32, as the MXNet model multiplies the accumulator.
        bs = const(f"{name}_bias_scale", (np.float32(in_scale) * w_scale).astype(np.float32))
        bz = const(f"{name}_bias_zero", np.zeros(len(w_scale), np.int32))
        nodes.append(helper.make_node("DequantizeLinear", [b, bs, bz], [f"{name}_bias"], axis=0,
                                      name=f"{name}_bias_dequantize"))
        conv_out = out_of.get(layer.prefix) if not layer.requantize else None
        conv_out = conv_out or f"{name}_conv"
        nodes.append(helper.make_node("Conv", [tensors[layer.source], f"{name}_weight", f"{name}_bias"], [conv_out],
                                      kernel_shape=[layer.kernel] * 2, strides=[layer.stride] * 2,
                                      pads=[layer.pad] * 4, name=f"{name}_conv"))
        if layer.requantize:
            x = conv_out
            if layer.relu and not fuse_relu:
                nodes.append(helper.make_node("Relu", [conv_out], [f"{name}_relu"], name=f"{name}_relu"))
                x = f"{name}_relu"
            tensors[layer.prefix] = qdq(x, float(p[f"{layer.prefix}output_scale"].reshape(-1)[0]), name,
                                        unsigned=layer.relu and fuse_relu)
        else:
            tensors[layer.prefix] = conv_out
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, height, width])]
    stride = int(np.prod([layer.stride for layer in graph.layers if layer.prefix.startswith("backbone_")]))
    channels = {layer.prefix: layer.channels for layer in graph.layers}
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", channels[p], height // stride,
                                                                    width // stride])
               for n, p in zip(output_names, graph.outputs, strict=True)]
    model = helper.make_model(helper.make_graph(nodes, "aidi_int_inference", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="aidi compile")
    onnx.checker.check_model(model, full_check=True)
    return model


# ------------------------------------------------------------------------------------------ checking


def sample_images(recs: Sequence[str | Path], samples: int, input_size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Normalised ``(N, 3, H, W)`` images as predict feeds them: the first ``samples`` of each rec, or random."""
    import cv2

    from aidi.evaluate.formats import iter_rec
    from aidi_trainer.data import Crop, decode_image, normalise
    from aidi_trainer.predict import _image_of

    images = []
    for rec in recs:
        for n, (key, record) in enumerate(iter_rec(Path(rec))):
            if n >= samples:
                break
            picture = decode_image(_image_of(record), f"{rec} record {key}")
            images.append(normalise(Crop.identity(picture.shape[1], picture.shape[0]).apply(
                picture, input_size, cv2.INTER_LINEAR)))
    if images:
        return np.stack(images), f"{len(images)} images from {', '.join(map(str, recs))}"
    rng = np.random.default_rng(0)
    width, height = input_size
    return (rng.uniform(-1, 1, (samples, 3, height, width)).astype(np.float32),
            f"{samples} random images (pass --rec for real ones)")


def _matched(a: np.ndarray, b: np.ndarray) -> int:
    from aidi_trainer.validation import iou

    used = np.zeros(len(b), bool)
    hits = 0
    for row in a:
        same = np.nonzero((b[:, 0] == row[0]) & ~used)[0]
        if len(same):
            overlaps = iou(row[2:], b[same, 2:])
            if overlaps.max() >= 0.5:
                used[same[int(overlaps.argmax())]] = True
                hits += 1
    return hits


def compare(reference: list[np.ndarray], candidate: list[np.ndarray], names: list[str], kinds: list[str],
            stride: int) -> dict[str, Any]:
    from aidi_trainer.validation import decode_detections

    per_output = {}
    for name, kind, ref, got in zip(names, kinds, reference, candidate, strict=True):
        diff = float(np.abs(ref - got).max())
        row: dict[str, Any] = {"kind": kind, "max_abs_diff": diff,
                               "max_rel_diff": diff / max(float(np.abs(ref).max()), 1e-6)}
        if kind == "det":
            ref_dets = [d[d[:, 1] >= CHECK_SCORE] for d in decode_detections(mx.nd.array(ref), stride)]
            got_dets = [d[d[:, 1] >= CHECK_SCORE] for d in decode_detections(mx.nd.array(got), stride)]
            total = sum(len(r) + len(g) for r, g in zip(ref_dets, got_dets, strict=True))
            hits = sum(_matched(r, g) for r, g in zip(ref_dets, got_dets, strict=True))
            row.update({"detections_mxnet": sum(len(r) for r in ref_dets),
                        "detections_onnx": sum(len(g) for g in got_dets),
                        "detection_agreement": 2 * hits / total if total else 1.0})
            row["passed"] = row["detection_agreement"] >= DET_AGREEMENT_MIN
        else:
            row["pixel_agreement"] = float((ref.argmax(axis=1) == got.argmax(axis=1)).mean())
            row["passed"] = row["pixel_agreement"] >= SEG_AGREEMENT_MIN
        per_output[name] = row
    return {"outputs": per_output, "passed": all(r["passed"] for r in per_output.values()),
            "criteria": f"detection agreement >= {DET_AGREEMENT_MIN} (score >= {CHECK_SCORE}, same class, IoU >= 0.5), "
                        f"segmentation pixel agreement >= {SEG_AGREEMENT_MIN}"}


def compile_model(model: str | Path, target: str, out: Path, rec: list[str] | None = None,
                  config_path: str | Path = "configs/4pe_resize/multitask.py", samples: int = 16,
                  model_name: str | None = None, model_version: str = "latest",
                  dataspace_config: str | None = None, fuse_relu: bool = False) -> dict[str, Any]:
    """Compile, check, write ``model.onnx`` + ``compile.log`` + ``compile.json``; optionally store them with a
    released model version."""
    from aidi_trainer.predict import load_model
    from aidi_trainer.train_config import load_config

    if target != "onnx":
        raise UsageError(f"--target {target!r}: only onnx is supported")
    started = time.monotonic()
    config = load_config(config_path)
    names, kinds = list(config.tasks), [t.kind for t in config.tasks.values()]
    stride = int(np.prod([s for _, s in config.backbone]))
    graph = read_int_model(model)
    if len(graph.outputs) != len(names):
        raise UsageError(f"{model} has {len(graph.outputs)} outputs but {config.path} has {len(names)} branches; pass "
                         "the --config the model was trained with")
    out.mkdir(parents=True, exist_ok=True)
    onnx_model = build_qdq(graph, config.input_size, names, fuse_relu)
    onnx_path = out / "model.onnx"
    onnx_path.write_bytes(onnx_model.SerializeToString())

    images, source = sample_images(rec or [], samples, config.input_size)
    net = load_model(model, mx.cpu())
    reference = [o.asnumpy() for o in _as_list(net(mx.nd.array(images)))]
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # What onnxruntime really runs after its graph optimisations: integer kernels or float convs.
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        runtime_ops: dict[str, int] = {}
        for node in onnx.load(options.optimized_model_filepath).graph.node:
            runtime_ops[node.op_type] = runtime_ops.get(node.op_type, 0) + 1
    candidate = session.run(names, {"data": images})
    check = compare(reference, candidate, names, kinds, stride)
    ops: dict[str, int] = {}
    for node in onnx_model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    report: dict[str, Any] = {
        "model": str(model), "target": target, "artifact": str(onnx_path), "opset": OPSET,
        "bytes": onnx_path.stat().st_size, "ops": ops, "fuse_relu": fuse_relu, "onnxruntime_ops": runtime_ops,
        "layers": [asdict(layer) for layer in graph.layers],
        "samples": source, "onnxruntime": ort.__version__, "check": check,
        "seconds": round(time.monotonic() - started, 2)}
    worst = max(check["outputs"].values(), key=lambda r: r["max_rel_diff"])
    agreement = ", ".join(f"{n} {r.get('detection_agreement', r.get('pixel_agreement')):.3f}"
                          for n, r in check["outputs"].items())
    report["summary"] = (f"{onnx_path}: {ops.get('QuantizeLinear', 0)} QuantizeLinear / "
                         f"{ops.get('DequantizeLinear', 0)} DequantizeLinear, {len(graph.layers)} convs; check on "
                         f"{source}: max abs diff {max(r['max_abs_diff'] for r in check['outputs'].values()):.3g} "
                         f"(relative {worst['max_rel_diff']:.3g}); agreement {agreement}: "
                         + ("PASSED" if check["passed"] else "FAILED"))
    (out / "compile.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "compile.log").write_text(_log_text(report))
    if model_name:
        report["stored"] = _store(model_name, model_version, out, report, dataspace_config)
        (out / "compile.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _as_list(outputs: Any) -> list[Any]:
    return list(outputs) if isinstance(outputs, list | tuple) else [outputs]


def _log_text(report: dict[str, Any]) -> str:
    lines = [f"aidi compile {report['model']} --target {report['target']}",
             f"artifact: {report['artifact']} ({report['bytes']} bytes, opset {report['opset']}, onnxruntime "
             f"{report['onnxruntime']})",
             "ops: " + ", ".join(f"{k} {v}" for k, v in sorted(report["ops"].items())),
             "onnxruntime runs: " + ", ".join(f"{k} {v}" for k, v in sorted(report["onnxruntime_ops"].items())),
             f"samples: {report['samples']}", f"criteria: {report['check']['criteria']}"]
    for name, row in report["check"]["outputs"].items():
        figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
        lines.append(f"  {name}: {figures}")
    lines.append(report["summary"])
    return "\n".join(lines) + "\n"


def _store(name: str, version: str, out: Path, report: dict[str, Any], dataspace_config: str | None) -> str:
    from aidi.dataspace import DataspaceConfig, open_dataspace
    from aidi.dataspace.registry import ModelRegistry

    ds = open_dataspace(DataspaceConfig.load(dataspace_config))
    registry = ModelRegistry(ds.store, uploader=ds.uploader)
    record = registry.show(name, version)
    files = [(f, out / f) for f in ("model.onnx", "compile.log", "compile.json")]
    registry.attach(name, record.version, report["target"], files,
                    {"check": {"passed": report["check"]["passed"], "summary": report["summary"]},
                     "source_model": report["model"]})
    return f"{name} {record.version} compiled/{report['target']}/"
