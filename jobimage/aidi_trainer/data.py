"""Reading the packed scenes and turning records into training targets.

Records are read with MXNet's own ``mx.recordio.MXIndexedRecordIO`` (one handle per thread: a
handle seeks, so threads must not share one) and parsed by ``aidi.recordio`` (the layouts of
docs/architecture.md). Decoding, augmentation (random crop, horizontal flip, resize) and target
encoding run in a thread pool: OpenCV releases the GIL while it decodes and resizes.

Reproducible: the sampler's order depends only on (seed, epoch), and each sample's augmentation numbers
are row ``index`` of an array drawn once per epoch from (seed, epoch), never from a generator that
threads share in whatever order they happen to run. The sampler hands the dataset ``epoch * len + index``.

Images enter the network as RGB, NCHW float32, ``(pixel - 127.5) / 127.5``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import mxnet as mx
import numpy as np
from mxnet import gluon

from aidi.recordio import unpack_detection, unpack_parsing
from aidi_trainer.model import DET
from aidi_trainer.train_config import SceneFiles, TaskConfig

cv2.setNumThreads(1)  # parallelism comes from the loader's threads; OpenCV's own pool would oversubscribe

MIN_BOX_PIXELS = 2.0
CROP_SCALE = (0.6, 1.0)


def normalise(image: np.ndarray) -> np.ndarray:
    """HWC uint8 BGR (as ``decode_image`` returns it) → CHW float32 RGB in [-1, 1], C-contiguous.

    The channel swap and the transpose ride along with the one conversion pass, and the result is laid
    out as the network reads it, so batching stacks it without another transposing copy.
    """
    out = image[:, :, ::-1].transpose(2, 0, 1).astype(np.float32, order="C")
    out -= 127.5
    out /= 127.5
    return out


def decode_image(payload: bytes, what: str) -> np.ndarray:
    """The payload's pixels, HWC uint8 in OpenCV's BGR order (``normalise`` makes them RGB)."""
    image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{what}: the image payload is not a decodable JPEG/PNG")
    return image


@dataclass(frozen=True)
class Crop:
    """A crop box in whole source pixels and whether to flip; ``identity`` for validation."""

    x0: float
    y0: float
    x1: float
    y1: float
    flip: bool

    @staticmethod
    def identity(width: int, height: int) -> Crop:
        return Crop(0.0, 0.0, float(width), float(height), False)

    @staticmethod
    def random(draws: np.ndarray, width: int, height: int, flip: bool) -> Crop:
        """A crop from four uniform [0, 1) numbers: scale, x, y, flip."""
        lo, hi = CROP_SCALE
        scale = lo + float(draws[0]) * (hi - lo)
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        x0, y0 = int(float(draws[1]) * (width - w + 1)), int(float(draws[2]) * (height - h + 1))
        return Crop(float(x0), float(y0), float(x0 + w), float(y0 + h), flip and bool(draws[3] < 0.5))

    def apply(self, image: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
        """The crop resized to ``size`` (width, height), flipped if asked: a view when nothing moves.

        A whole-pixel crop is a slice, and ``cv2.resize`` maps pixel centres as the boxes do (pixel i
        covers [i, i+1)); ``warpAffine`` did the same in one call but cost 50× a resize. Pass
        ``cv2.INTER_NEAREST_EXACT`` for label masks: plain ``INTER_NEAREST`` samples off-centre.
        """
        x0, y0, x1, y1 = int(self.x0), int(self.y0), int(self.x1), int(self.y1)
        out = image[y0:y1, x0:x1]
        if (x1 - x0, y1 - y0) != tuple(size):
            out = cv2.resize(out, tuple(size), interpolation=interpolation)
        return out[:, ::-1] if self.flip else out

    def boxes(self, boxes: np.ndarray, width: int, height: int, size: tuple[int, int]) -> np.ndarray:
        """Normalised ``[xmin, ymin, xmax, ymax]`` in the source → pixels of the output, clipped."""
        out_w, out_h = size
        sx, sy = out_w / (self.x1 - self.x0), out_h / (self.y1 - self.y0)
        x = (boxes[:, [0, 2]] * width - self.x0) * sx
        y = (boxes[:, [1, 3]] * height - self.y0) * sy
        if self.flip:
            x = out_w - x[:, ::-1]
        # np.minimum/np.maximum: ndarray.clip's per-call checks cost more than the work on a few boxes.
        x = np.minimum(np.maximum(x, 0.0), out_w)
        y = np.minimum(np.maximum(y, 0.0), out_h)
        return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def det_targets(boxes: np.ndarray, classes: np.ndarray, num_classes: int, grid: tuple[int, int],
                stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre-based targets on the output grid (width, height).

    ``heatmap`` (C, H, W): an elliptical Gaussian per object (the maximum where they overlap), exactly 1
    at its centre cell; ``box`` (4, H, W): ``log(w), log(h)`` in cells and the centre's offset in its
    cell, at centres, the smallest box winning a shared cell; ``mask`` (1, H, W): 1 at centre cells.
    All objects at once: a Python loop per object cost as much as decoding the image.
    """
    gw, gh = grid
    heatmap = np.zeros((num_classes, gh, gw), np.float32)
    box = np.zeros((4, gh, gw), np.float32)
    mask = np.zeros((1, gh, gw), np.float32)
    if not len(boxes):
        return heatmap, box, mask
    cells = np.asarray(boxes, np.float32) / stride
    w, h = cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]
    cx, cy = (cells[:, 0] + cells[:, 2]) / 2, (cells[:, 1] + cells[:, 3]) / 2
    ix, iy = np.minimum(cx.astype(np.int64), gw - 1), np.minimum(cy.astype(np.int64), gh - 1)
    sx, sy = np.maximum(w / 6, 0.5), np.maximum(h / 6, 0.5)
    # The Gaussian is separable: one row and one column per object, multiplied out.
    gx = np.exp(-((np.arange(gw, dtype=np.float32)[None, :] - ix[:, None]) ** 2) / (2 * sx * sx)[:, None])
    gy = np.exp(-((np.arange(gh, dtype=np.float32)[None, :] - iy[:, None]) ** 2) / (2 * sy * sy)[:, None])
    gauss = gy[:, :, None] * gx[:, None, :]
    classes = np.asarray(classes, np.int64)
    for c in np.unique(classes):
        heatmap[c] = gauss[classes == c].max(axis=0)
    heatmap[classes, iy, ix] = 1.0
    # One object per centre cell, the smallest (stable sort: among equal areas, the first).
    order = np.argsort(w * h, kind="stable")
    _, first = np.unique((iy * gw + ix)[order], return_index=True)
    won = order[first]
    box[:, iy[won], ix[won]] = np.stack([np.log(np.maximum(w[won], 1e-3)), np.log(np.maximum(h[won], 1e-3)),
                                         cx[won] - ix[won], cy[won] - iy[won]])
    mask[0, iy[won], ix[won]] = 1.0
    return heatmap, box, mask


