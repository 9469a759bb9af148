"""The unlabeled image pool: scan folders, skip corrupt files, sample deterministically, record a manifest.

The trainer sees images only through a ``PoolManifest``: absolute paths in training order, fixed
by the seed, so that a resumed run continues the same image order and two runs with the same
manifest hash saw the same data. Files that cannot be read, or that Qwen2-VL's processor would
refuse (an aspect ratio over 200), or whose name is not UTF-8, are listed, never silently dropped.
Images over ``MAX_DECODED_PIXELS`` are downscaled once at first load and cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageFile, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from ireasoner_core.config import DataConfig

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
_SHOWN_SKIPPED = 5  # skipped files named in a message before "and N more"
# transformers' Qwen2-VL smart_resize raises "absolute aspect ratio must be smaller than 200" above this
# ratio, for every model and processor config; the number is in its code, not in preprocessor_config.json
# (tests/test_pool.py pins it to the installed library).
MAX_ASPECT_RATIO = 200
# Larger images are downscaled once, at first load, and cached: the processor resizes to
# model.max_image_pixels (448*448 by default) anyway, and a 144-Mpx photo takes ~1 s and ~1 GB to decode.
# 16.8 Mpx keeps every phone photo at its own size.
MAX_DECODED_PIXELS = 4096 * 4096


def _created_by() -> str:
    # From the installed distribution, not ireasoner_core.__version__: the package may be imported
    # as a namespace package (editable install), where __init__ attributes are missing.
    try:
        return f"ireasoner_core.data.pool {version('ireasoner')}"
    except PackageNotFoundError:
        return "ireasoner_core.data.pool"


class ImagePoolError(ValueError):
    """A folder, image file or manifest of the pool that cannot be used; the message names it."""


@dataclass
class ScanResult:
    """Readable images (sorted absolute paths) and the image files skipped, with the reason."""

    images: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def display_path(path: Path | str) -> str:
    """The path as printable UTF-8: bytes of a non-UTF-8 name shown as \\xNN (logs and JSON cannot hold them raw)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8_name(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # os.listdir keeps undecodable bytes as lone surrogates
        return False
    return True


NOT_UTF8 = "file name is not valid UTF-8 (rename the file)"


def decoded_size(width: int, height: int, max_pixels: int = MAX_DECODED_PIXELS) -> tuple[int, int]:
    """The size load_image returns for an image of this size: downscaled to at most max_pixels, aspect kept."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def processor_problem(width: int, height: int) -> str | None:
    """None if Qwen2-VL's image processor accepts this size, else why not (its smart_resize would raise)."""
    if min(width, height) < 1:
        return f"{width}x{height} pixels: the image is empty"
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        return (f"{width}x{height} pixels: aspect ratio {ratio:g} is over the Qwen2-VL processor's limit of "
                f"{MAX_ASPECT_RATIO}")
    return None


def _verify(path: Path) -> str | None:
    """None if PIL can parse the file's structure and the processor accepts its size, else why not (no pixel decoding)."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except Exception as e:  # noqa: BLE001 -- PIL raises OSError, SyntaxError, struct.error, DecompressionBombError...
        return f"{type(e).__name__}: {e}"
    problem = processor_problem(*decoded_size(*size))
    return f"unusable by the model: {problem}" if problem else None


BROKEN_LINK = "broken symbolic link (dangling or a loop)"


def _candidate_files(folder: Path, include_subfolders: bool) -> tuple[list[Path], list[Path]]:
    """Image files, and image-named symbolic links that lead nowhere (counted as skipped, never dropped)."""
    files: list[Path] = []
    broken: list[Path] = []

    def take(p: Path) -> None:
        if p.is_file():
            files.append(p)
        elif p.is_symlink() and not p.exists():  # is_file() is False for ELOOP and dangling links alike
            broken.append(p)

    for entry in sorted(folder.iterdir()):
        if _is_hidden(entry):
            continue
        if entry.is_dir():
            # One level only: a deep tree is more likely a dataset dump with splits than one pool.
            if include_subfolders:
                for p in sorted(entry.iterdir()):
                    if not _is_hidden(p):
                        take(p)
        else:
            take(entry)
    ext = lambda ps: [p for p in ps if p.suffix.lower() in IMAGE_EXTENSIONS]
    return ext(files), ext(broken)


def describe_skipped(skipped: Sequence[tuple[Path | str, str]], full_paths: bool = False) -> str:
    """'N files skipped as corrupt or unusable: name (reason); ...', the first few named."""
    name = display_path if full_paths else (lambda p: display_path(Path(p).name))
    shown = "; ".join(f"{name(p)} ({reason})" for p, reason in skipped[:_SHOWN_SKIPPED])
    more = f"; and {len(skipped) - _SHOWN_SKIPPED} more" if len(skipped) > _SHOWN_SKIPPED else ""
    return f"{len(skipped)} files skipped as corrupt or unusable" + (f": {shown}{more}" if skipped else "")


def scan_images(folder: Path, include_subfolders: bool = True) -> ScanResult:
    """Readable image files in folder (and its first-level sub-folders); corrupt ones are listed as skipped."""
    folder = Path(folder).expanduser().absolute()
    if not folder.exists():
        raise ImagePoolError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise ImagePoolError(f"image folder is not a directory: {folder}")
    if not _utf8_name(folder):
        raise ImagePoolError(f"image folder name is not valid UTF-8 (rename it): {display_path(folder)}")
    result = ScanResult()
    files, broken = _candidate_files(folder, include_subfolders)
    result.skipped.extend((p, BROKEN_LINK) for p in broken)
    for path in files:
        reason = _verify(path) if _utf8_name(path) else NOT_UTF8
        if reason is None:
            result.images.append(path)
        else:
            result.skipped.append((path, reason))
    if not result.images:
        raise ImagePoolError(
            f"no readable images in {folder} ({describe_skipped(result.skipped)}; "
            f"looked for {', '.join(IMAGE_EXTENSIONS)}"
            f"{' in the folder and its first-level sub-folders' if include_subfolders else ''})"
        )
    result.images.sort(key=str)
    return result


class PoolManifest(BaseModel):
    """The sampled pool: source folders, seed, size and the images in training order."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str]
    seed: int
    size: int | None = Field(None, description="Requested pool size (None = every readable image).")
    images: list[str] = Field(description="Absolute paths, in training order.")
    skipped: list[dict] = Field(default_factory=list,
                                description="{'path', 'reason'} per corrupt or unusable file (path as display_path).")
    created_by: str = Field(default_factory=_created_by)
    notes: list[str] = Field(default_factory=list, description="E.g. fewer images available than requested.")

    def hash(self) -> str:
        """16 hex digits identifying the pool's content and order (sources, seed, size, images)."""
        payload = json.dumps(
            {"sources": self.sources, "seed": self.seed, "size": self.size, "images": self.images},
            sort_keys=True, separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def write(self, path: Path) -> Path:
        """Write as JSON, atomically (a crash never leaves half a manifest)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: Path) -> PoolManifest:
        path = Path(path)
        if not path.is_file():
            raise ImagePoolError(f"pool manifest not found: {path}")
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors()
            )
            raise ImagePoolError(f"invalid pool manifest {path}: {problems}") from e


def sample_pool(sources: Sequence[Path], size: int | None, seed: int,
                include_subfolders: bool = True) -> PoolManifest:
    """Scan every source folder, shuffle the sorted union with random.Random(seed), keep the first `size`."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise ImagePoolError("no image folders given to sample the pool from")
    if size is not None and size < 1:
        raise ImagePoolError(f"pool size must be a positive number of images or None (all), got {size}")
    roots = [Path(s).expanduser().absolute() for s in sources]
    images: set[Path] = set()
    skipped: dict[Path, str] = {}
    for root in roots:
        scan = scan_images(root, include_subfolders)
        images.update(scan.images)
        skipped.update(scan.skipped)
    # Sorting first makes the order independent of file-system listing order and source order.
    order = sorted(images, key=str)
    random.Random(seed).shuffle(order)
    notes = []
    if size is not None and size > len(order):
        notes.append(f"requested {size} images but only {len(order)} are readable; using all of them")
        logger.warning("pool: %s (sources: %s)", notes[-1], ", ".join(map(str, roots)))
    kept = order if size is None else order[:size]
    ordered_skips = sorted(skipped.items(), key=lambda kv: display_path(kv[0]))
    if ordered_skips:
        logger.warning("pool: %s (all listed in the pool manifest)", describe_skipped(ordered_skips, full_paths=True))
    return PoolManifest(
        sources=[str(r) for r in roots],
        seed=seed,
        size=size,
        images=[str(p) for p in kept],
        skipped=[{"path": display_path(p), "reason": r} for p, r in ordered_skips],
        notes=notes,
    )


def manifest_from_config(data: DataConfig, seed: int) -> PoolManifest | None:
    """The pool a run config asks for: its manifest file, else a sample of image_dir, else None (synthetic)."""
    if data.manifest is not None:
        return PoolManifest.read(data.manifest)
    if data.image_dir is not None:
        return sample_pool([data.image_dir], data.pool_size, seed, data.include_subfolders)
    return None


@contextlib.contextmanager
def _strict_decoding():
    """Truncated files must fail: lmms-eval sets PIL's process-wide LOAD_TRUNCATED_IMAGES=True on
    import, which would otherwise let a cut-off image train silently in a worker that evaluates too."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _to_8_bit(im: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) grey to 8 bits by scaling; PIL's convert would clip all above 255 to white."""
    import numpy as np

    a = np.asarray(im).astype(np.float64)
    top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) <= 65535 else float(a.max())
    return Image.fromarray(np.clip(np.round(a * 255.0 / top), 0, 255).astype(np.uint8), mode="L")


def _cache_file(path: Path, cache_dir: Path, max_pixels: int) -> Path:
    """Where the downscaled copy of path lives: keyed by its path, size, mtime and the pixel cap."""
    st = path.stat()
    key = hashlib.sha256(os.fsencode(path.absolute()) + f"\0{st.st_size}\0{st.st_mtime_ns}\0{max_pixels}".encode())
    return Path(cache_dir) / f"{key.hexdigest()[:24]}.png"


def _read_cached(cached: Path) -> Image.Image | None:
    try:
        with Image.open(cached) as im, _strict_decoding():
            im.load()
            return im.convert("RGB")
    except Exception:  # noqa: BLE001 -- a damaged cache entry is rebuilt from the source image
        return None


def _write_cached(image: Image.Image, cached: Path) -> None:
    tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")  # ranks of one run may race for the same entry
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, cached)
    except OSError:  # the cache only saves time (a full disk or read-only run folder must not stop training)
        tmp.unlink(missing_ok=True)


