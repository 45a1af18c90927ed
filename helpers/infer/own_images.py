"""Notebook 06: a trained stage on your own images, of any size, with the exports of each.

    report = predict_own_images(ws, "my_tiles/", run="my_tiles")   # a folder, a zip or a Drive id

* **Input**: PNG, JPEG or TIFF files in a folder (and its subfolders), a zip of them, or a Drive
  file id / share link of such a zip. RGBA and greyscale images are converted to RGB, 16-bit ones
  scaled to 8 bits, each with a note; an unreadable file, or one too large to hold in memory, is
  skipped and named in the summary at the end. None of these stops the run.
* **Any size**: images larger than the model's tile are predicted in overlapping tiles and
  stitched by the field's convention (``tiling.merge_tiles``): no nucleus counted twice or cut
  at a seam. One progress bar counts the tiles of every pass.
* **At the model's pixel size**: each image's µm per pixel is what its file records
  (``helpers.pixel_size.read_pixel_size``), else ``pixel_size_um``, else it is taken to be the
  model's (a note says so). An image more than 5% finer or coarser than the images the stage
  learnt from is resized to their pixel size before prediction (``tiling.rescale_image``), and its
  nuclei are mapped back onto its own pixels (``tiling.map_back``): every export is in the image's
  own pixels, its µm from the image's own pixel size.
* **As notebook 05 predicts**: the stage's input scale, the test-time augmentations, the
  rescoring and the exports' segmentation rule (score threshold, overlap cuts) notebook 04 chose
  (when it chose one) apply; ``min_score`` overrides the threshold.
* **Exports** per image in ``exports/<run>/`` (``helpers.infer.exports``): GeoJSON for QuPath,
  label image, measurements CSV, COCO results, overlay. ``exports/<run>/run.json`` records what
  made them (stage, checkpoint, augmentations, rescoring, the exports' rule, stain, tiling, the
  model's pixel size) and a fingerprint of each image. An image exported with the same settings
  from the same file is skipped, so a re-run after a disconnect goes on where it stopped; a
  changed image is exported again; other settings under the same run name are refused (choose
  another name). Every file is written to a temporary name and renamed, so a killed run leaves
  no half-written export.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from helpers.atomic import atomic_write_json, remove_stale_partials
from helpers.infer import exports, rescore
from helpers.infer.choice import export_rule, load_choice, load_ranker
from helpers.infer.fusion import merge_detections
from helpers.infer.tiling import map_back, rescale_image, scaled_size
from helpers.pixel_size import PixelSize, read_pixel_size
from helpers.workspace import as_workspace
from helpers.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# Past this many pixels an image (uint8 RGB, its tiles' predictions and its label image) would
# not fit the few GB a free Colab runtime has to spare: 64 Mpx is an 8,000 x 8,000 region.
MAX_PIXELS = 64_000_000
DEFAULT_TTA = ("hflip", "vflip", "zoom125")  # notebooks 04/05's default
RUN_RECORD = "run.json"  # exports/<run>/run.json: the settings of the run and each image's fingerprint
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
# An image within 5% of the model's pixel size is predicted as it is: nuclei differ in size far more
# than that from cell to cell, and training enlarged its crops by 1.0-1.25 (Profile.scale_jitter).
RESCALE_TOLERANCE = 0.05


# the exports' file format: 2 names each CSV column's and measurement's unit (area_px2...); a run
# folder exported in another format is another run (its files would mix the two)
EXPORTS_FORMAT = 2


class OwnImagesError(UserError, ValueError):
    """The source holds nothing to predict."""


@dataclass
class OwnImagesReport:
    """What a run did: images exported, skipped as done, skipped with a reason; notes."""

    out_dir: Path
    exported: list[exports.ExportedImage] = field(default_factory=list)
    done_before: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)  # {export stem: fingerprint of its file}

    def format(self) -> str:
        lines = [f"exports in {self.out_dir}: {len(self.exported)} image(s) exported, "
                 f"{sum(e.nuclei for e in self.exported)} nuclei; {len(self.done_before)} already done; "
                 f"{len(self.skipped)} skipped"]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- finding and reading
def default_source(workspace) -> Path:
    """The test images of the dataset notebook 01 put in the workspace (to try notebook 06 on)."""
    from helpers.data.dataset import TEST_IDS_FILE

    ws = as_workspace(workspace)
    for ids in sorted(ws.data.rglob(TEST_IDS_FILE)):  # the course layout's root holds it beside test/
        if (ids.parent / "test").is_dir():
            return ids.parent / "test"
    raise OwnImagesError(f"no test images in {ws.data} (your own annotations have none, or notebook 01 has not "
                         "run): set source to a folder of your images, a zip of them or a Drive file id")


def find_images(source: str | os.PathLike, workspace=None) -> list[Path]:
    """The image files of a folder (recursively), a zip (unpacked into the workspace's
    ``data/own/<zip name>``) or a Drive file id / link of a zip (downloaded there first);
    empty: :func:`default_source`."""
    from helpers.data import acquire

    if not str(source):
        source = default_source(workspace)
    src = Path(source).expanduser()
    if not src.exists() and acquire.is_drive_source(str(source)):
        src = _downloaded(str(source), as_workspace(workspace))
    if src.is_file() and src.suffix.lower() == ".zip":
        src = _unpacked(src, as_workspace(workspace))
    if src.is_file():
        files = [src]
    elif src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        raise OwnImagesError(f"{source}: no such folder, zip or file; give a folder of images, a zip of "
                             "them or a Drive file id")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise OwnImagesError(f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)}): "
                             f"{len(files)} other file(s)")
    return images


UNPACKED_FROM = ".unpacked-from"  # in data/own/<zip name>/: the fingerprint of the zip unpacked there


def _downloaded(source: str, ws) -> Path:
    """A Drive zip, downloaded into ``data/own/<file id>/``; nothing is left of a failed download."""
    from helpers.data import acquire

    folder = ws.data / "own" / (acquire.drive_file_id(source) or "drive")
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return acquire.download_zip(source, folder, quiet=True)
    except BaseException:
        if made and not any(folder.iterdir()):
            folder.rmdir()
        raise


def _unpacked(archive: Path, ws) -> Path:
    """``data/own/<zip name>/``, the zip unpacked there: again when the zip has changed since (a
    new zip of the same name), never half (unpacked beside it, then renamed)."""
    from helpers.atomic import discard_tree
    from helpers.data import acquire

    out = ws.data / "own" / archive.stem
    mark = fingerprint(archive)
    if (out / UNPACKED_FROM).is_file() and (out / UNPACKED_FROM).read_text() == mark:
        return out
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed unpacking's leftovers
    try:
        acquire.extract_zip(archive, tmp, what="your images")
        (tmp / UNPACKED_FROM).write_text(mark)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.is_dir():
        discard_tree(out)  # another zip's unpacking, under the same name
    tmp.rename(out)
    return out


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels; ValueError if unreadable."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # we judge the size ourselves (MAX_PIXELS), with a clear message
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception as e:  # noqa: BLE001 - any decoder error means the same to the user
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from e


def _check_size(h: int, w: int, seen_as: str = "") -> None:
    """ValueError past :data:`MAX_PIXELS`; ``seen_as`` says when the size is the image resized."""
    if h * w > MAX_PIXELS:
        raise ValueError(f"{seen_as}{w} x {h} px ({h * w / 1e6:.0f} Mpx) is more than the {MAX_PIXELS / 1e6:.0f} "
                         "Mpx one image may hold here: crop it into regions (e.g. in QuPath) and predict those")


def read_image(path: Path, size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[str]]:
    """uint8 RGB (H, W, 3) and notes on what was converted (``dataset.decode_rgb``). ValueError
    when it cannot be read or is too large to hold (:data:`MAX_PIXELS`); ``size`` is the header's
    (height, width) when the caller has read it already."""
    from helpers.data.dataset import decode_rgb

    _check_size(*(size or image_size(path)))
    try:
        return decode_rgb(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable ({e})") from e


# --------------------------------------------------------------------------- pixel size
@dataclass(frozen=True)
class Scale:
    """How one image meets the model: its pixel size (the file's, ``pixel_size_um``, or unknown),
    the model's, and ``factor``, how much it is enlarged before prediction (1.0: not resized)."""

    image: PixelSize
    model: PixelSize
    factor: float = 1.0

    @classmethod
    def of(cls, image: PixelSize, model: PixelSize) -> "Scale":
        return cls(image, model, rescale_factor(image.um, model.um))

    def note(self, name: str) -> str:
        """What was done to image ``name``, for the report."""
        model = f"the model's {self.model.um:.4g} µm/px" if self.model.um else ""
        if self.factor != 1.0:
            return f"{name}: {self.image.describe()}, {model}: predicted at x{self.factor:.2f}, results mapped back"
        if not self.model.um:
            return (f"{name}: {self.image.describe() if self.image.um else 'pixel size unknown'}; the stage's pixel "
                    "size is unknown (its training images did not say it): predicted as it is, not rescaled")
        if not self.image.um:
            return (f"{name}: pixel size unknown (the file does not say it and pixel_size_um is not set): assumed "
                    f"{model} ({self.model.source}), predicted as it is; sizes in pixels only (set pixel_size_um "
                    "if it differs)")
        return f"{name}: {self.image.describe()}, {model}: within {RESCALE_TOLERANCE:.0%}, predicted as it is"


@dataclass(frozen=True)
class ImagePlan:
    """One image to predict: its file, its exports' name, its (height, width) and :class:`Scale`."""

    path: Path
    stem: str
    size: tuple[int, int]
    scale: Scale

    @property
    def model_size(self) -> tuple[int, int]:
        """(height, width) of the image as the model sees it."""
        return scaled_size(self.size, self.scale.factor)


def image_pixel_size(path: Path, pixel_size_um: float | None = None) -> PixelSize:
    """An image's µm per pixel: what its file records (:func:`read_pixel_size`), else
    ``pixel_size_um``, else unknown."""
    own = read_pixel_size(path)
    if own.um or not pixel_size_um:
        return own
    return PixelSize(float(pixel_size_um), "parameter pixel_size_um")


def rescale_factor(image_um: float | None, model_um: float | None) -> float:
    """How much an image of ``image_um`` µm/px is enlarged to the model's ``model_um``: their
    ratio, or 1.0 when either is unknown or they are within :data:`RESCALE_TOLERANCE`."""
    if not image_um or not model_um or abs(image_um / model_um - 1.0) <= RESCALE_TOLERANCE:
        return 1.0
    return float(image_um / model_um)


# --------------------------------------------------------------------------- predicting
@dataclass
class TiledPredictor:
    """A loaded stage predicting images of any size as notebook 05 predicts: the image brought to
    the ``stain`` reference (:mod:`helpers.infer.stain_normalization`; None: as it is), each pass (plain and
    every ``tta``) in overlapping tiles, stitched (``tiling.merge_tiles``), the passes merged as
    notebook 04 merges them, then ``recipe``'s rescoring."""

    model: object   # model.load_model's (model, params): a LoadedModel and its ExperimentConfig
    params: object
    tta: Sequence[str] = DEFAULT_TTA
    recipe: rescore.Recipe | None = None
    ranker: object = None
    tile: int = 1024
    overlap: int = 128
    score_threshold: float = 0.05
    stain: object = None  # a StainReference, or None

    def predict(self, image: np.ndarray, bar=None, notes: list | None = None):
        """The image's detections; ``notes`` gains a line when its stain cannot be normalised."""
        from helpers.infer.predict import predict_detections

        if self.stain is not None:
            image, note = self.stain.normalize(image)
            if note and notes is not None:
                notes.append(note)
        passes = [predict_detections(self.model, self.params, image, aug, tile=self.tile, overlap=self.overlap,
                                     score_threshold=self.score_threshold, bar=bar)
                  for aug in (None, *self.tta)]
        merged = merge_detections(passes, "wmf", 0.5) if self.tta else passes[0]
        if self.recipe is None or self.recipe.name == "none":
            return merged
        return rescore.apply(self.recipe, merged, passes, ranker=self.ranker)

    def tile_side(self, augmentation: str | None = None) -> int:
        """Image pixels a tile covers: the model's tile shrunk by the stage's input scale and the view's zoom."""
        from helpers.infer.model import input_scale
        from helpers.infer.tta import zoom_of

        return int(self.tile / (input_scale(self.params) * zoom_of(augmentation)))

    def tiles(self, image_hw) -> int:
        """How many model passes an image takes, over its plain pass and every ``tta`` (a zoomed
        view's tiles show fewer pixels each): the progress bar's total."""
        from helpers.infer.tiling import tile_grid

        return sum(len(tile_grid(image_hw[0], image_hw[1], self.tile_side(a), self.overlap))
                   for a in (None, *self.tta))


def predict_own_images(workspace, source, stage: str = "all", run: str | None = None,
                       tta: Sequence[str] | None = None, min_score: float | None = None,
                       tile: int = 1024, overlap: int = 128, progress: bool = True,
                       unfinished: bool = False, pixel_size_um: float | None = None) -> OwnImagesReport:
    """Predict and export every image of ``source`` (module doc); ``tta`` None takes notebook
    04's choice (or :data:`DEFAULT_TTA`), ``min_score`` None its exports' rule (or the default
    rule); ``pixel_size_um`` (µm per pixel) is the size of the images whose files do not say
    theirs. Returns the report (also printed)."""
    from helpers.infer.model import load_model, open_stage
    from helpers.progress import tqdm
    from helpers.train.checkpoints import checkpoint_step

    ws = as_workspace(workspace)
    run = run_name(run, source)
    paths = find_images(source, ws)
    report = OwnImagesReport(ws.root / "exports" / run)
    chosen = load_choice(ws.predictions, required=False)
    recipe, tta = _recipe_and_tta(chosen, tta, report)
    rule, rule_source = export_rule(chosen, min_score)
    report.notes.append(f"exports keep: {rule.describe()} ({rule_source})")
    st = open_stage(ws, stage)
    settings = _run_settings(ws, st, tta, recipe, rule, chosen, tile, overlap, unfinished, pixel_size_um)
    record = _open_run(report.out_dir, settings)
    plans = _plans(_not_exported(paths, record, report), pixel_size_um, st.pixel_size, report)
    if plans:
        step = checkpoint_step(Path(settings["checkpoint"]))  # the one the settings name, checked there
        model, params = load_model(ws, st.name, min_score=0.0, checkpoint=step)
        predictor = TiledPredictor(model, params, tta, recipe, load_ranker(ws.predictions, recipe),
                                   tile, overlap, stain=_stain_reference(ws, chosen, report))
        with tqdm(total=sum(predictor.tiles(p.model_size) for p in plans), desc="tiles", unit="tile",
                  disable=not progress) as bar:
            for plan in plans:
                if _one_image(plan, predictor, rule, bar, report):
                    record["images"][plan.stem] = report.fingerprints[plan.stem]
                    atomic_write_json(report.out_dir / RUN_RECORD, record)
    print(report.format())
    return report


def run_name(run: str | None, source) -> str:
    """The export folder's name: ``run``, a plain name (never a path), or one made from the
    source's name (``test`` for the dataset's test images)."""
    if run:
        if not RUN_NAME.match(str(run)) or str(run).strip(". ") == "":
            raise OwnImagesError(f"run={run!r}: a run is a name for its folder exports/<run>/ (letters, digits, "
                                 "'.', '_', '-', spaces), not a path; choose a name such as \"my_tiles\"")
        return str(run)
    if not str(source):
        return "test"
    stem = re.sub(r"[^A-Za-z0-9._ -]+", "_", Path(str(source).rstrip("/")).stem).strip("._ -")
    return stem or "own"


def fingerprint(path: Path) -> str:
    """What an image's exports were made from: its size and the SHA-256 of its bytes."""
    from helpers.data.manifest import sha256_file

    return f"{path.stat().st_size}:{sha256_file(path)}"


def _run_settings(ws, stage, tta, recipe, rule, chosen, tile, overlap, unfinished, pixel_size_um=None) -> dict:
    """What the exports of a run depend on, besides each image; ``stage`` opened (``model.open_stage``).
    The model's pixel size is among them: images are resized to it."""
    from helpers.infer.model import resolve_checkpoint
    from helpers.infer.stain_normalization import DEFAULT_STAIN

    checkpoint = resolve_checkpoint(ws, stage, unfinished=unfinished)
    return {"stage": stage.name, "checkpoint": checkpoint.name, "tta": list(tta), "rescoring": recipe.name,
            "exports keep": rule.describe(), "stain": chosen.stain if chosen else DEFAULT_STAIN,
            "tile": int(tile), "overlap": int(overlap), "exports format": EXPORTS_FORMAT,
            "model pixel size (um)": stage.pixel_size.um,
            **({"pixel size (um)": float(pixel_size_um)} if pixel_size_um else {})}


def _open_run(out_dir: Path, settings: dict) -> dict:
    """The run's record (``run.json``), begun with ``settings`` when the folder has none;
    :class:`OwnImagesError` when its exports were made with other settings."""
    path = out_dir / RUN_RECORD
    record = json.loads(path.read_text()) if path.is_file() else None
    if record is not None and record.get("settings") != settings:
        was = record.get("settings", {})
        diff = "; ".join(f"{k}: {was.get(k)!r} then, {v!r} now" for k, v in settings.items() if was.get(k) != v)
        raise OwnImagesError(f"{out_dir} holds exports made with other settings ({diff}). Give this run another "
                             "name (run=...), or delete that folder to export it again with these settings.")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out_dir, quiet=True)
    if record is None:
        record = {"settings": settings, "images": {}}
        atomic_write_json(path, record)
    return record


