"""The course submission: ``answer.json`` (COCO results) and ``answer.zip``.

``answer.json`` is a list of ``{image_id, category_id: 1, segmentation: {size: [h, w],
counts: str}, bbox: [x, y, w, h], score}``; ``image_id`` is the COCO id that
``test_img_ids.json`` gives the image's file name; ``bbox`` comes from the RLE.

* ``build_answer(predictions, test_images, resolve=False)`` makes the entries
  (optionally giving each pixel to the highest-scoring mask: ``resolve_overlaps``);
  detections with a NaN score are left out with a ``SubmissionNote`` warning saying
  how many, per image. Every test image must have been predicted; one where the model
  found nothing has no entry (COCO results may leave an image out), with a
  ``SubmissionNote``; if it found nothing anywhere, one placeholder entry (score 0, one
  pixel) keeps the file loadable by pycocotools.
* ``check_answer`` lists every problem; ``validate_answer`` raises ``SubmissionError``
  naming them (sizes match, scores in [0, 1], category 1, known image_id, valid RLE, not
  empty, and pycocotools' ``COCO.loadRes`` accepts the file).
  numpy scalars (``numpy.float32`` scores, ``numpy.int64`` ids) are accepted and
  written as plain JSON numbers.
* ``write_answer`` validates, then writes ``answer.json`` and ``answer.zip`` (``answer.json``
  at the zip root) as a pair: both change or neither does, also across a kill. An existing
  answer is never replaced unless ``overwrite=True``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from helpers.atomic import PARTIAL_MARKER, atomic_write_text, folder_error
from helpers.coco_format import CATEGORIES, CATEGORY_ID, coco_from_dataset, load_results, result_entries
from helpers.detections import Detections
from helpers.rle import RLEError, check_rle, decode_crop, encode_crops, rle_bbox
from helpers.data.dataset import TEST_IDS_FILE
from helpers.errors import UserError

ANSWER_JSON = "answer.json"
ANSWER_ZIP = "answer.zip"
_MAX_LISTED = 12


class SubmissionError(UserError, ValueError):
    """The answer (or its inputs) would not be accepted; the message lists the problems."""


class AnswerExists(UserError, FileExistsError):
    """Another answer is already there: the message says what differs and how to replace it."""


class SubmissionNote(UserWarning):
    """Something was left out of the answer (e.g. detections with a NaN score)."""


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays as plain JSON values (``json.dumps(..., default=_json_default)``)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def plain_entries(entries: Any) -> Any:
    """``entries`` with numpy scalars/arrays turned into plain Python numbers and lists."""
    return json.loads(json.dumps(entries, default=_json_default))


@dataclass(frozen=True)
class TestImage:
    __test__ = False  # not a pytest test class
    file_name: str   # "TCGA-....png"
    image_id: str    # file stem, the id used by the dataset and the prediction cache
    coco_id: int     # the id answer.json must use
    height: int
    width: int


def load_test_images(source) -> list[TestImage]:
    """Test images from ``test_img_ids.json`` (its path, or the dataset root that holds
    it), a ``helpers.data.dataset.Dataset``, or a list of ``{file_name, id, height, width}``."""
    if hasattr(source, "test") and hasattr(source, "root"):  # helpers.data.dataset.Dataset
        out = []
        for it in source.test:
            if it.height is None or it.width is None:
                from helpers.data.dataset import image_size

                h, w = image_size(it.image_path)
            else:
                h, w = it.height, it.width
            out.append(TestImage(it.file_name, it.image_id, int(it.coco_id), int(h), int(w)))
        return out
    where = "the given list"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            path = path / TEST_IDS_FILE
        where = str(path)
        if not path.is_file():
            raise SubmissionError(f"{path} not found; point at the dataset's {TEST_IDS_FILE}")
        try:
            source = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM (Windows editors) is fine
        except ValueError as e:
            raise SubmissionError(f"{path} is not valid JSON ({e}); re-download it") from None
    entries = source["images"] if isinstance(source, Mapping) else source
    out = []
    try:
        for e in entries:
            name = str(e["file_name"])
            out.append(TestImage(name, Path(name).stem, int(e["id"]), int(e["height"]), int(e["width"])))
    except (KeyError, TypeError, ValueError) as e:
        raise SubmissionError(f"{where}: each image needs file_name, id, height and width ({e!r})") from None
    ids = [t.coco_id for t in out]
    if len(set(ids)) != len(ids):
        raise SubmissionError(f"{where}: duplicate image ids")
    return out


def _by_key(test_images: Sequence[TestImage]) -> dict[str, TestImage]:
    out = {}
    for t in test_images:
        out[t.image_id] = t
        out[t.file_name] = t
    return out


def resolve_overlaps(dets: Detections, min_area: int = 1) -> Detections:
    """Each pixel goes to the highest-scoring mask covering it; masks left with fewer than
    ``min_area`` pixels are dropped. Sorted by score."""
    dets = dets.sorted()
    if not len(dets):
        return dets
    h, w = dets.size
    taken = np.zeros((h, w), bool)
    crops, offsets, keep = [], [], []
    for i, (rle, box) in enumerate(zip(dets.rles, dets.boxes)):
        x, y, bw, bh = (int(v) for v in box)
        win = (y, x, y + bh, x + bw)
        m = decode_crop(rle, win)
        free = m & ~taken[y:y + bh, x:x + bw]
        taken[y:y + bh, x:x + bw] |= m
        if free.sum() >= min_area:
            crops.append(free)
            offsets.append((y, x))
            keep.append(i)
    return Detections(encode_crops(crops, offsets, (h, w)), dets.scores[keep], (h, w),
                      mask_scores=None if dets.mask_scores is None else dets.mask_scores[keep])


def build_answer(predictions: Mapping[str, Detections], test_images, resolve: bool = False,
                 min_score: float = 0.0, max_dets: int | None = None,
                 allow_missing: bool = False) -> list[dict]:
    """answer.json entries for ``predictions`` ({image stem or file name: Detections}).

    A prediction for an image not in test_img_ids.json, or a test image without
    prediction (unless ``allow_missing``), raises SubmissionError.
    """
    images = test_images if isinstance(test_images, list) and all(isinstance(t, TestImage) for t in test_images) \
        else load_test_images(test_images)
    index = _by_key(images)
    unknown = sorted(k for k in predictions if k not in index)
    if unknown:
        raise SubmissionError(
            f"test image(s) {unknown[:_MAX_LISTED]} are not in {TEST_IDS_FILE}, so they have no image_id; "
            f"add them to {TEST_IDS_FILE} (file name + COCO id) or leave them out")
    seen: dict[str, str] = {}
    for k in predictions:
        t = index[k]
        if t.file_name in seen:
            raise SubmissionError(f"{t.file_name} is predicted twice (as {seen[t.file_name]!r} and {k!r})")
        seen[t.file_name] = k
    missing = [t.file_name for t in images if t.file_name not in seen]
    if missing and not allow_missing:
        raise SubmissionError(f"no prediction for test image(s) {missing[:_MAX_LISTED]}; predict them "
                              "first (or pass allow_missing=True)")
    entries: list[dict] = []
    empty: list[str] = []  # predicted test images left without a detection
    for t in images:
        if t.file_name not in seen:
            continue
        dets = predictions[seen[t.file_name]]
        if tuple(dets.size) != (t.height, t.width):
            raise SubmissionError(f"predictions for {t.file_name} are {dets.size[0]}x{dets.size[1]} but "
                                  f"{TEST_IDS_FILE} says {t.height}x{t.width}; predict at full resolution")
        nan = int(np.isnan(np.asarray(dets.scores, np.float64)).sum())
        if nan:
            warnings.warn(f"{nan} of the {len(dets)} detections of {t.file_name} have a NaN score and are left "
                          "out of the answer: the model or the rescoring produced it; check this image's "
                          "predictions (predict it again) if that is unexpected", SubmissionNote, stacklevel=2)
        dets = dets.filter(min_score=min_score, min_area=1)
        if resolve:
            dets = resolve_overlaps(dets)
        dets = dets.top(max_dets)
        entries.extend(result_entries(t.coco_id, dets))
        if not len(dets):
            empty.append(t.file_name)
    if empty:
        warnings.warn(nothing_found_note(empty, len(seen), min_score), SubmissionNote, stacklevel=2)
    if not entries and seen:
        entries = [placeholder_entry(next(t for t in images if t.file_name in seen))]
    return entries


def nothing_found_note(empty: Sequence[str], n_images: int, min_score: float = 0.0) -> str:
    """The warning for test images without a single detection (each scores 0 there)."""
    which = "any" if len(empty) == n_images else f"{len(empty)} of the {n_images}"
    shown = ", ".join(empty[:_MAX_LISTED]) + (", ..." if len(empty) > _MAX_LISTED else "")
    cut = f" at min_score {min_score}" if min_score > 0 else ""
    note = (f"the model found no nucleus{cut} in {which} test image(s) ({shown}): the answer has no entry "
            "for them (a COCO results file may leave an image out) and they score 0.")
    if len(empty) == n_images:
        note += (" answer.json holds one placeholder entry instead (score 0, one pixel), because "
                 "pycocotools cannot load an empty results file.")
    return note + (" An undertrained model finds nothing: train longer (more steps in notebooks 02/03), "
                   "or lower score_threshold in notebooks 04 and 05.")


def placeholder_entry(image: TestImage) -> dict:
    """One pixel at the corner with score 0: what an answer with no detection at all holds, so that
    pycocotools' ``loadRes`` (which indexes the first entry) can read it; it scores 0."""
    mask = np.zeros((1, image.height, image.width), bool)
    mask[0, 0, 0] = True
    return result_entries(image.coco_id, Detections.from_masks(mask, np.zeros(1)))[0]


