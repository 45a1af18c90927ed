"""Images beside QuPath GeoJSON exports of the same name, read; a course-layout dataset written so.

What is read (:func:`read_geojson`, for :func:`~helpers.data.imported.write_import`):

* the layout: a folder (subfolders too) where each image (PNG, TIFF, JPEG) has its objects beside
  it as ``<stem>.geojson``, ``<stem>.geojson.gz`` or ``<stem>.json`` (``<name>.geojson``, the
  image's suffix kept, too); or the images under ``images/`` and the GeoJSON files under
  ``geojson/`` or ``annotations/``, at the same paths;
* each file as QuPath writes it (*File > Export objects as GeoJSON*): a FeatureCollection, a list
  of Features or one Feature; coordinates in pixels of the full-resolution image, origin at its
  top-left corner; per object ``objectType`` (``object_type`` and the ``Path...Object`` ids of
  QuPath 0.2), ``classification`` (``{"name": ...}``, ``{"names": [...]}``, a bare string or none)
  and, for a cell, ``nucleusGeometry``: a cell's nucleus is the nucleus, not its cell outline;
* a nucleus is one object's Polygon or MultiPolygon (all its parts one nucleus), rasterised by
  :func:`helpers.polygons.rasterize`: the pixels whose centres lie inside, holes left out;
* ``options.classes`` chooses the classes that are nuclei (empty: every object with an area);
  :data:`UNCLASSIFIED` (``"Unclassified"``) chooses the objects without a class;
* the pixel size: the image file's own, else the collection's ``properties.pixel_size_um`` (this
  project's exports write it), else unknown (``options.pixel_size_um`` then applies).

Refused, naming the user's file and the object, with what to do (:class:`DatasetError`): an image
without its GeoJSON or a GeoJSON without its image, two GeoJSON files for one image, a file that is
not JSON or not GeoJSON, a geometry that is not GeoJSON, a class no file uses (the classes found
are listed with their counts), an object covering most of its image (a region, not a nucleus).

Repaired, with a note naming the file and the objects: a polygon that crosses itself (shapely's
``make_valid``); an object past the image's border (cut there); an object wholly outside the image
or covering no pixel centre (skipped; when every object of a file lies outside, the note says
whether the image looks downsampled, a region of a larger image, or the coordinates µm); points,
lines, tiles and other objects without an area (skipped, counted per file).
:func:`~helpers.data.imported.write_import` adds its own: an image without nuclei is skipped, two
objects of the same pixels are refused (naming both), overlapping nuclei are kept as drawn.
Nothing under the source folder is written.

:func:`export_geojson` writes a course-layout dataset's training images this way, one QuPath
detection per mask (its outline at ``tolerance=0``, which rasterises back to the same pixels,
holes filled).
"""
from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from helpers.data.dataset import MAX_MASK_FRACTION, DatasetError
from helpers.data.imported import ImportedImage, ImportOptions
from helpers.data.label_images import IMAGE_SUFFIXES, group_of, image_id_of, read_image_file
from helpers.polygons import full_mask
from helpers.pixel_size import UNKNOWN, PixelSize, plausible, read_pixel_size

GEOJSON_SUFFIXES = (".geojson", ".geojson.gz", ".json")
ANNOTATION_DIRS = ("geojson", "annotations")
UNCLASSIFIED = "Unclassified"  # the class name that chooses the objects without a class
AREA_TYPES = ("Polygon", "MultiPolygon")
NOT_NUCLEI = ("tile", "root", "tma_core", "tmacore")  # QuPath objects that never outline a nucleus
_OLD_TYPES = {"PathAnnotationObject": "annotation", "PathDetectionObject": "detection",
              "PathCellObject": "cell", "PathTileObject": "tile", "PathRootObject": "root",
              "TMACoreObject": "tma_core"}
