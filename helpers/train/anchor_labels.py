"""RPN anchor targets from the anchors that touch each nucleus: Model Garden's targets, computed locally.

Model Garden's ``RpnAnchorLabeler`` takes the IoU of every anchor with every box: on a 512 px
crop of the colab profile that is 130,944 anchors x ~170-500 nuclei, tens of millions of pairs,
and the largest cost of the training input on 2 CPU cores. Nuclei are small and anchors are local:
an anchor overlaps a box only when its centre lies within half its size of the box, so only those
pairs can have an IoU above 0 (a few thousand per box over all levels).

:class:`LocalRpnAnchorLabeler` is Model Garden's labeler (its ``BoxMatcher`` thresholds and
indicators, its box coder, its balanced sampler, its level layout) with the dense IoU matrix and
the matcher's row and column argmaxes replaced by the same quantities over the overlapping
pairs: the same IoU formula (``iou_similarity.iou``), the first maximum on ties as ``tf.argmax``
takes it, and each box's best anchor forced to match it, the lowest box index winning an anchor
two boxes force. Anchors no box touches have IoU 0 with every box, as in the dense matrix.
``tests/train/test_fast_input.py`` compares every target with Model Garden's parser's.
"""
from __future__ import annotations

import tensorflow as tf
from official.vision.ops import anchor as mg_anchor
from official.vision.utils.object_detection import box_list

_BIG = 2 ** 30


def _overlap_range(lo, hi, centre0, half, stride, cells):
    """First and last grid index (inclusive, clipped) whose anchor of half-size ``half`` centred
    at ``centre0 + i * stride`` may overlap [lo, hi]; one cell of margin on each side."""
    first = tf.math.floor((lo - half - centre0) / stride) - 1.0
    last = tf.math.ceil((hi + half - centre0) / stride) + 1.0
    first = tf.clip_by_value(tf.cast(first, tf.int32), 0, cells - 1)
    last = tf.clip_by_value(tf.cast(last, tf.int32), 0, cells - 1)
    return first, last


def overlapping_pairs(anchor_boxes: dict, gt_boxes):
    """``(anchor_index, box_index)`` int32 vectors of every anchor-box pair that may overlap, for
    Model Garden's ``anchor_boxes`` (level -> [H, W, A*4], flattened level by level, then row,
    column and anchor as ``label_anchors`` flattens them) and pixel boxes [N, 4]."""
    # One row per (level, anchor shape): its grid, stride, first centre and half sizes, read
    # from the anchors themselves.
    rows, offset = [], 0
    for boxes in anchor_boxes.values():
        h, w, a4 = boxes.shape.as_list()
        a = a4 // 4
        first = tf.reshape(boxes[0, 0], [a, 4])
        step_y = (boxes[1, 0, 0] - boxes[0, 0, 0]) if h > 1 else tf.constant(1e9)
        step_x = (boxes[0, 1, 1] - boxes[0, 0, 1]) if w > 1 else tf.constant(1e9)
        for k in range(a):
            rows.append((offset, h, w, a, k, first[k], step_y, step_x))
        offset += h * w * a
    t = len(rows)
    start = tf.constant([r[0] for r in rows], tf.int32)
    grid_h = tf.constant([r[1] for r in rows], tf.int32)
    grid_w = tf.constant([r[2] for r in rows], tf.int32)
    per_loc = tf.constant([r[3] for r in rows], tf.int32)
    shape_k = tf.constant([r[4] for r in rows], tf.int32)
    proto = tf.stack([r[5] for r in rows])                      # [T, 4] anchor at (0, 0)
    step_y = tf.stack([r[6] for r in rows])
    step_x = tf.stack([r[7] for r in rows])
    cy0, cx0 = (proto[:, 0] + proto[:, 2]) / 2, (proto[:, 1] + proto[:, 3]) / 2
    hh, hw = (proto[:, 2] - proto[:, 0]) / 2, (proto[:, 3] - proto[:, 1]) / 2

    b = gt_boxes[:, None, :]                                    # [N, 1, 4] against [T]
    y0, y1 = _overlap_range(b[..., 0], b[..., 2], cy0, hh, step_y, grid_h)
    x0, x1 = _overlap_range(b[..., 1], b[..., 3], cx0, hw, step_x, grid_w)
    ny, nx = y1 - y0 + 1, x1 - x0 + 1                            # [N, T]
    counts = tf.reshape(ny * nx, [-1])
    local = tf.ragged.range(counts)
    cell = local.flat_values
    row = tf.cast(local.value_rowids(), tf.int32)               # index into N * T
    box_index, shape_row = row // t, row % t
    nx_r = tf.gather(tf.reshape(nx, [-1]), row)
    iy = tf.gather(tf.reshape(y0, [-1]), row) + cell // nx_r
    ix = tf.gather(tf.reshape(x0, [-1]), row) + cell % nx_r
    a = tf.gather(per_loc, shape_row)
    anchor_index = (tf.gather(start, shape_row) + (iy * tf.gather(grid_w, shape_row) + ix) * a
                    + tf.gather(shape_k, shape_row))
    return anchor_index, box_index


