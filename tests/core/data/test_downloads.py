"""The download paths end to end against a local HTTP server (127.0.0.1, ephemeral port, stopped
by the test) serving miniatures in the official archive layouts: Tiny ImageNet through our own
fetch (URL and MD5 from $LOP_TINY_IMAGENET_URL / $LOP_TINY_IMAGENET_MD5), CIFAR-10 through
torchvision (its class attributes pointed at the server); a wrong checksum and an unreachable
server give the documented FileNotFoundError and leave nothing half-written behind."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision.datasets

from core.data import load_images
from core.data.tiny_imagenet import FOLDER, MD5_VARIABLE, URL_VARIABLE, cache_path
from tests.core.data.miniatures import (
    md5_of,
    tar_folder,
    write_cifar,
    write_tiny_imagenet,
    zip_folder,
)

WNIDS = ["n02", "n01", "n03"]


@pytest.fixture
def tiny_imagenet_zip(tmp_path, file_server):
    """A miniature tiny-imagenet-200.zip on the server; (its URL, its MD5, the unzipped source)."""
    folder, expected_val = write_tiny_imagenet(tmp_path / "source", WNIDS)
    archive = zip_folder(folder, file_server.folder / "tiny-imagenet-200.zip")
    return file_server.url(archive.name), md5_of(archive), expected_val


def _leftovers(root):
    """What a download may leave in the data root besides a complete dataset folder."""
    return sorted(p.name for p in root.iterdir() if p.name != FOLDER)


def test_tiny_imagenet_is_downloaded_checked_extracted_and_cached(
    tmp_path, file_server, tiny_imagenet_zip, monkeypatch
):
    url, md5, expected_val = tiny_imagenet_zip
    monkeypatch.setenv(URL_VARIABLE, url)
    monkeypatch.setenv(MD5_VARIABLE, md5)
    root = tmp_path / "data"
    data = load_images("tiny_imagenet", root=root, download=True)
    assert file_server.requests == ["/tiny-imagenet-200.zip"]
    # extracted as it is in the zip, val labelled by val_annotations.txt, decoded in sorted wnid
    # order, cached outside the dataset folder
    folder = root / FOLDER
    for name in expected_val:
        assert (folder / "val" / "images" / name).is_file()
    assert data.train_x.shape == (9, 3, 64, 64) and data.train_x.dtype == torch.uint8
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    flat = data.train_x.float().mean(dim=(1, 2, 3))  # class 0 is n01, the 2nd wnid: 20 + i
    assert (flat[:3] - torch.tensor([20.0, 21, 22])).abs().max() < 2
    assert cache_path(root).is_file() and _leftovers(root) == []  # the zip is not kept
    # a second call reads the cache: no request, and none possible
    file_server.stop()
    again = load_images("tiny_imagenet", root=root, download=True)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)
    assert len(file_server.requests) == 1


def test_a_wrong_checksum_raises_and_leaves_nothing_behind(
    tmp_path, file_server, tiny_imagenet_zip, monkeypatch
):
    url, md5, _ = tiny_imagenet_zip
    monkeypatch.setenv(URL_VARIABLE, url)
    monkeypatch.setenv(MD5_VARIABLE, "0" * 32)
    root = tmp_path / "data"
    with pytest.raises(FileNotFoundError) as err:
        load_images("tiny_imagenet", root=root, download=True)
    message = str(err.value)
    for part in (f"its MD5 is {md5}, expected {'0' * 32}", url, "tiny-imagenet-200.zip"):
        assert part in message
    assert "LOP_DATA" in message and URL_VARIABLE in message
    assert list(root.iterdir()) == []  # no zip, no partial folder, no cache
    # with the right checksum the same root then works
    monkeypatch.setenv(MD5_VARIABLE, md5)
    assert len(load_images("tiny_imagenet", root=root, download=True).test_y) == 6


def test_an_unreachable_server_says_where_to_put_which_files(tmp_path, file_server, monkeypatch):
    file_server.stop()  # connections to its port are refused from now on: offline
    monkeypatch.setenv(URL_VARIABLE, file_server.url("tiny-imagenet-200.zip"))
    root = tmp_path / "data"
    with pytest.raises(FileNotFoundError) as err:
        load_images("tiny_imagenet", root=root, download=True)
    message = str(err.value)
    for part in ("download of", str(root / FOLDER), "wnids.txt", "train/, val/", "LOP_DATA"):
        assert part in message
    assert list(root.iterdir()) == []


CIFAR_FILES = [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 3)]


def _serve_cifar10(tmp_path, file_server, monkeypatch):
    """A miniature cifar-10-python.tar.gz on the server, torchvision's CIFAR10 pointed at it."""
    folder = tmp_path / "source" / "cifar-10-batches-py"
    written = write_cifar(folder, "cifar10", "labels", CIFAR_FILES, 10, byte_keys=False)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    archive = tar_folder(folder, file_server.folder / "cifar-10-python.tar.gz")
    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "url", file_server.url(archive.name))
    monkeypatch.setattr(cifar, "tgz_md5", md5_of(archive))
    checksums = {file: md5_of(folder / file) for file, _ in CIFAR_FILES}
    monkeypatch.setattr(cifar, "train_list", [[f, checksums[f]] for f, _ in CIFAR_FILES[:5]])
    monkeypatch.setattr(cifar, "test_list", [["test_batch", checksums["test_batch"]]])
    meta = {"filename": "batches.meta", "key": "label_names"}
    monkeypatch.setattr(cifar, "meta", {**meta, "md5": md5_of(folder / "batches.meta")})
    return written


def test_cifar10_is_downloaded_through_torchvision(tmp_path, file_server, monkeypatch):
    written = _serve_cifar10(tmp_path, file_server, monkeypatch)
    root = tmp_path / "data"
    data = load_images("cifar10", root=root, download=True)
    assert file_server.requests[-1] == "/cifar-10-python.tar.gz"
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
    first, labels = written["data_batch_1"]
    assert torch.equal(data.train_x[:4].flatten(1), torch.from_numpy(first))
    assert data.train_y[:4].tolist() == labels
    assert data.test_y.tolist() == written["test_batch"][1]
    # the files are in place now: a later call neither needs nor asks the server
    file_server.stop()
    again = load_images("cifar10", root=root, download=True)
    assert torch.equal(again.train_x, data.train_x)


def test_a_corrupt_cifar10_download_says_where_to_put_which_files(
    tmp_path, file_server, monkeypatch
):
    _serve_cifar10(tmp_path, file_server, monkeypatch)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "tgz_md5", "0" * 32)
    root = tmp_path / "data"
    with pytest.raises(FileNotFoundError) as err:
        load_images("cifar10", root=root, download=True)
    message = str(err.value)
    for part in ("download failed", str(root / "cifar-10-batches-py"), "data_batch_1", "LOP_DATA"):
        assert part in message
    assert not (root / "cifar-10-batches-py").exists()
