"""Quantization-aware building blocks: a conv unit that folds its BatchNorm and fake-quantizes itself.

Scheme (the one step 3's integer model computes exactly):

* weights: int8, symmetric, per output channel, ``s_w[c] = max|w[c]| / 127``;
* activations: int8, symmetric, per tensor, ``s = calibrated max|x| / 127``; a tensor's scale belongs
  to the unit that produces it (``out_scale``) and every consumer reads it from there;
* biases: int32 with scale ``s_in * s_w[c]``;
* requantization: ``y_int = clip(round(acc * (s_in * s_w[c] / s_out)))`` with ``acc`` the int32
  accumulator; rounding is MXNet's ``round`` (half away from zero), clipping to ``[-127, 127]``
  (``[0, 127]`` after ReLU).

The fake-quantized forward computes exactly these integers (int8 × int8 sums below 2^24 are exact
in float32) and only then multiplies by ``s_out``, with the same MXNet ops in the same order as the
integer model: step 3 reproduces step 2 bit for bit. Gradients pass through the rounding unchanged
(straight-through estimator).
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.gluon import nn

QMAX = 127.0
FLOAT = "float"
FAKEQUANT = "fakequant"
_EPS = 1e-12


def ste_round(F: Any, x: Any) -> Any:
    """``round(x)`` forward, identity backward. Forward values are exactly ``round(x)``."""
    return x + F.BlockGrad(F.round(x) - x)


def fake_quant(F: Any, x: Any, scale: Any, lo: float = -QMAX) -> Any:
    """``round(clip(x / scale)) * scale`` with a straight-through gradient for the rounding."""
    return F.broadcast_mul(ste_round(F, F.clip(F.broadcast_div(x, scale), lo, QMAX)), scale)


def quantize_weight(F: Any, weight: Any) -> tuple[Any, Any]:
    """Integer-valued weight and its per-output-channel scale ``(C,)`` (constant for the gradient)."""
    scale = F.BlockGrad(F.maximum(F.max(F.abs(weight), axis=(1, 2, 3)), _EPS) / QMAX)
    return ste_round(F, F.clip(F.broadcast_div(weight, F.Reshape(scale, shape=(-1, 1, 1, 1))), -QMAX, QMAX)), scale


def accumulator_scale(F: Any, weight_scale: Any, input_scale: Any) -> Any:
    """``s_w[c] * s_in``: the scale of the int32 accumulator and of the bias."""
    return F.broadcast_mul(weight_scale, input_scale)


def quantize_bias(F: Any, bias: Any, acc_scale: Any) -> Any:
    return ste_round(F, F.broadcast_div(bias, acc_scale))


def requantize(F: Any, acc: Any, acc_scale: Any, out_scale: Any, relu: bool, rounding: Any = None) -> Any:
    """int32 accumulator → int8 values of the output tensor."""
    multiplier = F.Reshape(F.broadcast_div(acc_scale, out_scale), shape=(1, -1, 1, 1))
    rounded = (rounding or F.round)(F.broadcast_mul(acc, multiplier))
    return F.clip(rounded, 0.0 if relu else -QMAX, QMAX)


def dequantize(F: Any, acc: Any, acc_scale: Any) -> Any:
    return F.broadcast_mul(acc, F.Reshape(acc_scale, shape=(1, -1, 1, 1)))


class Calibrated(nn.HybridBlock):
    """A block with an activation scale that a calibration pass sets from the max |x| it sees."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = FLOAT
        self.calibrating = False
        self._seen_max = 0.0
        with self.name_scope():
            self.out_scale = self.params.get("out_scale", shape=(1,), init=mx.init.One(),
                                             grad_req="null", differentiable=False)

    def observe(self, y: Any) -> None:
        if self.calibrating and isinstance(y, mx.nd.NDArray):
            self._seen_max = max(self._seen_max, float(y.abs().max().asscalar()))

    def finish_calibration(self) -> None:
        self.calibrating = False
        self.out_scale.set_data(mx.nd.array([max(self._seen_max, 1e-6) / QMAX]))
        self._seen_max = 0.0

    def quantizing(self) -> bool:
        return self.mode == FAKEQUANT and not self.calibrating


class InputQuant(Calibrated):
    """Quantizes the network input (the normalised image) in fake-quant mode; identity in float mode."""

    def hybrid_forward(self, F: Any, x: Any, out_scale: Any) -> Any:
        self.observe(x)
        return fake_quant(F, x, out_scale) if self.quantizing() else x


