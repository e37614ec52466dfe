"""Your own images as a dataset: a folder of image files (PNG, JPEG, BMP, TIFF, whatever Pillow reads),
flat or with one sub-folder per class, or an array file (.npz holding `x` and optionally `y`, or .npy).

Everything is decoded once into uint8 (N, C, H, W) (float32 in [0, 1] for float arrays) and, for a
folder, cached under a key of its files' names, sizes and modification times, so a second run skips
the decoding and a changed folder is decoded again. Bad input is a DataError naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .runfiles import atomic_write

CACHE_VERSION = 1  # bump when the cached decoding changes
# Peak bytes held per pixel value while a dataset is loaded: the uint8 images (1), their float32 copy
# in [0, 1] (4) and the float32 binarized or split copies built from it (4).
BYTES_PER_VALUE = 9
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
OWN_SPLIT_FOLDERS = ("train", "valid", "test")  # a folder holding train/ and test/ (valid/ optional)


class DataError(RuntimeError):
    """The data could not be found or is damaged; the message names the file and the problem."""


@dataclass
class Decoded:
    """A source's images, decoded: what data.py splits and scales."""

    x: np.ndarray  # (N, C, H, W): uint8 0-255, or float32 in [0, 1] (float arrays)
    y: np.ndarray  # (N,) int64 labels; -1 where the source has none
    classes: tuple[str, ...]  # label -> class name (sub-folder names, sorted); () without classes
    part: np.ndarray | None  # (N,) int8 index into OWN_SPLIT_FOLDERS where the source has its own split
    fingerprint: str  # identifies the source's content (files' names, sizes, times; an array file's bytes)
    notes: list[str] = field(default_factory=list)  # conversions made, each said once
    skipped: int = 0  # bad files skipped (--skip-bad)


def parse_source(dataset: str) -> tuple[str, Path]:
    """'folder:PATH' -> ("folder", PATH); 'npz:PATH' -> ("npz", PATH)."""
    kind, _, path = dataset.partition(":")
    if kind not in ("folder", "npz") or not path:
        raise DataError(f"{dataset!r} is not a source: write folder:PATH or npz:PATH")
    return kind, Path(path).expanduser()


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), or a large number if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_memory(what: str, n: int, shape: tuple[int, int, int]) -> None:
    """DataError if n images of `shape` (C, H, W) would not fit in memory, saying how much they need."""
    need = n * int(np.prod(shape)) * BYTES_PER_VALUE
    have = available_memory()
    if need > have:
        c, h, w = shape
        raise DataError(f"{what}: {n} images of {c}x{h}x{w} need about {need / 1e9:.1f} GB of memory "
                        f"({BYTES_PER_VALUE} bytes per pixel value: uint8 and float32 copies) but only "
                        f"{have / 1e9:.1f} GB are available; use fewer images or a smaller --image-size")


def read_source(dataset: str, *, channels: int | None = None, image_size: tuple[int, int] | None = None,
                skip_bad: bool = False, cache: Path | None = None,
                log: Callable[[str], None] | None = None) -> Decoded:
    """Decode a 'folder:PATH' or 'npz:PATH' source (see the module docstring). `channels`: 1 or 3 (None:
    1 if every image is grey, else 3); `image_size`: (H, W) to resize to (None: the images' common size);
    `skip_bad`: skip files that are not images or are truncated; `cache`: folder for decoded copies."""
    kind, path = parse_source(dataset)
    log = log or _stderr
    if kind == "folder":
        return read_folder(path, channels=channels, image_size=image_size, skip_bad=skip_bad, cache=cache, log=log)
    return read_arrays(path, channels=channels, image_size=image_size, log=log)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- folders of image files --------------------------------------------------------------------------

def list_folder(root: Path) -> tuple[list[tuple[Path, str | None, int | None]], tuple[str, ...]]:
    """Files of an image folder: [(path, class name or None, own-split part or None)] sorted, and the classes.

    Layouts: flat (every file one unlabelled image); one sub-folder per class; or train/ and test/
    (valid/ optional) each flat or with class sub-folders. Hidden files (".name") are ignored.
    """
    if not root.is_dir():
        raise DataError(f"{root}: no such folder" if not root.exists() else f"{root}: not a folder")
    parts = [p for p in OWN_SPLIT_FOLDERS if (root / p).is_dir()]
    if "train" in parts and "test" in parts:
        tops = [(root / p, OWN_SPLIT_FOLDERS.index(p)) for p in parts]
    else:
        tops = [(root, None)]
    files: list[tuple[Path, str | None, int | None]] = []
    for top, part in tops:
        entries = sorted(e for e in top.iterdir() if not e.name.startswith("."))
        folders = [e for e in entries if e.is_dir()]
        loose = [e for e in entries if e.is_file()]
        if folders and loose:
            raise DataError(f"{top}: holds files ({loose[0].name}) beside class sub-folders ({folders[0].name}); "
                            "put every image in a class sub-folder, or use a flat folder")
        files += [(f, None, part) for f in loose]
        for folder in folders:
            files += [(f, folder.name, part) for f in sorted(folder.rglob("*"))
                      if f.is_file() and not any(s.startswith(".") for s in f.relative_to(folder).parts)]
    classes = tuple(sorted({c for _, c, _ in files if c is not None}))
    if not files:
        raise DataError(f"{root}: no image files in it (looked for files in the folder and its sub-folders)")
    return files, classes


