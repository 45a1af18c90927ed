"""The one image codec: PNG bytes <-> numpy arrays, and the bounding box of a mask.

* ``encode_png`` writes lossless PNG with OpenCV (fast, releases the GIL) or, with
  ``encoder="pil"`` (and wherever OpenCV is missing), with Pillow's default settings
  (zlib level 6), whose bytes the demo dataset has always had.
* ``decode_image`` reads PNG (or any format OpenCV reads) as it is stored: bit depth kept,
  grey -> (H, W), colour -> (H, W, 3) RGB, with alpha (H, W, 4) RGBA.
* ``tf_decode_png`` is TensorFlow's ``tf.io.decode_png``, the decoder Model Garden reads the
  shards with: the shards are checked with it.
* ``mask_box`` / ``mask_boxes``: (ymin, xmin, ymax, xmax) in pixels, max exclusive.
"""
from __future__ import annotations

import io

import numpy as np

_CV2: list = []  # [cv2 module or None], imported on first use (rle.py imports this module)


def _cv2():
    if not _CV2:
        try:
            import cv2
        except ImportError:  # pragma: no cover - cv2 is a requirement; Pillow is the fallback
            cv2 = None
        _CV2.append(cv2)
    return _CV2[0]


def encode_png(arr: np.ndarray, encoder: str = "cv2") -> bytes:
    """Lossless PNG bytes of a uint8/uint16 (H, W) or (H, W, 3) RGB array.

    ``encoder="pil"``: Pillow's encoder at its defaults (the bytes of the demo dataset).
    """
    if encoder not in ("cv2", "pil"):
        raise ValueError(f"encoder must be 'cv2' or 'pil', not {encoder!r}")
    cv2 = _cv2() if encoder == "cv2" else None
    if cv2 is not None:
        a = arr[..., ::-1] if arr.ndim == 3 else arr  # cv2 expects BGR
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(a))
        if not ok:
            raise ValueError("PNG encoding failed")
        return buf.tobytes()
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(arr).save(b, format="PNG")
    return b.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes as stored: grey -> (H, W), colour -> (H, W, 3) RGB, with alpha
    (H, W, 4) RGBA, bit depth kept. ValueError when they are no decodable image."""
    if not len(data):
        raise ValueError("cannot decode it as an image (the file is empty)")
    cv2 = _cv2()
    if cv2 is not None:
        a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if a is None:
            raise ValueError("cannot decode it as an image")
        if a.ndim == 3 and a.shape[2] == 1:
            return a[..., 0]
        if a.ndim == 3:  # BGR(A) -> RGB(A)
            return np.ascontiguousarray(a[..., [2, 1, 0, 3]] if a.shape[2] == 4 else a[..., ::-1])
        return a
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:  # pragma: no cover - the fallback without cv2
        if im.mode == "1":
            im = im.convert("L")
        elif im.mode in ("P", "PA", "LA"):  # a palette: its colours, as cv2 gives them
            im = im.convert("RGB" if im.mode == "P" and "transparency" not in im.info else "RGBA")
        return np.asarray(im)


def tf_decode_png(data: bytes, channels: int = 1, dtype=None) -> np.ndarray:
    """``tf.io.decode_png`` (what Model Garden decodes with) as numpy: (H, W) for one channel,
    else (H, W, channels); ``dtype`` tf.uint8 (default) or tf.uint16."""
    import tensorflow as tf

    a = tf.io.decode_png(data, channels=channels, dtype=dtype or tf.uint8).numpy()
    return a[..., 0] if channels == 1 else a


def mask_boxes(masks: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(ymin, xmin, ymax, xmax) in pixels, max exclusive, of each mask of an (N, H, W) batch;
    an empty mask -> (0, 0, 0, 0)."""
    masks = np.asarray(masks)
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    out = []
    for r, c in zip(rows, cols):
        ys = np.flatnonzero(r)
        if not len(ys):
            out.append((0, 0, 0, 0))
            continue
        xs = np.flatnonzero(c)
        out.append((int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1))
    return out


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(ymin, xmin, ymax, xmax) in pixels, max exclusive, of a non-empty (H, W) mask."""
    (box,) = mask_boxes(np.asarray(mask)[None])
    if box == (0, 0, 0, 0):
        raise ValueError("the mask is empty: it has no bounding box")
    return box

