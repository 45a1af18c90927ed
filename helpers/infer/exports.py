"""Per-image exports of a prediction, for the tools pathologists and analysts open.

One image's :class:`~helpers.detections.Detections` become, in ``<out_dir>/``:

* ``<stem>.geojson``: a QuPath-ready FeatureCollection, one feature per nucleus: its outline as a
  Polygon (or MultiPolygon) in pixel coordinates, origin at the image's top-left corner, and as
  properties ``objectType: "detection"``, a ``classification`` and its ``measurements`` (QuPath
  0.4+'s *File > Import objects from file* reads it; ``id`` is the nucleus's label);
* ``<stem>.labels.tif``: the label image, uint16 (uint32 past 65,535 nuclei), 0 = background;
* ``<stem>.csv``: per-nucleus measurements (skimage's ``regionprops_table``): id, centroid (px),
  area (px2), perimeter (px), eccentricity, solidity, mean haematoxylin optical density, score;
  each column's name ends with its unit, and a known pixel size adds the same in µm (um, um2)
  and is written into the TIFF's resolution tags and the GeoJSON's ``properties``;
* ``<stem>.coco.json``: COCO results entries (RLE masks), as notebook 05's answer holds them;
* ``<stem>.overlay.png``: the image with the masks coloured by score.

Everything derives from one label image, made by a
:class:`~helpers.infer.segmentation.SegmentationRule` (the score threshold notebook 04 chose on
validation; where masks overlap the higher score owns the pixel; each nucleus one connected
region), so the GeoJSON, the label image and the CSV hold the same nuclei under the same ids:
id k is the k-th best-scoring nucleus kept.
Each file is written to a temporary name and renamed: a killed run leaves no half-written file.
Notebook 06 writes them for your own images (``exports/<run>/``), notebook 05 for the test images
beside ``answer.zip`` (``submission/exports/``, :func:`export_answer`).
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers.errors import InvalidRequest
from helpers.atomic import atomic_path, atomic_write_bytes, atomic_write_text, remove_stale_partials
from helpers.coco_format import result_entries
from helpers.detections import Detections
from helpers.pixel_size import tiff_resolution
from helpers.polygons import POLYGON_TOLERANCE, outline
from helpers.infer.segmentation import DEFAULT_RULE, SegmentationRule
from helpers.stain import hed_optical_density

CLASS_NAME = "Nucleus"
CLASS_COLOR = [255, 0, 0]
# every column names its unit: px (pixels), px2 (square pixels), um and um2 (micrometres, only where
# the pixel size is known); eccentricity, solidity, optical density and score have none
MEASUREMENTS = ("area_px2", "perimeter_px", "eccentricity", "solidity", "haematoxylin_od_mean", "score")
CSV_COLUMNS = ("id", "centroid_x_px", "centroid_y_px", *MEASUREMENTS)
MICRON_MEASUREMENTS = ("area_um2", "perimeter_um")  # with a pixel size: QuPath measurements too
MICRON_COLUMNS = ("centroid_x_um", "centroid_y_um", *MICRON_MEASUREMENTS)
SUFFIXES = {"geojson": ".geojson", "labels": ".labels.tif", "csv": ".csv", "coco": ".coco.json",
            "overlay": ".overlay.png"}


@dataclass
class ExportedImage:
    """The files written for one image and how many nuclei they hold."""

    image: str
    nuclei: int
    files: dict[str, Path]


def columns(pixel_size_um: float | None = None) -> tuple[str, ...]:
    """The CSV's columns: :data:`CSV_COLUMNS`, and :data:`MICRON_COLUMNS` when the pixel size is known."""
    return CSV_COLUMNS + (MICRON_COLUMNS if pixel_size_um else ())


def measurements(labels: np.ndarray, image: np.ndarray, scores: np.ndarray,
                 pixel_size_um: float | None = None) -> dict[str, np.ndarray]:
    """:func:`columns` of every nucleus of ``labels`` (skimage's ``regionprops_table``; the
    haematoxylin optical density by the stain matrix of ``helpers.stain``); in micrometres too
    when ``pixel_size_um`` (µm per pixel) is known."""
    from skimage.measure import regionprops_table

    if not labels.any():
        return {c: np.zeros(0) for c in columns(pixel_size_um)}
    haematoxylin = hed_optical_density(image[..., :3])[..., 0]
    t = regionprops_table(labels, intensity_image=haematoxylin,
                          properties=("label", "centroid", "area", "perimeter", "eccentricity",
                                      "solidity", "intensity_mean"))
    # centroids in QuPath's pixel coordinates: pixel (r, c) spans [c, c + 1] x [r, r + 1]
    table = {"id": t["label"], "centroid_x_px": t["centroid-1"] + 0.5, "centroid_y_px": t["centroid-0"] + 0.5,
             "area_px2": t["area"], "perimeter_px": t["perimeter"], "eccentricity": t["eccentricity"],
             "solidity": t["solidity"], "haematoxylin_od_mean": t["intensity_mean"],
             "score": scores[t["label"] - 1]}
    if pixel_size_um:
        table.update({"centroid_x_um": table["centroid_x_px"] * pixel_size_um,
                      "centroid_y_um": table["centroid_y_px"] * pixel_size_um,
                      "area_um2": table["area_px2"] * pixel_size_um ** 2,
                      "perimeter_um": table["perimeter_px"] * pixel_size_um})
    return table


