"""Organ of a TCGA image, from the tissue-source-site (TSS) code in its id.

A TCGA barcode looks like ``TCGA-G9-6356-01Z-00-DX1``; the second field (``G9``)
is the tissue source site. Each TSS code belongs to one TCGA study, and the
study names the organ. This module is the ONLY place that maps codes to organs.

Source: GDC, "TCGA Code Tables" -> "Tissue Source Site Codes"
(https://gdc.cancer.gov/resources-tcga-users/tcga-code-tables/tissue-source-site-codes),
columns TSS Code / Source Site / Study Name. The table below copies the rows for
the codes that occur in the course dataset (the MoNuSeg / Kumar et al. images),
with the study abbreviation, and the organ the study is about. The source-site
names of all 18 codes were cross-checked against a public copy of the TSS code
list (site names only); the study of 18 and 21 (LUSC) against a copy that
lists studies too.

Where MoNuSeg disagrees: Kumar et al. (IEEE TMI 2017) and the MoNuSeg 2018
challenge label the images with codes 18, 21, 38, 49 and 50 as **liver**, but in
the TCGA TSS table those sites belong to the lung studies (LUSC: 18, 21; LUAD:
38, 49, 50). We follow TCGA and call them ``lung``. All other codes agree
(breast, kidney, prostate, bladder, colon, stomach).

An id whose code is not in the table (or that is not a TCGA barcode at all)
gets the organ ``"unknown"``: the workflow still runs (the image lands in the
``unknown`` shard group) and ``organ_of(..., strict=True)`` raises instead.
Add the code here, with its study, if your data has new sites.
"""
from __future__ import annotations

import re

from helpers.errors import UserError

UNKNOWN = "unknown"
SOURCE = ("GDC TCGA Code Tables: Tissue Source Site Codes "
          "(https://gdc.cancer.gov/resources-tcga-users/tcga-code-tables/tissue-source-site-codes)")

# code -> (source site, TCGA study, organ)
TSS_TABLE: dict[str, tuple[str, str, str]] = {
    "18": ("Princess Margaret Hospital (Canada)", "LUSC", "lung"),  # MoNuSeg: liver
    "21": ("Fox Chase Cancer Center", "LUSC", "lung"),  # MoNuSeg: liver
    "38": ("UNC", "LUAD", "lung"),  # MoNuSeg: liver
    "49": ("Johns Hopkins", "LUAD", "lung"),  # MoNuSeg: liver
    "50": ("University of Pittsburgh", "LUAD", "lung"),  # MoNuSeg: liver
    "A7": ("Christiana Healthcare", "BRCA", "breast"),
    "AR": ("Mayo", "BRCA", "breast"),
    "E2": ("Roswell Park", "BRCA", "breast"),
    "B0": ("University of Pittsburgh", "KIRC", "kidney"),
    "HE": ("Ontario Institute for Cancer Research (OICR)", "KIRP", "kidney"),
    "CH": ("Indivumed", "PRAD", "prostate"),
    "G9": ("Roswell Park", "PRAD", "prostate"),
    "DK": ("Memorial Sloan Kettering", "BLCA", "bladder"),
    "G2": ("MD Anderson", "BLCA", "bladder"),
    "AY": ("UNC", "COAD", "colon"),
    "NH": ("Candler", "COAD", "colon"),
    "KB": ("University Health Network, Toronto", "STAD", "stomach"),
    "RD": ("Peter MacCallum Cancer Center", "STAD", "stomach"),
}

ORGAN_BY_CODE: dict[str, str] = {code: organ for code, (_, _, organ) in TSS_TABLE.items()}
ORGANS: tuple[str, ...] = tuple(sorted(set(ORGAN_BY_CODE.values())))

_TCGA_ID = re.compile(r"^TCGA-([0-9A-Z]{2})-", re.IGNORECASE)


class UnknownOrganError(UserError, ValueError):
    """The id is not a TCGA barcode or its site code is not in TSS_TABLE."""


def tss_code(image_id: str) -> str | None:
    """The tissue-source-site code of a TCGA id (``"G9"``), or None if it is not one."""
    m = _TCGA_ID.match(str(image_id))
    return m.group(1).upper() if m else None


def organ_of(image_id: str, strict: bool = False) -> str:
    """The organ of an image id, e.g. ``organ_of("TCGA-G9-6356-01Z-00-DX1") == "prostate"``.

    A file name (``...DX1.png``) works too. Unknown code or non-TCGA id: ``"unknown"``,
    or ``UnknownOrganError`` when ``strict``.
    """
    code = tss_code(image_id)
    if code in ORGAN_BY_CODE:
        return ORGAN_BY_CODE[code]
    if strict:
        if code is None:
            raise UnknownOrganError(
                f"{image_id!r} is not a TCGA barcode (expected 'TCGA-<site>-...'); "
                "rename the image or use strict=False to call its organ 'unknown'")
        raise UnknownOrganError(
            f"tissue source site code {code!r} of {image_id!r} is not in helpers/data/organs.py TSS_TABLE; "
            f"look it up in the {SOURCE} and add it")
    return UNKNOWN
