"""A small synthetic H&E-like dataset in the exact course layout, for CPU runs and tests.

``make_demo_dataset(root, seed=0)`` writes::

    root/train/<ID>/images/<ID>.png   RGB, pink eosin background with texture
    root/train/<ID>/masks/mask_NNNN.png   one 0/255 mask per nucleus (no overlaps; some touch)
    root/test/<ID>.png
    root/test_img_ids.json
    root/data_manifest.csv            (helpers.data.manifest format, default val split)

Ids look like TCGA barcodes with real tissue-source-site codes (so
``helpers.data.organs.organ_of`` resolves them) but a ``D`` patient field that does
not exist in TCGA, e.g. ``TCGA-A7-D000-01Z-00-DX1``.
Nuclei are purple (hematoxylin), radius ~4-14 px, ellipses and irregular blobs.
The same seed and arguments give the same bytes.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from helpers.atomic import dir_mode, remove_stale_partials
from helpers.data.manifest import MANIFEST_NAME, build_manifest, manifest_csv, read_manifest, write_manifest
from helpers.errors import UserError
from helpers.image_codec import encode_png


class DemoDataExists(UserError, FileExistsError):
    """The demo dataset's folder holds something else: nothing is overwritten."""


# (tss code, organ) used for demo ids; train cycles through these
TRAIN_CODES = ("A7", "B0", "G9", "AR", "HE", "CH")  # breast, kidney, prostate, x2
TEST_CODES = ("E2", "G9", "38", "NH")  # breast, prostate, lung (unseen), colon (unseen)


