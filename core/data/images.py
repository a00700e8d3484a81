"""Image datasets as uint8 tensors: CIFAR-10, CIFAR-100, MNIST, Tiny ImageNet and `synthetic`.

Files live under the data root: the `root` argument, else `$LOP_DATA`, else `./data`. The data
root is only read, so it may be read-only shared storage; decoded caches go to `$LOP_CACHE`
(default `~/.cache/lop`, see `core.data.cache`). `prepare_dataset(name, root, download)` makes a
dataset ready to load: it checks the files, fetches a missing dataset when `download` is true
(CIFAR and MNIST through torchvision, Tiny ImageNet by `core.data.tiny_imagenet.fetch`, from
`$LOP_TINY_IMAGENET_URL` when set), builds the Tiny ImageNet cache, and raises FileNotFoundError
saying which files to put where when the dataset is missing and cannot be fetched. It is
idempotent and safe when many processes call it at once (downloads and cache builds run under a
file lock); `load_images` calls it, and a sweep's pre-flight calls it once per dataset.

| name            | files under the data root                                   | train / test   |
|-----------------|-------------------------------------------------------------|----------------|
| `cifar10`       | `cifar-10-batches-py/data_batch_1..5, test_batch` (pickles) | 50,000/10,000  |
| `cifar100`      | `cifar-100-python/train, test` (pickles, fine labels)       | 50,000/10,000  |
| `mnist`         | `MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`    | 60,000/10,000  |
| `tiny_imagenet` | `tiny-imagenet-200/` (see `core.data.tiny_imagenet`)        | 100,000/10,000 |
| `synthetic`     | none: generated from a `SyntheticSpec`                      | any            |

Tiny ImageNet's test split is its official val set.

Normalisation constants and training augmentations are the reference code's (its dataset
loader; paper §B.1.3 names the datasets and "standard augmentations"), including its CIFAR-10
std (0.2023, 0.1994, 0.2010), which is not the per-pixel std of the data (about 0.247, 0.243,
0.262), and its augmentation of Tiny ImageNet and MNIST, which the paper's text does not mention.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.data import tiny_imagenet
from core.data.augment import Augmentation, prepare_batch
from core.data.cache import cache_folder, locked, path_key
from core.data.synthetic import SyntheticSpec, make_synthetic

DATASETS = ("cifar10", "cifar100", "mnist", "tiny_imagenet", "synthetic")

_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "labels": "labels",
        "torchvision": "CIFAR10",
        "source": "cifar-10-python.tar.gz",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "labels": "fine_labels",
        "torchvision": "CIFAR100",
        "source": "cifar-100-python.tar.gz",
    },
}
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "mnist": ((0.1307,), (0.3081,)),
    "tiny_imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_AUGMENTATION = {
    "cifar10": Augmentation(crop_padding=4, flip=True),
    "cifar100": Augmentation(crop_padding=4, flip=True),
    "mnist": Augmentation(rotation=10.0),
    "tiny_imagenet": Augmentation(crop_padding=8, flip=True, jitter=0.1),
}


def data_root(root: str | Path | None = None) -> Path:
    """`root`, else `$LOP_DATA`, else `./data`."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("LOP_DATA", "data"))


@dataclass
class ImageData:
    """A labelled image dataset held as uint8 tensors (on one device)."""

    name: str
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor  # (M, C, H, W) uint8
    test_y: torch.Tensor  # (M,) int64
    mean: torch.Tensor  # (C,) float32, normalisation mean in [0, 1] units
    std: torch.Tensor  # (C,) float32
    augmentation: Augmentation  # the training augmentation

    @property
    def num_classes(self) -> int:
        return int(max(self.train_y.max(), self.test_y.max())) + 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device | str) -> ImageData:
        """The same data on `device` (uint8 stays uint8)."""
        moved = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "test_x", "test_y")}
        mean, std = self.mean.to(device), self.std.to(device)
        return ImageData(self.name, **moved, mean=mean, std=std, augmentation=self.augmentation)

    def inputs(
        self, x: torch.Tensor, generator: torch.Generator | None = None, augment: bool = False
    ) -> torch.Tensor:
        """Float network inputs from uint8 images `x`, with the training augmentation if asked."""
        return prepare_batch(
            x, self.mean, self.std, self.augmentation if augment else None, generator
        )


def _cifar_missing(name: str, root: Path, detail: str) -> str:
    spec = _CIFAR[name]
    files = ", ".join(spec["train"] + spec["test"])
    return (
        f"{name} not found: {detail}. Put the python version of the dataset ({files}, from "
        f"{spec['source']} at https://www.cs.toronto.edu/~kriz/cifar.html) in "
        f"{root / spec['folder']}, or point LOP_DATA at the folder that holds {spec['folder']}; "
        "with network access, download=true fetches it."
    )


