"""The multitask network: a shared backbone, centre-based detection heads and segmentation heads.

Every layer is a :class:`~aidi_trainer.quant.ConvUnit` (conv → BN → ReLU) so that the whole network
folds and quantizes uniformly: no residual additions, no pooling, no upsampling inside the graph
(segmentation logits come out at the backbone's stride; decoding upsamples them).

A detection head outputs ``num_classes + 4`` channels per cell: class heatmap logits, then the box
size ``(w, h)`` in cells (log scale) and the centre offset ``(dx, dy)`` within the cell.
A segmentation head outputs ``num_classes`` logits per cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn

from aidi_trainer.quant import ConvUnit, InputQuant

DET, SEG = "det", "seg"
BOX_CHANNELS = 4


@dataclass(frozen=True)
class HeadSpec:
    """One task branch: its name, kind (``det``/``seg``) and number of classes."""

    name: str
    kind: str
    num_classes: int

    @property
    def out_channels(self) -> int:
        return self.num_classes + BOX_CHANNELS if self.kind == DET else self.num_classes


class Backbone(nn.HybridBlock):
    """Plain stack of conv units; ``layers`` is ``[(channels, stride), ...]``."""

    def __init__(self, layers: Sequence[tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stride = 1
        with self.name_scope():
            self.input_quant = InputQuant(prefix="input_")
            self.body = nn.HybridSequential(prefix="")
            in_channels = 3
            for i, (channels, stride) in enumerate(layers):
                self.body.add(ConvUnit(channels, in_channels, 3, stride, prefix=f"conv{i}_"))
                in_channels = channels
                self.stride *= stride
        self.out_channels = in_channels

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.body(self.input_quant(x))


class Head(nn.HybridBlock):
    """3×3 conv unit then a 1×1 conv to the task's outputs (float, not quantized at the output)."""

    def __init__(self, spec: HeadSpec, in_channels: int, mid_channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        with self.name_scope():
            self.conv = ConvUnit(mid_channels, in_channels, 3, 1, prefix="conv_")
            self.out = ConvUnit(spec.out_channels, mid_channels, 1, 1, bn=False, relu=False,
                                quant_out=False, prefix="out_")
        if spec.kind == DET:
            # Start the heatmap at a low prior (focal-loss practice) so early losses stay finite.
            self.out.bias.init = _HeatmapBiasInit(spec.num_classes)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.out(self.conv(x))


@mx.init.register
class _HeatmapBiasInit(mx.init.Initializer):
    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes=num_classes)
        self.num_classes = num_classes

    def _init_weight(self, name: str, arr: mx.nd.NDArray) -> None:
        arr[:] = 0.0
        arr[: self.num_classes] = -2.19  # sigmoid(-2.19) ≈ 0.1

    _init_bias = _init_weight


class MultiTaskNet(gluon.Block):
    """Backbone + one head per task. ``net(x, task)`` runs one branch; ``net.all_heads(x)`` all of them."""

    def __init__(self, backbone_layers: Sequence[tuple[int, int]], heads: Sequence[HeadSpec],
                 head_channels: int = 32, **kwargs: Any) -> None:
        super().__init__(prefix="", **kwargs)
        self.specs = {spec.name: spec for spec in heads}
        with self.name_scope():
            self.backbone = Backbone(backbone_layers, prefix="backbone_")
            self.heads = nn.HybridSequential(prefix="")
            for spec in heads:
                self.heads.add(Head(spec, self.backbone.out_channels, head_channels, prefix=f"{spec.name}_"))

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def head(self, task: str) -> Head:
        return self.heads[list(self.specs).index(task)]

    def forward(self, x: Any, task: str) -> Any:
        return self.head(task)(self.backbone(x))

    def link_scales(self) -> None:
        """Copy each tensor's scale from the unit producing it into the units consuming it."""
        producer = self.backbone.input_quant
        for unit in self.backbone.body:
            unit.in_scale.set_data(producer.out_scale.data())
            producer = unit
        for head in self.heads:
            head.conv.in_scale.set_data(producer.out_scale.data())
            head.out.in_scale.set_data(head.conv.out_scale.data())

    def hybridize(self, active: bool = True, **kwargs: Any) -> None:
        self.backbone.hybridize(active, static_alloc=True, **kwargs)
        for head in self.heads:
            head.hybridize(active, static_alloc=True, **kwargs)


class AllHeads(nn.HybridBlock):
    """Backbone once, every head on it: the graph that is exported (one output per task, in order)."""

    def __init__(self, net: MultiTaskNet, **kwargs: Any) -> None:
        super().__init__(prefix="", **kwargs)
        self.backbone = net.backbone
        self.heads = net.heads

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        feature = self.backbone(x)
        return tuple(head(feature) for head in self.heads)
