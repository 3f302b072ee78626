import pytest
import torch

from hpcm_tune.config import DataConfig
from hpcm_tune.data import (
    SAMPLE_IMAGES,
    SAMPLE_TEST,
    DataError,
    EpochSampler,
    TrainPatches,
    crop_to,
    eval_images,
    open_data,
    pad_to_multiple,
    steps_in_epoch,
    train_loader,
)
from hpcm_tune.testing import make_image_folder


def _batches(loader, sampler, epoch):
    sampler.set_epoch(epoch)
    return [b.clone() for b in loader]


def test_samples_load_offline_and_split_deterministically():
    train, test = open_data("samples")
    assert len(test) >= 2 and tuple(test.names) == SAMPLE_TEST
    assert set(train.names).isdisjoint(test.names)
    assert set(train.names) | set(test.names) == set(SAMPLE_IMAGES)
    for i in range(len(train)):
        image = train.load(i)
        assert image.dtype.name == "uint8" and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[:2] == tuple(train.sizes[i])
    assert open_data("samples")[0].names == train.names


def test_image_folder_skips_unreadable_files_naming_them_and_upscales_small_ones(tmp_path):
    root = make_image_folder(tmp_path / "ds", n_train=2, n_test=2, size=(48, 64), corrupt=1, small=1)
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*corrupt0\.png"):
        train, test = open_data(str(root))
    assert len(train) == 3 and len(test) == 2  # 2 photos + the small one; the corrupt one is gone
    with pytest.warns(UserWarning, match=r"1 training image\(s\) smaller than patch_size 32 are upscaled: .*small0"):
        patches = TrainPatches(train, 32)
    small = train.names.index(next(n for n in train.names if "small0" in n))
    crop = patches[(small, 7)]
    assert crop.shape == (3, 32, 32) and float(crop.min()) >= 0.0 and float(crop.max()) <= 1.0


@pytest.mark.parametrize("layout", ["missing", "no_test", "empty_train"])
def test_missing_or_empty_folders_fail_before_training(tmp_path, layout):
    root = tmp_path / "ds"
    if layout != "missing":
        make_image_folder(root, n_train=1, n_test=1, size=(32, 32))
    if layout == "no_test":
        for f in (root / "test").iterdir():
            f.unlink()
        (root / "test").rmdir()
    if layout == "empty_train":
        for f in (root / "train").iterdir():
            f.unlink()
    with pytest.raises(DataError, match="ds"):
        open_data(str(root))


def test_crops_are_a_pure_function_of_the_key_and_flips_happen(tmp_path):
    train, _ = open_data(str(make_image_folder(tmp_path / "ds", n_train=1, n_test=1, size=(40, 40))))
    patches = TrainPatches(train, 32)
    assert torch.equal(patches[(0, 123)], patches[(0, 123)])
    crops = [patches[(0, s)] for s in range(40)]
    assert any(not torch.equal(crops[0], c) for c in crops[1:])
    # With a 40x40 image and 32x32 crops, a flipped crop is a mirror of some unflipped crop position.
    image = torch.from_numpy(train.load(0)).permute(2, 0, 1).float() / 255
    windows = {(t, l): image[:, t : t + 32, l : l + 32] for t in range(9) for l in range(9)}
    flipped = [c for c in crops if not any(torch.equal(c, w) for w in windows.values())]
    assert flipped and all(any(torch.equal(c, w.flip(-1)) or torch.equal(c, w.flip(-2))
                               or torch.equal(c, w.flip(-1).flip(-2)) for w in windows.values()) for c in flipped)


def test_sampler_is_deterministic_per_seed_and_epoch():
    a, b, c = EpochSampler(5, 12, seed=1), EpochSampler(5, 12, seed=1), EpochSampler(5, 12, seed=2)
    assert a.keys() == b.keys() and a.keys() != c.keys()
    first = a.keys()
    a.set_epoch(1)
    assert a.keys() != first and len(a.keys()) == 12
    # Every image is visited before any repeats (concatenated permutations).
    assert sorted(i for i, _ in first[:5]) == list(range(5))
    b.load_state_dict(a.state_dict())
    assert b.keys() == a.keys()


def test_steps_per_epoch_default_is_one_pass():
    assert steps_in_epoch(8, 2, None) == 4
    assert steps_in_epoch(3, 8, None) == 1
    assert steps_in_epoch(3, 8, 5) == 5


@pytest.mark.slow
def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    train, _ = open_data(str(make_image_folder(tmp_path / "ds", n_train=3, n_test=1, size=(48, 48))))
    runs = []
    for workers in (0, 2):
        config = DataConfig(data="unused", batch_size=2, patch_size=32, num_workers=workers)
        loader, sampler = train_loader(train, config, seed=3, steps_per_epoch=3)
        runs.append([_batches(loader, sampler, e) for e in (0, 1)])
    (serial0, serial1), (parallel0, parallel1) = runs
    assert len(serial0) == 3 and serial0[0].shape == (2, 3, 32, 32)
    assert all(torch.equal(x, y) for x, y in zip(serial0, parallel0))
    assert all(torch.equal(x, y) for x, y in zip(serial1, parallel1))
    assert not all(torch.equal(x, y) for x, y in zip(serial0, serial1))


def test_loader_gives_steps_times_batch_crops(tmp_path):
    train, _ = open_data(str(make_image_folder(tmp_path / "ds", n_train=3, n_test=1, size=(48, 48))))
    config = DataConfig(data="unused", batch_size=2, patch_size=32, num_workers=0)
    loader, sampler = train_loader(train, config, seed=0, steps_per_epoch=4)
    first = _batches(loader, sampler, 0)
    assert len(first) == 4 and all(b.shape == (2, 3, 32, 32) for b in first)
    assert all(torch.equal(x, y) for x, y in zip(first, _batches(loader, sampler, 0)))


def test_eval_images_are_whole_and_pad_crop_round_trips(tmp_path):
    _, test = open_data(str(make_image_folder(tmp_path / "ds", n_train=1, n_test=2, size=(50, 70))))
    images = list(eval_images(test))
    assert len(images) == 2 and all(x.shape == (1, 3, 50, 70) for _, x in images)
    x = images[0][1]
    padded, pad = pad_to_multiple(x, 16)
    assert padded.shape == (1, 3, 64, 80)
    assert torch.equal(crop_to(padded, pad), x)
    same, no_pad = pad_to_multiple(padded, 16)
    assert same is padded and no_pad == (0, 0, 0, 0) and torch.equal(crop_to(same, no_pad), padded)


def test_subset_limits_eval_images():
    _, test = open_data("samples")
    assert len(test.subset(1)) == 1 and len(test.subset(0)) == len(test)
