"""A COCO instances JSON beside its images, as detectron2 and mmdetection keep them, read and written.

``<root>/<name>.json`` holds ``images`` (``id``, ``file_name``, ``height``, ``width``),
``annotations`` (``id``, ``image_id``, ``category_id``, ``segmentation``, ``iscrowd``) and
``categories`` (``id``, ``name``). An image file is found by its ``file_name`` relative to the
JSON's folder, else under ``<root>/images/``; its id is that path without the suffix (folders
joined by ``__``, a leading ``images/`` left out). :func:`read_coco` yields the images one at a time
for :func:`~helpers.data.imported.write_import`, each image's nuclei read lazily;
:func:`export_coco` writes a course-layout dataset this way.

A segmentation is polygons (``[[x1, y1, x2, y2, ...], ...]``, the parts of one object joined),
uncompressed RLE (``counts`` a list) or compressed RLE (``counts`` a string). Polygons are
rasterised as QuPath's GeoJSON is (:func:`helpers.polygons.rasterize`: the pixels whose centres
lie inside, pixel edges at integer coordinates), RLE decoded by pycocotools.
``ImportOptions.classes`` chooses the categories that are nuclei (empty: all).

Refused, naming the JSON, the image or annotation and what to do (:class:`DatasetError`): several
COCO files in one folder, an annotation of an image or category the file does not list, an image
file that is missing or of another size than its entry says, an annotation without segmentation,
a polygon of fewer than 3 points, an RLE of another size than its image or whose runs do not add
up, a class name that is no category of the file, a pixel size no microscope has.

Repaired, with a note: crowd annotations (``iscrowd``) are left out; a polygon that crosses itself
is made valid (shapely ``make_valid``); one that reaches past the image's border is cut at it, one
wholly outside (or covering no pixel) is skipped. ``write_import`` skips an image without nuclei,
keeps overlapping nuclei and refuses two annotations of the same pixels. Nothing of the source is
changed.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np

from helpers.data.dataset import DatasetError
from helpers.data.imported import ImportedImage, ImportOptions
from helpers.data.label_images import group_of, image_id_of, read_image_file
from helpers.polygons import full_mask
from helpers.data.organs import organ_of
from helpers.pixel_size import UNKNOWN, PixelSize, plausible, read_pixel_size

IMAGES_DIR = "images"
EXPORT_JSON = "annotations.json"
MAX_JSON_BYTES = 500_000_000  # a bigger JSON is not parsed to see whether it is COCO
SIZE_KEYS = ("pixel_size_um", "mpp")  # µm per pixel, in an image entry or the "info" dict
_SHOWN = 5  # annotations named in one note


# --------------------------------------------------------------------------- finding the JSON
def holds_coco(root: Path) -> bool:
    """Whether the folder ``root`` holds, at its top level, a COCO instances JSON."""
    return bool(coco_files(Path(root)))


def coco_files(root: Path) -> list[Path]:
    """The COCO instances JSONs at the top level of ``root`` (unreadable and huge JSONs aside)."""
    if not root.is_dir():
        return []
    return [p for p in sorted(root.iterdir()) if p.suffix.lower() == ".json" and not p.name.startswith(".")
            and p.is_file() and _is_coco(p)]


def _is_coco(path: Path) -> bool:
    """A dict with "images" and "annotations" lists; the keys are looked for before parsing."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES or not _mentions(path, (b'"images"', b'"annotations"')):
            return False
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and isinstance(data.get("images"), list) \
        and isinstance(data.get("annotations"), list)


def _mentions(path: Path, words: tuple[bytes, ...], chunk: int = 1 << 20) -> bool:
    """Whether the file holds every one of ``words``, read a chunk at a time."""
    left, tail = set(words), b""
    with open(path, "rb") as f:
        while left and (block := f.read(chunk)):
            text = tail + block
            left = {w for w in left if w not in text}
            tail = text[-32:]
    return not left


