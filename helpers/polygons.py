"""Outlines and pixels: a nucleus's mask as a polygon, and a polygon back as a mask.

Coordinates are in pixels, x to the right and y down, with the origin at the image's top-left
corner: pixel (row r, column c) is the square [c, c+1] x [r, r+1], as QuPath and COCO have it.

* :func:`outline` draws the polygon along the outer edges of a mask's pixels;
* :func:`rasterize` takes every pixel whose centre lies inside a polygon (holes are left out).

A mask drawn with ``outline(mask, tolerance=0)`` rasterises back to the same pixels (holes
filled): the exports and the annotation readers meet here.
"""
from __future__ import annotations

import numpy as np

# Outlines are simplified (Douglas-Peucker, topology kept) within this many pixels: QuPath
# draws and measures them without the staircase of every pixel edge.
POLYGON_TOLERANCE = 0.5


def outline(mask: np.ndarray, offset=(0, 0), tolerance: float = POLYGON_TOLERANCE):
    """A valid shapely Polygon or MultiPolygon around a bool mask's pixels (outer contours only,
    holes filled), in pixel coordinates shifted by ``offset`` (y, x), simplified within
    ``tolerance`` px. The contour through the boundary pixels' centres (OpenCV) is widened by
    half a pixel with mitred corners, so it follows the pixels' outer edges."""
    import cv2
    import shapely
    from shapely.geometry import LineString, Point, Polygon

    contours, _ = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    parts = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float64) + 0.5 + np.array([offset[1], offset[0]])
        shape = Point(pts[0]) if len(pts) == 1 else LineString(pts) if len(pts) < 4 else Polygon(pts)
        if not shape.is_valid:
            shape = shapely.make_valid(shape)
        body = shape.buffer(0.5, cap_style="square", join_style="mitre", mitre_limit=2.0)
        parts.append(body.union(LineString(np.vstack([pts, pts[:1]])).buffer(
            0.5, cap_style="square", join_style="mitre", mitre_limit=2.0)) if len(pts) > 1 else body)
    geom = shapely.union_all(parts) if parts else Polygon()
    geom = geom.simplify(tolerance, preserve_topology=True)
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    if geom.geom_type == "GeometryCollection":  # keep the areas of a repaired geometry
        geom = shapely.union_all([g for g in geom.geoms if g.area > 0])
    if geom.geom_type == "Polygon":
        return Polygon(geom.exterior)  # outer contour only
    return shapely.MultiPolygon([Polygon(g.exterior) for g in geom.geoms])


def rasterize(geom, shape) -> np.ndarray:
    """The bool mask, of ``shape`` (H, W), of the pixels whose centres lie inside the shapely
    (Multi)Polygon ``geom``, its holes left out; the parts outside the image are cut off."""
    from skimage.draw import polygon as fill

    mask = np.zeros(shape[:2], bool)
    for part in getattr(geom, "geoms", [geom]):
        if part.geom_type != "Polygon" or part.is_empty:
            continue
        for ring, value in [(part.exterior, True)] + [(hole, False) for hole in part.interiors]:
            xy = np.asarray(ring.coords)
            rr, cc = fill(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape[:2])
            mask[rr, cc] = value
    return mask


def full_mask(crop: np.ndarray, corner, shape) -> np.ndarray:
    """A bool mask of ``shape`` (H, W) holding ``crop`` with its top-left pixel at ``corner`` (y0, x0)."""
    mask = np.zeros(shape[:2], bool)
    y0, x0 = corner
    mask[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return mask


__all__ = ["POLYGON_TOLERANCE", "outline", "rasterize", "full_mask"]