class _Readers(threading.local):
    """Per-thread ``MXIndexedRecordIO`` handles, opened on first use."""

    def __init__(self, files: list[SceneFiles]) -> None:
        self.files = files
        self.handles: dict[int, mx.recordio.MXIndexedRecordIO] = {}

    def read(self, source: int, key: int) -> bytes:
        handle = self.handles.get(source)
        if handle is None:
            scene = self.files[source]
            handle = mx.recordio.MXIndexedRecordIO(str(scene.idx), str(scene.rec), "r")
            self.handles[source] = handle
        return handle.read_idx(key)


def _index_keys(idx_path: Any) -> list[int]:
    with open(idx_path, encoding="ascii") as lines:
        return [int(line.split("\t", 1)[0]) for line in lines if line.strip()]


class TaskDataset(gluon.data.Dataset):
    """One branch's samples over all of its scenes: ``(image, targets...)`` as numpy arrays.

    Detection samples are ``(image, heatmap, box, mask)``; segmentation samples ``(image, label)`` with
    the label at the output grid's resolution (nearest), 255 = ignore.
    """

    def __init__(self, task: TaskConfig, files: dict[str, SceneFiles], input_size: tuple[int, int],
                 stride: int, train: bool, seed: int = 0) -> None:
        self.task, self.input_size, self.stride, self.train = task, input_size, stride, train
        self.grid = (input_size[0] // stride, input_size[1] // stride)
        self.sources = [files[scene] for scene in task.scenes]
        # A scene's class id → the branch's class id (scenes' classes are concatenated in order).
        self.class_offsets, offset = [], 0
        for classes in task.scenes.values():
            self.class_offsets.append(offset)
            offset += len(classes)
        self.items = [(s, key) for s, files_ in enumerate(self.sources) for key in _index_keys(files_.idx)]
        self.readers = _Readers(self.sources)
        self.seed = seed
        self._draws: dict[int, np.ndarray] = {}
        self._draws_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        """Sample ``index % len(self)``, augmented as in epoch ``index // len(self)`` (see ShardSampler)."""
        epoch, index = divmod(int(index), len(self.items))
        source, key = self.items[index]
        record = self.readers.read(source, key)
        where = f"{self.sources[source].rec} record {key}"
        if self.task.kind == DET:
            return self._detection(record, source, where, (epoch, index))
        return self._parsing(record, where, (epoch, index))

    def _crop(self, width: int, height: int, draw: tuple[int, int]) -> Crop:
        if not self.train:
            return Crop.identity(width, height)
        epoch, index = draw
        return Crop.random(self._epoch_draws(epoch)[index], width, height, self.task.flip)

    def _epoch_draws(self, epoch: int) -> np.ndarray:
        """Every sample's augmentation numbers of ``epoch``, drawn at once from (seed, epoch).

        One vectorised draw per epoch instead of a generator per sample: seeding one costs as much as
        a tenth of the sample's decoding, under the GIL.
        """
        draws = self._draws.get(epoch)
        if draws is None:
            with self._draws_lock:
                draws = self._draws.get(epoch)
                if draws is None:
                    draws = np.random.default_rng([self.seed, epoch]).random((len(self.items), 4))
                    # Batches of two epochs can be in flight at once (rollover, prefetch); older ones are done.
                    self._draws = {e: d for e, d in self._draws.items() if e >= epoch - 1}
                    self._draws[epoch] = draws
        return draws

    def _detection(self, record: bytes, source: int, where: str, draw: tuple[int, int]) -> tuple[np.ndarray, ...]:
        rec = unpack_detection(record)
        image = decode_image(rec.image, where)
        height, width = image.shape[:2]
        crop = self._crop(width, height, draw)
        pixels = crop.apply(image, self.input_size, cv2.INTER_LINEAR)
        objects = np.array(rec.objects, np.float32).reshape(-1, 5)
        boxes = crop.boxes(objects[:, 1:], width, height, self.input_size)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_PIXELS) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_PIXELS)
        classes = objects[keep, 0].astype(np.int64) + self.class_offsets[source]
        num_classes = len(self.task.classes)
        if classes.size and (classes.max() >= num_classes):
            raise ValueError(f"{where}: class id {int(classes.max()) - self.class_offsets[source]} is outside "
                             f"the {len(list(self.task.scenes.values())[source])} classes the config lists for "
                             f"scene {self.sources[source].scene}")
        heatmap, box, mask = det_targets(boxes[keep], classes, num_classes, self.grid, self.stride)
        return normalise(pixels), heatmap, box, mask

    def _parsing(self, record: bytes, where: str, draw: tuple[int, int]) -> tuple[np.ndarray, ...]:
        rec = unpack_parsing(record)
        image = decode_image(rec.image, where)
        mask = cv2.imdecode(np.frombuffer(rec.mask, np.uint8), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.ndim != 2 or mask.shape != image.shape[:2]:
            raise ValueError(f"{where}: expected a one-channel PNG mask of the image's size {image.shape[:2]}, "
                             f"got {None if mask is None else mask.shape}")
        height, width = image.shape[:2]
        crop = self._crop(width, height, draw)
        pixels = crop.apply(image, self.input_size, cv2.INTER_LINEAR)
        label = crop.apply(mask, self.grid, cv2.INTER_NEAREST_EXACT).astype(np.float32, order="C")
        return normalise(pixels), label


def _epoch_order(indices: np.ndarray, length: int, seed: int, epoch: int) -> np.ndarray:
    """Pass ``epoch`` over ``indices``: shuffled from (seed, epoch), each offset by ``epoch * length``."""
    return np.random.default_rng([seed, epoch]).permutation(indices) + epoch * length


class ShardSampler(gluon.data.Sampler):
    """This worker's share of ``length`` indices (rank::num_workers), reshuffled every pass when training.

    When shuffling, pass ``epoch`` yields ``epoch * length + index``: the dataset draws that sample's
    augmentation from (seed, epoch, index), so a pass is the same whichever thread decodes what.
    """

    def __init__(self, length: int, rank: int = 0, num_workers: int = 1, shuffle: bool = True, seed: int = 0) -> None:
        self.indices = np.arange(rank, length, num_workers)
        self.length, self.shuffle, self.epoch, self.seed = length, shuffle, 0, seed

    def __iter__(self) -> Iterator[int]:
        order = _epoch_order(self.indices, self.length, self.seed, self.epoch) if self.shuffle else self.indices
        self.epoch += 1
        return iter(order.tolist())

    def __len__(self) -> int:
        return len(self.indices)


class TrainBatches(gluon.data.Sampler):
    """This worker's training batches without end, from batch number ``start`` on.

    The passes of ``ShardSampler`` one after another, cut into batches; a batch that crosses the end of
    a pass takes the rest from the next one (Gluon's "rollover"). Which sample batch ``n`` holds is index
    arithmetic, so a resumed run starts where the interrupted one stood without decoding what it skips,
    and trains on the same batches an uninterrupted run would.
    """

    def __init__(self, length: int, batch_size: int, rank: int = 0, num_workers: int = 1, seed: int = 0,
                 start: int = 0) -> None:
        self.indices = np.arange(rank, length, num_workers)
        self.length, self.batch_size, self.seed, self.start = length, batch_size, seed, start

    def __iter__(self) -> Iterator[list[int]]:
        per_pass = len(self.indices)
        epoch, offset = divmod(self.start * self.batch_size, per_pass)
        batch: list[int] = []
        while True:
            for index in _epoch_order(self.indices, self.length, self.seed, epoch)[offset:].tolist():
                batch.append(index)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        raise TypeError("TrainBatches has no end")


def make_loader(dataset: TaskDataset, batch_size: int, workers: int, rank: int = 0, num_workers: int = 1,
                shuffle: bool = True, seed: int = 0) -> gluon.data.DataLoader:
    """One pass (a new shuffled one each time it is iterated, when ``shuffle``)."""
    _check_shard(dataset, num_workers)
    sampler = ShardSampler(len(dataset), rank, num_workers, shuffle, seed)
    batches = gluon.data.BatchSampler(sampler, batch_size, "rollover" if shuffle else "keep")
    return _loader(dataset, batches, workers)


def train_batches(dataset: TaskDataset, batch_size: int, workers: int, rank: int = 0, num_workers: int = 1,
                  seed: int = 0, start: int = 0) -> Iterator[Any]:
    """Training batches without end, from batch ``start`` on (see ``TrainBatches``)."""
    _check_shard(dataset, num_workers)
    return iter(_loader(dataset, TrainBatches(len(dataset), batch_size, rank, num_workers, seed, start), workers))


def _check_shard(dataset: TaskDataset, num_workers: int) -> None:
    if len(dataset) < num_workers:
        raise ValueError(f"branch {dataset.task.name} has {len(dataset)} samples, fewer than the {num_workers} workers")


def _loader(dataset: TaskDataset, batches: gluon.data.Sampler, workers: int) -> gluon.data.DataLoader:
    return gluon.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers, thread_pool=True,
                                 prefetch=2 * max(workers, 1), batchify_fn=batchify)


def batchify(samples: list[tuple[np.ndarray, ...]]) -> list[mx.nd.NDArray]:
    """Stack each field of the samples into one NDArray that shares the stacked numpy memory.

    Gluon's default batchify copies every stacked batch again into MXNet's memory (``nd.array``).
    The stack is fresh and nothing else holds it, so handing it over without a copy is safe
    (``from_numpy`` marks it read-only).
    """
    return [mx.nd.from_numpy(np.stack(field), zero_copy=True) for field in zip(*samples, strict=True)]
