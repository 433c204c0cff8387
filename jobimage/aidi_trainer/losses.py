"""Per-task losses. Each returns ``{term: scalar NDArray}``; the task's loss is their sum.

Detection (centre-based): penalty-reduced focal loss on the class heatmap (CenterNet's), and L1 on
``log w, log h, dx, dy`` at object centres, both normalised by the number of objects.
Segmentation: softmax cross-entropy over pixels whose label is not 255.
"""

from __future__ import annotations

from mxnet import nd

from aidi_trainer.model import BOX_CHANNELS

IGNORE = 255


def detection_loss(output: nd.NDArray, heatmap: nd.NDArray, box: nd.NDArray, mask: nd.NDArray) -> dict[str, nd.NDArray]:
    num_classes = output.shape[1] - BOX_CHANNELS
    logits = nd.slice_axis(output, axis=1, begin=0, end=num_classes)
    pred_box = nd.slice_axis(output, axis=1, begin=num_classes, end=None)
    # log σ(z) = -softplus(-z), log(1 - σ(z)) = -softplus(z): stable for any logit.
    log_p = -nd.Activation(-logits, act_type="softrelu")
    log_not_p = -nd.Activation(logits, act_type="softrelu")
    p = nd.sigmoid(logits)
    positive = heatmap == 1.0
    num_pos = nd.maximum(mask.sum(), 1.0)
    pos_term = positive * (1 - p) ** 2 * log_p
    neg_term = (1 - positive) * (1 - heatmap) ** 4 * p ** 2 * log_not_p
    focal = -(pos_term + neg_term).sum() / num_pos
    l1 = (nd.abs(pred_box - box) * mask).sum() / num_pos
    return {"hm": focal, "box": l1}


def segmentation_loss(output: nd.NDArray, label: nd.NDArray) -> dict[str, nd.NDArray]:
    valid = label != IGNORE
    safe_label = label * valid
    log_prob = nd.log_softmax(output, axis=1)
    picked = nd.pick(log_prob, safe_label, axis=1)
    ce = -(picked * valid).sum() / nd.maximum(valid.sum(), 1.0)
    return {"ce": ce}