EXPORT_CLASS = {"name": "Nucleus", "color": [255, 0, 0]}
_UPPER = tuple(s.upper() for s in IMAGE_SUFFIXES)
_HOW = "QuPath: File > Export objects as GeoJSON"


# --------------------------------------------------------------------------- the layout
def _visible(path: Path, top: Path) -> bool:
    return path.is_file() and not any(part.startswith(".") for part in path.relative_to(top).parts)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _geojson_kind(path: Path) -> str:
    """The GeoJSON suffix ``path`` ends with ("" for none), ``.geojson.gz`` before ``.json``."""
    name = path.name.lower()
    return next((s for s in GEOJSON_SUFFIXES if name.endswith(s)), "")


def _key(path: Path, top: Path) -> str:
    """An annotation file's path under ``top`` without its suffixes (an image's suffix too):
    ``a/b.geojson``, ``a/b.json`` and ``a/b.png.geojson`` all belong to the image ``a/b.*``."""
    rel = path.relative_to(top).as_posix()
    rel = rel[:len(rel) - len(_geojson_kind(path))]
    stem, dot, suffix = rel.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES else rel


def _shallow_files(folder: Path, depth: int = 2) -> Iterator[Path]:
    """The visible files of ``folder`` and of its subfolders down to ``depth`` levels."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_file():
            yield p
        elif depth > 1 and p.is_dir():
            yield from _shallow_files(p, depth - 1)


def _annotation_dir(root: Path) -> Path | None:
    """``root/geojson`` or ``root/annotations`` beside ``root/images`` (the split layout), or None."""
    if not (root / "images").is_dir():
        return None
    return next((root / d for d in ANNOTATION_DIRS if (root / d).is_dir()), None)


def _names_geojson(folder: Path, images: Path) -> bool:
    """Whether ``folder`` (two levels) holds a ``*.geojson`` file, or a ``<stem>.json`` with an
    image of that stem in ``images`` (a COCO file beside its images is no image's)."""
    for p in _shallow_files(folder):
        kind = _geojson_kind(p)
        if kind in (".geojson", ".geojson.gz"):
            return True
        if kind == ".json":
            base = images / _key(p, folder)
            if any(base.with_name(base.name + s).is_file() for s in IMAGE_SUFFIXES + _UPPER):
                return True
    return False


def holds_geojson(root: Path) -> bool:
    """Whether ``root`` looks like this layout (module doc); reads no file, looks two levels down."""
    root = Path(root)
    split = _annotation_dir(root)
    return _names_geojson(split, root / "images") if split else _names_geojson(root, root)


def _images(top: Path) -> dict[str, Path]:
    """{path under ``top`` without its suffix: image file} of the images under ``top``."""
    found: dict[str, Path] = {}
    for p in sorted(top.rglob("*")):
        if _is_image(p) and _visible(p, top):
            key = p.relative_to(top).with_suffix("").as_posix()
            if key in found:
                raise DatasetError(f"{found[key]} and {p} are one image under two suffixes (one GeoJSON "
                                   "would be both's): keep one of them")
            found[key] = p
    return found


def _annotations(top: Path, images: dict[str, Path] | None) -> dict[str, Path]:
    """{key: GeoJSON file} under ``top``; in the flat layout (``images`` given) a ``.json`` is only
    an image's when that image exists (other JSON files are left alone)."""
    found: dict[str, Path] = {}
    for p in sorted(top.rglob("*")):
        kind = _geojson_kind(p)
        if not kind or not _visible(p, top) or (images is not None and kind == ".json" and _key(p, top) not in images):
            continue
        key = _key(p, top)
        if key in found:
            raise DatasetError(f"{found[key]} and {p} both hold the objects of one image: keep one of them")
        found[key] = p
    return found


def geojson_pairs(root: str | os.PathLike) -> tuple[Path, list[tuple[Path, Path]]]:
    """The folder image ids are made under, and ``(image, GeoJSON)`` of every image under
    ``root``; a DatasetError names an image without its GeoJSON, or a GeoJSON without its image."""
    root = Path(root)
    split = _annotation_dir(root)
    image_top, ann_top = (root / "images", split) if split else (root, root)
    images = _images(image_top)
    annotations = _annotations(ann_top, None if split else images)
    where = f"in {ann_top}" if split else "beside them"
    alone = sorted(set(images) - set(annotations))
    if alone:
        raise DatasetError(f"{len(alone)} image(s) under {image_top} have no GeoJSON {where} (e.g. "
                           f"{images[alone[0]]}): export its objects as {Path(alone[0]).name}.geojson ({_HOW}), "
                           "or move the image out if it is not annotated")
    orphans = sorted(set(annotations) - set(images))
    if orphans:
        raise DatasetError(f"{len(orphans)} GeoJSON file(s) under {ann_top} have no image of the same name "
                           f"(e.g. {annotations[orphans[0]]}): add the image (PNG, TIFF or JPEG) as "
                           f"{image_top / orphans[0]}.png, or move the GeoJSON out")
    if not images:
        raise DatasetError(f"{image_top} holds no image (PNG, TIFF or JPEG) with its GeoJSON")
    return image_top, [(images[k], annotations[k]) for k in sorted(images)]


# --------------------------------------------------------------------------- one file's objects
@dataclass
class QuPathObject:
    """One Feature as read: ``name`` for messages (``"feature 12 (nucleus 12) of img.geojson"``),
    QuPath's ``kind`` (objectType), its class name (None: unclassified) and the GeoJSON geometry
    that outlines its nucleus (a cell's ``nucleusGeometry``)."""
    name: str
    kind: str
    klass: str | None
    geometry: dict | None
    no_nucleus: bool = False  # a cell without nucleusGeometry: its cell outline stands in


def load_geojson(path: Path) -> dict | list:
    """A (possibly gzipped) JSON file; a DatasetError names a file that is not JSON."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8-sig") as f:
                return json.load(f)
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, EOFError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DatasetError(f"{path} is not valid JSON ({type(e).__name__}: {e}): export it again ({_HOW}); "
                           "a file cut short by a copy is a common cause") from e


def features_of(data, path: Path) -> list[dict]:
    """The Features of a FeatureCollection, a list of Features or one Feature."""
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise DatasetError(f"{path} is JSON but not GeoJSON ({_what_json(data)}): it must hold a "
                           f"FeatureCollection, a list of Features or one Feature ({_HOW})")
    if not isinstance(features, list):
        raise DatasetError(f"{path}: its FeatureCollection has no list of \"features\" ({_HOW})")
    for k, f in enumerate(features, start=1):
        if not isinstance(f, dict) or f.get("type") != "Feature":
            raise DatasetError(f"{path}: feature {k} is not a GeoJSON Feature ({str(f)[:80]}): each must be "
                               "{\"type\": \"Feature\", \"geometry\": ..., \"properties\": ...}")
    return features


def _what_json(data) -> str:
    if not isinstance(data, dict):
        return f"a {type(data).__name__}"
    if "type" in data:
        return f"type {data['type']!r}"
    coco = " (a COCO file: read it as the COCO layout)" if {"images", "annotations"} <= set(data) else ""
    return f"keys {sorted(map(str, data))[:6]}{coco}"


def class_name(properties: dict) -> str | None:
    """The classification's name (QuPath's derived classes joined by ": "), None when unclassified."""
    c = properties.get("classification")
    if isinstance(c, dict):
        c = c.get("name") or (": ".join(map(str, c["names"])) if isinstance(c.get("names"), list) else None)
    return str(c) if c not in (None, "") else None


def _object(k: int, feature: dict, label: str) -> QuPathObject:
    props = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
    fid = feature.get("id")
    kind = props.get("objectType") or props.get("object_type") or _OLD_TYPES.get(str(fid), "")
    own = props.get("name") or (fid if fid not in (None, "") and str(fid) not in _OLD_TYPES else None)
    name = f"feature {k} ({own}) of {label}" if own not in (None, "") else f"feature {k} of {label}"
    nucleus = feature.get("nucleusGeometry") or props.get("nucleusGeometry")
    cell = str(kind).lower() == "cell"
    geometry = nucleus if cell and nucleus else feature.get("geometry")
    return QuPathObject(name, str(kind).lower(), class_name(props), geometry, cell and not nucleus)


def read_objects(path: Path, label: str) -> tuple[list[QuPathObject], dict]:
    """The objects of one GeoJSON file and the collection's ``properties`` ({} for none)."""
    data = load_geojson(path)
    props = data.get("properties") if isinstance(data, dict) and data.get("type") == "FeatureCollection" else None
    return [_object(k, f, label) for k, f in enumerate(features_of(data, path), start=1)], (
        props if isinstance(props, dict) else {})