def _the_coco_file(root: Path) -> Path:
    files = coco_files(root)
    if len(files) > 1:
        raise DatasetError(f"{root} holds {len(files)} COCO instances files ({', '.join(p.name for p in files)}): "
                           "keep the one to import in the folder and move the others out")
    if not files:
        found = sorted(p.name for p in root.glob("*.json"))
        raise DatasetError(f"{root} holds no COCO instances JSON (a dict with 'images' and 'annotations' lists) "
                           f"at its top level (JSON files there: {found}): put the annotations file there")
    return files[0]


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} cannot be read as JSON ({e}): export it again") from e


# --------------------------------------------------------------------------- the file's lists
def _image_entries(coco: dict, path: Path) -> dict[str, dict]:
    """{str(image id): entry}, each with an id and a file_name, no id or file twice."""
    entries: dict[str, dict] = {}
    files: dict[str, str] = {}
    for k, entry in enumerate(coco["images"]):
        if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
            raise DatasetError(f"{path}: images[{k}] is {str(entry)[:80]}, not an image entry with an 'id' and "
                               "a 'file_name': fix or remove it")
        key, name = str(entry["id"]), entry["file_name"]
        if key in entries:
            raise DatasetError(f"{path}: two images have id {entry['id']!r} ({entries[key]['file_name']!r} and "
                               f"{name!r}): give each image its own id")
        if name in files:
            raise DatasetError(f"{path}: images id {files[name]} and {entry['id']} are both {name!r}: keep one "
                               "entry per image file (move the annotations of one onto the other)")
        entries[key], files[name] = entry, str(entry["id"])
    if not entries:
        raise DatasetError(f"{path} lists no image: export the images' entries with the annotations")
    return entries


def _categories(coco: dict, path: Path, notes: list[str]) -> dict[str, str] | None:
    """{str(category id): name}; None (every annotation a nucleus, with a note) without "categories"."""
    if "categories" not in coco:
        notes.append(f"{path} has no 'categories': every annotation is taken as a nucleus")
        return None
    cats = coco["categories"]
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c for c in cats):
        raise DatasetError(f"{path}: 'categories' is not a list of {{'id', 'name'}} entries: fix it")
    return {str(c["id"]): str(c.get("name", c["id"])) for c in cats}


def _chosen(categories: dict[str, str] | None, classes: tuple[str, ...], path: Path) -> set[str] | None:
    """The category ids that are nuclei (``classes`` names them; empty: all, None)."""
    if not classes:
        return None
    names = sorted(set((categories or {}).values()))
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise DatasetError(f"{path} has no categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; its categories "
                           f"are {names}: set nucleus_classes to some of these (or leave it empty for all)")
    return {k for k, name in categories.items() if name in classes}


def _ann_name(ann: dict, k: int) -> str:
    return f"annotation id {ann['id']}" if "id" in ann else f"annotations[{k}] (no id)"


def _annotations_by_image(coco: dict, path: Path, images: dict, categories: dict | None, chosen: set | None,
                          classes: tuple[str, ...], notes: list[str]) -> dict[str, list[tuple[str, dict]]]:
    """{image key: [(name, annotation)]} of the nuclei; crowds and other categories left out with a note."""
    by_image: dict[str, list[tuple[str, dict]]] = {}
    crowds, others = 0, {}
    for k, ann in enumerate(coco["annotations"]):
        if not isinstance(ann, dict):
            raise DatasetError(f"{path}: annotations[{k}] is {str(ann)[:80]}, not an annotation: fix or remove it")
        name = _ann_name(ann, k)
        _check_refs(ann, name, path, images, categories)
        if ann.get("iscrowd"):
            crowds += 1
        elif chosen is not None and str(ann.get("category_id")) not in chosen:
            cat = categories[str(ann.get("category_id"))]
            others[cat] = others.get(cat, 0) + 1
        else:
            by_image.setdefault(str(ann["image_id"]), []).append((name, ann))
    if crowds:
        notes.append(f"{path}: {crowds} crowd annotation(s) (iscrowd 1: a region of many objects, not one "
                     "nucleus) are left out")
    if others:
        notes.append(f"{path}: {sum(others.values())} annotation(s) of categories {sorted(others)} are left out "
                     f"(classes = {list(classes)} are the nuclei)")
    return by_image