def _fetch_missing(
    folder: Path,
    files: Sequence[str],
    fetch: Callable[[], None],
    message: Callable[[str], str],
    download: bool,
) -> None:
    """Fetch `files` into `folder` with `fetch()` if some are missing and `download` is true,
    under the folder's download lock (torchvision's archive names are fixed); raises
    FileNotFoundError(message(what went wrong)) if any is still missing."""

    def missing() -> list[str]:
        return [f for f in files if not (folder / f).is_file()]

    if missing() and download:
        with locked(cache_folder("downloads") / f"{path_key(folder)}.lock"):
            if missing():  # else another process fetched it while this one waited
                try:
                    fetch()
                except Exception as err:  # no network, proxy, checksum: say what to do instead
                    raise FileNotFoundError(message(f"download failed ({err})")) from err
    if absent := missing():
        raise FileNotFoundError(message(f"missing {', '.join(absent)}"))


def _prepare_cifar(name: str, root: Path, download: bool) -> None:
    spec = _CIFAR[name]

    def fetch() -> None:
        import torchvision.datasets

        getattr(torchvision.datasets, spec["torchvision"])(str(root), download=True)

    folder, files = root / spec["folder"], spec["train"] + spec["test"]
    _fetch_missing(folder, files, fetch, lambda why: _cifar_missing(name, root, why), download)


def _read_cifar(name: str, root: Path) -> tuple[torch.Tensor, ...]:
    spec = _CIFAR[name]
    folder = root / spec["folder"]
    out = []
    for split in ("train", "test"):
        xs, ys = [], []
        for file in spec[split]:
            with open(folder / file, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry[spec["labels"]], dtype=np.int64))
        out += [torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))]
    return tuple(out)


def _prepare_mnist(root: Path, download: bool) -> None:
    raw = root / "MNIST" / "raw"

    def fetch() -> None:
        import torchvision.datasets

        for train in (True, False):
            torchvision.datasets.MNIST(str(root), train=train, download=True)

    def message(why: str) -> str:
        return (
            f"mnist not found in {raw}: {why}. Put the four uncompressed idx files of "
            "http://yann.lecun.com/exdb/mnist/ there, or point LOP_DATA at the folder that holds "
            "MNIST/raw; with network access, download=true fetches them."
        )

    _fetch_missing(raw, _MNIST_FILES, fetch, message, download)


def _read_mnist(root: Path) -> tuple[torch.Tensor, ...]:
    import torchvision.datasets

    out = []
    for train in (True, False):
        ds = torchvision.datasets.MNIST(str(root), train=train, download=False)
        out += [ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)]
    return tuple(out)


def prepare_dataset(name: str, root: str | Path | None = None, download: bool = False) -> None:
    """Make dataset `name` (one of DATASETS) ready to load; idempotent, safe to run concurrently.

    Checks its files under the data root (`root`, else `$LOP_DATA`, else `./data`), fetches a
    missing dataset when `download` is true, and builds the Tiny ImageNet cache in `$LOP_CACHE`.
    Never writes into an existing dataset folder. A dataset that is missing and not fetched
    raises FileNotFoundError saying which files to put where and how to fetch them.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    base = data_root(root)
    if name in _CIFAR:
        _prepare_cifar(name, base, download)
    elif name == "mnist":
        _prepare_mnist(base, download)
    elif name == "tiny_imagenet":
        tiny_imagenet.prepare(base, download)


def load_images(
    name: str,
    root: str | Path | None = None,
    download: bool = False,
    synthetic: SyntheticSpec | None = None,
    device: torch.device | str = "cpu",
) -> ImageData:
    """Dataset `name` (one of DATASETS) as uint8 tensors on `device` (`prepare_dataset` first)."""
    prepare_dataset(name, root, download)
    base = data_root(root)
    if name == "synthetic":
        spec = synthetic or SyntheticSpec()
        tensors = make_synthetic(spec)
        mean, std = (0.5,) * spec.channels, (0.25,) * spec.channels
        pad = max(1, spec.size // 8)
        augmentation = Augmentation(crop_padding=pad, flip=True)
    else:
        if name in _CIFAR:
            tensors = _read_cifar(name, base)
        elif name == "mnist":
            tensors = _read_mnist(base)
        else:
            cached = tiny_imagenet.load(base, download)
            tensors = tuple(cached[k] for k in ("train_x", "train_y", "test_x", "test_y"))
        mean, std = _STATS[name]
        augmentation = _AUGMENTATION[name]
    data = ImageData(
        name,
        *tensors,
        mean=torch.tensor(mean, dtype=torch.float32),
        std=torch.tensor(std, dtype=torch.float32),
        augmentation=augmentation,
    )
    return data.to(device)