def has_area(obj: QuPathObject) -> bool:
    """Whether ``obj`` may outline a nucleus: a (Multi)Polygon (or a collection holding one), not a tile."""
    g = obj.geometry
    if obj.kind in NOT_NUCLEI or not isinstance(g, dict):
        return False
    if g.get("type") == "GeometryCollection":
        return any(isinstance(p, dict) and p.get("type") in AREA_TYPES for p in g.get("geometries") or [])
    return g.get("type") in AREA_TYPES


def chosen(obj: QuPathObject, classes: tuple[str, ...]) -> bool:
    return not classes or (obj.klass or UNCLASSIFIED) in classes


# --------------------------------------------------------------------------- classes
def class_counts(pairs: list[tuple[Path, Path]], top: Path) -> Counter:
    """{class name: objects with an area} over every file (unclassified ones as :data:`UNCLASSIFIED`)."""
    counts: Counter = Counter()
    for _, path in pairs:
        objects, _ = read_objects(path, path.relative_to(top).as_posix())
        counts.update(o.klass or UNCLASSIFIED for o in objects if has_area(o))
    return counts


def describe_counts(counts: Counter) -> str:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # most first, ties by name
    return ", ".join(f"{name!r} ({n})" for name, n in ranked) or "none"


def check_classes(classes: tuple[str, ...], pairs: list[tuple[Path, Path]], root: Path, top: Path) -> None:
    """A DatasetError for a class of ``classes`` that no file's objects have, listing those found."""
    if not classes:
        return
    counts = class_counts(pairs, top)
    missing = [c for c in classes if not counts.get(c)]
    if missing:
        raise DatasetError(f"no object with an area in the GeoJSON files under {root} is of class "
                           f"{', '.join(map(repr, missing))}; the classes found (objects): {describe_counts(counts)}. "
                           f"Set classes to the nuclei's classes among them (\"{UNCLASSIFIED}\" for objects "
                           "without a class), or to () for every object")