def _check_refs(ann: dict, name: str, path: Path, images: dict, categories: dict | None) -> None:
    if str(ann.get("image_id")) not in images:
        raise DatasetError(f"{path}: {name} belongs to image_id {ann.get('image_id')!r}, which is not among its "
                           "images: fix its image_id, or delete the annotation")
    if categories is not None and str(ann.get("category_id")) not in categories:
        listed = ", ".join(f"{k} ({v})" for k, v in categories.items()) or "none"
        raise DatasetError(f"{path}: {name} has category_id {ann.get('category_id')!r}, which is not among its "
                           f"categories (ids: {listed}): add the category, or fix its category_id")


# --------------------------------------------------------------------------- pixel sizes
def _size_in(where: dict | None, source: str, path: Path, what: str) -> PixelSize:
    """The pixel size ``where`` (an image entry or "info") gives under :data:`SIZE_KEYS`, or UNKNOWN."""
    for key in SIZE_KEYS:
        value = where.get(key) if isinstance(where, dict) else None
        if value is None:
            continue
        try:
            um = float(value)
        except (TypeError, ValueError):
            um = None
        if not plausible(um):
            raise DatasetError(f"{path}: {what} gives {key} = {value!r}, which is no microscope's pixel size: give "
                               "µm per pixel (about 0.25 at 40x, 0.5 at 20x), or remove it")
        return PixelSize(um, source)
    return UNKNOWN


# --------------------------------------------------------------------------- images
def _clean_parts(file_name: str) -> list[str]:
    """``file_name``'s folders and name, without a drive, root, ``.`` or ``..``."""
    parts = PurePosixPath(file_name.replace("\\", "/")).parts
    return [p for p in parts if p not in ("/", ".", "..") and not p.endswith(":")]


def _find_image(root: Path, path: Path, entry: dict) -> tuple[Path, Path] | None:
    """``(file, base)``: where ``entry``'s image is, and the folder its id is taken under; None if nowhere."""
    parts = _clean_parts(entry["file_name"])
    if not parts:
        return None
    for base, rel in ((path.parent, parts), (root / IMAGES_DIR, parts), (root / IMAGES_DIR, parts[-1:])):
        if len(rel) > 1 and rel[0].lower() == IMAGES_DIR:  # images/<name>: the images' folder, not part of the id
            base, rel = base / rel[0], rel[1:]
        file = base.joinpath(*rel)
        if file.is_file():
            return file, base
    return None


def _missing(root: Path, path: Path, entry: dict) -> DatasetError:
    return DatasetError(f"{path}: the image {entry['file_name']!r} (image id {entry['id']}) is neither at "
                        f"{path.parent / entry['file_name']} nor under {root / IMAGES_DIR}: put the image file "
                        "there, or correct its file_name")


def _check_size(image: np.ndarray, file: Path, entry: dict, path: Path) -> None:
    h, w = image.shape[:2]
    want = entry.get("height"), entry.get("width")
    if None not in want and tuple(_whole(v) for v in want) != (h, w):
        raise DatasetError(f"{path}: image {entry['file_name']!r} is {want[1]}x{want[0]} (WxH) in the JSON but "
                           f"{file} is {w}x{h}: use the image the annotations were drawn on, or correct the "
                           "entry's width and height")


def _whole(value) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _group(entry: dict, file: Path, base: Path) -> str:
    """The TCGA organ, else the entry's "group", else the image's first folder."""
    if organ_of(file.stem) == "unknown" and entry.get("group"):
        return str(entry["group"])
    return group_of(base, file)


