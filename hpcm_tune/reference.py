"""Reference codecs: JPEG, WebP and (where this Pillow build has it) AVIF on the engine's evaluation images.

A trained model's RD points mean little without a known codec on the same pictures: these are the points
analyze.py draws beside the models' curves and measures a "BD-rate vs JPEG" against. The images are exactly
the ones the engine evaluates on (``open_data(data)``, the test split, ``subset(eval_max_images)``, read by
``eval_images``). For each codec and quality of its ladder, every image is encoded with Pillow and decoded
again: bpp = mean over images of bytes*8/pixels, PSNR = mean over images of -10 log10 MSE on RGB in [0, 1].

Computed once per image set and cached on disk (``$HPCM_TUNE_CACHE/reference``, default
``~/.cache/hpcm-tune/reference``), one JSON file per codec keyed by the hash of the images' names and pixels,
the codec, its qualities and options, and the Pillow and codec-library versions. A small manifest per image set
(the data spec, eval_max_images, the test files' names, sizes and mtimes, and the source of hpcm_tune.data)
remembers the pixel hash, so a cache hit neither loads the images nor imports torch. Files are written to a
temporary name and renamed into place; a cache file that does not parse or does not match its key is
recomputed (with a warning), never trusted.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hpcm_tune.files import atomic_write
from hpcm_tune.registry import Registry

CACHE_ENV = "HPCM_TUNE_CACHE"  # the root of hpcm-tune's caches; reference points go to <root>/reference
DEFAULT_CACHE_ROOT = Path("~/.cache/hpcm-tune")
CACHE_SUBDIR = "reference"
CACHE_FORMAT = 1  # bump when the meaning of a cached row changes
SAMPLES = "samples"  # hpcm_tune.data.SAMPLES (not imported here: that module imports torch)


class ReferenceWarning(UserWarning):
    """A reference codec was skipped or a cache file was unusable (and recomputed)."""


@dataclass(frozen=True)
class Codec:
    """One reference codec: a Pillow format, its quality ladder and the fixed save() options (all part of the
    cache key). ``feature``: the PIL.features module this build must have (None: always built in)."""

    label: str
    pil_format: str
    qualities: tuple[int, ...]
    feature: str | None
    options: dict = field(default_factory=dict)

    def describe(self) -> str:
        """'JPEG (Pillow q1–95)', the legend label."""
        return f"{self.label} (Pillow q{min(self.qualities)}–{max(self.qualities)})"

    def library_version(self) -> str | None:
        from PIL import features

        try:
            return features.version(self.feature or "jpg")
        except ValueError:
            return None

    def unavailable(self) -> str | None:
        """None when this Pillow build can encode and decode the format, else why not."""
        import PIL
        from PIL import features

        if self.feature is not None:
            try:
                if not features.check(self.feature):
                    return f"this Pillow build ({PIL.__version__}) has no {self.label} support"
            except ValueError:
                return f"this Pillow version ({PIL.__version__}) does not know {self.label}"
        try:
            probe = np.full((8, 8, 3), 128, dtype=np.uint8)
            decode(encode(self, probe, self.qualities[0]))
        except Exception as err:  # any failure means the codec is unusable in this build
            return f"{self.label} encode/decode failed in this Pillow build: {type(err).__name__}: {err}"
        return None


# The one table of reference codecs. Ladders reach from each codec's lowest rate (JPEG q1 is about 0.18 bpp on the
# bundled test photos, the least JPEG can spend there; WebP and AVIF go lower) to about 3 bpp. Options are
# Pillow's defaults, written out so they are part of the cache key: JPEG 4:2:0 chroma subsampling, WebP method 4,
# AVIF speed 6.
CODECS: Registry[Codec] = Registry("reference codec")
CODECS.add("jpeg", Codec("JPEG", "JPEG", (1, 3, 5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95), None,
                         {"subsampling": 2, "optimize": False}))
CODECS.add("webp", Codec("WebP", "WEBP", (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95), "webp", {"method": 4}))
CODECS.add("avif", Codec("AVIF", "AVIF", (0, 10, 20, 30, 40, 50, 60, 70, 80, 90), "avif", {"speed": 6}))
# The codec the analysis measures BD-rates against.
ANCHOR = "jpeg"


def encode(codec: Codec, image: np.ndarray, quality: int) -> bytes:
    """The image (uint8 H x W x 3) as ``codec`` bytes at ``quality``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format=codec.pil_format, quality=int(quality),
                                                       **codec.options)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """-10 log10 MSE of two uint8 RGB images on [0, 1] (inf when identical)."""
    diff = (decoded.astype(np.float64) - original.astype(np.float64)) / 255.0
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def flat_psnr(image: np.ndarray) -> float:
    """PSNR of the image replaced by its own mean colour (float, per channel): what a code that says nothing
    about the picture reaches."""
    pixels = image.astype(np.float64) / 255.0
    return psnr(image, np.broadcast_to(pixels.mean(axis=(0, 1)) * 255.0, image.shape))


