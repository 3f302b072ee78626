import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from hpcm_tune import reference
from hpcm_tune.reference import CACHE_ENV, CODECS, ReferenceWarning, reference_points
from hpcm_tune.testing import make_image_folder, random_photo


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "reference"


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "data", n_train=1, n_test=2, size=(40, 56))


def _direct(paths, fmt, quality):
    """bpp and PSNR of a plain Pillow encode/decode (Pillow's default options), computed here independently."""
    bpps, psnrs = [], []
    for path in paths:
        original = np.asarray(Image.open(path).convert("RGB"))
        buf = io.BytesIO()
        Image.fromarray(original).save(buf, format=fmt, quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        bpps.append(len(buf.getvalue()) * 8 / (original.shape[0] * original.shape[1]))
        mse = np.mean((decoded / 255.0 - original / 255.0) ** 2)
        psnrs.append(-10 * math.log10(mse))
    return float(np.mean(bpps)), float(np.mean(psnrs)), bpps, psnrs


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_points_equal_a_direct_pillow_encode_of_the_test_images(cache, folder, codec):
    ref = reference_points(str(folder), codecs=(codec,))
    paths = sorted((folder / "test").iterdir())
    assert ref.images == [str(p) for p in paths]  # the test split, not train
    assert list(ref.points["quality"]) == list(CODECS.get(codec).qualities)
    for row in ref.points.itertuples():
        bpp, psnr, bpps, psnrs = _direct(paths, CODECS.get(codec).pil_format, row.quality)
        assert row.bpp == pytest.approx(bpp, rel=1e-12) and row.psnr == pytest.approx(psnr, rel=1e-12)
        per = ref.per_image[ref.per_image["quality"] == row.quality]
        assert list(per["bpp"]) == pytest.approx(bpps) and list(per["psnr"]) == pytest.approx(psnrs)
    bpp, psnr = ref.curve(codec)
    assert np.all(np.diff(bpp) > 0) and psnr[-1] > psnr[0]
    flat = [-10 * math.log10(np.mean((a / 255.0 - (a / 255.0).mean(axis=(0, 1))) ** 2))
            for a in (np.asarray(Image.open(p).convert("RGB")) for p in paths)]
    assert ref.flat_psnr == pytest.approx(np.mean(flat))


def test_eval_max_images_keeps_the_first_images(cache, folder):
    ref = reference_points(str(folder), eval_max_images=1, codecs=("jpeg",))
    assert ref.images == [str(sorted((folder / "test").iterdir())[0])]
    assert set(ref.per_image["image"]) == set(ref.images)


def test_second_call_reads_the_cache_without_encoding_or_loading(cache, folder, monkeypatch):
    first = reference_points(str(folder), codecs=("jpeg", "webp"))
    assert first.cached == [] and len(list(cache.glob("jpeg-*.json"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("encoded or loaded again despite a cache hit")

    monkeypatch.setattr(reference, "encode", fail)
    monkeypatch.setattr(reference, "evaluation_images", fail)
    again = reference_points(str(folder), codecs=("jpeg", "webp"))
    assert again.cached == ["jpeg", "webp"]
    assert again.points.equals(first.points) and again.flat_psnr == first.flat_psnr


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_rows", "wrong_key"])
def test_a_corrupt_cache_file_is_recomputed_not_trusted(cache, folder, damage):
    first = reference_points(str(folder), codecs=("jpeg",))
    (path,) = cache.glob("jpeg-*.json")
    text = path.read_text()
    content = json.loads(text)
    if damage == "garbage":
        path.write_bytes(b"\x00 not json")
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "wrong_rows":
        content["rows"] = content["rows"][:-1]
        path.write_text(json.dumps(content))
    else:
        content["key"]["qualities"] = [1]
        path.write_text(json.dumps(content))
    with pytest.warns(ReferenceWarning, match="unusable"):
        again = reference_points(str(folder), codecs=("jpeg",))
    assert again.cached == []  # re-encoded
    assert again.points.equals(first.points)
    assert json.loads(path.read_text())["rows"] == json.loads(text)["rows"]  # the file was rewritten whole


def test_changed_pixels_are_a_different_image_set(cache, folder):
    first = reference_points(str(folder), codecs=("jpeg",))
    target = sorted((folder / "test").iterdir())[0]
    Image.fromarray(random_photo(40, 56, seed=77)).save(target)
    again = reference_points(str(folder), codecs=("jpeg",))
    assert again.cached == [] and again.pixels_hash != first.pixels_hash
    assert not again.points["bpp"].equals(first.points["bpp"])


def test_a_stale_manifest_is_caught_by_the_pixels(cache, folder):
    """Same names, sizes and mtimes but different pixels (the manifest cannot see it): the pixel hash, checked
    before any encoding, starts again from the pixels."""
    reference_points(str(folder), codecs=("jpeg",))
    (manifest,) = cache.glob("images-*.json")
    content = json.loads(manifest.read_text())
    content["pixels"] = "0" * 64  # as if the images had changed under an unchanged fingerprint
    manifest.write_text(json.dumps(content))
    ref = reference_points(str(folder), codecs=("jpeg", "webp"))  # webp is not cached: loads, sees the mismatch
    assert ref.pixels_hash != "0" * 64 and json.loads(manifest.read_text())["pixels"] == ref.pixels_hash


def test_unknown_codec_lists_the_valid_ones(cache, folder):
    with pytest.raises(ValueError, match="valid: avif, jpeg, webp"):
        reference_points(str(folder), codecs=("jpeg2000",))


def test_a_codec_this_pillow_lacks_is_skipped_with_the_reason(cache, folder, monkeypatch):
    from PIL import features

    real = features.check
    monkeypatch.setattr(features, "check", lambda name: False if name == "avif" else real(name))
    ref = reference_points(str(folder), codecs=("jpeg", "avif"))
    assert "no AVIF support" in ref.skipped["avif"] and ref.codecs == ["jpeg"]


def test_missing_data_folder_raises(cache, tmp_path):
    with pytest.raises(ValueError, match="neither 'samples' nor an existing folder"):
        reference_points(str(tmp_path / "gone"), codecs=("jpeg",))


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert reference.cache_dir() == tmp_path / "reference"
    monkeypatch.delenv(CACHE_ENV)
    assert str(reference.cache_dir()).endswith(".cache/hpcm-tune/reference")


def test_samples_jpeg_ladder_covers_low_and_high_rates(cache):
    ref = reference_points("samples", codecs=("jpeg",))
    assert ref.images == ["chelsea", "coffee"]  # hpcm_tune.data.SAMPLE_TEST
    bpp, psnr = ref.curve("jpeg")
    assert bpp[0] < 0.3 and bpp[-1] > 2.0 and 20 < psnr[0] < psnr[-1] < 45


def test_compare_point_against_a_curve():
    from hpcm_tune.reference import compare_point

    curve = (np.array([0.2, 0.4, 0.8]), np.array([22.0, 26.0, 30.0]))
    inside = compare_point(0.4 * 2**0.5, 28.5, curve)  # halfway in log rate: the curve is at 28 dB there
    assert inside["beats"] is True and inside["margin_db"] == pytest.approx(0.5)
    assert compare_point(0.3, 22.0, curve)["beats"] is False
    assert compare_point(0.1, 22.5, curve)["beats"] is True  # dominates the lowest-rate point
    assert "lowest-rate point" in compare_point(0.1, 21.0, curve)["how"]
    assert compare_point(0.1, 21.0, curve)["beats"] is False
    assert compare_point(1.0, 40.0, curve)["beats"] is None  # beyond the codec's reach: undecided
    assert compare_point(float("nan"), 30.0, curve)["beats"] is None
