"""The ``imagefolder`` source: one sub-folder of images per class, read with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fednas.data._errors import DataError
from fednas.data._source import LoadRequest, RawData

_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
_GRAY_MODES = {"1", "L", "LA"}
DEFAULT_RESOLUTION = 32
MAX_IMAGE_PIXELS = 50_000_000  # per file, from its header before decoding: a 12 MP photo is far below


def _classes(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(folder: Path) -> list[tuple[Path, int]]:
    classes = _classes(folder)
    if not classes:
        raise DataError(f"{folder}: has no class sub-folders; expected one sub-folder of images per class")
    files = []
    for label, class_dir in enumerate(classes):
        images = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in _EXTENSIONS)
        if not images:
            raise DataError(f"{class_dir}: has no images; expected files ending in "
                            f"{', '.join(sorted(_EXTENSIONS))}")
        files.extend((p, label) for p in images)
    return files


def _unreadable(image_module) -> tuple[type[BaseException], ...]:
    return (OSError, ValueError, SyntaxError, image_module.DecompressionBombError)


def _read(path: Path, mode: str, resolution: int, image_module) -> np.ndarray:
    try:
        with image_module.open(path) as img:
            img = img.convert(mode).resize((resolution, resolution), image_module.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except _unreadable(image_module) as exc:
        raise DataError(f"{path}: cannot be read as an image ({exc}); expected a readable image file") from None


def _modes(files: list[tuple[Path, int]], image_module) -> set[str]:
    """The images' modes, from their headers; sizes are bounded before any image is decoded."""
    modes = set()
    for path, _ in files:
        try:
            with image_module.open(path) as img:  # opening reads only the header
                modes.add(img.mode)
                width, height = img.size
        except _unreadable(image_module) as exc:
            raise DataError(f"{path}: cannot be read as an image ({exc}); expected a readable image file") from None
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(f"{path}: {width}x{height} pixels; expected an image of at most {MAX_IMAGE_PIXELS:,} "
                            "pixels (fednas.data bound)")
    return modes


def load_imagefolder(req: LoadRequest) -> RawData:
    """Loads ``req.path/<class>/<image>``; gray if every image is gray, else RGB, resized square."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("source 'imagefolder' needs Pillow; run: pip install fednas[images]") from None
    folder = req.require_path("folder with one sub-folder per class")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; expected a folder with one sub-folder per class")
    resolution = req.resolution or DEFAULT_RESOLUTION
    files = _scan(folder)
    mode = "L" if _modes(files, Image) <= _GRAY_MODES else "RGB"
    x = np.stack([_read(p, mode, resolution, Image) for p, _ in files])
    x = x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)
    y = np.array([label for _, label in files], dtype=np.int64)
    return RawData(np.ascontiguousarray(x), y, name=req.name or folder.name,
                   class_names=tuple(p.name for p in _classes(folder)))