def _recipe_and_tta(chosen, tta, report: OwnImagesReport):
    """Notebook 04's rescoring and TTA (``chosen``, its record or None), unless ``tta`` is given:
    then a rescoring that needs the passes it was chosen with is not applied (a note says so)."""
    recipe, chosen_tta = (chosen.recipe, list(chosen.tta)) if chosen else (rescore.RECIPES["none"], [])
    tta = list(chosen_tta or DEFAULT_TTA) if tta is None else list(tta)
    if recipe.needs_passes and tta != chosen_tta:
        report.notes.append(f"rescoring {recipe.name!r} was chosen with tta {chosen_tta}; with {tta} it is not applied")
        recipe = rescore.RECIPES["none"]
    return recipe, tta


def _stain_reference(ws, chosen, report: OwnImagesReport):
    """The stain reference of notebook 04's choice (its default without one), or None; a note says which."""
    from helpers.infer.predict import stain_reference
    from helpers.infer.stain_normalization import DEFAULT_STAIN

    method = chosen.stain if chosen else DEFAULT_STAIN
    reference = stain_reference(ws, method)
    if method != "none" and reference is None:
        report.notes.append("stain: not normalised (the shards hold no training image to take the stain from)")
    else:
        report.notes.append(f"stain: {method}" + (" (to the training images' stain)" if reference else ""))
    return reference