# --------------------------------------------------------------------------- geometry
@dataclass
class _Found:
    """What one file's objects came to: nuclei as bbox crops, and what was repaired or skipped."""
    crops: list = field(default_factory=list)  # (name, bool crop, (y0, x0))
    skipped: Counter = field(default_factory=Counter)  # not nuclei: "Point", "tile", ...
    repaired: list = field(default_factory=list)
    cut: list = field(default_factory=list)
    outside: list = field(default_factory=list)
    tiny: list = field(default_factory=list)
    no_nucleus: list = field(default_factory=list)
    bounds: list = field(default_factory=list)  # of every object with an area


def _shape(obj: QuPathObject, path: Path):
    from shapely.geometry import shape

    try:
        return shape(obj.geometry)
    except Exception as e:  # noqa: BLE001 - shapely's complaint about a malformed geometry
        raise DatasetError(f"{path}: {obj.name} has a geometry that is not GeoJSON ({type(e).__name__}: {e}); "
                           f"{str(obj.geometry)[:120]}: export the file again ({_HOW}) or delete the object") from e


def _polygonal(geom):
    """The area part of ``geom`` (None for none): polygons kept, points and lines dropped."""
    import shapely

    if geom.geom_type in AREA_TYPES:
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type in AREA_TYPES and not g.is_empty]
    return shapely.union_all(parts) if parts else None