def pair_iou(anchors, boxes):
    """IoU of each anchor with its box, row by row: ``iou_similarity.iou``'s arithmetic."""
    ya0, xa0, ya1, xa1 = tf.unstack(anchors, axis=-1)
    yb0, xb0, yb1, xb1 = tf.unstack(boxes, axis=-1)
    inter = (tf.maximum(0.0, tf.minimum(yb1, ya1) - tf.maximum(yb0, ya0))
             * tf.maximum(0.0, tf.minimum(xb1, xa1) - tf.maximum(xb0, xa0)))
    union = (yb1 - yb0) * (xb1 - xb0) + (ya1 - ya0) * (xa1 - xa0) - inter
    return tf.where(tf.equal(inter, 0.0), tf.zeros_like(inter), tf.truediv(inter, union))


class LocalRpnAnchorLabeler(mg_anchor.RpnAnchorLabeler):
    """Model Garden's ``RpnAnchorLabeler`` with the IoU taken over overlapping pairs only
    (see the module doc): the same score and box targets."""

    def match(self, flat_anchors, gt_boxes, anchor_index, box_index):
        """``BoxMatcher``'s (matched column, indicator) of every anchor, from the pairs' IoU."""
        num_anchors = tf.shape(flat_anchors)[0]
        num_boxes = tf.shape(gt_boxes)[0]
        iou = pair_iou(tf.gather(flat_anchors, anchor_index), tf.gather(gt_boxes, box_index))
        best = tf.maximum(tf.math.unsorted_segment_max(iou, anchor_index, num_anchors), 0.0)
        first_box = tf.math.unsorted_segment_min(
            tf.where(tf.equal(iou, tf.gather(best, anchor_index)), box_index, _BIG), anchor_index, num_anchors)
        columns = tf.where(best > 0.0, first_box, 0)  # all zero: tf.argmax's first column
        indicators = tf.zeros([num_anchors], tf.int32)
        for ind, low, high in zip(self.matcher.indicators, self.matcher.thresholds[:-1],
                                  self.matcher.thresholds[1:]):
            inside = (best >= low) & (best < high)
            indicators = tf.where(inside, ind, indicators)
        # each box's best anchor (the first on ties) is matched to it; lowest box index wins
        box_best = tf.math.unsorted_segment_max(iou, box_index, num_boxes)
        best_anchor = tf.math.unsorted_segment_min(
            tf.where(tf.equal(iou, tf.gather(box_best, box_index)), anchor_index, _BIG), box_index, num_boxes)
        best_anchor = tf.where(box_best > 0.0, best_anchor, 0)
        forced = tf.math.unsorted_segment_min(tf.range(num_boxes), best_anchor, num_anchors)
        is_forced = forced < _BIG
        columns = tf.where(is_forced, forced, columns)
        indicators = tf.where(is_forced, self.matcher.indicators[-1], indicators)
        return columns, indicators

    def label_anchors(self, anchor_boxes, gt_boxes, gt_labels):  # noqa: ARG002 (the RPN is class-agnostic)
        flat = tf.concat([tf.reshape(v, [-1, 4]) for v in anchor_boxes.values()], axis=0)
        anchor_index, box_index = overlapping_pairs(anchor_boxes, gt_boxes)
        columns, indicators = self.match(flat, gt_boxes, anchor_index, box_index)
        positive = tf.cast(tf.where(indicators >= 0)[:, 0], tf.int32)
        encoded = self.box_coder.encode(box_list.BoxList(tf.gather(gt_boxes, tf.gather(columns, positive))),
                                        box_list.BoxList(tf.gather(flat, positive)))
        box_targets = tf.scatter_nd(positive[:, None], encoded, tf.shape(flat))
        score_targets, _, _ = self._get_rpn_samples(indicators)
        return (mg_anchor.unpack_targets(score_targets, anchor_boxes),
                mg_anchor.unpack_targets(box_targets, anchor_boxes))
