"""Checks on everything a browser sends that names a file: at the point of use, symlinks resolved.

Model specs, scores files, calibration folders, training pairs (and every image they list), webdataset
globs (after expansion), uploaded images and zips. A refusal says which folders are allowed and never
what is in a file or whether a path outside exists. Uploaded zips are unpacked only when every member is
a safe path and an image within the pixel limit (read from its header), within a per-home quota; a
rejected or failed upload is removed.
"""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import open_clip
from PIL import Image, UnidentifiedImageError

from mope.data.tasks import IMAGE_EXTENSIONS, check_pixels, read_pairs
from mope.errors import MopeError
from mope.settings import DEMO_DIR
from mope.specs import DataSpec, ModelSpec

from .state import AppState

MAX_ZIP_BYTES = 500 * 2**20  # uncompressed size of one uploaded calibration zip
UPLOAD_QUOTA = 2 * 2**30     # all unpacked uploads of one home together
HINTS = {"model": "; start the app with --models DIR to allow another folder",
         "data": "; start the app with --data DIR to allow another folder"}


def allowed_path(path: str | Path, roots: list[Path], what: str) -> Path:
    """`path` resolved, refusing anything outside `roots` (symlinks and '..' resolved first)."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        resolved = None
    if resolved is None or not any(resolved == r or resolved.is_relative_to(r) for r in roots):
        raise MopeError(f"{str(path)[:200]} is outside the {what} folders this app may read "
                        f"({', '.join(map(str, roots))}){HINTS.get(what, '')}")
    return resolved


def check_spec(spec: str, state: AppState) -> str:
    """The spec, stripped; the file or folder it reads (any spec form) must lie in the model folders."""
    parsed = ModelSpec.parse(spec if isinstance(spec, str) else "")
    path = parsed.local_path
    if path is None and parsed.source == "pretrained" and parsed.tag is None and \
            parsed.name not in open_clip.list_models():
        path = Path(parsed.text)  # a bare word is a folder unless it names a model: one answer, existing or not
    if path is not None:
        allowed_path(path, state.model_dirs + [DEMO_DIR], "model")
    return parsed.text


def check_scores(path: str, state: AppState) -> Path:
    """A scores file the app wrote (HOME/results), never any other file."""
    return allowed_path(path, [state.home / "results"], "scores")


def check_upload(path: str, state: AppState) -> Path:
    """A file the browser uploaded (Gradio's upload folder) or one the app made (HOME/samples)."""
    return allowed_path(path, state.upload_dirs, "upload")


def check_folder(folder: str, state: AppState) -> Path:
    """A data folder inside the allowed data folders, holding no symlink that leads outside them."""
    root = allowed_path(folder, state.data_dirs, "data")
    for p in root.rglob("*"):
        allowed_path(p, state.data_dirs, "data")
    return root


def check_training_data(spec: str, state: AppState) -> str:
    """`shapes`, `pairs:FILE` (the file and every image it lists) or `wds:GLOB` (every shard it matches)."""
    parsed = DataSpec.parse(spec if isinstance(spec, str) and spec.strip() else "shapes").for_training()
    if parsed.source == "pairs":
        file = allowed_path(parsed.path, state.data_dirs, "data")
        for image, _ in read_pairs(file):
            allowed_path(file.parent / Path(image).expanduser(), state.data_dirs, "data")
    elif parsed.source == "wds":
        expand_glob(parsed.path, state.data_dirs)
    return parsed.text


def check_calibration(spec: str, state: AppState) -> str:
    """A calibration spec kept with a session's scores: the shapes world, or a folder inside the data folders."""
    spec = spec if isinstance(spec, str) else ""
    if spec.startswith("folder:"):
        return f"folder:{check_folder(spec.partition(':')[2], state)}"
    if DataSpec.parse(spec).source != "shapes":
        raise MopeError(f"calibration data {spec[:100]!r} is not one the app offers: score again (tab 2)")
    return spec


def expand_glob(pattern: str, roots: list[Path]) -> list[Path]:
    """What glob.glob(pattern) matches, expanded one folder at a time: each folder is checked before it is
    listed and each match (symlinks resolved) before it is used, so nothing outside `roots` is even listed."""
    path = Path(pattern).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    found = [Path(path.anchor)]
    for part in path.parts[1:]:
        if not glob.has_magic(part):
            found = [p / part for p in found]
            continue
        matches = []
        for folder in found:
            folder = allowed_path(folder, roots, "data")
            if folder.is_dir():
                names = sorted(n for n in os.listdir(folder) if part.startswith(".") or not n.startswith("."))
                matches += [folder / n for n in fnmatch.filter(names, part)]
        found = matches
    return [allowed_path(p, roots, "data") for p in found if p.exists()]


# --- uploads ---------------------------------------------------------------------------------------------

def open_image(path: str | Path) -> Image.Image:
    """An uploaded image as RGB; a clear error for non-images and for images over the pixel limit."""
    name = Path(path).name
    try:
        with Image.open(path) as im:
            check_pixels(im, name)
            return im.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        reason = "is too large to decode safely" if isinstance(e, Image.DecompressionBombError) else "is not an image"
        raise MopeError(f"{name} {reason}; upload PNG or JPEG files") from None


def unpack_zip(path: str | Path, state: AppState) -> Path:
    """Images of an uploaded zip, unpacked once under HOME/uploads/<hash>/ (see the module's rules)."""
    path = check_upload(str(path), state)
    try:
        digest = _sha256(path)
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile):
        _remove(path)
        raise MopeError(f"{path.name} is not a readable .zip file; zip a folder with one sub-folder per class") from None
    target = state.home / "uploads" / digest
    if target.is_dir():
        return class_root(target)
    staging = target.with_name(target.name + ".partial")
    try:
        with archive:
            _extract_images(archive, path.name, staging, state)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove(path)
        raise
    return class_root(target)