def area_geometry(obj: QuPathObject, path: Path, found: _Found):
    """``obj``'s area as a valid shapely geometry (a crossing polygon repaired), or None."""
    import shapely

    geom = _polygonal(_shape(obj, path))
    if geom is not None and not geom.is_valid:
        geom = _polygonal(shapely.make_valid(geom))
        found.repaired.append(obj.name)
    return None if geom is None or geom.is_empty else geom


def rasterize_crop(geom, shape) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The pixels of ``geom`` within its box cut at the image's border, with the box's (y0, x0);
    None when the box lies outside the image. The same pixels as ``rasterize(geom, shape)``."""
    from shapely.affinity import translate

    from helpers.polygons import rasterize

    minx, miny, maxx, maxy = geom.bounds
    x0, y0 = max(0, int(np.floor(minx))), max(0, int(np.floor(miny)))
    x1, y1 = min(shape[1], int(np.ceil(maxx)) + 1), min(shape[0], int(np.ceil(maxy)) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return rasterize(translate(geom, -x0, -y0), (y1 - y0, x1 - x0)), (y0, x0)


def _past_border(bounds, shape) -> bool:
    """Whether an object reaches a pixel centre past the image's border (an outline along the
    border pixels' outer edges, mitred at corners, may poke past it by less: nothing is cut)."""
    minx, miny, maxx, maxy = bounds
    return minx <= -0.5 or miny <= -0.5 or maxx >= shape[1] + 0.5 or maxy >= shape[0] + 0.5


def _add(obj: QuPathObject, geom, shape, path: Path, image_name: str, found: _Found) -> None:
    from shapely.geometry import box

    found.bounds.append(geom.bounds)
    frame = box(0, 0, shape[1], shape[0])
    if not geom.intersects(frame):
        found.outside.append(obj.name)
        return
    crop, at = rasterize_crop(geom, shape) or (None, None)
    if crop is None or not crop.any():
        found.tiny.append(obj.name)
        return
    if crop.sum() > MAX_MASK_FRACTION * shape[0] * shape[1]:
        raise DatasetError(f"{path}: {obj.name} (class {obj.klass or UNCLASSIFIED!r}) covers "
                           f"{crop.sum() / (shape[0] * shape[1]):.0%} of {image_name}: a region, not a nucleus. "
                           "Choose the nuclei's classes with nucleus_classes=[...], or delete the object")
    if _past_border(geom.bounds, shape):
        found.cut.append(obj.name)
    found.crops.append((obj.name, crop, at))


def find_nuclei(objects: list[QuPathObject], shape, path: Path, image_name: str,
                classes: tuple[str, ...] = ()) -> _Found:
    """The nuclei among ``objects`` (of the chosen ``classes``) as crops, and what was skipped."""
    found = _Found()
    for obj in objects:
        if not has_area(obj):
            what = obj.kind if obj.kind in NOT_NUCLEI else (obj.geometry or {}).get("type") or "no geometry"
            found.skipped[str(what)] += 1
            continue
        if not chosen(obj, classes):
            continue
        geom = area_geometry(obj, path, found)
        if geom is None:
            found.skipped["no area"] += 1
            continue
        if obj.no_nucleus:
            found.no_nucleus.append(obj.name)
        _add(obj, geom, shape, path, image_name, found)
    return found