def _image(root: Path, path: Path, entry: dict, anns: list, info_size: PixelSize) -> ImportedImage:
    """One image entry, its nuclei checked now and read lazily."""
    found = _find_image(root, path, entry)
    if not anns:  # nothing to read: write_import skips it with a note
        file, base = found or (path.parent / entry["file_name"], path.parent)
        return ImportedImage(_image_id(file, base), file, np.zeros((1, 1, 3), np.uint8), iter(()))
    if found is None:
        raise _missing(root, path, entry)
    file, base = found
    image, notes = read_image_file(file)
    _check_size(image, file, entry, path)
    pieces = _pieces(anns, image.shape[:2], path, entry["file_name"], notes)
    size = read_pixel_size(file)
    size = size if size.um else _size_in(entry, "COCO image entry", path, f"image {entry['file_name']!r}")
    return ImportedImage(_image_id(file, base), file, image, _masks(pieces, image.shape[:2]),
                         size if size.um else info_size, _group(entry, file, base), notes)


def _image_id(file: Path, base: Path) -> str:
    try:
        return image_id_of(base, file)
    except ValueError:  # not under base
        return image_id_of(file.parent, file)


# --------------------------------------------------------------------------- segmentations
def _pieces(anns: list[tuple[str, dict]], shape: tuple[int, int], path: Path, file_name: str,
            notes: list[str]) -> list[tuple[str, tuple]]:
    """``(name, piece)`` of each annotation, checked: a piece is ``("crop", mask, y0, x0)`` (a
    rasterised polygon, small) or ``("rle", rle)``; repairs and skips are noted per image."""
    repaired: dict[str, list[str]] = {}
    out = []
    for name, ann in anns:
        label = f"{name} in {path.name}"
        piece, fix = _piece(ann.get("segmentation"), label, path, shape)
        if fix:
            repaired.setdefault(fix, []).append(name)
        if piece is not None:
            out.append((label, piece))
    for fix, names in repaired.items():
        shown = ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
        one, many = _FIXES[fix]
        notes.append(f"{path}: {shown} of image {file_name!r} {one if len(names) == 1 else many}")
    return out


_FIXES = {"invalid": ("crosses itself: repaired (shapely make_valid keeps the areas it encloses)",
                     "cross themselves: repaired (shapely make_valid keeps the areas they enclose)"),
          "cut": ("reaches past the image's border: cut at it", "reach past the image's border: cut at them"),
          "outside": ("lies wholly outside the image: skipped", "lie wholly outside the image: skipped"),
          "empty": ("covers no pixel (no pixel centre lies inside): skipped",
                    "cover no pixel (no pixel centre lies inside): skipped")}


