"""Training crops and evaluation images: CompressAI's ImageFolder layout or the embedded ``samples``.

- ``data = <root>``: a CompressAI ImageFolder tree, root/train and root/test (Flickr2W, Kodak, CLIC ...).
- ``data = "samples"``: the colour photos bundled with scikit-image (no network), split by a fixed table into
  train and test (SAMPLE_TEST).

Training draws random ``patch_size`` crops with horizontal and vertical flips (HPCM's official training uses
random 256x256 crops). Evaluation uses whole images, padded to the model's ``pad_multiple`` and cropped back
(``pad_to_multiple`` / ``crop_to``), never centre crops (docs/design.md §8).

Determinism: every random choice of a crop comes from a per-sample seed that the sampler draws in the main
process from (seed, epoch), so the batches of an epoch do not depend on the number of DataLoader workers, on
worker scheduling, or on whether the run was resumed: the data order's whole state is (seed, epoch).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from hpcm_tune.config import DataConfig

SAMPLES = "samples"


def _stereo(side: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return skimage.data.stereo_motorcycle()[side]

    return load


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


# The embedded photos: name -> loader (all ship with scikit-image and load offline; the motorcycle pair is
# skimage.data.stereo_motorcycle()).
SAMPLE_IMAGES: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "coffee": _skimage("coffee"),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "motorcycle_left": _stereo(0),
    "motorcycle_right": _stereo(1),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
}
# The fixed test split: two natural photos of modest size (evaluation on CPU stays quick). The stereo pair
# stays together in train so the test images share no content with training.
SAMPLE_TEST: tuple[str, ...] = ("chelsea", "coffee")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """The data cannot be used (missing or empty folder); raised before training starts."""


@functools.cache
def load_sample(name: str) -> np.ndarray:
    """One embedded photo as uint8 (H, W, 3), read-only (cached: several runs in one process share it)."""
    image = np.ascontiguousarray(SAMPLE_IMAGES[name]()[..., :3])
    image.setflags(write=False)
    return image


class ImageSource:
    """An ordered list of named images, loaded as uint8 (H, W, 3) arrays."""

    def __init__(self, names: Sequence[str], loader: Callable[[int], np.ndarray],
                 sizes: Sequence[tuple[int, int]]) -> None:
        self.names = list(names)
        self.sizes = list(sizes)  # (height, width) of each image
        self._loader = loader

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> np.ndarray:
        return self._loader(index)

    def subset(self, count: int) -> ImageSource:
        """The first ``count`` images (0: all)."""
        if count <= 0 or count >= len(self):
            return self
        return ImageSource(self.names[:count], self._loader, self.sizes[:count])


# The largest image the loaders decode (64 Mpx, e.g. 8192 x 8192; 192 MB as uint8 RGB).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024


def _pil_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class _FileLoader:
    """Picklable loader of a list of files (DataLoader workers may be spawned, not forked)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __call__(self, index: int) -> np.ndarray:
        return _pil_rgb(self.paths[index])


class _ArrayLoader:
    def __init__(self, images: Sequence[np.ndarray]) -> None:
        self.images = list(images)

    def __call__(self, index: int) -> np.ndarray:
        return self.images[index]


def _folder_source(folder: Path) -> ImageSource:
    """Every readable image file of ``folder`` (sorted); unreadable files are skipped with a warning."""
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist (expected the CompressAI layout root/train, root/test)")
    paths, sizes = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            with Image.open(path) as image:  # reads the header only: cheap for large datasets
                width, height = image.size
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
            warnings.warn(f"skipping unreadable image {path}: {error}", stacklevel=3)
            continue
        if width * height > MAX_IMAGE_PIXELS:  # a header can claim any size; decoding it would exhaust memory
            warnings.warn(f"skipping image {path}: its header claims {width}x{height} pixels; allowed: at most "
                          f"{MAX_IMAGE_PIXELS}", stacklevel=3)
            continue
        paths.append(path)
        sizes.append((height, width))
    if not paths:
        raise DataError(f"data folder {folder} holds no readable image ({', '.join(IMAGE_SUFFIXES)})")
    return ImageSource([str(p) for p in paths], _FileLoader(paths), sizes)


def _sample_source(names: Sequence[str]) -> ImageSource:
    images = [load_sample(n) for n in names]
    return ImageSource(names, _ArrayLoader(images), [im.shape[:2] for im in images])


