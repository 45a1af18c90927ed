"""A large image predicted in overlapping tiles, and the tiles joined into one prediction.

* ``tile_grid`` - windows ``(y0, x0, y1, x1)`` covering the image, neighbours overlapping;
* ``place_in_image`` - a tile's detections moved into image coordinates;
* ``merge_tiles`` - the tiles' detections joined by the field's convention (StarDist's and
  HoVer-Net's tiled prediction): tiles overlap by more than the largest nucleus, so each nucleus
  lies whole inside some tile; a detection touching an inner edge of its tile (a border that is
  not the image's) is a cut piece and gives way to the whole one, and a nucleus seen whole by two
  tiles is kept once;
* ``rescale_image`` and ``map_back`` - an image resized to the model's pixel size, and its
  detections brought back onto the image's own pixels.

``helpers.infer.predict.predict_detections`` and notebook 06 (``helpers.infer.own_images``) use them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from helpers.detections import Detections
from helpers.rle import decode_crop, encode_crops, rle_area, rle_iou, rle_union

Window = tuple[int, int, int, int]  # y0, x0, y1, x1


def tile_grid(height: int, width: int, tile: int = 1024, overlap: int = 128) -> list[Window]:
    """Windows ``(y0, x0, y1, x1)`` of size <= ``tile`` covering the image, neighbours
    overlapping by at least ``overlap`` pixels. One window if the image fits."""
    if overlap >= tile:
        raise ValueError(f"overlap {overlap} must be smaller than the tile size {tile}")

    def starts(n):
        if n <= tile:
            return [0]
        k = int(np.ceil((n - overlap) / (tile - overlap)))
        return [int(round(i * (n - tile) / (k - 1))) for i in range(k)]

    return [(y, x, min(height, y + tile), min(width, x + tile)) for y in starts(height) for x in starts(width)]


def place_in_image(dets: Detections, offset: Sequence[int], size: Sequence[int]) -> Detections:
    """Detections of a tile (its own size) moved to image coordinates: the tile's top-left
    corner is ``offset = (y0, x0)`` in an image of ``size = (H, W)`` (clipped)."""
    y0, x0 = int(offset[0]), int(offset[1])
    crops, offsets = [], []
    for rle, (bx, by, bw, bh) in zip(dets.rles, dets.boxes.astype(int)):
        crops.append(decode_crop(rle, (by, bx, by + bh, bx + bw)))
        offsets.append((by + y0, bx + x0))
    return Detections(encode_crops(crops, offsets, size), dets.scores, tuple(size),
                      mask_scores=dets.mask_scores)


def merge_tiles(tiles: Sequence[Detections], windows: Sequence[Window], iou_threshold: float = 0.5,
                max_dets: int | None = None) -> Detections:
    """Join per-tile detections (masks already in image coordinates; ``windows[k]`` is tile k's
    window) into one set for the image, by the convention of the module doc.

    1. Views of one nucleus are found in each zone two tiles share (:func:`_views_of_one_nucleus`).
    2. Each nucleus keeps its best whole view; cut pieces only are united; a lone cut piece is
       dropped (:func:`_one_per_nucleus`).
    3. Two tiles' whole views with mask IoU > ``iou_threshold`` are one nucleus, kept once
       (:func:`_seen_twice`).
    A nucleus is never doubled, nor cut at a seam.
    """
    if len(tiles) != len(windows):
        raise ValueError(f"{len(tiles)} tile predictions but {len(windows)} windows")
    if not tiles:
        raise ValueError("merge_tiles needs at least one tile")
    pooled = Detections.concat(list(tiles))
    tile_of = np.concatenate([np.full(len(t), k) for k, t in enumerate(tiles)]).astype(int)
    groups = _views_of_one_nucleus(pooled, tile_of, windows, iou_threshold)
    cut = _touches_inner_edge(pooled.boxes, np.asarray(windows)[tile_of], pooled.size)
    out, tile_ids = _one_per_nucleus(pooled, groups, cut, tile_of)
    keep = (rle_area(out.rles) > 0) & ~_seen_twice(out, tile_ids, windows, iou_threshold)
    return out.subset(np.flatnonzero(keep)).top(max_dets)


def _views_of_one_nucleus(pooled: Detections, tile_of: np.ndarray, windows, iou_threshold: float) -> list[list[int]]:
    """Groups of detections (indices into ``pooled``) that are one nucleus seen by several tiles.

    Masks are compared *inside each shared zone only*: there both tiles saw the same pixels, so
    a nucleus cut by one tile's border and whole (or cut elsewhere) in the other has nearly the
    same mask there. Pairs with zone IoU >= ``iou_threshold`` are matched one to one, best IoU
    first, and matches chain across zones (union-find)."""
    parent = np.arange(len(pooled))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, zone in _shared_zones(windows):
        ia = _in_zone(pooled.boxes, zone, tile_of == a)
        ib = _in_zone(pooled.boxes, zone, tile_of == b)
        for i, j in _matched_in_zone(pooled, ia, ib, zone, iou_threshold):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(len(pooled)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _in_zone(boxes: np.ndarray, zone: Window, among: np.ndarray) -> np.ndarray:
    """Indices of the boxes (x, y, w, h) ``among`` those selected that reach into ``zone``."""
    zy0, zx0, zy1, zx1 = zone
    return np.flatnonzero(among & (boxes[:, 0] < zx1) & (boxes[:, 0] + boxes[:, 2] > zx0)
                          & (boxes[:, 1] < zy1) & (boxes[:, 1] + boxes[:, 3] > zy0))


def _matched_in_zone(pooled: Detections, ia, ib, zone: Window, iou_threshold: float) -> list[tuple[int, int]]:
    """One-to-one pairs (i in ``ia``, j in ``ib``) whose masks clipped to ``zone`` overlap by
    IoU >= ``iou_threshold``, best first."""
    if not len(ia) or not len(ib):
        return []
    zr = _window_rle(zone, pooled.size)
    clipped = lambda idx: [mask_utils.merge([dict(pooled.rles[i]), zr], intersect=1) for i in idx]  # noqa: E731
    iou = np.asarray(mask_utils.iou(clipped(ia), clipped(ib), [0] * len(ib))).reshape(len(ia), len(ib))
    pairs, used_a, used_b = [], set(), set()
    for pa, pb in sorted(np.argwhere(iou >= iou_threshold).tolist(), key=lambda p: -iou[p[0], p[1]]):
        if pa not in used_a and pb not in used_b:
            used_a.add(pa)
            used_b.add(pb)
            pairs.append((int(ia[pa]), int(ib[pb])))
    return pairs


def _one_per_nucleus(pooled: Detections, groups, cut: np.ndarray, tile_of) -> tuple[Detections, np.ndarray]:
    """One detection per group: the best-scoring whole view as its tile saw it; two or more cut
    pieces only (a nucleus wider than the overlap) united (pixel union, max score); a lone cut
    piece dropped. Also each kept detection's tile (-1 for a union of pieces)."""
    rles, scores, mask_scores, tile_ids = [], [], [], []
    for members in groups:
        whole = [i for i in members if not cut[i]]
        if whole:
            members = [max(whole, key=lambda i: pooled.scores[i])]
        elif len(members) == 1:
            continue
        rles.append(pooled.rles[members[0]] if len(members) == 1 else rle_union([pooled.rles[i] for i in members]))
        scores.append(float(pooled.scores[members].max()))
        tile_ids.append(tile_of[members[0]] if len(members) == 1 else -1)
        if pooled.mask_scores is not None:
            mask_scores.append(float(pooled.mask_scores[members].mean()))
    out = Detections(rles, scores, pooled.size, mask_scores=mask_scores if pooled.mask_scores is not None else None)
    return out, np.asarray(tile_ids, int)