def folder_fingerprint(root: Path, files: list[tuple[Path, str | None, int | None]]) -> str:
    """SHA-256 of the files' relative names, sizes and modification times: a change to any file shows."""
    h = hashlib.sha256()
    for path, _, _ in files:
        st = path.stat()
        h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def read_folder(root: Path, *, channels: int | None, image_size: tuple[int, int] | None, skip_bad: bool,
                cache: Path | None, log: Callable[[str], None]) -> Decoded:
    """Decode every image under `root` (see `list_folder`), or read the cached decoding of the same files."""
    from PIL import Image  # Pillow: only folder sources need it

    files, classes = list_folder(root)
    fingerprint = folder_fingerprint(root, files)
    options = {"version": CACHE_VERSION, "channels": channels, "image_size": list(image_size or []),
               "skip_bad": skip_bad}
    key = hashlib.sha256(json.dumps([fingerprint, options]).encode()).hexdigest()
    cache_file = None
    if cache is not None:
        cache_file = cache / (hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20] + ".npz")
        cached = _read_cache(cache_file, key)
        if cached is not None:
            log(f"{root}: {len(cached.x)} images, decoded copy from {cache_file}")
            _report(cached, log)
            return cached
        if cache_file.exists():
            log(f"{root}: changed since it was cached (files' names, sizes or times differ); decoding again")

    # Headers first (cheap: Pillow reads no pixels yet): shapes and modes, for the size and memory checks.
    headers, bad = [], []
    for path, name, part in files:
        try:
            with Image.open(path) as img:
                headers.append((path, name, part, img.size, img.mode, _grey_palette(img)))
        except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
            bad.append(_bad(path, "not an image Pillow can read", e, skip_bad))
    if not headers:
        raise DataError(f"{root}: none of its {len(files)} files is an image Pillow can read ({bad[0]})")
    if image_size is None:
        sizes = {}
        for path, _, _, size, _, _ in headers:
            sizes.setdefault(size, path)
            if len(sizes) > 1:
                (w1, h1), p1 = next(iter(sizes.items()))
                raise DataError(f"{root}: images differ in size: {p1} is {h1}x{w1}, {path} is {size[1]}x{size[0]} "
                                "(HxW); pass --image-size HxW to resize them all")
        w, h = headers[0][3]
    else:
        h, w = image_size
    all_grey = all(mode in GREY_MODES or (mode == "P" and grey) for _, _, _, _, mode, grey in headers)
    check_memory(str(root), len(headers), (channels or (1 if all_grey else 3), h, w))

    notes: dict[str, int] = {}
    arrays, labels, parts = [], [], []
    for path, name, part, _, _, _ in headers:
        try:
            with Image.open(path) as img:
                img.load()  # decodes the pixels: a truncated or damaged file fails here
                arrays.append(_to_array(img, (h, w), notes))
        except Exception as e:
            bad.append(_bad(path, "truncated or damaged image", e, skip_bad))
            continue
        labels.append(classes.index(name) if name is not None else -1)
        parts.append(part)
    if not arrays:
        raise DataError(f"{root}: no readable images ({len(bad)} bad files skipped)")
    if channels is None:  # grey: every image decoded to one channel, or RGB with R = G = B everywhere
        channels = 1 if all(a.shape[0] == 1 or (a[0] == a[1]).all() and (a[1] == a[2]).all() for a in arrays) else 3
    x = np.stack([_channels(a, channels, notes) for a in arrays])  # (N, C, H, W) uint8
    own = None if parts[0] is None else np.asarray(parts, dtype=np.int8)
    decoded = Decoded(x=x, y=np.asarray(labels, dtype=np.int64), classes=classes, part=own,
                      fingerprint=fingerprint, notes=[f"{n} {what}" for what, n in notes.items()], skipped=len(bad))
    log(f"{root}: decoded {len(x)} images of {channels}x{h}x{w}"
        + (f" in {len(classes)} classes" if classes else "")
        + (f" (cached in {cache_file})" if cache_file else ""))
    _report(decoded, log)
    if cache_file is not None:
        _write_cache(cache_file, key, decoded)
    return decoded