def load_image(path: Path | str, cache_dir: Path | None = None, max_pixels: int = MAX_DECODED_PIXELS) -> Image.Image:
    """Decode one pool image as RGB, downscaled to at most max_pixels (once, if cache_dir); ImagePoolError naming the file if unusable."""
    path = Path(path)
    if not path.is_file():
        raise ImagePoolError(f"image file not found: {display_path(path)}")
    try:
        with Image.open(path) as im, _strict_decoding():
            target = decoded_size(*im.size, max_pixels)
            # A manifest written by hand (data.manifest) bypasses the scan; the processor would raise mid-run.
            problem = processor_problem(*target)
            if problem:
                raise ImagePoolError(f"image {display_path(path)} is unusable by the model: {problem}")
            big = target != im.size
            cached = _cache_file(path, cache_dir, max_pixels) if big and cache_dir is not None else None
            if cached is not None and cached.is_file() and (hit := _read_cached(cached)) is not None:
                return hit
            if big:
                im.draft(im.mode, target)  # JPEG decodes at 1/2..1/8 scale directly; other formats ignore this
            im.load()
            stored = im.size
            # Phone photos store their rotation in EXIF; the model should see them upright.
            im = ImageOps.exif_transpose(im)
            if im.size != stored:
                target = target[::-1]
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # Transparent regions become white, not the arbitrary colour stored under alpha 0.
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                rgb = Image.alpha_composite(background, rgba).convert("RGB")
            else:
                if im.mode.startswith("I"):
                    im = _to_8_bit(im)
                rgb = im.convert("RGB")
    except ImagePoolError:
        raise
    except Exception as e:  # decoding errors come in many PIL types; the trainer counts and skips them
        raise ImagePoolError(f"cannot decode image {display_path(path)}: {type(e).__name__}: {e}") from e
    if big:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS)
        if cached is not None:
            _write_cached(rgb, cached)
    return rgb