# --------------------------------------------------------------------------- notes
def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def why_outside(bounds: list, shape, image_name: str, size: PixelSize) -> str:
    """What every object lying outside the image suggests: a downsampled image, a region of a
    larger one, coordinates in µm, or an origin elsewhere."""
    minx, miny = min(b[0] for b in bounds), min(b[1] for b in bounds)
    maxx, maxy = max(b[2] for b in bounds), max(b[3] for b in bounds)
    h, w = shape[:2]
    reach = f"the objects span x {minx:.0f}..{maxx:.0f}, y {miny:.0f}..{maxy:.0f} but {image_name} is {w}x{h} px"
    if minx < 0 or miny < 0:
        return f"{reach}: negative coordinates, so their origin is not the image's top-left corner"
    scale = max(maxx / w, maxy / h)
    if maxx - minx <= w and maxy - miny <= h:
        return (f"{reach}: they would fit it shifted, so the image may be a region cut from a larger image "
                "(a slide) whose coordinates they keep: export the objects of that region relative to it, "
                f"or the region as its own image (or else the image is downsampled, by about {scale:.2g})")
    if size.um and abs(scale / size.um - 1) < 0.15:
        return (f"{reach}, {scale:.2g}x its size, as much as its pixel size ({size.describe()}): the coordinates "
                "look like µm; QuPath's GeoJSON is in pixels of the full-resolution image: export them in pixels")
    return (f"{reach}, about {scale:.2g}x its size: the image looks downsampled (by about {scale:.2g}) while "
            "QuPath writes coordinates in pixels of the full-resolution image: use the full-resolution image "
            f"(or export it at downsample 1); were the coordinates µm instead, the pixel would be {scale:.2g} µm")


def found_notes(found: _Found, path: Path, shape, image_name: str, size: PixelSize) -> list[str]:
    notes = []
    if found.skipped:
        what = ", ".join(f"{n} {k}" for k, n in found.skipped.most_common())
        notes.append(f"{path}: skipped {sum(found.skipped.values())} object(s) that outline no nucleus ({what}): "
                     "only areas (Polygon, MultiPolygon) are nuclei; points, lines and tiles are not")
    if found.repaired:
        notes.append(f"{path}: {len(found.repaired)} object(s) cross themselves ({_some(found.repaired)}): repaired "
                     "with shapely's make_valid (each loop became a part of the nucleus); check them in QuPath")
    if found.no_nucleus:
        notes.append(f"{path}: {len(found.no_nucleus)} cell object(s) have no nucleusGeometry "
                     f"({_some(found.no_nucleus)}): their cell outline is used as the nucleus")
    if found.cut:
        notes.append(f"{path}: {len(found.cut)} object(s) reach past the border of {image_name} "
                     f"({_some(found.cut)}): cut at the border")
    if found.tiny:
        notes.append(f"{path}: {len(found.tiny)} object(s) cover no pixel centre ({_some(found.tiny)}): too "
                     "small or thin to be a nucleus, skipped")
    if found.outside and not found.crops and not found.tiny:
        notes.append(f"{path}: all {len(found.outside)} object(s) lie outside {image_name} and were skipped "
                     f"({_some(found.outside)}): {why_outside(found.bounds, shape, image_name, size)}")
    elif found.outside:
        notes.append(f"{path}: {len(found.outside)} object(s) lie wholly outside {image_name} "
                     f"({_some(found.outside)}): skipped")
    return notes


# --------------------------------------------------------------------------- reading
def collection_pixel_size(props: dict, path: Path, notes: list[str]) -> PixelSize:
    """``properties.pixel_size_um`` of a collection (this project's exports), or UNKNOWN."""
    um = props.get("pixel_size_um")
    if um is None:
        return UNKNOWN
    try:
        um = float(um)
    except (TypeError, ValueError):
        um = None
    if not plausible(um):
        notes.append(f"{path}: ignoring properties.pixel_size_um={props['pixel_size_um']!r}: no microscope's "
                     "pixel size (µm per pixel, about 0.25 at 40x and 0.5 at 20x)")
        return UNKNOWN
    return PixelSize(um, "GeoJSON properties")