def _piece(seg, label: str, path: Path, shape) -> tuple[tuple | None, str]:
    """The piece of one segmentation and what was repaired ("" for nothing)."""
    if isinstance(seg, dict) and "counts" in seg:
        rle = _rle(seg, label, path, shape)
        from pycocotools import mask as mask_utils

        return (None, "empty") if int(mask_utils.area(rle)) == 0 else (("rle", rle), "")
    if not seg:
        raise DatasetError(f"{path}: {label} has no segmentation (a box alone is no outline): export the "
                           "nuclei's polygons or masks, or delete the annotation")
    geom, fix = _geometry(seg, label, path)
    return _crop(geom, shape, fix)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _geometry(seg, label: str, path: Path):
    """The union of a polygon segmentation's parts, made valid; ``fix`` "invalid" if it had to be."""
    import shapely
    from shapely.geometry import Polygon

    parts = [seg] if isinstance(seg, list) and all(_is_number(v) for v in seg) else seg
    polygons, fix = [], ""
    for part in parts if isinstance(parts, list) else [parts]:
        if not isinstance(part, list) or not all(_is_number(v) for v in part):
            raise DatasetError(f"{path}: {label} has a segmentation that is neither polygons [[x1, y1, x2, y2, "
                               "...], ...] nor RLE {'size', 'counts'}: export it again")
        if len(part) % 2 or len(part) < 6:
            raise DatasetError(f"{path}: {label} has a polygon of {len(part)} numbers: a polygon needs at least 3 "
                               "points (x, y pairs); delete the annotation or draw it again")
        polygon = Polygon(np.asarray(part, np.float64).reshape(-1, 2))
        if not polygon.is_valid:
            polygon, fix = shapely.make_valid(polygon), "invalid"
        polygons += [g for g in shapely.get_parts(polygon) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(polygons) if polygons else Polygon(), fix


def _crop(geom, shape, fix: str) -> tuple[tuple | None, str]:
    """``("crop", mask, y0, x0)``: the pixels of ``geom`` inside the image, in its box."""
    from shapely import affinity
    from shapely.geometry import box

    from helpers.polygons import rasterize

    h, w = shape
    frame = box(0, 0, w, h)
    if geom.is_empty or geom.area == 0 or geom.intersection(frame).area == 0:
        return None, ("outside" if not geom.is_empty and geom.area > 0 else "empty")
    fix = fix or ("" if geom.within(frame) else "cut")
    x0, y0, x1, y1 = geom.bounds
    x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    x1, y1 = min(w, math.ceil(x1)), min(h, math.ceil(y1))
    mask = rasterize(affinity.translate(geom, -x0, -y0), (y1 - y0, x1 - x0))
    if not mask.any():
        return None, "empty"
    return ("crop", mask, y0, x0), fix


def _rle(seg: dict, label: str, path: Path, shape) -> dict:
    """A checked compressed RLE (bytes counts) of ``seg``, uncompressed or compressed."""
    from pycocotools import mask as mask_utils

    from helpers.rle import RLEError, check_rle

    size, counts = seg.get("size"), seg.get("counts")
    if not isinstance(size, (list, tuple)) or [_whole(v) for v in size] != [shape[0], shape[1]]:
        raise DatasetError(f"{path}: {label} is an RLE of size {size} (height, width) but its image is "
                           f"{shape[0]}x{shape[1]}: export the masks at the image's size")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts) \
                or sum(counts) != shape[0] * shape[1]:
            raise DatasetError(f"{path}: {label} has RLE counts that are not whole numbers >= 0 adding up to "
                               f"height x width = {shape[0] * shape[1]}: export the masks again")
        return mask_utils.frPyObjects({"size": [shape[0], shape[1]], "counts": counts}, shape[0], shape[1])
    text = counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts
    try:
        check_rle({"size": [shape[0], shape[1]], "counts": text})
    except RLEError as e:
        raise DatasetError(f"{path}: {label} is not a valid compressed RLE ({e}): export the masks again") from e
    return {"size": [shape[0], shape[1]], "counts": text.encode("ascii")}


def _masks(pieces: list[tuple[str, tuple]], shape) -> Iterator[tuple[str, np.ndarray]]:
    """Each piece as a full-size bool mask, one at a time."""
    from pycocotools import mask as mask_utils

    for label, piece in pieces:
        if piece[0] == "rle":
            yield label, np.ascontiguousarray(mask_utils.decode(piece[1]), dtype=bool)
        else:
            _, crop, y0, x0 = piece
            yield label, full_mask(crop, (y0, x0), shape)


# --------------------------------------------------------------------------- reading
def read_coco(root: str | os.PathLike, options: ImportOptions = ImportOptions()) -> Iterator[ImportedImage]:
    """The images of the COCO instances JSON at the top of ``root``, one :class:`ImportedImage`
    at a time (``options.classes``: the categories that are nuclei). The whole file is checked
    before the first image; file-wide notes come with the first image."""
    root = Path(root)
    path = _the_coco_file(root)
    coco, notes = _load(path), []
    images = _image_entries(coco, path)
    categories = _categories(coco, path, notes)
    chosen = _chosen(categories, options.classes, path)
    by_image = _annotations_by_image(coco, path, images, categories, chosen, options.classes, notes)
    info_size = _size_in(coco.get("info"), "COCO info", path, "its 'info'")
    for key, entry in images.items():
        item = _image(root, path, entry, by_image.get(key, []), info_size)
        item.notes[:0], notes = notes, []
        yield item