def _bad(path: Path, what: str, error: Exception, skip_bad: bool) -> str:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    if not skip_bad:
        raise DataError(f"{path}: {what} ({reason}); remove it, or pass --skip-bad to skip such files")
    return f"{path}: {what}"


def _grey_palette(img) -> bool:
    """Whether a palette ("P") image's colours are all grey (R = G = B)."""
    if img.mode != "P":
        return False
    palette = img.getpalette() or []
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))


def _to_array(img, size: tuple[int, int], notes: dict[str, int]) -> np.ndarray:
    """A Pillow image -> uint8 (1, H, W) or (3, H, W), converting what the model cannot take (counted in
    `notes`): 16-bit to 8-bit, palettes to their colours, alpha dropped, other modes to RGB."""
    from PIL import Image

    def note(what: str) -> None:
        notes[what] = notes.get(what, 0) + 1

    if img.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img, dtype=np.int64)
        if values.max(initial=0) > 255 or img.mode != "I":
            note("16-bit images scaled to 8 bits (value / 257)")
            img = Image.fromarray(np.clip(np.rint(values / 257), 0, 255).astype(np.uint8), "L")
        else:
            img = Image.fromarray(values.astype(np.uint8), "L")
    elif img.mode == "F":
        note("floating-point images converted to 8 bits (clipped to 0-255)")
        img = img.convert("L")
    elif img.mode == "P":
        note("palette images converted to their colours")
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ALPHA_MODES:
        note("images with an alpha channel: alpha dropped (colours kept as stored)")
        img = img.convert("L" if img.mode in ("LA", "La") else "RGB")
    if img.mode not in ("L", "RGB"):
        img = img.convert("L" if img.mode == "1" else "RGB")
    if img.size != (size[1], size[0]):
        note(f"images resized to {size[0]}x{size[1]} (bilinear)")
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, H, W)


def _channels(a: np.ndarray, channels: int, notes: dict[str, int]) -> np.ndarray:
    """(1 or 3, H, W) -> (channels, H, W): grey repeated to RGB, or RGB to grey (ITU-R 601 luma, as Pillow)."""
    if a.shape[0] == channels:
        return a
    if channels == 3:
        return np.repeat(a, 3, axis=0)
    if not ((a[0] == a[1]).all() and (a[1] == a[2]).all()):
        notes["colour images converted to grey (--channels 1)"] = notes.get(
            "colour images converted to grey (--channels 1)", 0) + 1
    return _luma(a.astype(np.float32)).round().clip(0, 255).astype(np.uint8)[None]


def _luma(rgb: np.ndarray) -> np.ndarray:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _report(d: Decoded, log: Callable[[str], None]) -> None:
    for n in d.notes:
        log(f"note: {n}")
    if d.skipped:
        log(f"note: skipped {d.skipped} bad files (--skip-bad)")


def _read_cache(path: Path, key: str) -> Decoded | None:
    """The cached decoding if `path` holds one for `key`; None if missing, stale or damaged (re-decoded)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            if meta.get("key") != key:
                return None
            return Decoded(x=f["x"], y=f["y"], classes=tuple(meta["classes"]),
                           part=f["part"] if "part" in f.files else None, fingerprint=meta["fingerprint"],
                           notes=meta["notes"], skipped=meta["skipped"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None


def _write_cache(path: Path, key: str, d: Decoded) -> None:
    """Store the decoding atomically (a crash leaves the old cache or none); a failure only costs speed."""
    meta = {"key": key, "classes": list(d.classes), "fingerprint": d.fingerprint, "notes": d.notes,
            "skipped": d.skipped}
    arrays = {"x": d.x, "y": d.y, "meta": np.asarray(json.dumps(meta))}
    if d.part is not None:
        arrays["part"] = d.part
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buffer.getvalue())
    except OSError:
        pass


# --- array files --------------------------------------------------------------------------------------

def _array_header(path: Path) -> tuple[tuple[int, ...], np.dtype, list[str]]:
    """(shape, dtype) of the images in an .npy, or of `x` in an .npz, without reading the data; and the
    .npz's array names."""
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as f:
                shape, dtype = _npy_header(f)
                return shape, dtype, ["x"]
        with zipfile.ZipFile(path) as z:
            names = [n.removesuffix(".npy") for n in z.namelist()]
            if "x" not in names:
                raise DataError(f"{path}: no array named x in it (found {', '.join(names) or 'none'}); save the "
                                "images as x (and the labels, if any, as y): np.savez(path, x=images, y=labels)")
            with z.open("x.npy") as f:
                shape, dtype = _npy_header(f)
                return shape, dtype, names
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable {path.suffix} file ({e})") from None


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    return shape, dtype