def _masks(crops: list, shape) -> Iterator[tuple[str, np.ndarray]]:
    for name, crop, corner in crops:
        yield name, full_mask(crop, corner, shape)


def read_one(image_path: Path, geojson_path: Path, image_top: Path, ann_top: Path,
             classes: tuple[str, ...] = ()) -> ImportedImage:
    """One image and the nuclei of its GeoJSON (masks made one at a time as they are read)."""
    image, notes = read_image_file(image_path)
    label = geojson_path.relative_to(ann_top).as_posix()
    objects, props = read_objects(geojson_path, label)
    size = read_pixel_size(image_path)
    if not size.um:
        size = collection_pixel_size(props, geojson_path, notes)
    found = find_nuclei(objects, image.shape, geojson_path, image_path.name, classes)
    notes += found_notes(found, geojson_path, image.shape, image_path.name, size)
    return ImportedImage(image_id_of(image_top, image_path), image_path, image, _masks(found.crops, image.shape),
                         size, group_of(image_top, image_path), notes)


def read_geojson(root: str | os.PathLike, options: ImportOptions = ImportOptions()) -> Iterator[ImportedImage]:
    """The images under ``root`` with their GeoJSON nuclei, one :class:`ImportedImage` at a time
    (``options.classes`` chooses the nuclei's classes; module doc)."""
    root = Path(root)
    image_top, pairs = geojson_pairs(root)
    ann_top = _annotation_dir(root) or root
    check_classes(options.classes, pairs, root, ann_top)
    for image_path, geojson_path in pairs:
        yield read_one(image_path, geojson_path, image_top, ann_top, options.classes)


# --------------------------------------------------------------------------- writing
def mask_feature(mask: np.ndarray, name: str) -> dict:
    """A QuPath detection (class :data:`EXPORT_CLASS`) outlining ``mask`` (holes filled) exactly."""
    from shapely.geometry import mapping

    from helpers.image_codec import mask_box
    from helpers.polygons import outline

    y0, x0, y1, x1 = mask_box(mask)
    geom = outline(mask[y0:y1, x0:x1], (y0, x0), tolerance=0)
    return {"type": "Feature", "geometry": mapping(geom),
            "properties": {"objectType": "detection", "name": name, "classification": dict(EXPORT_CLASS)}}


def export_geojson(dataset_root: str | os.PathLike, out: str | os.PathLike,
                   pixel_size_um: float | None = None) -> Path:
    """The training images of a course-layout dataset as ``out/<ID>.png`` beside ``out/<ID>.geojson``
    (one detection per mask file, named after it); a known ``pixel_size_um`` goes into the
    collection's ``properties``. Each file is written whole (a temp file, renamed)."""
    from helpers.atomic import atomic_write_bytes, atomic_write_text
    from helpers.data.dataset import mask_batches, open_dataset, read_image
    from helpers.image_codec import encode_png

    ds, out = open_dataset(dataset_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for item in ds.train:
        image = read_image(item.image_path)
        features = [mask_feature(m, p.stem) for paths, masks in mask_batches(item, image.shape)
                    for p, m in zip(paths, masks)]
        collection = {"type": "FeatureCollection", "features": features}
        if pixel_size_um:
            collection["properties"] = {"pixel_size_um": float(pixel_size_um), "coordinates": "px"}
        atomic_write_bytes(out / f"{item.image_id}.png", encode_png(image))
        atomic_write_text(out / f"{item.image_id}.geojson", json.dumps(collection))
    return out


__all__ = ["GEOJSON_SUFFIXES", "ANNOTATION_DIRS", "UNCLASSIFIED", "QuPathObject", "holds_geojson", "geojson_pairs",
           "load_geojson", "features_of", "class_name", "read_objects", "class_counts", "check_classes",
           "find_nuclei", "rasterize_crop", "read_geojson", "export_geojson"]
