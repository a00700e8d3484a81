"""Tiny ImageNet: download, layout check, and a uint8 tensor cache outside the dataset folder.

Official layout (the extracted `tiny-imagenet-200.zip`) under `<root>/tiny-imagenet-200/`:

```
wnids.txt                          200 class ids (wnids), one per line
train/<wnid>/images/*.JPEG         500 64x64 images per class
val/images/*.JPEG                  10,000 images ...
val/val_annotations.txt            ... labelled by lines "<file>\t<wnid>\t<x0>\t<y0>\t<x1>\t<y1>"
```

A `val/` already split into `val/<wnid>/*.JPEG` (what the reference code's download script and
torchvision's ImageFolder use) is read as well. The dataset folder is only ever read: the
validation labels come from `val_annotations.txt`, no file is moved, and the decoded tensors go to
the cache folder (`core.data.cache`: `$LOP_CACHE/tiny_imagenet/`, default
`~/.cache/lop/tiny_imagenet/`), so a read-only shared copy works.

`fetch` downloads the zip (from `$LOP_TINY_IMAGENET_URL` when set, else the official URL), checks
its MD5 (`$LOP_TINY_IMAGENET_MD5`, else the official zip's) and extracts it. `prepare` decodes
all images once, under a file lock, and writes them to the cache atomically; `load` returns the
cached tensors. Classes are indexed in sorted wnid order, as ImageFolder does, so train and val
labels agree. The official val set is the evaluation split; the unlabelled test set is unused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.data.cache import cache_dir, cache_folder, locked, path_key, temporary_name

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # of the official zip (248,100,043 bytes)
URL_VARIABLE = "LOP_TINY_IMAGENET_URL"  # a mirror of the zip (default: URL)
MD5_VARIABLE = "LOP_TINY_IMAGENET_MD5"  # the mirror's MD5 (default: MD5)
FOLDER = "tiny-imagenet-200"
CACHE_KIND = "tiny_imagenet"  # the subfolder of the cache folder
CACHE_FORMAT = 1  # bump when the cached dict changes, so old caches are not read


def missing_message(root: Path, detail: str) -> str:
    return (
        f"Tiny ImageNet not usable under {root / FOLDER}: {detail}. Download {URL}, unzip it into "
        f"{root} (giving {root / FOLDER}/wnids.txt, train/, val/), or point LOP_DATA at the folder "
        "that holds tiny-imagenet-200; with network access, download=true fetches it (from "
        f"${URL_VARIABLE} when set)."
    )


def fetch(root: Path, url: str | None = None, md5: str | None = None) -> None:
    """Fetch the zip, check its MD5 and extract it as `<root>/tiny-imagenet-200/`.

    `url` defaults to `$LOP_TINY_IMAGENET_URL`, else the official URL; `md5` to
    `$LOP_TINY_IMAGENET_MD5`, else the official zip's. The zip is streamed to
    `<root>/tiny-imagenet-200.zip.<pid>-<random>.tmp` and extracted into a folder named the same
    way; the dataset folder takes its name only once complete (a complete folder another process
    placed first is kept), and the partial files are removed whatever happens. No network, an
    HTTP error, a wrong checksum or a zip without `tiny-imagenet-200/` raise FileNotFoundError
    saying where to put the files instead.
    """
    url = url or os.environ.get(URL_VARIABLE) or URL
    md5 = (md5 or os.environ.get(MD5_VARIABLE) or MD5).lower()
    target = root / FOLDER
    partial_zip = temporary_name(root / f"{FOLDER}.zip")
    staging = temporary_name(root / f"{FOLDER}.part")
    try:
        root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=60) as response, open(partial_zip, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise ValueError(f"its MD5 is {digest.hexdigest()}, expected {md5}")
        with zipfile.ZipFile(partial_zip) as archive:
            archive.extractall(staging)
        if not (staging / FOLDER).is_dir():
            raise ValueError(f"the zip holds no {FOLDER}/ folder")
        try:
            os.replace(staging / FOLDER, target)
        except OSError:
            if not target.is_dir():  # else another process completed the same download first
                raise
    except (OSError, ValueError, zipfile.BadZipFile) as err:  # URLError is an OSError
        raise FileNotFoundError(missing_message(root, f"download of {url} failed: {err}")) from err
    finally:
        partial_zip.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)


def _wnids(root: Path, folder: Path) -> list[str]:
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise FileNotFoundError(missing_message(root, "wnids.txt is missing"))
    return sorted(w.strip() for w in wnids_file.read_text().split() if w.strip())


def cache_path(root: Path) -> Path:
    """Where the cache of `<root>/tiny-imagenet-200` is (or will be).

    `<cache>/tiny_imagenet/<path>-<fingerprint>.pt`: `<path>` names the dataset folder's absolute
    path, `<fingerprint>` the size and modification time of its `wnids.txt` and
    `val/val_annotations.txt` and the cache format, so a dataset placed anew gets a new cache.
    """
    folder = root / FOLDER
    _wnids(root, folder)
    parts = [f"format={CACHE_FORMAT}"]
    for name in ("wnids.txt", "val/val_annotations.txt"):
        file = folder / name
        if file.is_file():
            stat = file.stat()
            parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    fingerprint = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]
    return cache_dir() / CACHE_KIND / f"{path_key(folder)}-{fingerprint}.pt"


def _train_files(root: Path, folder: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    files = []
    for label, wnid in enumerate(wnids):
        found = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        if not found:
            raise FileNotFoundError(missing_message(root, f"no train/{wnid}/images/*.JPEG"))
        files += [(path, label) for path in found]
    return files


def _val_files(root: Path, folder: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    """The val images with their labels, by class then file name, read without moving a file."""
    val = folder / "val"
    images = val / "images"
    annotations = val / "val_annotations.txt"
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    if images.is_dir():  # the official layout: labels from val_annotations.txt
        if not annotations.is_file():
            raise FileNotFoundError(missing_message(root, "val/val_annotations.txt is missing"))
        listed: dict[str, int] = {}
        for line in annotations.read_text().splitlines():
            if not line.strip():
                continue
            name, wnid = line.split("\t")[:2]
            if wnid not in label_of:
                raise FileNotFoundError(
                    f"{annotations} labels {name} with {wnid}, which is not in wnids.txt; "
                    "restore the official files"
                )
            listed[name] = label_of[wnid]
        present = {path.name for path in images.glob("*.JPEG")}
        if present != set(listed):
            unlisted, absent = sorted(present - set(listed)), sorted(set(listed) - present)
            raise FileNotFoundError(
                f"{images} and {annotations} disagree: {len(unlisted)} images not listed "
                f"{unlisted[:3]}, {len(absent)} listed images missing {absent[:3]}; restore the "
                "official val folder"
            )
        files = [(images / name, label) for name, label in listed.items()]
    elif all((val / wnid).is_dir() for wnid in wnids):  # already split into val/<wnid>/
        files = [(path, label_of[wnid]) for wnid in wnids for path in (val / wnid).glob("*.JPEG")]
    else:
        raise FileNotFoundError(missing_message(root, "val/images/ is missing"))
    for label, wnid in enumerate(wnids):
        if not any(file_label == label for _, file_label in files):
            raise FileNotFoundError(missing_message(root, f"no val images for {wnid}"))
    return sorted(files, key=lambda item: (item[1], item[0].name))


def _decode(paths: list[Path]) -> torch.Tensor:
    images = []
    for path in paths:
        with Image.open(path) as image:  # a few Tiny ImageNet JPEGs are grayscale
            images.append(np.asarray(image.convert("RGB")))  # (H, W, 3) uint8
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"Tiny ImageNet images differ in shape: {sorted(shapes)}")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


def prepare(root: Path, download: bool) -> Path:
    """Build the cache of `<root>/tiny-imagenet-200` if it is missing; return its path.

    Idempotent and safe when many processes call it at once: the first to take the lock fetches
    (if allowed and missing), checks the layout and decodes; the others wait and then find the
    cache. Nothing is written into the dataset folder.
    """
    folder = root / FOLDER
    if not folder.is_dir() and not download:
        raise FileNotFoundError(missing_message(root, "the folder does not exist"))
    if folder.is_dir() and (target := cache_path(root)).is_file():
        return target
    with locked(cache_folder(CACHE_KIND) / f"{path_key(folder)}.lock"):
        if not folder.is_dir():
            fetch(root)
        target = cache_path(root)
        if target.is_file():  # built by another process while this one waited
            return target
        wnids = _wnids(root, folder)
        data: dict[str, torch.Tensor | list[str]] = {"classes": wnids}
        for key, files in (
            ("train", _train_files(root, folder, wnids)),
            ("test", _val_files(root, folder, wnids)),
        ):
            data[f"{key}_x"] = _decode([path for path, _ in files])
            data[f"{key}_y"] = torch.tensor([label for _, label in files], dtype=torch.int64)
        partial = temporary_name(target)
        try:
            torch.save(data, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        # a cache of an earlier placement, and temporary files of killed writers (only the
        # holder of the lock writes, so no live process owns one)
        for stale in target.parent.glob(f"{path_key(folder)}-*.pt*"):
            if stale != target:
                stale.unlink(missing_ok=True)
    return target


def load(root: Path, download: bool) -> dict[str, torch.Tensor | list[str]]:
    """The dataset: {"classes", "train_x", "train_y", "test_x", "test_y"} (uint8 images)."""
    return torch.load(prepare(root, download), weights_only=True)
