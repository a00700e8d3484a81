"""Reading miniatures in the official formats, the Tiny ImageNet cache (outside the dataset
folder), the missing-data error, the synthetic dataset."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import SyntheticSpec, cache_dir, data_root, load_images, prepare_dataset
from core.data.synthetic import make_synthetic
from core.data.tiny_imagenet import cache_path
from tests.core.data.miniatures import write_cifar, write_tiny_imagenet


def test_cifar10_is_read_from_its_pickle_batches(tmp_path):
    files = [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 3)]
    written = write_cifar(tmp_path / "cifar-10-batches-py", "cifar10", "labels", files, 10)
    data = load_images("cifar10", root=tmp_path)
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape == (20, 3, 32, 32)
    first, labels = written["data_batch_1"]
    # row layout: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    assert torch.equal(data.train_x[0, 1, 2, 3], torch.tensor(first[0, 1024 + 2 * 32 + 3]))
    assert data.train_y[:4].tolist() == labels
    assert data.test_y.tolist() == written["test_batch"][1]
    assert data.augmentation.crop_padding == 4 and data.augmentation.flip


def test_cifar100_uses_the_fine_labels(tmp_path):
    files = [("train", 6), ("test", 2)]
    written = write_cifar(tmp_path / "cifar-100-python", "cifar100", "fine_labels", files, 100)
    data = load_images("cifar100", root=tmp_path)
    assert data.train_y.tolist() == written["train"][1]


def test_mnist_is_read_from_its_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    for prefix, n in (("train", 3), ("t10k", 3)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images[:n].tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + bytes([7, 1, 4][:n])
        )
    data = load_images("mnist", root=tmp_path)
    assert data.train_x.shape == (3, 1, 28, 28) and data.train_y.tolist() == [7, 1, 4]
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(images))


def _tree(folder):
    """Every path under `folder` with its size and modification time: what a write would change."""
    return {
        str(path.relative_to(folder)): (path.is_dir(), path.stat().st_size, path.stat().st_mtime_ns)
        for path in [folder, *sorted(folder.rglob("*"))]
    }


def test_tiny_imagenet_is_decoded_into_the_cache_and_its_folder_left_untouched(tmp_path):
    wnids = ["n03", "n01", "n02"]  # not sorted: classes are indexed in sorted wnid order
    folder, expected_val = write_tiny_imagenet(tmp_path, wnids)
    before = _tree(folder)
    data = load_images("tiny_imagenet", root=tmp_path)
    assert _tree(folder) == before  # nothing moved, written or created in the dataset folder
    assert data.train_x.shape == (9, 3, 64, 64) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (6, 3, 64, 64)  # grayscale JPEGs decoded as RGB
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # class 0 is the sorted-first wnid n01 (index 1 in wnids.txt): flat value 20 * 1 + i
    assert (
        data.train_x[:3].float().mean(dim=(1, 2, 3)) - torch.tensor([20.0, 21, 22])
    ).abs().max() < 2
    # val labels come from val_annotations.txt; images by class, then file name
    assert data.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    by_label = sorted(
        expected_val, key=lambda name: (sorted(wnids).index(expected_val[name]), name)
    )
    for k, name in enumerate(by_label):
        with Image.open(folder / "val" / "images" / name) as image:
            decoded = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(data.test_x[k], decoded)
    cache = cache_path(tmp_path)
    assert cache.is_file() and cache.parent == cache_dir() / "tiny_imagenet"
    # the cache is the dataset from now on: the JPEGs are no longer read
    for jpeg in folder.rglob("*.JPEG"):
        jpeg.unlink()
    again = load_images("tiny_imagenet", root=tmp_path)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)


def test_a_val_folder_already_split_by_class_is_read_as_well(tmp_path):
    official, _ = write_tiny_imagenet(tmp_path / "official", ["n01", "n02"])
    split, expected_val = write_tiny_imagenet(tmp_path / "split", ["n01", "n02"])
    for name, wnid in expected_val.items():  # the layout the reference code's script leaves
        (split / "val" / wnid).mkdir(exist_ok=True)
        (split / "val" / "images" / name).rename(split / "val" / wnid / name)
    (split / "val" / "images").rmdir()
    a = load_images("tiny_imagenet", root=tmp_path / "official")
    b = load_images("tiny_imagenet", root=tmp_path / "split")
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)


def test_val_images_and_annotations_that_disagree_are_refused(tmp_path):
    folder, expected_val = write_tiny_imagenet(tmp_path, ["n01", "n02"])
    (folder / "val" / "images" / next(iter(expected_val))).unlink()
    with pytest.raises(FileNotFoundError, match="1 listed images missing"):
        load_images("tiny_imagenet", root=tmp_path)


def test_a_dataset_placed_anew_gets_a_new_cache(tmp_path):
    folder, _ = write_tiny_imagenet(tmp_path, ["n01", "n02"])
    first = load_images("tiny_imagenet", root=tmp_path)
    old_cache = cache_path(tmp_path)
    shutil.rmtree(folder)
    write_tiny_imagenet(tmp_path, ["n01", "n02", "n03"])
    second = load_images("tiny_imagenet", root=tmp_path)
    assert len(second.train_y) == 9 and len(first.train_y) == 6
    assert cache_path(tmp_path) != old_cache and not old_cache.exists()  # the stale one is gone


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "cifar10",
            ["cifar-10-batches-py", "data_batch_1", "test_batch", "LOP_DATA", "download=true"],
        ),
        ("cifar100", ["cifar-100-python", "train, test", "LOP_DATA"]),
        ("mnist", ["MNIST/raw", "train-images-idx3-ubyte", "LOP_DATA"]),
        ("tiny_imagenet", ["tiny-imagenet-200", "wnids.txt", "tiny-imagenet-200.zip", "LOP_DATA"]),
    ],
)
@pytest.mark.parametrize("entry", [load_images, prepare_dataset])
def test_a_missing_dataset_says_which_files_to_put_where(
    tmp_path, monkeypatch, name, expected, entry
):
    monkeypatch.setenv("LOP_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as err:
        entry(name, download=False)
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message
    for part in expected:
        assert part in message
    assert not (tmp_path / "nowhere").exists()  # neither the data root ...
    assert not cache_dir().exists()  # ... nor the cache folder was created


def test_data_root_is_the_argument_then_lop_data_then_dot_data(tmp_path, monkeypatch):
    monkeypatch.delenv("LOP_DATA", raising=False)
    assert str(data_root()) == "data"
    monkeypatch.setenv("LOP_DATA", str(tmp_path))
    assert data_root() == tmp_path and str(data_root("x")) == "x"


@pytest.mark.parametrize("entry", [load_images, prepare_dataset])
def test_unknown_dataset_lists_the_valid_ones(entry):
    with pytest.raises(
        ValueError, match="valid: cifar10, cifar100, mnist, tiny_imagenet, synthetic"
    ):
        entry("imagenet")


def test_prepare_dataset_is_idempotent_and_leaves_present_files_alone(tmp_path):
    files = [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", 2)]
    write_cifar(tmp_path / "cifar-10-batches-py", "cifar10", "labels", files, 10)
    write_tiny_imagenet(tmp_path, ["n01", "n02"])
    before = _tree(tmp_path)
    for _ in range(2):
        for name in ("cifar10", "tiny_imagenet", "synthetic"):
            assert prepare_dataset(name, root=tmp_path, download=True) is None
    assert _tree(tmp_path) == before  # download=true fetches nothing that is there already


def test_synthetic_is_seeded_shaped_as_asked_and_learnable():
    spec = SyntheticSpec(
        channels=2, size=6, classes=7, train_per_class=30, test_per_class=10, seed=5
    )
    a, b = load_images("synthetic", synthetic=spec), load_images("synthetic", synthetic=spec)
    assert a.shape == (2, 6, 6) and a.num_classes == 7 and a.train_x.dtype == torch.uint8
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert torch.bincount(a.train_y).tolist() == [30] * 7
    other = load_images("synthetic", synthetic=SyntheticSpec(seed=6))
    assert not torch.equal(other.train_x, load_images("synthetic").train_x)
    # the nearest class mean of the training images classifies the test images
    x_train, x_test = a.train_x.flatten(1).float(), a.test_x.flatten(1).float()
    means = torch.stack([x_train[a.train_y == k].mean(0) for k in range(7)])
    predicted = torch.cdist(x_test, means).argmin(1)
    assert (predicted == a.test_y).float().mean() > 0.9


def test_synthetic_images_are_float32_draws_whatever_the_default_dtype():
    spec = SyntheticSpec(channels=3, size=8, classes=4, train_per_class=5, test_per_class=2, seed=3)
    expected = make_synthetic(spec)
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        under_float64 = make_synthetic(spec)
    finally:
        torch.set_default_dtype(default)
    for a, b in zip(expected, under_float64, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # without noise an image is its class prototype: float32 uniform draws, upsampled, rounded
    quiet = make_synthetic(SyntheticSpec(classes=4, noise=0.0, seed=3))
    g = torch.Generator().manual_seed(3)
    coarse = 48 + 160 * torch.rand((4, 3, 4, 4), generator=g, dtype=torch.float32)
    prototypes = torch.nn.functional.interpolate(coarse, size=(8, 8), mode="bilinear")
    assert torch.equal(quiet[0], prototypes[quiet[1]].round().to(torch.uint8))


def test_a_killed_writer_s_temporary_file_is_removed_by_the_next_build(tmp_path):
    write_tiny_imagenet(tmp_path, ["n01", "n02"])
    target = cache_path(tmp_path)
    target.parent.mkdir(parents=True)
    leftover = target.with_name(f"{target.name}.999999-0badf00d.tmp")
    leftover.write_bytes(b"half a cache")  # what a SIGKILL during torch.save leaves
    load_images("tiny_imagenet", root=tmp_path)
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(
        [target.name, target.name.split("-")[0] + ".lock"]
    )