# ---------------------------------------------------------------------------- validation
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def check_answer(entries: Any, test_images, check_bbox: bool = True) -> list[str]:
    """Every problem of an answer, as messages (empty list = valid). A test image without an entry
    is not one: the model found nothing there (COCO results may leave an image out)."""
    images = test_images if isinstance(test_images, list) and all(isinstance(t, TestImage) for t in test_images) \
        else load_test_images(test_images)
    by_id = {t.coco_id: t for t in images}
    if not isinstance(entries, list):
        return [f"answer must be a JSON list of result entries, got {type(entries).__name__}"]
    problems: list[str] = []
    required = ("image_id", "category_id", "segmentation", "bbox", "score")
    for n, e in enumerate(entries):
        where = f"entry {n}"
        if not isinstance(e, Mapping):
            problems.append(f"{where}: must be an object, got {type(e).__name__}")
            continue
        lacking = [k for k in required if k not in e]
        if lacking:
            problems.append(f"{where}: missing field(s) {lacking}")
            continue
        image_id = e["image_id"]
        if not isinstance(image_id, (int, np.integer)) or isinstance(image_id, bool):
            problems.append(f"{where}: image_id must be an integer, got {image_id!r}")
            continue
        t = by_id.get(int(image_id))
        if t is None:
            problems.append(f"{where}: unknown image_id {image_id} (not in {TEST_IDS_FILE})")
            continue
        where = f"entry {n} ({t.file_name})"
        if e["category_id"] != CATEGORY_ID or isinstance(e["category_id"], bool):
            problems.append(f"{where}: category_id must be {CATEGORY_ID}, got {e['category_id']!r}")
        score = e["score"]
        if not _is_number(score) or not math.isfinite(float(score)) or not 0.0 <= float(score) <= 1.0:
            problems.append(f"{where}: score must be a number in [0, 1], got {score!r}")
        seg = e["segmentation"]
        try:
            check_rle(seg, (t.height, t.width))
        except RLEError as err:
            problems.append(f"{where}: {err}")
            continue
        box = e["bbox"]
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box) \
                or not all(math.isfinite(float(v)) for v in box) or box[2] < 0 or box[3] < 0:
            problems.append(f"{where}: bbox must be [x, y, w, h] with finite numbers, w, h >= 0; got {box!r}")
        elif check_bbox:
            ref = rle_bbox([seg])[0]
            if np.abs(np.asarray(box, float) - ref).max() > 1.0:
                problems.append(f"{where}: bbox {list(box)} does not match its mask's box {ref.tolist()}")
    if not entries:
        problems.append("the answer is empty: pycocotools cannot load an empty results file (it reads the "
                        "first entry); build it with build_answer, which writes a placeholder when the model "
                        "found nothing")
    if not problems:
        gt = coco_from_dataset({"images": [{"id": t.coco_id, "file_name": t.file_name, "height": t.height,
                                            "width": t.width} for t in images],
                                "annotations": [], "categories": [dict(c) for c in CATEGORIES]})
        try:
            load_results(gt, plain_entries(entries))
        except Exception as err:  # pycocotools raises AssertionError, KeyError, ...
            problems.append(f"pycocotools COCO.loadRes rejects the answer: {type(err).__name__}: {err}")
    return problems