# --------------------------------------------------------------------------- writing
def export_coco(dataset_root: str | os.PathLike, out: str | os.PathLike, pixel_size_um: float | None = None,
                polygons: bool = False) -> Path:
    """The training images of a course-layout dataset as ``out/images/<ID>.png`` and
    ``out/annotations.json`` (one category, "nucleus"); each nucleus as compressed RLE, or with
    ``polygons`` as its outline (holes filled). A known ``pixel_size_um`` goes into every image
    entry. The JSON is written atomically; returns ``out``."""
    from helpers.atomic import atomic_write_json
    from helpers.coco_format import CATEGORIES, CATEGORY_ID
    from helpers.data.dataset import mask_batches, open_dataset, read_image
    from helpers.image_codec import encode_png

    if pixel_size_um is not None and not plausible(pixel_size_um):
        raise DatasetError(f"pixel_size_um={pixel_size_um} is no microscope's pixel size: give µm per pixel, about "
                           "0.25 at 40x and 0.5 at 20x")
    ds, out = open_dataset(dataset_root), Path(out)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for k, item in enumerate(ds.train, start=1):
        image = read_image(item.image_path)
        (out / IMAGES_DIR / f"{item.image_id}.png").write_bytes(encode_png(image))
        entry = {"id": k, "file_name": f"{IMAGES_DIR}/{item.image_id}.png", "height": int(image.shape[0]),
                 "width": int(image.shape[1])}
        images.append(entry | ({"pixel_size_um": float(pixel_size_um)} if pixel_size_um else {}))
        for _, masks in mask_batches(item, image.shape):
            for seg, area, bbox in _segmentations(masks, polygons):
                annotations.append({"id": len(annotations) + 1, "image_id": k, "category_id": CATEGORY_ID,
                                    "iscrowd": 0, "area": area, "bbox": bbox, "segmentation": seg})
    coco = {"info": {"description": f"nuclei of {ds.root.name}, exported from the course layout"},
            "images": images, "annotations": annotations, "categories": [dict(c) for c in CATEGORIES]}
    atomic_write_json(out / EXPORT_JSON, coco, indent=None)
    return out


def _segmentations(masks: np.ndarray, polygons: bool) -> Iterator[tuple[object, float, list[float]]]:
    """``(segmentation, area, bbox [x, y, w, h])`` of each mask."""
    from helpers.polygons import outline
    from helpers.rle import encode_masks, rle_area, rle_bbox

    from shapely.geometry import box

    frame = box(0, 0, masks.shape[2], masks.shape[1])
    rles = encode_masks(masks)
    for mask, rle, area, bbox in zip(masks, rles, rle_area(rles), rle_bbox(rles)):
        seg = _polygon_lists(outline(mask, tolerance=0), frame) if polygons else rle
        yield seg, float(area), [float(v) for v in bbox]


def _polygon_lists(geom, frame) -> list[list[float]]:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]``: each part's exterior, not closed again, cut
    at the image's ``frame`` (a mitred corner at the border pokes out of it; no pixel centre is there)."""
    import shapely

    if not geom.within(frame):
        geom = geom.intersection(frame)
    out = []
    for part in shapely.get_parts(geom):
        if part.geom_type == "Polygon" and part.area > 0:
            xy = np.asarray(part.exterior.coords)[:-1].ravel()
            out.append([int(v) if float(v).is_integer() else float(v) for v in xy])  # repr: exact in JSON
    return out


__all__ = ["EXPORT_JSON", "IMAGES_DIR", "MAX_JSON_BYTES", "SIZE_KEYS", "holds_coco", "coco_files", "read_coco",
           "export_coco"]