def open_data(data: str) -> tuple[ImageSource, ImageSource]:
    """(train, test) images of ``data``: ``samples`` or an ImageFolder root. Fails with DataError at once on a
    missing or empty folder, so no trial starts training on nothing."""
    if data == SAMPLES:
        train = [n for n in SAMPLE_IMAGES if n not in SAMPLE_TEST]
        return _sample_source(train), _sample_source(SAMPLE_TEST)
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"data: {data!r} is neither 'samples' nor an existing folder (root/train, root/test)")
    return _folder_source(root / "train"), _folder_source(root / "test")


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1]."""
    # A copy: crops are views (maybe flipped, maybe of a read-only cached sample) and torch wants owned memory.
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)


def _upscale(image: np.ndarray, min_side: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    factor = min_side / min(h, w)
    size = (max(min_side, round(w * factor)), max(min_side, round(h * factor)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BICUBIC))


class TrainPatches(Dataset):
    """Random crops with flips. Indexed by (image index, sample seed) pairs from EpochSampler, so the crop is a
    pure function of its key. Images smaller than the patch are upscaled (bicubic) with one warning."""

    def __init__(self, source: ImageSource, patch_size: int) -> None:
        if len(source) == 0:
            raise DataError("no training images")
        self.source = source
        self.patch_size = patch_size
        small = [n for n, (h, w) in zip(source.names, source.sizes) if min(h, w) < patch_size]
        if small:
            shown = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
            warnings.warn(f"{len(small)} training image(s) smaller than patch_size {patch_size} are upscaled: "
                          f"{shown}", stacklevel=2)

    def __len__(self) -> int:
        return len(self.source)

    def _load(self, index: int) -> np.ndarray:
        # A file whose header read but whose pixels do not (truncated) is replaced by the next image, with a
        # warning naming it; the replacement is deterministic.
        for attempt in range(len(self.source)):
            i = (index + attempt) % len(self.source)
            try:
                return self.source.load(i)
            except (OSError, ValueError) as error:
                warnings.warn(f"skipping unreadable image {self.source.names[i]}: {error}", stacklevel=2)
        raise DataError("no training image could be read")

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, sample_seed = key
        image = self._load(index)
        p = self.patch_size
        if min(image.shape[:2]) < p:
            image = _upscale(image, p)
        rng = np.random.default_rng(sample_seed)
        top = int(rng.integers(0, image.shape[0] - p + 1))
        left = int(rng.integers(0, image.shape[1] - p + 1))
        crop = image[top : top + p, left : left + p]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.5:
            crop = crop[::-1]
        return to_tensor(crop)


class EpochSampler(Sampler):
    """Yields ``num_samples`` (image index, sample seed) keys per epoch: concatenated random permutations of the
    images and one crop seed per sample, all drawn from PCG64(seed, epoch). Call ``set_epoch`` before each
    epoch; the state to resume from is just (seed, epoch)."""

    def __init__(self, num_images: int, num_samples: int, seed: int) -> None:
        self.num_images = num_images
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def keys(self) -> list[tuple[int, int]]:
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
        rounds = -(-self.num_samples // self.num_images)
        order = np.concatenate([rng.permutation(self.num_images) for _ in range(rounds)])[: self.num_samples]
        seeds = rng.integers(0, 2**63 - 1, size=self.num_samples, dtype=np.int64)
        return [(int(i), int(s)) for i, s in zip(order, seeds)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.keys())

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])


def _worker_init(_: int) -> None:
    # Crops are cheap; one thread per worker keeps workers from fighting the training step for cores.
    torch.set_num_threads(1)


def steps_in_epoch(num_images: int, batch_size: int, steps_per_epoch: int | None) -> int:
    """``steps_per_epoch`` if given, else one pass over the training images (at least one batch)."""
    return steps_per_epoch if steps_per_epoch is not None else max(1, num_images // batch_size)


def train_loader(source: ImageSource, config: DataConfig, seed: int, steps_per_epoch: int | None,
                 pin_memory: bool = False) -> tuple[DataLoader, EpochSampler]:
    """The training DataLoader (persistent workers) and its sampler; call ``sampler.set_epoch(e)`` per epoch."""
    dataset = TrainPatches(source, config.patch_size)
    steps = steps_in_epoch(len(source), config.batch_size, steps_per_epoch)
    sampler = EpochSampler(len(source), steps * config.batch_size, seed)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if config.num_workers > 0 else None,
    )
    return loader, sampler


def eval_images(source: ImageSource) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole image as (1, 3, H, W) in [0, 1]) for every test image; unreadable ones are skipped with a
    warning naming the file."""
    for i, name in enumerate(source.names):
        try:
            image = source.load(i)
        except (OSError, ValueError) as error:
            warnings.warn(f"skipping unreadable image {name}: {error}", stacklevel=2)
            continue
        yield name, to_tensor(image).unsqueeze(0)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad (N, C, H, W) symmetrically to multiples of ``multiple`` (CompressAI's evaluation convention);
    returns the padded tensor and the (left, right, top, bottom) padding for ``crop_to``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return (F.pad(x, pad, mode="constant", value=0.0) if ph or pw else x), pad


def crop_to(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo ``pad_to_multiple``."""
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


__all__ = [
    "SAMPLES",
    "SAMPLE_IMAGES",
    "SAMPLE_TEST",
    "DataError",
    "EpochSampler",
    "ImageSource",
    "TrainPatches",
    "crop_to",
    "eval_images",
    "load_sample",
    "open_data",
    "pad_to_multiple",
    "steps_in_epoch",
    "to_tensor",
    "train_loader",
]