def read_arrays(path: Path, *, channels: int | None, image_size: tuple[int, int] | None,
                log: Callable[[str], None]) -> Decoded:
    """Images x of shape (N, H, W) or (N, H, W, C), uint8 0-255 or float in [0, 1] (uint16 and bool too),
    and optional int labels y (N,) from an .npz (or x alone from an .npy)."""
    if path.suffix not in (".npz", ".npy"):
        raise DataError(f"{path}: an array source is an .npz (arrays x and y) or an .npy file (x)")
    shape, dtype, names = _array_header(path)
    expected = "expected x of shape (N, H, W) or (N, H, W, C) with C = 1 or 3, uint8 0-255 or float in [0, 1]"
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)) or 0 in shape[1:]:
        raise DataError(f"{path}: x has shape {shape}; {expected}")
    if not (dtype == np.uint8 or dtype == np.uint16 or dtype == np.bool_ or np.issubdtype(dtype, np.floating)):
        raise DataError(f"{path}: x is {dtype}; {expected} (other integers are ambiguous: divide by 255 or 65535)")
    if shape[0] == 0:
        raise DataError(f"{path}: x holds no images (shape {shape})")
    n, h, w = shape[:3]
    c = channels or (1 if len(shape) == 3 else min(shape[3], 3))
    out_h, out_w = image_size or (h, w)
    check_memory(str(path), n, (c, out_h, out_w))
    try:
        if path.suffix == ".npy":
            x, y = np.load(path, allow_pickle=False), None
        else:
            with np.load(path, allow_pickle=False) as f:
                x, y = f["x"], (f["y"] if "y" in names else None)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: cannot read its arrays ({e})") from None
    notes = []
    if x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    else:
        x = x.transpose(0, 3, 1, 2)  # (N, C, H, W)
    if x.shape[1] == 4:
        notes.append("alpha channel dropped (the fourth of x's channels)")
        x = x[:, :3]
    if x.dtype == np.uint16:
        notes.append("16-bit values scaled to [0, 1] (value / 65535)")
        x = x.astype(np.float32) / 65535
    elif x.dtype == np.bool_:
        x = x.astype(np.float32)
    elif x.dtype != np.uint8:
        x = x.astype(np.float32)
        bad = ~((x >= 0) & (x <= 1)).reshape(len(x), -1).all(1)  # NaN fails both comparisons
        if bad.any():
            i = int(bad.nonzero()[0][0])
            raise DataError(f"{path}: x[{i}] has values outside [0, 1] (or NaN); {expected}")
    if x.shape[1] != c:
        if c == 3:
            x = np.repeat(x, 3, axis=1)
        else:
            notes.append("colour images converted to grey (--channels 1; ITU-R 601 luma)")
            luma = _luma(x.astype(np.float32).transpose(1, 0, 2, 3))
            grey = luma.round().clip(0, 255).astype(np.uint8) if x.dtype == np.uint8 else luma.astype(np.float32)
            x = grey[:, None]
    if (out_h, out_w) != (h, w):
        notes.append(f"images resized to {out_h}x{out_w} (bilinear, antialiased)")
        x = _resize(x, (out_h, out_w))
    if y is not None:
        y = np.asarray(y)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: y has shape {y.shape} and dtype {y.dtype}; expected whole-number labels of "
                            f"shape ({n},), one per image")
        y = y.astype(np.int64)
    else:
        y = np.full(n, -1, dtype=np.int64)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    decoded = Decoded(x=np.ascontiguousarray(x), y=y, classes=(), part=None, fingerprint=digest.hexdigest(),
                      notes=notes)
    log(f"{path}: {n} images of {c}x{out_h}x{out_w} ({'uint8' if x.dtype == np.uint8 else 'float in [0, 1]'})")
    _report(decoded, log)
    return decoded


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, C, H, W) -> (N, C, *size), bilinear with antialiasing (torch); uint8 stays uint8."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(x).float()
    t = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    if x.dtype == np.uint8:
        return t.round().clamp(0, 255).to(torch.uint8).numpy()
    return t.clamp(0, 1).numpy()