def _not_exported(paths: Sequence[Path], record: dict, report: OwnImagesReport) -> list[tuple[Path, str]]:
    """(path, export stem) of the images whose exports are not all there yet, or were made from
    another file of the same name."""
    todo = []
    for path, stem in zip(paths, _stems(paths)):
        done = all(f.is_file() for f in exports.export_paths(report.out_dir, stem).values())
        report.fingerprints[stem] = fingerprint(path)
        if done and record["images"].get(stem) == report.fingerprints[stem]:
            report.done_before.append(stem)
        else:
            todo.append((path, stem))
    return todo


def _plans(todo, pixel_size_um, model: PixelSize, report: OwnImagesReport) -> list[ImagePlan]:
    """An :class:`ImagePlan` of each (path, stem) of ``todo``, sized from its file's header; an
    unreadable file, or one too large as it is or as the model sees it, is skipped with its reason."""
    plans = []
    for path, stem in todo:
        try:
            size = image_size(path)
            _check_size(*size)
            plan = ImagePlan(path, stem, size, Scale.of(_pixel_size_of(path, pixel_size_um, report), model))
            _check_size(*plan.model_size, seen_as=f"resized x{plan.scale.factor:.2f} to the model's pixel size, ")
        except ValueError as e:
            report.skipped[str(path)] = str(e)
            continue
        plans.append(plan)
    return plans