# ---------------------------------------------------------------------------------------------- the images


def cache_dir() -> Path:
    """``$HPCM_TUNE_CACHE/reference``, else ``~/.cache/hpcm-tune/reference``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else DEFAULT_CACHE_ROOT.expanduser()) / CACHE_SUBDIR


def evaluation_images(data: str = SAMPLES, eval_max_images: int = 0) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 H x W x 3) of the images the engine evaluates on: the test split of ``data``, its first
    ``eval_max_images`` (0: all), read by hpcm_tune.data.eval_images (unreadable files skipped, warned)."""
    from hpcm_tune.data import eval_images, open_data

    _, test = open_data(data)
    test = test.subset(int(eval_max_images))
    out = []
    for name, tensor in eval_images(test):
        pixels = tensor[0].permute(1, 2, 0).mul(255.0).round().clamp(0, 255).byte().numpy()
        out.append((name, np.ascontiguousarray(pixels)))
    if not out:
        raise ValueError(f"data {data!r}: no readable evaluation image")
    return out


def pixels_hash(images: list[tuple[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for name, pixels in images:
        h.update(json.dumps([name, list(pixels.shape)]).encode())
        h.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return h.hexdigest()


def _fingerprint(data: str, eval_max_images: int) -> dict | None:
    """What identifies the image set without reading pixels: the data spec, eval_max_images, the source of
    hpcm_tune.data (its sample table and split), and the test files' names, sizes and mtimes (for a folder) or
    scikit-image's version (for the samples). None when it cannot be known cheaply (then the pixels decide)."""
    spec = importlib.util.find_spec("hpcm_tune.data")
    if spec is None or spec.origin is None:
        return None
    out: dict = {"data": data, "eval_max_images": int(eval_max_images),
                 "data_module": hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()}
    if data == SAMPLES:
        try:
            out["scikit-image"] = importlib.metadata.version("scikit-image")
        except importlib.metadata.PackageNotFoundError:
            return None
        return out
    test = Path(data).expanduser() / "test"
    if not test.is_dir():
        return None
    out["data"] = str(test.resolve())
    out["files"] = sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in test.iterdir() if p.is_file())
    return json.loads(json.dumps(out))  # as it reads back from the cache file (lists, not tuples)


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- cache files


def _atomic_write_json(path: Path, value) -> None:
    atomic_write(path, json.dumps(value))


def _read_cached(path: Path, key: dict, check) -> dict | None:
    """The cached JSON object at ``path`` if it exists, parses, carries exactly ``key`` and passes ``check``;
    else None (with a warning when a file was there but unusable)."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
        if not isinstance(value, dict) or value.get("key") != key or not check(value):
            raise ValueError("content does not match its key")
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as err:
        warnings.warn(f"reference cache file {path} unusable ({err}); recomputing", ReferenceWarning, stacklevel=4)
        return None
    return value


def _codec_key(name: str, codec: Codec, image_hash: str) -> dict:
    import PIL

    return {"format": CACHE_FORMAT, "pixels": image_hash, "codec": name, "pil_format": codec.pil_format,
            "qualities": list(codec.qualities), "options": codec.options, "pillow": PIL.__version__,
            "library": codec.library_version()}


ROW_FIELDS = ("codec", "quality", "image", "height", "width", "bytes", "bpp", "psnr")


def _rows_ok(rows, names: list[str], codec: Codec) -> bool:
    expected = {(q, n) for q in codec.qualities for n in names}
    if not isinstance(rows, list) or len(rows) != len(expected):
        return False
    seen = set()
    for row in rows:
        if not isinstance(row, dict) or set(row) != set(ROW_FIELDS):
            return False
        if not (isinstance(row["bytes"], int) and row["bytes"] > 0 and isinstance(row["bpp"], float)
                and math.isfinite(row["bpp"]) and isinstance(row["psnr"], float) and not math.isnan(row["psnr"])):
            return False
        seen.add((row["quality"], row["image"]))
    return seen == expected


def _encode_all(name: str, codec: Codec, images: list[tuple[str, np.ndarray]]) -> list[dict]:
    rows = []
    for quality in codec.qualities:
        for image_name, pixels in images:
            data = encode(codec, pixels, quality)
            height, width = pixels.shape[:2]
            rows.append({"codec": name, "quality": int(quality), "image": image_name, "height": int(height),
                         "width": int(width), "bytes": len(data), "bpp": len(data) * 8.0 / (height * width),
                         "psnr": psnr(pixels, decode(data))})
    return rows


# ---------------------------------------------------------------------------------------------- the result


@dataclass
class ReferenceSet:
    """Reference codec points on one image set. ``points``: one row per codec and quality (codec, label,
    quality, bpp, psnr, images); ``per_image``: one row per codec, quality and image; ``skipped``: codec ->
    why it was not measured; ``cached``: the codecs read from the cache (not encoded in this call)."""

    data: str
    eval_max_images: int
    images: list[str]
    pixels_hash: str
    flat_psnr: float
    points: pd.DataFrame
    per_image: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)

    @property
    def codecs(self) -> list[str]:
        return list(dict.fromkeys(self.points["codec"]))

    def curve(self, codec: str) -> tuple[np.ndarray, np.ndarray]:
        """(bpp, PSNR) of ``codec``'s ladder, sorted by rate."""
        rows = self.points[self.points["codec"] == codec].sort_values("bpp")
        return rows["bpp"].to_numpy(dtype=np.float64), rows["psnr"].to_numpy(dtype=np.float64)

    def label(self, codec: str) -> str:
        return CODECS.get(codec).describe()


def compare_point(bpp: float, psnr: float, curve: tuple[np.ndarray, np.ndarray], name: str = "JPEG") -> dict:
    """Whether an R-D point (bpp, PSNR) beats a reference codec's curve (sorted by rate): within the curve's
    rates, PSNR above the curve (linear in log rate between its points); below its lowest rate, PSNR at least
    that of its lowest-rate point (the point dominates everything the codec can do there); above its highest
    rate, undecided. Returns ``{"beats": True | False | None, "margin_db": float | None, "how": text}``."""
    rates, quality = (np.asarray(v, dtype=np.float64) for v in curve)
    if len(rates) == 0 or not (math.isfinite(bpp) and math.isfinite(psnr)) or bpp <= 0:
        return {"beats": None, "margin_db": None, "how": f"n/a (no {name} curve or no finite point)"}
    if bpp < rates[0]:
        margin = psnr - quality[0]
        return {"beats": bool(margin >= 0), "margin_db": float(margin),
                "how": f"{'dominates' if margin >= 0 else 'does not dominate'} {name}'s lowest-rate point "
                       f"({rates[0]:.4f} bpp, {quality[0]:.2f} dB) at {bpp:.4f} bpp: {margin:+.2f} dB"}
    if bpp > rates[-1]:
        return {"beats": None, "margin_db": None, "how": f"n/a (above {name}'s highest rate, {rates[-1]:.3g} bpp)"}
    reference = float(np.interp(math.log(bpp), np.log(rates), quality))
    margin = psnr - reference
    return {"beats": bool(margin > 0), "margin_db": float(margin),
            "how": f"{'above' if margin > 0 else 'below'} {name}'s curve at {bpp:.4f} bpp by {abs(margin):.2f} dB"}


def reference_points(data: str = SAMPLES, eval_max_images: int = 0, codecs: tuple[str, ...] | None = None,
                     cache: str | Path | None = None) -> ReferenceSet:
    """Reference codec points on the engine's evaluation images of ``data`` (see the module docstring).

    ``codecs``: names in :data:`CODECS` (default all; unknown names raise ValueError listing the valid ones);
    those this Pillow build lacks are skipped and named in ``skipped``. ``cache``: the cache directory (default
    :func:`cache_dir`). Raises hpcm_tune.data.DataError (a ValueError) or OSError when the images cannot be read.
    """
    names = tuple(CODECS.names()) if codecs is None else tuple(codecs)
    chosen = {name: CODECS.get(name) for name in names}
    folder = Path(cache) if cache is not None else cache_dir()
    eval_max_images = int(eval_max_images)
    images: list[tuple[str, np.ndarray]] | None = None

    def load() -> list[tuple[str, np.ndarray]]:
        nonlocal images
        if images is None:
            images = evaluation_images(data, eval_max_images)
        return images

    # The image set: from its manifest when the fingerprint matches, else from the pixels.
    fingerprint = _fingerprint(data, eval_max_images)
    manifest = None
    manifest_path = folder / f"images-{_key_hash(fingerprint)[:24]}.json" if fingerprint is not None else None
    if manifest_path is not None:
        manifest = _read_cached(manifest_path, fingerprint, lambda v: isinstance(v.get("pixels"), str)
                                and isinstance(v.get("names"), list) and isinstance(v.get("flat_psnr"), float))
    if manifest is None:
        loaded = load()
        manifest = {"key": fingerprint, "pixels": pixels_hash(loaded), "names": [n for n, _ in loaded],
                    "flat_psnr": float(np.mean([flat_psnr(p) for _, p in loaded]))}
        if manifest_path is not None:
            _atomic_write_json(manifest_path, manifest)
    image_names = list(manifest["names"])

    rows: list[dict] = []
    skipped: dict[str, str] = {}
    cached: list[str] = []
    for name, codec in chosen.items():
        # The key holds the codec library's version, so a hit means this build has the codec: probe on a miss.
        key = _codec_key(name, codec, manifest["pixels"])
        path = folder / f"{name}-{_key_hash(key)[:24]}.json"
        hit = _read_cached(path, key, lambda v, c=codec: _rows_ok(v.get("rows"), image_names, c))
        if hit is not None:
            rows.extend(hit["rows"])
            cached.append(name)
            continue
        reason = codec.unavailable()
        if reason is not None:
            skipped[name] = reason
            continue
        loaded = load()
        if pixels_hash(loaded) != manifest["pixels"]:  # the manifest was stale: start again from the pixels
            Path(manifest_path).unlink(missing_ok=True)
            return reference_points(data, eval_max_images, codecs, cache)
        codec_rows = _encode_all(name, codec, loaded)
        _atomic_write_json(path, {"key": key, "rows": codec_rows})
        rows.extend(codec_rows)
    per_image = pd.DataFrame.from_records(rows, columns=list(ROW_FIELDS))
    if per_image.empty:
        points = pd.DataFrame(columns=["codec", "label", "quality", "bpp", "psnr", "images"])
    else:
        grouped = per_image.groupby(["codec", "quality"], sort=False)
        points = grouped[["bpp", "psnr"]].mean().reset_index()
        points["images"] = grouped.size().to_numpy()
        points.insert(1, "label", [CODECS.get(c).describe() for c in points["codec"]])
    return ReferenceSet(data=data, eval_max_images=eval_max_images, images=image_names,
                        pixels_hash=manifest["pixels"], flat_psnr=float(manifest["flat_psnr"]), points=points,
                        per_image=per_image, skipped=skipped, cached=cached)


__all__ = ["ANCHOR", "CACHE_ENV", "CODECS", "Codec", "ReferenceSet", "ReferenceWarning", "cache_dir", "decode",
           "encode", "evaluation_images", "flat_psnr", "pixels_hash", "psnr", "reference_points"]