def _extract_images(archive: zipfile.ZipFile, name: str, staging: Path, state: AppState) -> None:
    members = [m for m in archive.infolist() if not m.is_dir() and m.filename.lower().endswith(IMAGE_EXTENSIONS)]
    if not members:
        raise MopeError(f"{name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    size = sum(m.file_size for m in members)
    if size > MAX_ZIP_BYTES:
        raise MopeError(f"{name} unpacks to more than {MAX_ZIP_BYTES >> 20} MB; upload fewer images")
    quota = state.upload_quota if state.upload_quota is not None else UPLOAD_QUOTA
    used = uploads_size(state)
    if used + size > quota:
        raise MopeError(f"uploads on this server would take {(used + size) / 2**20:.0f} MB, over the "
                        f"{quota / 2**20:.0f} MB allowed; ask whoever runs the app to delete old uploads "
                        f"from {state.home / 'uploads'}")
    shutil.rmtree(staging, ignore_errors=True)
    root = staging.resolve()
    for m in members:
        out = (staging / m.filename).resolve()
        if not out.is_relative_to(root):
            raise MopeError(f"{name} has an unsafe path ({m.filename[:200]}); zip a plain folder")
        _check_member_image(archive, m, name)
        out.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(m) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)


def _check_member_image(archive: zipfile.ZipFile, member: zipfile.ZipInfo, name: str) -> None:
    """The member is an image within the pixel limit: its header is read, nothing is decoded."""
    try:
        with archive.open(member) as f, Image.open(f) as im:
            check_pixels(im, f"{member.filename[:200]} in {name}")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, zipfile.BadZipFile):
        raise MopeError(f"{member.filename[:200]} in {name} is not a readable image; zip PNG or JPEG files "
                        "only") from None


def uploads_size(state: AppState) -> int:
    """Bytes of every file under HOME/uploads (unpacked zips)."""
    root = state.home / "uploads"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def remove_upload(folder: Path, state: AppState, uploaded: str | Path | None = None) -> None:
    """Delete an unpacked upload (its data set was rejected), only ever under HOME/uploads, and the uploaded zip it
    came from (only ever in the upload folders)."""
    if uploaded is not None:
        _remove(check_upload(str(uploaded), state))
    uploads = (state.home / "uploads").resolve()
    folder = Path(folder).resolve()
    while folder.parent != uploads and folder.is_relative_to(uploads):
        folder = folder.parent  # the class root may be one level down: remove the whole upload
    if folder.parent == uploads:
        shutil.rmtree(folder, ignore_errors=True)


def class_root(folder: Path) -> Path:
    """A zip of `animals/cat/…` unpacks with one top folder: the classes are one level down."""
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() and any(
        p.is_dir() for p in entries[0].iterdir()) else folder


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _remove(path: Path) -> None:
    """Delete a rejected uploaded file (it lies in the upload folders: check_upload said so)."""
    path.unlink(missing_ok=True)