def demo_id(code: str, k: int) -> str:
    return f"TCGA-{code}-D{k:03d}-01Z-00-DX1"


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0,1]: a coarse random grid upsampled bicubically."""
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _nucleus_shape(rng: np.random.Generator, irregular: bool) -> tuple[np.ndarray, int]:
    """A boolean footprint of one nucleus and its half-size."""
    a = rng.uniform(4, 14)  # semi-axes in px
    b = a * rng.uniform(0.55, 1.0)
    theta = rng.uniform(0, np.pi)
    half = int(np.ceil(max(a, b) * 1.35)) + 1
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    xr = xx * np.cos(theta) + yy * np.sin(theta)
    yr = -xx * np.sin(theta) + yy * np.cos(theta)
    r = np.sqrt((xr / a) ** 2 + (yr / b) ** 2)
    if irregular:  # wobble the boundary with a few low harmonics
        phi = np.arctan2(yr, xr)
        wob = 1.0
        for k in (2, 3, 5):
            wob = wob + rng.uniform(0.04, 0.12) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
        r = r / wob
    return r <= 1.0, half


def _draw_image(rng: np.random.Generator, size: int, n_target: int, touch_frac: float
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    labels = np.zeros((size, size), dtype=np.int32)
    masks: list[np.ndarray] = []
    centers: list[tuple[int, int, int]] = []
    tries = 0
    while len(masks) < n_target and tries < n_target * 30:
        tries += 1
        fp, half = _nucleus_shape(rng, irregular=rng.random() < 0.35)
        touching = centers and rng.random() < touch_frac
        if touching:  # put it right next to an existing nucleus, then clip -> they touch
            cy0, cx0, h0 = centers[int(rng.integers(len(centers)))]
            ang = rng.uniform(0, 2 * np.pi)
            d = 0.8 * (h0 + half) / 1.35
            cy, cx = int(round(cy0 + d * np.sin(ang))), int(round(cx0 + d * np.cos(ang)))
        else:
            cy, cx = (int(v) for v in rng.integers(half, size - half, size=2))
        y0, x0 = cy - half, cx - half
        if y0 < 0 or x0 < 0 or y0 + fp.shape[0] > size or x0 + fp.shape[1] > size:
            continue
        win = labels[y0:y0 + fp.shape[0], x0:x0 + fp.shape[1]]
        free = fp & (win == 0)
        area = int(fp.sum())
        if touching:
            if free.sum() < 0.7 * area or free.sum() == area:
                continue
            if not _touches(free, win):
                continue
        elif free.sum() != area or _touches(fp, win):  # isolated ones keep a gap
            continue
        win[free] = len(masks) + 1
        m = np.zeros((size, size), dtype=bool)
        m[y0:y0 + fp.shape[0], x0:x0 + fp.shape[1]] = free
        masks.append(m)
        centers.append((cy, cx, half))
    return labels, masks


def _touches(fp: np.ndarray, win: np.ndarray) -> bool:
    occ = win > 0
    grown = fp.copy()
    grown[1:] |= fp[:-1]
    grown[:-1] |= fp[1:]
    grown[:, 1:] |= fp[:, :-1]
    grown[:, :-1] |= fp[:, 1:]
    return bool((grown & occ).any())


def _render(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    size = labels.shape[0]
    low = _smooth_noise(rng, size, 6)
    mid = _smooth_noise(rng, size, 24)
    fine = rng.normal(0, 1, (size, size)).astype(np.float32)
    # eosin: pink, fibrous texture and some pale (white-ish) gaps
    pink = np.array([236, 168, 196], np.float32)
    pale = np.array([246, 228, 236], np.float32)
    t = np.clip(0.55 * low + 0.45 * mid, 0, 1)[..., None]
    img = pink * (1 - 0.6 * t ** 3) + pale * (0.6 * t ** 3)
    img = img * (0.92 + 0.08 * mid[..., None]) + 6 * fine[..., None]
    # hematoxylin: purple nuclei with chromatin texture and a soft edge
    nuc = (labels > 0).astype(np.float32)
    soft = np.asarray(Image.fromarray((nuc * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8)),
                      np.float32)[..., None] / 255.0
    shade = np.zeros((size, size), np.float32)
    for k in range(1, int(labels.max()) + 1):  # each nucleus its own darkness
        shade[labels == k] = rng.uniform(0.0, 0.35)
    shade = np.asarray(Image.fromarray((shade * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8)),
                       np.float32)[..., None] / 255.0
    chrom = _smooth_noise(rng, size, 64)[..., None]
    purple = np.array([118, 62, 150], np.float32) * (1 - shade) * (0.85 + 0.3 * chrom)
    img = img * (1 - soft) + purple * soft + 5 * fine[..., None] * soft
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_image(dir_: Path, rng: np.random.Generator, size: int, train: bool, image_id: str) -> None:
    n_target = int(rng.integers(22, 34)) * size * size // (256 * 256)
    labels, masks = _draw_image(rng, size, max(n_target, 3), touch_frac=0.3)
    img = _render(rng, labels)
    if train:
        (dir_ / "images").mkdir(parents=True)
        (dir_ / "masks").mkdir()
        (dir_ / "images" / f"{image_id}.png").write_bytes(encode_png(img, encoder="pil"))
        for i, m in enumerate(masks, start=1):
            (dir_ / "masks" / f"mask_{i:04d}.png").write_bytes(encode_png(m.astype(np.uint8) * 255, encoder="pil"))
    else:
        (dir_ / f"{image_id}.png").write_bytes(encode_png(img, encoder="pil"))


def make_demo_dataset(root: str | os.PathLike, seed: int = 0, n_train: int = 6, n_test: int = 2,
                      size: int = 256) -> Path:
    """Write the demo dataset at ``root`` (atomically) and return ``root``.

    If ``root`` already holds exactly this dataset (same manifest) nothing is
    written; if it holds anything else, ``FileExistsError`` (nothing is overwritten).
    """
    root = Path(root)
    if n_train < 1 or n_test < 0 or size < 64:
        raise ValueError("need n_train >= 1, n_test >= 0 and size >= 64")
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(root, quiet=True)  # left by a killed run
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        os.chmod(tmp, dir_mode())  # it becomes root: an ordinary folder, not mkdtemp's 0700
        ss = np.random.SeedSequence(seed)
        children = ss.spawn(n_train + n_test)
        for i in range(n_train):
            image_id = demo_id(TRAIN_CODES[i % len(TRAIN_CODES)], i)
            _write_image(tmp / "train" / image_id, np.random.default_rng(children[i]), size, True, image_id)
        (tmp / "test").mkdir()
        images = []
        for j in range(n_test):
            image_id = demo_id(TEST_CODES[j % len(TEST_CODES)], 100 + j)
            _write_image(tmp / "test", np.random.default_rng(children[n_train + j]), size, False, image_id)
            images.append({"file_name": f"{image_id}.png", "height": size, "id": j + 1, "width": size})
        spec = {"images": images, "categories": [{"id": 1, "name": "nucleus", "supercategory": "nucleus"}]}
        (tmp / "test_img_ids.json").write_text(json.dumps(spec, indent=1) + "\n")
        rows = build_manifest(tmp, seed=seed, check_pixels=False, progress=False)
        write_manifest(rows, tmp / MANIFEST_NAME)
        if root.exists():
            same = (root / MANIFEST_NAME).is_file() and \
                manifest_csv(read_manifest(root / MANIFEST_NAME)) == manifest_csv(rows)
            if same:
                from helpers.data.manifest import validate_against_manifest
                validate_against_manifest(root, rows, progress=False)
                shutil.rmtree(tmp)
                return root
            raise DemoDataExists(f"{root} already exists and is not this demo dataset (seed={seed}, "
                                 f"n_train={n_train}, n_test={n_test}, size={size}); "
                                 "choose another folder or remove it yourself")
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