def geojson(labels: np.ndarray, table: dict[str, np.ndarray], tolerance: float = POLYGON_TOLERANCE,
            pixel_size_um: float | None = None) -> dict:
    """The FeatureCollection of the nuclei of ``labels`` with their ``table`` rows
    (:func:`measurements`) as QuPath measurements, each named with its unit; a known pixel size
    is kept in the collection's ``properties`` (coordinates stay in pixels, as QuPath reads them)."""
    from scipy import ndimage
    from shapely.geometry import mapping

    features = []
    measured = MEASUREMENTS + tuple(c for c in MICRON_MEASUREMENTS if c in table)
    boxes = ndimage.find_objects(labels)
    for row, k in enumerate(table["id"]):
        sl = boxes[int(k) - 1]
        geom = outline(labels[sl] == k, (sl[0].start, sl[1].start), tolerance)
        features.append({
            "type": "Feature",
            "id": f"nucleus-{int(k)}",
            "geometry": mapping(geom),
            "properties": {
                "objectType": "detection",
                "name": f"nucleus {int(k)}",
                "classification": {"name": CLASS_NAME, "color": CLASS_COLOR},
                "measurements": {m: float(table[m][row]) for m in measured},
            },
        })
    collection = {"type": "FeatureCollection", "features": features}
    if pixel_size_um:
        collection["properties"] = {"pixel_size_um": float(pixel_size_um), "coordinates": "px"}
    return collection


def _csv_text(table: dict[str, np.ndarray]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = [c for c in (*CSV_COLUMNS, *MICRON_COLUMNS) if c in table]
    w.writerow(names)
    for row in range(len(table["id"])):
        w.writerow([int(table["id"][row])] + [f"{float(table[c][row]):.6g}" for c in names[1:]])
    return buf.getvalue()


def _write_tiff(path: Path, labels: np.ndarray, pixel_size_um: float | None = None) -> None:
    """The label image; with a known pixel size its resolution tags say it (pixels per cm)."""
    import tifffile

    with atomic_path(path, need=labels.nbytes) as tmp:
        tifffile.imwrite(tmp, labels, compression="zlib", **tiff_resolution(pixel_size_um))


def _write_overlay(path: Path, image: np.ndarray, dets: Detections, title: str) -> None:
    from helpers.infer.overlays import figure_png, prediction_overlay

    atomic_write_bytes(path, figure_png(prediction_overlay(image, dets, title=title, min_score=0.0)))


def export_paths(out_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Where :func:`export_image` writes each file of image ``stem``."""
    return {k: Path(out_dir) / f"{stem}{s}" for k, s in SUFFIXES.items()}


def export_image(out_dir: str | os.PathLike, stem: str, image: np.ndarray, dets: Detections,
                 rule: SegmentationRule = DEFAULT_RULE, image_id=None,
                 tolerance: float = POLYGON_TOLERANCE, overlay: bool = True,
                 pixel_size_um: float | None = None) -> ExportedImage:
    """Write every export of one image (module doc) to ``out_dir``; ``image_id`` is the COCO
    results' image id (default ``stem``). The COCO entries keep every detection as the answer
    does; the other files the nuclei ``rule`` keeps. ``pixel_size_um``: µm per pixel, where known
    (the CSV gains µm columns, the TIFF and GeoJSON carry it)."""
    image = np.asarray(image)
    if tuple(image.shape[:2]) != tuple(dets.size):
        raise ValueError(f"{stem}: the image is {image.shape[:2]} but its predictions are for {dets.size}")
    paths = export_paths(out_dir, stem)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    labels, scores = rule.label_image(dets)
    table = measurements(labels, image, scores, pixel_size_um)
    atomic_write_text(paths["geojson"], json.dumps(geojson(labels, table, tolerance, pixel_size_um)))
    _write_tiff(paths["labels"], labels, pixel_size_um)
    atomic_write_text(paths["csv"], _csv_text(table))
    atomic_write_text(paths["coco"], json.dumps(result_entries(stem if image_id is None else image_id, dets)))
    if overlay:
        _write_overlay(paths["overlay"], image, dets.filter(rule.threshold(dets)), f"{stem}: {len(table['id'])} nuclei")
    else:
        paths.pop("overlay")
    return ExportedImage(stem, int(len(table["id"])), paths)



ANSWER_EXPORTS = "exports"  # notebook 05: <workspace>/submission/exports/, beside answer.zip


def export_answer(workspace, predictions, test_images, images=None, rule: SegmentationRule = DEFAULT_RULE,
                  progress: bool = True, pixel_size_um: float | None = None) -> list[ExportedImage]:
    """Notebook 05: :func:`export_image` for every test image of the answer, into the workspace's
    ``submission/exports/``; each COCO file uses the image's submission id, as ``answer.json`` does.
    ``images``: ``{image_id: uint8 RGB}`` already loaded (else read from the shards)."""
    from helpers.infer.predict import load_image
    from helpers.progress import tqdm
    from helpers.workspace import as_workspace

    ws = as_workspace(workspace)
    out_dir = ws.submission / ANSWER_EXPORTS
    if out_dir.is_dir():
        remove_stale_partials(out_dir, quiet=True)  # a killed run's temp files
    exported = []
    for t in tqdm(test_images, desc="exports", unit="image", disable=not progress):
        if t.image_id not in predictions:
            raise InvalidRequest(f"no predictions for test image {t.image_id!r}: predict it first "
                                 "(notebook 05's cell above)")
        image = images[t.image_id] if images is not None else load_image(ws, t.image_id)
        exported.append(export_image(out_dir, t.image_id, image, predictions[t.image_id],
                                     rule, image_id=t.coco_id, pixel_size_um=pixel_size_um))
    print(f"{len(exported)} images, {sum(e.nuclei for e in exported)} nuclei ({rule.describe()}) "
          f"exported to {out_dir} (GeoJSON for QuPath, label TIFF, CSV, COCO JSON, overlay)")
    return exported
