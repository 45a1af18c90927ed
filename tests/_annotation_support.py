"""What the annotation-layout tests share: a source's listing, masks with holes filled, IoUs."""
import numpy as np

from helpers.image_codec import mask_box
from helpers.rle import encode_masks, rle_iou


def listing(root):
    """Every file and folder under ``root`` with its mtime: equal before and after means untouched."""
    return sorted((p.relative_to(root).as_posix(), p.stat().st_mtime_ns) for p in root.rglob("*"))


def filled(masks):
    """The masks with their holes filled (an outline holds none), each inside its box (a full-size
    fill takes 60 ms a mask)."""
    from scipy.ndimage import binary_fill_holes

    out = masks.copy()
    for m in out:
        y0, x0, y1, x1 = mask_box(m)
        m[y0:y1, x0:x1] = binary_fill_holes(m[y0:y1, x0:x1])
    return out


def mean_iou(original, imported):
    """Each original mask's IoU with its best-matching imported mask: (mean, minimum)."""
    best = rle_iou(encode_masks(original), encode_masks(imported)).max(axis=1)
    return float(best.mean()), float(best.min())


REAL_IMAGE = "TCGA-CH-5767-01Z-00-DX1"  # the real image with the fewest nuclei: 294


def one_real_image(real_data, tmp_path, name=REAL_IMAGE):
    """A course-layout dataset of one real image, linked (nothing is copied); skips without it."""
    import pytest

    if not (real_data / "train" / name).is_dir():
        pytest.skip(f"{name} is not in {real_data}")
    one = tmp_path / "one"
    (one / "train").mkdir(parents=True)
    (one / "train" / name).symlink_to(real_data / "train" / name)
    return one


def mask_pairs(original, imported):
    """``(masks, imported masks)`` of each training image of the dataset ``original`` and of its
    import ``imported``: the same ids, and images equal pixel for pixel."""
    from helpers.data.dataset import open_dataset, read_image, read_masks

    a_set, b_set = open_dataset(original), open_dataset(imported)
    assert b_set.train_ids == a_set.train_ids
    for a, b in zip(a_set.train, b_set.train):
        image = read_image(a.image_path)
        assert np.array_equal(read_image(b.image_path), image)
        yield read_masks(a, image.shape), read_masks(b, image.shape)


def masks_of_both(one, back):
    """The masks of the one image of ``one`` and of its import ``back``."""
    return next(mask_pairs(one, back))
