"""MTCNN's three-stage cascade (P-Net -> R-Net -> O-Net) over a batch of same-size images, all in torch.

facenet-pytorch's networks and weights, its thresholds and its box arithmetic; what differs from its
`detect_face` loop is only how the work is laid out:

- the pyramid starts at the scale where a face of `min_face` pixels becomes P-Net's 12-pixel cell, and
  `min_face` may grow with the image (`min_face_ratio`): no scale is run that could only find faces smaller
  than asked for;
- P-Net runs on the whole batch per scale in channels_last (measured ~1.5x faster than the NCHW views
  facenet-pytorch feeds it), in chunks bounded by `max_pixels` to cap its activations' memory;
- R-Net and O-Net run once each over every candidate of the batch, and their inputs are cut and resampled
  by `roi_align` (one call per halving level, see `Halvings`: ~ the "area" resampling of the original)
  instead of one `interpolate` per candidate (7000 calls per 100 photos);
- the final "Min" non-maximum suppression is ours, over the whole batch: overlaps in torch, the greedy pass in
  numpy (facenet-pytorch's version breaks with numpy 2 on a batch that holds an image without faces).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
from torchvision.ops import batched_nms, roi_align

THRESHOLDS = (0.6, 0.7, 0.7)
"""facenet-pytorch's default face probability thresholds per stage."""
FACTOR = 0.709
"""Scale step between pyramid levels (facenet-pytorch's default)."""
CELL = 12
STRIDE = 2
RNET_SIDE = 24
ONET_SIDE = 48


Net = Callable[[torch.Tensor], Sequence[torch.Tensor]]
"""A cascade stage's network: patches -> its outputs (facenet-pytorch's module, or its compiled package)."""


@dataclass(frozen=True, slots=True)
class Nets:
    pnet: PNet
    rnet: Net
    onet: Net

    @classmethod
    def pretrained(cls, rnet: Net | None = None, onet: Net | None = None) -> Nets:
        """facenet-pytorch's networks, R-Net and O-Net replaced by `rnet` and `onet` where given (their compiled
        packages): the eager ones are then not built at all."""
        return cls(PNet().eval(), RNet().eval() if rnet is None else rnet, ONet().eval() if onet is None else onet)


def pyramid(height: int, width: int, min_face: float, factor: float = FACTOR) -> list[float]:
    """The scales P-Net runs at: from the one mapping `min_face` pixels to a 12-pixel cell, down by `factor`
    while the image's short side still holds a cell."""
    scale = CELL / min_face
    side = min(height, width) * scale
    scales = []
    while side >= CELL:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    # One new tensor in the input's memory format, scaled in place: half the memory traffic of `(x - a) * b`.
    return (pixels - 127.5).mul_(0.0078125)


