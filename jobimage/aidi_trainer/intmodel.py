"""Step 3: the integer-inference model, converted from step 2's fake-quantized network.

Every tensor between layers holds int8 values (carried in float32, exactly), every conv multiplies
int8 activations by int8 weights and adds an int32 bias; a per-channel multiplier requantizes the
int32 accumulator to the next int8 tensor. Only the heads' last convs dequantize (their float outputs
are the model's). The graph uses a small, exporter-friendly op set: ``Cast``, ``Convolution``,
``broadcast_mul``, ``broadcast_div``, ``Reshape``, ``round``, ``clip`` (docs/trainer.md lists the
parameters each layer stores, for the ONNX/QDQ compiler).

Exactness: int8 × int8 products summed over a 3×3×C window stay below 2^24 for C ≤ 115 (127·127·9·C),
so float32 accumulates them without rounding; the model's widths are checked against that bound.
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from aidi_trainer import quant
from aidi_trainer.model import MultiTaskNet
from aidi_trainer.quant import QMAX, ConvUnit

FLOAT32_EXACT = float(1 << 24)


class IntInput(nn.HybridBlock):
    """float image → int8 values: ``clip(round(x / input_scale), -127, 127)``."""

    def __init__(self, scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.scale = self.params.get("scale", shape=(1,), init=mx.init.Constant(scale),
                                         grad_req="null", differentiable=False)

    def hybrid_forward(self, F: Any, x: Any, scale: Any) -> Any:
        return F.clip(F.round(F.broadcast_div(x, scale)), -QMAX, QMAX)


class IntConv(nn.HybridBlock):
    """int8 conv with int32 bias; requantizes to int8 (``output_scale`` set) or dequantizes to float.

    The integers come from the same functions step 2's forward uses (:mod:`aidi_trainer.quant`).
    """

    def __init__(self, unit: ConvUnit, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernel, self.stride, self.pad, self.channels = unit.kernel, unit.stride, unit.pad, unit.channels
        self.relu, self.requantize = unit.relu, unit.quant_out
        in_scale = unit.in_scale.data(mx.cpu())
        w_int, w_scale = quant.quantize_weight(mx.nd, unit.weight.data(mx.cpu()))
        b_int = quant.quantize_bias(mx.nd, unit.bias.data(mx.cpu()), quant.accumulator_scale(mx.nd, w_scale, in_scale))
        w_int, b_int = w_int.asnumpy(), b_int.asnumpy()
        bound = float(np.abs(w_int).reshape(len(w_int), -1).sum(axis=1).max() * QMAX + np.abs(b_int).max())
        if bound >= FLOAT32_EXACT:
            raise ValueError(f"{unit.name}: the int32 accumulator may reach {bound:.0f} ≥ 2^24, where float32 "
                             "stops being exact; use fewer input channels per conv")
        values = {"weight": w_int.astype(np.int8), "bias": b_int.astype(np.int32),
                  "weight_scale": w_scale.asnumpy(), "input_scale": in_scale.asnumpy()}
        if self.requantize:
            values["output_scale"] = unit.out_scale.data(mx.cpu()).asnumpy()
        self._values = values
        with self.name_scope():
            for name, value in values.items():
                setattr(self, name, self.params.get(name, shape=value.shape, dtype=value.dtype,
                                                    init=mx.init.Zero(), grad_req="null",
                                                    differentiable=False))

    def load_values(self) -> None:
        for name, value in self._values.items():
            getattr(self, name).set_data(mx.nd.array(value, dtype=value.dtype))

    def hybrid_forward(self, F: Any, x: Any, weight: Any, bias: Any, weight_scale: Any,
                       input_scale: Any, output_scale: Any = None) -> Any:
        acc = F.Convolution(x, F.Cast(weight, dtype="float32"), F.Cast(bias, dtype="float32"),
                            kernel=(self.kernel,) * 2, stride=(self.stride,) * 2, pad=(self.pad,) * 2,
                            num_filter=self.channels)
        acc_scale = quant.accumulator_scale(F, weight_scale, input_scale)
        if not self.requantize:
            return quant.dequantize(F, acc, acc_scale)
        return quant.requantize(F, acc, acc_scale, output_scale, self.relu)


class IntNet(nn.HybridBlock):
    """The integer model: same layout and outputs as :class:`~aidi_trainer.model.AllHeads`."""

    # Every operator its exported graph uses (docs/trainer.md); an exporter needs no others.
    OPS = ("Cast", "Convolution", "Reshape", "broadcast_div", "broadcast_mul", "clip", "round")

    def __init__(self, net: MultiTaskNet, **kwargs: Any) -> None:
        super().__init__(prefix="", **kwargs)
        backbone = net.backbone
        net.link_scales()
        with self.name_scope():
            self.input = IntInput(float(backbone.input_quant.out_scale.data(mx.cpu()).asscalar()),
                                  prefix="backbone_input_")
            self.body = nn.HybridSequential(prefix="")
            for unit in backbone.body:
                self.body.add(IntConv(unit, prefix=unit.prefix))
            self.heads = nn.HybridSequential(prefix="")
            for head in net.heads:
                pair = nn.HybridSequential(prefix="")
                pair.add(IntConv(head.conv, prefix=head.conv.prefix), IntConv(head.out, prefix=head.out.prefix))
                self.heads.add(pair)
        self.initialize()
        for layer in self.layers():
            layer.load_values()

    def layers(self) -> list[IntConv]:
        return [*self.body, *(conv for pair in self.heads for conv in pair)]

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        feature = self.body(self.input(x))
        return tuple(pair(feature) for pair in self.heads)
