"""Get the dataset into a destination folder: from a local folder, a local zip,
or a Google Drive file (id or URL, via gdown).

``acquire_dataset(source, dest, manifest=...)``:

* The dataset root is the folder that holds ``train/``; inside a zip (or a
  source folder) it may also sit one level down (``dataset/train/...``).
* Unpacking is atomic: everything goes to a temp folder next to ``dest``
  (``.<name>.*.partial``), is checked (``open_dataset``, and the manifest if
  given), and only then renamed to ``dest``. An interrupted run leaves at most a
  ``*.partial`` folder, never a half-filled ``dest``; the next run removes it.
  Errors found while checking name the user's source (the folder, or the file
  inside the zip), never the temp folder.
* ``dest`` records where its copy came from (``.acquired_from.json``: a folder's
  file names, sizes and modification times, a zip's names, sizes and CRCs, or a
  Drive file id). When the source changes (a mask fixed in the folder or zip, a
  new Drive file id), the next call replaces the copy, once the new one passed
  its checks; an unchanged source is a no-op.
* An existing ``dest`` that this module did not make is never overwritten. If it
  already holds the same dataset (matches the manifest; without a manifest: same
  files and sizes as a local source, or simply a readable dataset for a Drive
  source, which is not downloaded again) the call is a no-op. Otherwise
  ``DatasetError``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable

from helpers.atomic import atomic_write_json, remove_stale_partials
from helpers.data.dataset import DatasetError, name_copy_as, open_dataset, user_paths
from helpers.data.imported import ImportOptions, read_record
from helpers.data.layouts import DESCRIBED, detect_layout, holds_a_layout, import_dataset
from helpers.data.manifest import read_manifest, validate_against_manifest

_DRIVE_ID = re.compile(r"^[A-Za-z0-9_-]{20,}$")
_IGNORED = {"__MACOSX", ".DS_Store"}
RECORD_NAME = ".acquired_from.json"  # inside dest: what the copy was made from


def looks_like_drive_id(s: str) -> bool:
    """A Drive file id: 25+ characters of ``[A-Za-z0-9_-]`` mixing upper- and lower-case letters
    and digits (ids are 28, 33 or 44 random characters). ``hw3-data-release-2024`` is no id."""
    return (len(s) >= 25 and bool(_DRIVE_ID.match(s)) and any(c.isupper() for c in s)
            and any(c.islower() for c in s) and any(c.isdigit() for c in s))


def is_drive_source(source: str | os.PathLike) -> bool:
    """True for a Google Drive URL or a bare Drive file id (and not an existing path)."""
    s = str(source)
    if re.match(r"^https?://", s):
        return "drive.google.com" in s or "docs.google.com" in s
    return looks_like_drive_id(s) and not Path(s).exists()


def find_dataset_root(folder: str | os.PathLike) -> Path:
    """The folder holding a dataset in one of the layouts notebook 01 reads (the course's
    ``train/``, label pairs, COCO JSON, QuPath GeoJSON): ``folder`` itself or its single child
    that does."""
    folder = Path(folder)
    if holds_a_layout(folder):
        return folder
    kids = [p for p in folder.iterdir() if p.is_dir() and p.name not in _IGNORED and not p.name.startswith(".")]
    hits = [p for p in kids if holds_a_layout(p)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise DatasetError(f"{folder} holds several datasets ({[p.name for p in hits]}); "
                           "point at one of them")
    raise DatasetError(f"{folder} and the folders one level below it hold none of the layouts notebook 01 reads "
                       f"(found {sorted(p.name for p in folder.iterdir())[:8]}): "
                       + "; or ".join(DESCRIBED.values()))


def _listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and p.name != RECORD_NAME and not any(part in _IGNORED for part in p.parts)}


def member_name(info: zipfile.ZipInfo) -> str:
    """A zip member's path with '/' separators. Zips made on Windows (PowerShell's
    ``Compress-Archive``) store ``train\\<ID>\\images\\<ID>.png``; no file name holds a backslash."""
    return info.filename.replace("\\", "/")


def _is_dir(info: zipfile.ZipInfo) -> bool:
    return info.is_dir() or member_name(info).endswith("/")


def _zip_listing(zf: zipfile.ZipFile) -> dict[str, int]:
    files = {member_name(i): i.file_size for i in zf.infolist()
             if not _is_dir(i) and not any(part in _IGNORED for part in Path(member_name(i)).parts)}
    if any(n.startswith("train/") for n in files):
        return files
    prefixes = {n.split("/", 1)[0] for n in files if "/" in n and n.split("/", 1)[1].startswith("train/")}
    if len(prefixes) == 1:
        pre = prefixes.pop() + "/"
        return {n[len(pre):]: s for n, s in files.items() if n.startswith(pre)}
    return files


def _load_rows(manifest) -> list[dict] | None:
    if manifest is None:
        return None
    if isinstance(manifest, (str, os.PathLike)):
        return read_manifest(manifest)
    return list(manifest)


def _check(root: Path, rows: list[dict] | None, what: str) -> None:
    open_dataset(root)
    if rows is not None and read_record(root) is None:  # an imported dataset carries its own manifest
        try:
            validate_against_manifest(root, rows, progress=False)
        except DatasetError as e:
            raise DatasetError(f"{what} does not match the manifest: {e}") from e


# --------------------------------------------------------------------------- where a copy came from
def _digest(items) -> str:
    return hashlib.sha256(json.dumps(sorted(items)).encode()).hexdigest()


def source_fingerprint(source: str | os.PathLike) -> dict:
    """What identifies the content of ``source`` cheaply, without reading every byte.

    A folder: each file's relative path, size and modification time. A zip: each member's
    name, size and CRC-32 (from the zip's directory). A Drive source: its file id.
    """
    if is_drive_source(source):
        return {"kind": "drive", "id": drive_file_id(str(source)) or str(source)}
    src = Path(source).expanduser()
    if src.is_dir():
        root = find_dataset_root(src)
        items = [(str(p.relative_to(root)), st.st_size, st.st_mtime_ns) for p in root.rglob("*")
                 if p.is_file() and not any(part in _IGNORED for part in p.relative_to(root).parts)
                 and p.name != RECORD_NAME for st in (p.stat(),)]
        return {"kind": "folder", "digest": _digest(items), "files": len(items)}
    try:
        with zipfile.ZipFile(src) as zf:
            items = [(i.filename, i.file_size, i.CRC) for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"{src} is neither a folder nor a readable zip file ({e}); download it again") from e
    return {"kind": "zip", "digest": _digest(items), "files": len(items)}


def _read_record(dest: Path) -> dict | None:
    try:
        rec = json.loads((dest / RECORD_NAME).read_text(encoding="utf-8"))
        return rec if isinstance(rec, dict) and "fingerprint" in rec else None
    except (OSError, ValueError):
        return None


def _same_source(rec: dict, fp: dict) -> bool:
    return rec.get("fingerprint") == fp


# --------------------------------------------------------------------------- temp folders
def _source_paths(message: str, tmp: Path, shown: dict[Path, tuple[str, str]]) -> str:
    """``message`` with the temp folder's paths replaced by what the user knows: their source
    folder, or ``<zip>:<path inside it>``. ``shown``: {temp path: (as itself, as a prefix)}."""
    for path, (name, prefix) in sorted(shown.items(), key=lambda kv: -len(str(kv[0]))):
        message = message.replace(str(path) + os.sep, prefix).replace(str(path), name)
    return message.replace(str(tmp), "(a temp folder, now removed)")


def _name_copy_as_source(dest: Path, staged: Path, shown: dict[Path, tuple[str, str]]) -> None:
    """Later notes about the workspace copy ``dest`` (made from ``staged``) name the user's source."""
    for path, (name, prefix) in shown.items():
        if staged == path or staged.is_relative_to(path):
            rel = staged.relative_to(path).as_posix()
            if rel != ".":
                name = prefix + rel
                prefix = name + ("/" if ":" in prefix else os.sep)  # inside a zip: '/' separators
            name_copy_as(dest, name, prefix)
            return


# --------------------------------------------------------------------------- acquire
def acquire_dataset(source: str | os.PathLike, dest: str | os.PathLike,
                    manifest: Iterable[dict] | str | os.PathLike | None = None, quiet: bool = False,
                    options: ImportOptions = ImportOptions()) -> Path:
    """Put the dataset from ``source`` at ``dest`` (see module doc) and return ``dest``.

    ``source``: a dataset folder, a ``.zip``, or a Google Drive file id/URL of a zip, in any
    layout of ``helpers.data.layouts``; another layout than the course's is imported into it
    (``options``: the layout, pixel size and classes). ``manifest``: rows or a CSV path (e.g.
    the committed data_manifest.csv) to check course-layout data against (sha256 of images,
    mask counts, sizes); an imported dataset carries its own.
    """
    dest = Path(dest)
    rows = _load_rows(manifest)
    drive = is_drive_source(source)
    src = None if drive else Path(source).expanduser()
    if src is not None and not src.exists():
        raise DatasetError(_not_found(str(source), src))
    remove_stale_partials(dest, quiet)
    replacing = False
    if dest.exists() and any(dest.iterdir()):
        rec = _read_record(dest)
        if rec is None or (src is not None and src.resolve() == dest.resolve()):
            return _existing(dest, src, rows, drive)
        fp = _with_options(source_fingerprint(source), options)
        if _same_source(rec, fp):
            _check_existing(dest, rows)
            return dest
        replacing = True  # our own copy, of a source that changed since: replace it (after the checks)
    fp = None if drive else _with_options(source_fingerprint(src), options)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    shown: dict[Path, tuple[str, str]] = {}
    try:
        try:
            if drive:
                shown[tmp / "download.zip"] = (f"the zip downloaded from Google Drive ({source})", "")
                shown[tmp / "unzipped"] = (f"the Drive zip {source}", f"the Drive zip {source}:")
                src = download_zip(str(source), tmp, quiet)
                fp = _with_options({"kind": "drive", "id": drive_file_id(str(source)) or str(source)}, options)
            if src.is_dir():
                staged = _imported(find_dataset_root(src), tmp / "data", options, quiet, shown)
            elif zipfile.is_zipfile(src):
                if not drive:
                    shown[tmp / "unzipped"] = (str(src), f"{src}:")
                extract_zip(src, tmp / "unzipped")
                root = find_dataset_root(tmp / "unzipped")
                for copy, (name, prefix) in shown.items():  # the import's notes name the user's zip
                    name_copy_as(copy, name, prefix)
                staged = _imported(root, tmp / "imported", options, quiet)
            else:
                raise DatasetError(f"{src} is neither a folder nor a readable zip file (corrupt or truncated "
                                   "download?); download it again")
            for copy, (name, prefix) in shown.items():  # notes name the user's files, not the temp folder
                name_copy_as(copy, name, prefix)
            _check(staged, rows, f"the dataset from {source}")
        except DatasetError as e:
            msg = _source_paths(str(e), tmp, shown)
            if src is not None and not drive:
                msg += f"\n(fix it in your source, {src}, and run again: nothing was copied to {dest})"
            if replacing:
                msg += f"\n({dest}, the copy of the source as it was before, is kept as it is)"
            if msg == str(e):
                raise
            raise DatasetError(msg) from (e.__cause__ or e)
        atomic_write_json(staged / RECORD_NAME, {"source": str(source), "fingerprint": fp})
        if replacing:
            os.replace(dest, tmp / "replaced")
        elif dest.exists():  # an empty folder: rename onto it
            dest.rmdir()
        os.replace(staged, dest)
        _name_copy_as_source(dest, staged, shown)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        what = "replaced (the source changed since the copy was made)" if replacing else "ready"
        print(f"dataset {what} at {dest}: {open_dataset(dest)!r}")
    return dest


def _imported(root: Path, out: Path, options: ImportOptions, quiet: bool, shown: dict | None = None) -> Path:
    """The dataset at ``root`` in the course layout, its layout detected once: ``root`` itself, or
    copied to ``out`` for a folder source (``shown`` given: the copy's paths are named as the
    user's), or another layout imported into ``out``."""
    layout = options.layout or detect_layout(root)
    if layout == "course":
        if shown is None:
            return root
        shown[out] = (str(root), str(root) + os.sep)
        shutil.copytree(root, out, ignore=shutil.ignore_patterns(*_IGNORED, RECORD_NAME))
        return out
    imported = import_dataset(root, out, dataclasses.replace(options, layout=layout), [])
    if not quiet:
        print(f"imported {layout} annotations from {user_paths(str(root))}")
    return imported


def _with_options(fingerprint: dict, options: ImportOptions) -> dict:
    """What a copy is made of: the source, and how another layout was imported from it."""
    if options == ImportOptions():
        return fingerprint
    return json.loads(json.dumps({**fingerprint, "import": dataclasses.asdict(options)}))  # as the record reads back


def _not_found(text: str, src: Path) -> str:
    where = src if src.is_absolute() else f"{src} (looked in {Path.cwd()})"
    msg = f"source {where} not found; pass a dataset folder, a .zip, or a Google Drive file id/URL"
    if _DRIVE_ID.match(text):
        msg += (f". {text!r} is not a Google Drive file id either (ids are 25+ characters mixing upper- and "
                "lower-case letters and digits, e.g. the part after /file/d/ in a share link)")
    return msg


def _check_existing(dest: Path, rows) -> None:
    try:
        _check(dest, rows, str(dest))
    except DatasetError as e:
        raise DatasetError(f"{e}\n({dest} was made from the same, unchanged source: fix the source and run "
                           "again, and the copy is replaced)") from e


def _existing(dest: Path, src: Path | None, rows, drive: bool) -> Path:
    """``dest`` is not empty and not a copy we made: no-op if it is the same dataset, else a clear error."""
    if src is not None and src.resolve() == dest.resolve():
        _check(dest, rows, str(dest))
        return dest
    try:
        open_dataset(dest)
    except DatasetError as e:
        raise DatasetError(f"{dest} already exists and is not a readable dataset ({e}); nothing was "
                           "overwritten: choose another destination or remove it yourself") from e
    if rows is not None:
        try:
            validate_against_manifest(dest, rows, progress=False)
        except DatasetError as e:
            raise DatasetError(f"{dest} already exists and differs from the manifest ({e}); nothing was "
                               "overwritten: choose another destination or remove it yourself") from e
        return dest
    if src is not None:
        if src.is_dir():
            want = _listing(find_dataset_root(src))
        elif zipfile.is_zipfile(src):
            with zipfile.ZipFile(src) as zf:
                want = _zip_listing(zf)
        else:
            raise DatasetError(f"{src} is neither a folder nor a readable zip file; download it again")
        have = _listing(dest)
        if want != have:
            diff = sorted(set(want.items()) ^ set(have.items()))[:3]
            raise DatasetError(f"{dest} already exists and differs from {src} (e.g. {diff}); nothing was "
                               "overwritten: choose another destination or remove it yourself")
    return dest  # Drive source and a readable dataset already there: do not download again


def extract_zip(zip_path: Path, out: Path,
                what: str = "the dataset (the folder with train/, test/ and test_img_ids.json)") -> None:
    """Unpack ``zip_path`` into ``out``, refusing empty or corrupt zips and unsafe paths."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            if not any(not i.is_dir() for i in zf.infolist()):
                raise DatasetError(f"{zip_path} is empty (it holds no files): zip {what} again, or download it again")
            bad = zf.testzip()
            if bad is not None:
                raise DatasetError(f"{zip_path} is corrupt (bad CRC in {bad}); download it again")
            for info in zf.infolist():  # no absolute paths or '..' escaping the folder
                name = member_name(info)
                parts = Path(name).parts
                if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
                    raise DatasetError(f"{zip_path} holds an unsafe path {info.filename!r}; refusing to unpack")
            for info in zf.infolist():
                target = out / member_name(info)
                if _is_dir(info):
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as e:
        raise DatasetError(f"{zip_path} is not a valid zip ({e}); download it again") from e


# A Drive file id inside the URLs people paste: .../file/d/<id>/view?usp=sharing (also /file/u/0/d/<id>,
# without /view, /edit, /preview), and ...?id=<id> (open?id=, uc?id=&export=download).
_DRIVE_URL_ID = (re.compile(r"/file/(?:u/\d+/)?d/([-\w]{20,})(?:[/?#]|$)"),
                 re.compile(r"[?&]id=([-\w]{20,})(?:[&#]|$)"))


def drive_file_id(source: str) -> str | None:
    """The Drive file id of a bare id or a Drive file URL; None if it cannot be read from it."""
    if not re.match(r"^https?://", source):
        return source if _DRIVE_ID.match(source) else None
    for pattern in _DRIVE_URL_ID:
        m = pattern.search(source)
        if m:
            return m.group(1)
    return None


def _gdown_kwargs(download, source: str, output: str, quiet: bool) -> dict:
    """Keyword arguments for the installed ``gdown.download``: only those its signature has.

    gdown 5.x (Colab ships 5.2.2) has ``fuzzy`` and no ``timeout``; gdown 6.x has ``timeout``
    (from 6.3) and no ``fuzzy`` (it always reads the id out of a /file/d/ URL). A bare id, or
    the id read from a Drive URL, is passed as ``id=``: every version then fetches
    drive.google.com/uc?id=<id>. Other URLs go as ``url=`` (with ``fuzzy=True`` where it exists,
    so gdown 5 still looks for an id in them instead of saving the web page).
    """
    params = inspect.signature(download).parameters
    anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def accepted(name: str) -> bool:
        return anything or name in params

    file_id = drive_file_id(source)
    kw: dict = {"id": file_id} if file_id else {"url": source}
    kw.update(output=output, quiet=quiet)
    if file_id is None and accepted("fuzzy"):
        kw["fuzzy"] = True
    if accepted("timeout"):
        kw["timeout"] = 60  # seconds without a byte from the server
    return kw


def _download_errors(gdown) -> tuple[type[BaseException], ...]:
    """What a failed download raises: gdown's own exceptions, requests' and OSError.

    Anything else (TypeError, ValueError, ...) is a programming error and is not caught.
    """
    import requests

    errors: list[type[BaseException]] = [OSError, requests.exceptions.RequestException]
    module = getattr(gdown, "exceptions", None)
    for name in dir(module) if module is not None else ():
        obj = getattr(module, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            errors.append(obj)
    return tuple(errors)


def _no_local(source: str) -> str:
    """For a bare id that failed: it is no local path either (a name can look like both)."""
    if re.match(r"^https?://", source):
        return ""
    return f". (Taken as a Drive file id, since there is no file or folder {source!r} in {Path.cwd()} either.)"


def download_zip(source: str, folder: Path, quiet: bool) -> Path:
    """Download a Drive file into ``folder`` with gdown; DatasetError with advice on failure."""
    import gdown

    out = folder / "download.zip"
    kw = _gdown_kwargs(gdown.download, source, str(out), quiet)
    try:
        got = gdown.download(**kw)
    except _download_errors(gdown) as e:  # network, Drive refusing the file, disk: not a bug of ours
        raise DatasetError(
            f"could not download {source!r} from Google Drive ({type(e).__name__}: {e}). Check the network, "
            "that the id/URL is right and the file is shared as 'Anyone with the link'; or download the zip "
            "yourself and pass its local path (or the unpacked folder) as the source"
            + _no_local(source)) from e
    if not got or not out.is_file() or out.stat().st_size == 0:
        raise DatasetError(f"Google Drive download of {source!r} produced no file; check the id and sharing, "
                           "or download the zip yourself and pass its local path")
    with open(out, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        raise DatasetError(f"Google Drive sent a web page, not the zip, for {source!r}: pass the file id or its "
                           "share link (https://drive.google.com/file/d/<ID>/view), check that the file is shared "
                           "as 'Anyone with the link'; or download the zip yourself and pass its local path")
    return out