def _seen_twice(dets: Detections, tile_ids: np.ndarray, windows, iou_threshold: float) -> np.ndarray:
    """The lower-scored of every two detections from different tiles whose whole masks overlap
    by IoU > ``iou_threshold``: one nucleus that both tiles saw (the zone matching pairs pieces
    one to one, so a model's own duplicates in two tiles would pass it). Duplicates within one
    tile are the model's own and are left as they are, as in a whole-image prediction. Only
    detections inside a zone two tiles share are compared, zone by zone (bounded memory)."""
    drop = np.zeros(len(dets), bool)
    for _, _, zone in _shared_zones(windows):
        idx = _in_zone(dets.boxes, zone, np.ones(len(dets), bool))
        if len(idx) < 2:
            continue
        iou = rle_iou([dets.rles[i] for i in idx], [dets.rles[i] for i in idx])
        for a, b in np.argwhere(np.triu(iou > iou_threshold, k=1)):
            i, j = idx[a], idx[b]
            if tile_ids[i] != tile_ids[j] or tile_ids[i] < 0:
                drop[j if dets.scores[j] <= dets.scores[i] else i] = True
    return drop


def _shared_zones(windows) -> list[tuple[int, int, Window]]:
    """``(a, b, zone)`` for every two overlapping windows a < b and the zone they share."""
    zones = []
    for a in range(len(windows)):
        for b in range(a + 1, len(windows)):
            ya0, xa0, ya1, xa1 = windows[a]
            yb0, xb0, yb1, xb1 = windows[b]
            zone = (max(ya0, yb0), max(xa0, xb0), min(ya1, yb1), min(xa1, xb1))
            if zone[0] < zone[2] and zone[1] < zone[3]:
                zones.append((a, b, zone))
    return zones