def validate_answer(entries: Any, test_images) -> dict:
    """Raise SubmissionError listing the problems, else return a summary
    ``{"entries": n, "images": {file_name: count}}`` (0 for an image without an entry)."""
    images = test_images if isinstance(test_images, list) and all(isinstance(t, TestImage) for t in test_images) \
        else load_test_images(test_images)
    problems = check_answer(entries, images)
    if problems:
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise SubmissionError(f"invalid answer ({len(problems)} problem(s)):\n  "
                              + "\n  ".join(problems[:_MAX_LISTED]) + more)
    counts = {t.file_name: 0 for t in images}
    name = {t.coco_id: t.file_name for t in images}
    for e in entries:
        counts[name[int(e["image_id"])]] += 1
    return {"entries": len(entries), "images": counts}


# ---------------------------------------------------------------------------- files
@dataclass(frozen=True)
class SubmissionFiles:
    json_path: Path
    zip_path: Path
    summary: dict


PENDING = ".answer.pending"  # the new pair, written in full before it replaces the old one
READY = "ready"               # in PENDING: both files are complete and checked


def write_answer(entries: list[dict], out_dir: str | os.PathLike, test_images=None,
                 overwrite: bool = False) -> SubmissionFiles:
    """Validate (if ``test_images`` is given), then write ``answer.json`` and its zip ``answer.zip``.

    The pair changes together or not at all: both are written into ``.answer.pending/`` and read
    back, marked ready, then moved into place; a run killed during the moves is finished by the
    next call, and one killed before is discarded by it. An existing answer is never replaced
    unless ``overwrite=True`` (FileExistsError); the same answer again is not an error.
    """
    out_dir = Path(out_dir)
    json_path, zip_path = out_dir / ANSWER_JSON, out_dir / ANSWER_ZIP
    _finish_pending(out_dir)
    summary = validate_answer(entries, test_images) if test_images is not None else \
        {"entries": len(entries), "images": None}
    entries = plain_entries(entries)  # numpy scalars -> JSON numbers
    existing = [p for p in (json_path, zip_path) if p.exists()]
    if existing and _holds(out_dir, entries):
        return SubmissionFiles(json_path, zip_path, summary)
    if existing and not overwrite:
        raise AnswerExists(f"{' and '.join(map(str, existing))} already hold(s) another answer "
                           f"({answer_difference(_readable_answer(existing[0]), entries)}). To replace it, set "
                           "overwrite = True in the parameters cell (overwrite=True) and run again; or "
                           "write to another folder.")
    pending = out_dir / PENDING
    try:
        pending.mkdir(parents=True)
        (pending / ANSWER_JSON).write_text(json.dumps(entries) + "\n", encoding="utf-8")
        with zipfile.ZipFile(pending / ANSWER_ZIP, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(pending / ANSWER_JSON, arcname=ANSWER_JSON)
        for name in (ANSWER_JSON, ANSWER_ZIP):  # durable before they are marked ready
            with open(pending / name, "rb+") as f:
                os.fsync(f.fileno())
        if read_answer(pending / ANSWER_ZIP) != entries:  # the zip as the grader will read it
            raise SubmissionError(f"{zip_path} does not read back as the answer just written (is the disk or "
                                  "Drive full?); free some space and run this cell again")
        atomic_write_text(pending / READY, "")
    except BaseException as e:
        shutil.rmtree(pending, ignore_errors=True)
        problem = folder_error(e, zip_path)  # a full or read-only folder, named
        if problem is not None:
            raise problem from e
        raise
    _finish_pending(out_dir)
    return SubmissionFiles(json_path, zip_path, summary)


def _finish_pending(out_dir: Path) -> None:
    """Move a ready pending pair into place (what a killed write left to do), or discard an
    unfinished one. Also removes the temp files of older versions' interrupted writes."""
    pending = out_dir / PENDING
    if pending.is_dir():
        if (pending / READY).is_file():
            for name in (ANSWER_JSON, ANSWER_ZIP):
                if (pending / name).is_file():
                    os.replace(pending / name, out_dir / name)
        shutil.rmtree(pending, ignore_errors=True)
    if out_dir.is_dir():
        for p in out_dir.glob(f".{ANSWER_ZIP}.*{PARTIAL_MARKER}"):
            p.unlink(missing_ok=True)


def _readable_answer(path: Path) -> list | None:
    """The entries of an existing answer file, or None when it cannot be read."""
    try:
        entries = read_answer(path)
    except (OSError, ValueError, zipfile.BadZipFile, SubmissionError):
        return None
    fields = ("image_id", "score", "segmentation")
    ok = isinstance(entries, list) and all(isinstance(e, dict) and all(f in e for f in fields) for e in entries)
    return entries if ok else None


def answer_difference(old: list | None, new: list) -> str:
    """What differs between an existing answer and a new one, in a few words: detections per
    image, and how many of the new masks the old one holds unchanged."""
    if old is None:
        return "the existing one cannot be read"

    def key(e):
        return e["image_id"], round(float(e["score"]), 6), json.dumps(e["segmentation"], sort_keys=True)

    same = sum((Counter(map(key, old)) & Counter(map(key, new))).values())
    was, now = (Counter(e["image_id"] for e in entries) for entries in (old, new))
    changed = [i for i in was.keys() | now.keys() if was[i] != now[i]]
    words = f"{len(old)} detections there, {len(new)} now, {same} of them unchanged"
    return words + (f"; the count differs on {len(changed)} image(s)" if changed else "")


def _holds(out_dir: Path, entries: list) -> bool:
    """True if ``answer.json`` and ``answer.zip`` both hold exactly ``entries``."""
    try:
        return all(read_answer(out_dir / n) == entries for n in (ANSWER_JSON, ANSWER_ZIP))
    except (OSError, ValueError, zipfile.BadZipFile, SubmissionError):
        return False


def read_answer(path: str | os.PathLike) -> list:
    """The entries of ``answer.json`` or of the ``answer.json`` inside ``answer.zip``."""
    path = Path(path)
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            if ANSWER_JSON not in zf.namelist():
                raise SubmissionError(f"{path} has no {ANSWER_JSON} at its root (has {zf.namelist()[:5]})")
            return json.loads(zf.read(ANSWER_JSON))
    return json.loads(path.read_text(encoding="utf-8"))