def _pixel_size_of(path: Path, pixel_size_um, report: OwnImagesReport) -> PixelSize:
    """:func:`image_pixel_size`, with a note when the file's size overrides a different ``pixel_size_um``."""
    size = image_pixel_size(path, pixel_size_um)
    if pixel_size_um and rescale_factor(size.um, pixel_size_um) != 1.0:  # the file's, and another
        report.notes.append(f"{path.name}: its file says {size.describe()}; that is used, not pixel_size_um = "
                            f"{pixel_size_um:g}")
    return size


def _one_image(plan: ImagePlan, predictor: TiledPredictor, rule, bar, report: OwnImagesReport) -> bool:
    """Predict and export one image at the model's pixel size; False when it was skipped (its
    reason in the report)."""
    name = plan.path.name
    try:
        image, notes = read_image(plan.path, plan.size)
    except ValueError as e:
        report.skipped[str(plan.path)] = str(e)
        return False
    report.notes += [f"{name}: {n}" for n in notes] + [plan.scale.note(name)]
    seen = rescale_image(image, plan.scale.factor)
    side = predictor.tile_side()
    if max(seen.shape[:2]) <= side:
        report.notes.append(f"{name}: {seen.shape[1]} x {seen.shape[0]} px as the model sees it, within one {side} "
                            "px tile: predicted whole")
    stain_notes: list[str] = []
    dets = map_back(predictor.predict(seen, bar=bar, notes=stain_notes), image.shape[:2])
    report.notes += [f"{name}: {n}" for n in stain_notes]
    report.exported.append(exports.export_image(report.out_dir, plan.stem, image, dets, rule,
                                                pixel_size_um=plan.scale.image.um))
    return True


def _stems(paths: Sequence[Path]) -> list[str]:
    """Export names: the file stem, with its folder path when two files share a stem."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    stems = ["__".join(p.relative_to(root).with_suffix("").parts) for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    # the same name in one folder with two suffixes (dup.png, dup.jpg): the suffix too
    return ["__".join(p.relative_to(root).parts).replace(".", "_") for p in paths]