def _window_rle(window: Window, size) -> dict:
    y0, x0, y1, x1 = window
    return encode_crops([np.ones((y1 - y0, x1 - x0), bool)], [(y0, x0)], size)[0]


def _touches_inner_edge(boxes: np.ndarray, windows: np.ndarray, size) -> np.ndarray:
    """Whether each box (x, y, w, h) touches a border of its window (y0, x0, y1, x1) that is
    not the image's own border: the tile may have cut the nucleus there."""
    x, y, w, h = boxes.T
    y0, x0, y1, x1 = windows.T
    return (((x <= x0) & (x0 > 0)) | ((x + w >= x1) & (x1 < size[1]))
            | ((y <= y0) & (y0 > 0)) | ((y + h >= y1) & (y1 < size[0])))


# --------------------------------------------------------------------------- another pixel size
def scaled_size(size: Sequence[int], factor: float) -> tuple[int, int]:
    """(height, width) ``size`` times ``factor``, rounded (at least 1 px)."""
    return tuple(max(1, int(round(n * factor))) for n in size[:2])


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` resized by ``factor`` (cv2: INTER_AREA to shrink, INTER_LINEAR to enlarge); itself at 1.0."""
    import cv2

    if factor == 1.0:
        return image
    h, w = scaled_size(image.shape, factor)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def map_back(dets: Detections, size: Sequence[int]) -> Detections:
    """Detections predicted on a resized image, on the pixels of the image itself (``size`` =
    its (height, width)): each nucleus's mask resized onto them (:func:`_mask_back`), its box
    following it, scores and mask scores kept. A nucleus that covers no pixel there is dropped."""
    size = (int(size[0]), int(size[1]))
    if tuple(dets.size) == size:
        return dets
    scale = (size[0] / dets.size[0], size[1] / dets.size[1])
    pieces = [_mask_back(rle, box, scale, size) for rle, box in zip(dets.rles, dets.boxes.astype(int))]
    back = Detections(encode_crops([c for c, _ in pieces], [o for _, o in pieces], size), dets.scores, size,
                      mask_scores=dets.mask_scores)
    return back.subset(np.flatnonzero(back.areas > 0))


def _mask_back(rle: dict, box, scale: tuple[float, float], size: tuple[int, int]):
    """One mask (its RLE and [x, y, w, h] box on the resized image) on the image's own pixels,
    ``scale`` = (sy, sx) = own / resized: (crop, (y0, x0) of its top-left corner). A pixel is
    the nucleus's where its centre falls inside the mask (bilinear, over 0.5; cv2.resize's
    pixel-centre convention, so no half-pixel shift). A centre right on the mask's edge (often, at
    x2) follows rasterisers' top-left rule: in on the nucleus's top and left edges, out on its
    bottom and right ones, so the nucleus keeps its area (:data:`_TOP_LEFT`)."""
    import cv2

    (bx, by, bw, bh), (sy, sx) = box, scale
    y0, x0 = int(np.floor(by * sy)), int(np.floor(bx * sx))
    y1, x1 = min(size[0], int(np.ceil((by + bh) * sy))), min(size[1], int(np.ceil((bx + bw) * sx)))
    crop = decode_crop(rle, (by, bx, by + bh, bx + bw)).astype(np.float32)
    # where the centre of the crop's pixel (v, u) lies in the resized mask's crop
    shift_x, shift_y = (x0 + 0.5) / sx - 0.5 - bx + _TOP_LEFT, (y0 + 0.5) / sy - 0.5 - by + _TOP_LEFT
    to_resized = np.float64([[1 / sx, 0, shift_x], [0, 1 / sy, shift_y]])
    back = cv2.warpAffine(crop, to_resized, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return back > 0.5, (y0, x0)


# Each pixel's centre is looked up this far (in resized pixels) below and right of itself: a centre on a
# nucleus's top or left edge falls inside, on its bottom or right edge outside. Measured at x2 on the 4
# validation images of benchmarks/bench_rescale_20x.py, the median nucleus mapped back has 0.98-0.99 of the area
# the model gave it at 40x; with all such centres out (> 0.5) 0.92-0.95, all in (>= 0.5) 1.03-1.05. The
# price: nuclei move about 0.13 px up and left at x2 (the disks of tests/infer/test_own_images_pixel_size.py).
_TOP_LEFT = 1e-3
