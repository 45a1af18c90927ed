"""How many micrometres one pixel of an image spans, read from what its file says.

The course images are TCGA tiles scanned at 40x, about 0.25 µm per pixel (:data:`COURSE_UM`).
A 20x image holds the same nuclei at half the pixels. :func:`read_pixel_size` reads the size
from the places the field writes it, in this order:

* OME-TIFF: ``PhysicalSizeX`` (and its unit) in the OME-XML;
* Aperio SVS: ``MPP = 0.2520`` in the ImageDescription;
* ImageJ TIFF: ``unit=micron`` in its description, with the resolution tags in pixels per µm;
* any TIFF: the resolution tags in pixels per centimetre or inch;
* PNG and JPEG: the pHYs / JFIF density (pixels per metre, centimetre or inch).

A size outside :data:`PLAUSIBLE_UM` is not a microscope's (72 or 96 dpi are screen defaults) and
is ignored: the file then says nothing. :func:`tiff_resolution` gives the tags to write one.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

COURSE_UM = 0.25  # the course's TCGA tiles: 40x, about 0.25 µm per pixel
PLAUSIBLE_UM = (0.02, 10.0)  # 0.02 µm: beyond light microscopy; 10 µm: a 1x overview
_UNIT_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0,
            "\u03bcm": 1.0, "nm": 1e-3, "in": 25400.0, "inch": 25400.0}
_SVS_MPP = re.compile(r"\bMPP\s*=\s*([0-9.]+)")


@dataclass(frozen=True)
class PixelSize:
    """``um`` per pixel (None: unknown) and where it was read (``"TIFF resolution tags"``, ...)."""
    um: float | None
    source: str = ""

    def describe(self) -> str:
        return f"{self.um:.4g} µm/px ({self.source})" if self.um else "unknown"


UNKNOWN = PixelSize(None, "")
COURSE = PixelSize(COURSE_UM, "the course data (TCGA, 40x)")  # the course's and demo data's, and older stages'


def plausible(um: float | None) -> bool:
    return um is not None and PLAUSIBLE_UM[0] <= um <= PLAUSIBLE_UM[1]


def _checked(um: float | None, source: str) -> PixelSize:
    return PixelSize(float(um), source) if plausible(um) else UNKNOWN


def read_pixel_size(path: str | os.PathLike) -> PixelSize:
    """The pixel size ``path``'s file records (module doc), or :data:`UNKNOWN`."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff", ".svs", ".ome"):
            return _from_tiff(path)
        return _from_density(path)
    except Exception:  # noqa: BLE001 - any reader's complaint about a header: the file says nothing
        return UNKNOWN


def _from_tiff(path: Path) -> PixelSize:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        if tif.ome_metadata:
            found = _from_ome(tif.ome_metadata)
            if found.um:
                return found
        description = page.description or ""
        mpp = _SVS_MPP.search(description)
        if mpp and "Aperio" in description:
            return _checked(float(mpp.group(1)), "Aperio MPP")
        tags = page.tags
        if "XResolution" not in tags:
            return UNKNOWN
        num, den = tags["XResolution"].value
        per_unit = num / den
        if tif.imagej_metadata and str(tif.imagej_metadata.get("unit", "")).lower() in _UNIT_UM:
            unit = _UNIT_UM[str(tif.imagej_metadata["unit"]).lower()]
            return _checked(unit / per_unit, "ImageJ metadata")
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
        um_per_unit = {2: 25400.0, 3: 1e4}.get(int(unit))
        return _checked(um_per_unit / per_unit, "TIFF resolution tags") if um_per_unit else UNKNOWN


def _from_ome(xml: str) -> PixelSize:
    import xml.etree.ElementTree as ET

    for element in ET.fromstring(xml).iter():
        if element.tag.endswith("Pixels") and "PhysicalSizeX" in element.attrib:
            unit = _UNIT_UM.get(element.attrib.get("PhysicalSizeXUnit", "µm"), None)
            if unit is not None:
                return _checked(float(element.attrib["PhysicalSizeX"]) * unit, "OME-XML")
    return UNKNOWN


def _from_density(path: Path) -> PixelSize:
    from PIL import Image

    with Image.open(path) as im:
        dpi = im.info.get("dpi")
    if not dpi or not dpi[0]:
        return UNKNOWN
    return _checked(25400.0 / float(dpi[0]), f"{path.suffix.lstrip('.').upper()} pixel density")


def tiff_resolution(um: float | None) -> dict:
    """``tifffile.imwrite`` keywords that record ``um`` µm per pixel (pixels per centimetre), or {}."""
    return {"resolution": (1e4 / um,) * 2, "resolutionunit": "CENTIMETER"} if um else {}


__all__ = ["COURSE_UM", "COURSE", "PLAUSIBLE_UM", "PixelSize", "UNKNOWN", "plausible", "read_pixel_size", "tiff_resolution"]