class ConvUnit(Calibrated):
    """conv → [BatchNorm] → [ReLU].

    ``float`` mode trains with BatchNorm. ``fold()`` merges the BatchNorm into the conv's weight and
    bias and switches to ``fakequant``: per-channel int8 weights, and (unless ``quant_out=False``, for a
    head's last conv, whose float output is the model's) per-tensor int8 output.
    """

    def __init__(self, channels: int, in_channels: int, kernel: int = 3, stride: int = 1,
                 bn: bool = True, relu: bool = True, quant_out: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels, self.in_channels = channels, in_channels
        self.kernel, self.stride, self.pad = kernel, stride, kernel // 2
        self.has_bn, self.relu, self.quant_out = bn, relu, quant_out
        self.folded = not bn
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(channels, in_channels, kernel, kernel),
                                          init=mx.init.Xavier(magnitude=2.0))
            # With BatchNorm the bias only exists once the BN is folded into it.
            self.bias = self.params.get("bias", shape=(channels,), init=mx.init.Zero(),
                                        grad_req="null" if bn else "write")
            self.bn = nn.BatchNorm(in_channels=channels, prefix="bn_") if bn else None
            # A copy of the producing unit's out_scale (MultiTaskNet.link_scales keeps them equal).
            self.in_scale = self.params.get("in_scale", shape=(1,), init=mx.init.One(),
                                            grad_req="null", differentiable=False)

    def _batchnorm(self) -> Any:
        """The BatchNorm, which a unit built with one keeps until fold() merges it into the conv."""
        assert self.bn is not None, "a unit without BatchNorm is built folded"
        return self.bn

    def _conv(self, F: Any, x: Any, weight: Any, bias: Any | None) -> Any:
        return F.Convolution(x, weight, bias, kernel=(self.kernel,) * 2, stride=(self.stride,) * 2,
                             pad=(self.pad,) * 2, num_filter=self.channels, no_bias=bias is None)

    def hybrid_forward(self, F: Any, x: Any, weight: Any, bias: Any, in_scale: Any, out_scale: Any) -> Any:
        if self.mode == FLOAT or self.calibrating:
            conv = self._conv(F, x, weight, None if not self.folded else bias)
            y = self._batchnorm()(conv) if not self.folded else conv
            y = F.relu(y) if self.relu else y
            self.observe(y)
            return y
        x_int = ste_round(F, F.clip(F.broadcast_div(x, in_scale), -QMAX, QMAX))
        w_int, w_scale = quantize_weight(F, weight)
        acc_scale = accumulator_scale(F, w_scale, in_scale)
        acc = self._conv(F, x_int, w_int, quantize_bias(F, bias, acc_scale))
        if not self.quant_out:
            y = dequantize(F, acc, acc_scale)
            return F.relu(y) if self.relu else y
        y_int = requantize(F, acc, acc_scale, out_scale, self.relu, rounding=lambda v: ste_round(F, v))
        return F.broadcast_mul(y_int, out_scale)

    def fold(self) -> None:
        """Merge the BatchNorm's statistics and affine into the conv, and start fake-quantizing."""
        if not self.folded:
            bn = self._batchnorm()
            gamma, beta = _device_mean(bn.gamma), _device_mean(bn.beta)
            mean, var = _device_mean(bn.running_mean), _device_mean(bn.running_var)
            factor = gamma / np.sqrt(var + bn._kwargs["eps"])
            weight = self.weight.data().asnumpy() * factor[:, None, None, None]
            self.weight.set_data(mx.nd.array(weight))
            self.bias.set_data(mx.nd.array(beta - mean * factor))
            for param in bn.collect_params().values():
                param.grad_req = "null"
            self.bias.grad_req = "write"
            self.folded = True
        self.mode = FAKEQUANT


def _device_mean(param: gluon.Parameter) -> np.ndarray:
    """The mean over devices: with several GPUs each keeps BatchNorm statistics of its own shard."""
    return np.mean([arr.asnumpy() for arr in param.list_data()], axis=0)


def units(block: gluon.Block) -> list[Calibrated]:
    """Every calibrated unit below ``block``, in registration order."""
    found: list[Calibrated] = []

    def visit(b: gluon.Block) -> None:
        if isinstance(b, Calibrated):
            found.append(b)
        for child in b._children.values():
            visit(child)

    visit(block)
    return found


def set_folded_state(block: gluon.Block) -> None:
    """Put every unit below ``block`` in the folded fake-quant mode without touching its weights.

    For loading a checkpoint written after folding: the weights in it are already folded.
    """
    for unit in units(block):
        if isinstance(unit, ConvUnit):
            unit.folded = True
            unit.bias.grad_req = "write"
            if unit.bn is not None:
                for param in unit.bn.collect_params().values():
                    param.grad_req = "null"
        unit.mode = FAKEQUANT


def fold_and_quantize(block: gluon.Block) -> None:
    """Fold every BatchNorm below ``block`` into its conv and switch all units to fake quantization."""
    for unit in units(block):
        if isinstance(unit, ConvUnit):
            unit.fold()
        unit.mode = FAKEQUANT