def _pnet_candidates(
    images: torch.Tensor, nets: Nets, scales: list[float], threshold: float, max_pixels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """P-Net's boxes [K, 9] (x1, y1, x2, y2, score, 4 regression offsets) and their image index [K]."""
    count, _, height, width = images.shape
    boxes: list[torch.Tensor] = []
    owners: list[torch.Tensor] = []
    for scale in scales:
        size = (int(height * scale + 1), int(width * scale + 1))
        per_call = max(1, max_pixels // (size[0] * size[1]))
        for start in range(0, count, per_call):
            chunk = images[start : start + per_call]
            # "area" resampling is linear: resampling the normalised pixels is normalising the resampled ones.
            reg, probs = nets.pnet(F.interpolate(chunk, size=size, mode="area"))
            found, owner = _cells_to_boxes(reg, probs[:, 1], scale, threshold)
            if len(found) == 0:
                continue
            owner = owner + start
            keep = batched_nms(found[:, :4], found[:, 4], owner, 0.5)
            boxes.append(found[keep])
            owners.append(owner[keep])
    if not boxes:
        return torch.zeros(0, 9), torch.zeros(0, dtype=torch.long)
    return torch.cat(boxes), torch.cat(owners)


def _cells_to_boxes(
    reg: torch.Tensor, probs: torch.Tensor, scale: float, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """facenet-pytorch's generateBoundingBox: the P-Net cells over `threshold` as boxes in image pixels."""
    mask = probs >= threshold
    where = mask.nonzero()
    owner = where[:, 0]
    score = probs[mask]
    offsets = reg.permute(1, 0, 2, 3)[:, mask].permute(1, 0)
    cell = where[:, 1:].to(reg.dtype).flip(1)
    top_left = ((STRIDE * cell + 1) / scale).floor()
    bottom_right = ((STRIDE * cell + CELL) / scale).floor()
    return torch.cat([top_left, bottom_right, score.unsqueeze(1), offsets], dim=1), owner


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """facenet-pytorch's rerec: the square of the box's longer side, on the same centre."""
    boxes = boxes.clone()
    height = boxes[:, 3] - boxes[:, 1]
    width = boxes[:, 2] - boxes[:, 0]
    side = torch.maximum(width, height)
    boxes[:, 0] = boxes[:, 0] + width * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + height * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """facenet-pytorch's bbreg (box sizes counted inclusively, as its R/O-Net were trained)."""
    boxes = boxes.clone()
    width = boxes[:, 2] - boxes[:, 0] + 1
    height = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] += offsets[:, 0] * width
    boxes[:, 1] += offsets[:, 1] * height
    boxes[:, 2] += offsets[:, 2] * width
    boxes[:, 3] += offsets[:, 3] * height
    return boxes


class Halvings:
    """The batch's images and their successive 2x2 averages (each level half the previous one's size, "area"
    resampled), made once per batch for R-Net's and O-Net's patches."""

    def __init__(self, images: torch.Tensor, smallest: int) -> None:
        self.levels = [images]
        while min(self.levels[-1].shape[2:]) >= 2 * smallest:
            self.levels.append(F.avg_pool2d(self.levels[-1], 2))

    def patches(self, boxes: torch.Tensor, owners: torch.Tensor, side: int) -> torch.Tensor:
        """The boxes' pixels, clipped to the image as facenet-pytorch's `pad` does, resampled to side x side.

        Each box is read from the level where it spans side to 2 x side pixels, with 2 x 2 bilinear samples per
        output cell: every level pixel contributes, as in facenet-pytorch's "area" resampling of the box.
        `roi_align`'s own adaptive sampling on the full image reads up to (box / side)^2 samples per cell:
        measured 4-10x slower for 250x250 photos, most of R-Net's and O-Net's stage time."""
        _, _, height, width = self.levels[0].shape
        whole = boxes[:, :4].trunc()
        x1 = whole[:, 0].clamp(min=1) - 1
        y1 = whole[:, 1].clamp(min=1) - 1
        x2 = whole[:, 2].clamp(max=width)
        y2 = whole[:, 3].clamp(max=height)
        extent = torch.maximum(x2 - x1, y2 - y1).clamp(min=1)
        # -1: a box smaller than the patch, enlarged from the image itself with one sample per cell.
        level = torch.log2(extent / side).floor().clamp(-1, len(self.levels) - 1).long()
        rois = torch.stack([owners.to(x1.dtype), x1, y1, x2, y2], dim=1)
        out = self.levels[0].new_empty((len(boxes), self.levels[0].shape[1], side, side))
        for index in torch.unique(level).tolist():
            chosen = (level == index).nonzero().squeeze(1)
            out[chosen] = roi_align(
                self.levels[max(index, 0)],
                rois[chosen],
                output_size=(side, side),
                spatial_scale=0.5 ** max(index, 0),
                sampling_ratio=1 if index < 0 else 2,
                aligned=True,
            )
        return out.contiguous(memory_format=torch.channels_last)


def _usable(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Boxes that still hold at least one pixel of the image once clipped to it."""
    whole = boxes[:, :4].trunc()
    return (whole[:, 2].clamp(max=width) > whole[:, 0].clamp(min=1) - 1) & (
        whole[:, 3].clamp(max=height) > whole[:, 1].clamp(min=1) - 1
    )


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, owners: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS per image where overlap is intersection over the smaller box (facenet-pytorch's 'Min')."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    shift = owners.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    shifted = boxes + shift
    area = (shifted[:, 2] - shifted[:, 0] + 1) * (shifted[:, 3] - shifted[:, 1] + 1)
    low = torch.maximum(shifted[:, None, :2], shifted[None, :, :2])
    high = torch.minimum(shifted[:, None, 2:], shifted[None, :, 2:])
    inter = (high - low + 1).clamp(min=0).prod(dim=2)
    overlapping = (inter / torch.minimum(area[:, None], area[None, :]) > threshold).numpy()
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    # The greedy pass in numpy: a few microseconds per box where torch's per-op dispatch costs ~20.
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for index in order:
        if suppressed[index]:
            continue
        keep.append(index)
        suppressed |= overlapping[index]
    return torch.tensor(keep, dtype=torch.long)


def detect(
    images: torch.Tensor,
    nets: Nets,
    min_face: float,
    max_pixels: int,
    thresholds: tuple[float, float, float] = THRESHOLDS,
    seconds: dict[str, float] | None = None,
) -> list[torch.Tensor]:
    """Faces per image of `images` ([N, 3, H, W] float RGB 0-255): [k, 5] x1, y1, x2, y2, probability each,
    in the images' pixels. `max_pixels` bounds P-Net's input per call. `seconds`, when given, is added each
    stage's time: `pnet` (pyramid, P-Net, its NMS and box regression), `rnet` and `onet` (cut, net, NMS)."""
    count, _, height, width = images.shape
    started = time.perf_counter()
    # Normalised once for all three stages. channels_last throughout: measured 2-8x faster for these small
    # networks' max-pooling and ~2x for R-Net as a whole (it carries through resampling and convolutions).
    # Decoded pixels arrive channels_last already (HWC), so this is no copy.
    images = _normalise(images.contiguous(memory_format=torch.channels_last))
    boxes, owners = _pnet_candidates(images, nets, pyramid(height, width, min_face), thresholds[0], max_pixels)
    if len(boxes) == 0:
        _lap(seconds, "pnet", started)
        return [boxes[:, :5]] * count
    keep = batched_nms(boxes[:, :4], boxes[:, 4], owners, 0.7)
    boxes, owners = boxes[keep], owners[keep]
    width_ = boxes[:, 2] - boxes[:, 0]
    height_ = boxes[:, 3] - boxes[:, 1]
    moved = torch.stack(
        [
            boxes[:, 0] + boxes[:, 5] * width_,
            boxes[:, 1] + boxes[:, 6] * height_,
            boxes[:, 2] + boxes[:, 7] * width_,
            boxes[:, 3] + boxes[:, 8] * height_,
            boxes[:, 4],
        ],
        dim=1,
    )
    boxes = _square(moved)
    started = _lap(seconds, "pnet", started)
    halvings = Halvings(images, smallest=RNET_SIDE)
    boxes, owners = _refine(halvings, boxes, owners, nets, thresholds[1])
    started = _lap(seconds, "rnet", started)
    if len(boxes):
        boxes, owners = _output(halvings, boxes, owners, nets, thresholds[2])
        _lap(seconds, "onet", started)
    return [boxes[owners == index] for index in range(count)]


def _lap(seconds: dict[str, float] | None, stage: str, started: float) -> float:
    """Add the time since `started` to `stage` (when timing) and return now, the next stage's start."""
    now = time.perf_counter()
    if seconds is not None:
        seconds[stage] = seconds.get(stage, 0.0) + now - started
    return now


def _passing(
    halvings: Halvings,
    boxes: torch.Tensor,
    owners: torch.Tensor,
    threshold: float,
    size: int,
    net: Net,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidates inside their image, scored by `net` (box offsets, face probabilities) on `size`-pixel
    patches: those above `threshold`, as (x1, y1, x2, y2, score) rows with their owners and offsets."""
    _, _, height, width = halvings.levels[0].shape
    usable = _usable(boxes, width, height)
    boxes, owners = boxes[usable], owners[usable]
    if len(boxes) == 0:
        return boxes, owners, boxes.new_zeros((0, 4))
    offsets, probs = net(halvings.patches(boxes, owners, size))
    score = probs[:, 1]
    passed = score > threshold
    boxes = torch.cat([boxes[passed, :4], score[passed, None]], dim=1)
    return boxes, owners[passed], offsets[passed]


def _refine(
    halvings: Halvings, boxes: torch.Tensor, owners: torch.Tensor, nets: Nets, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """R-Net over every candidate of the batch at once."""
    boxes, owners, offsets = _passing(halvings, boxes, owners, threshold, RNET_SIDE, nets.rnet)
    keep = batched_nms(boxes[:, :4], boxes[:, 4], owners, 0.7)
    return _square(_regress(boxes[keep], offsets[keep])), owners[keep]


def _output(
    halvings: Halvings, boxes: torch.Tensor, owners: torch.Tensor, nets: Nets, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """O-Net over every remaining candidate at once, then NMS by the smaller box's overlap."""
    boxes, owners, offsets = _passing(
        halvings, boxes, owners, threshold, ONET_SIDE, lambda patches: nets.onet(patches)[::2]
    )
    boxes = _regress(boxes, offsets)
    keep = _nms_min(boxes[:, :4], boxes[:, 4], owners, 0.7)
    return boxes[keep], owners[keep]


def min_face_for(height: int, width: int, min_face_size: float, min_face_ratio: float) -> float:
    """The smallest face looked for in an image: `min_face_size` pixels, or a `min_face_ratio` of its short side
    when larger (a large photo's subject is never a few pixels wide), never beyond what P-Net can cover."""
    return max(min_face_size, min(min_face_ratio * min(height, width), float(min(height, width))), 1.0)
