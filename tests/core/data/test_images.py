"""Reading miniatures in the official formats, the Tiny ImageNet cache, the missing-data error."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from core.data import SyntheticSpec, data_root, load_images
from core.data.tiny_imagenet import CACHE
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


def test_tiny_imagenet_is_restructured_decoded_and_cached(tmp_path):
    wnids = ["n03", "n01", "n02"]  # not sorted: classes are indexed in sorted wnid order
    folder, expected_val = write_tiny_imagenet(tmp_path, wnids)
    data = load_images("tiny_imagenet", root=tmp_path)
    # val/ now holds val/<wnid>/<file> as listed in val_annotations.txt, and val/images is gone
    assert not (folder / "val" / "images").exists()
    for name, wnid in expected_val.items():
        assert (folder / "val" / wnid / name).is_file()
    assert data.train_x.shape == (9, 3, 64, 64) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (6, 3, 64, 64)  # grayscale JPEGs decoded as RGB
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # class 0 is the sorted-first wnid n01 (index 1 in wnids.txt): flat value 20 * 1 + i
    assert (
        data.train_x[:3].float().mean(dim=(1, 2, 3)) - torch.tensor([20.0, 21, 22])
    ).abs().max() < 2
    assert data.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert (folder / CACHE).is_file()
    # the cache is the dataset from now on: the JPEGs are no longer read
    for jpeg in folder.rglob("*.JPEG"):
        jpeg.unlink()
    again = load_images("tiny_imagenet", root=tmp_path)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)


def test_an_interrupted_restructuring_resumes(tmp_path):
    folder, expected_val = write_tiny_imagenet(tmp_path, ["n01", "n02"])
    moved = next(iter(expected_val))  # one image already moved by an interrupted run
    (folder / "val" / expected_val[moved]).mkdir()
    (folder / "val" / "images" / moved).rename(folder / "val" / expected_val[moved] / moved)
    data = load_images("tiny_imagenet", root=tmp_path)
    assert len(data.test_y) == len(expected_val)


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
def test_a_missing_dataset_says_which_files_to_put_where(tmp_path, monkeypatch, name, expected):
    monkeypatch.setenv("LOP_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as err:
        load_images(name, download=False)
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message
    for part in expected:
        assert part in message


def test_data_root_is_the_argument_then_lop_data_then_dot_data(tmp_path, monkeypatch):
    monkeypatch.delenv("LOP_DATA", raising=False)
    assert str(data_root()) == "data"
    monkeypatch.setenv("LOP_DATA", str(tmp_path))
    assert data_root() == tmp_path and str(data_root("x")) == "x"


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match="valid: cifar10, cifar100, mnist, tiny_imagenet, synthetic"
    ):
        load_images("imagenet")


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
