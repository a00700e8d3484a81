"""Tiny ImageNet: download, layout check, `val/` restructuring, and a one-off uint8 cache.

Official layout (the extracted `tiny-imagenet-200.zip`) under `<root>/tiny-imagenet-200/`:

```
wnids.txt                          200 class ids (wnids), one per line
train/<wnid>/images/*.JPEG         500 64x64 images per class
val/images/*.JPEG                  10,000 images ...
val/val_annotations.txt            ... labelled by lines "<file>\t<wnid>\t<x0>\t<y0>\t<x1>\t<y1>"
```

`fetch` downloads the zip (from `$LOP_TINY_IMAGENET_URL` when set, else the official URL), checks
its MD5 (`$LOP_TINY_IMAGENET_MD5`, else the official zip's) and extracts it. `prepare` moves every
val image to `val/<wnid>/<file>` (the ImageFolder layout the reference code uses; resumable if
interrupted), decodes all images once, and caches them as uint8 tensors in `uint8_cache.pt`.
Classes are indexed in sorted wnid order, as ImageFolder does, so train and val labels agree. The
official val set is the evaluation split; the unlabelled test set is unused.
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

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # of the official zip (248,100,043 bytes)
URL_VARIABLE = "LOP_TINY_IMAGENET_URL"  # a mirror of the zip (default: URL)
MD5_VARIABLE = "LOP_TINY_IMAGENET_MD5"  # the mirror's MD5 (default: MD5)
FOLDER = "tiny-imagenet-200"
CACHE = "uint8_cache.pt"


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
    `<root>/tiny-imagenet-200.zip.part` and extracted into `<root>/tiny-imagenet-200.part/`; the
    folder takes its name only once complete, and the partial files are removed whatever happens.
    No network, an HTTP error, a wrong checksum or a zip without `tiny-imagenet-200/` raise
    FileNotFoundError saying where to put the files instead.
    """
    url = url or os.environ.get(URL_VARIABLE) or URL
    md5 = (md5 or os.environ.get(MD5_VARIABLE) or MD5).lower()
    root.mkdir(parents=True, exist_ok=True)
    partial_zip = root / f"{FOLDER}.zip.part"
    staging = root / f"{FOLDER}.part"
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=60) as response, open(partial_zip, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise ValueError(f"its MD5 is {digest.hexdigest()}, expected {md5}")
        shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted extraction
        with zipfile.ZipFile(partial_zip) as archive:
            archive.extractall(staging)
        if not (staging / FOLDER).is_dir():
            raise ValueError(f"the zip holds no {FOLDER}/ folder")
        os.replace(staging / FOLDER, root / FOLDER)
    except (OSError, ValueError, zipfile.BadZipFile) as err:  # URLError is an OSError
        raise FileNotFoundError(missing_message(root, f"download of {url} failed: {err}")) from err
    finally:
        partial_zip.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)


def restructure_val(folder: Path) -> None:
    """Move `val/images/<file>` to `val/<wnid>/<file>` per `val_annotations.txt`; idempotent."""
    images = folder / "val" / "images"
    if not images.is_dir():
        return
    annotations = folder / "val" / "val_annotations.txt"
    for line in annotations.read_text().splitlines():
        if not line.strip():
            continue
        name, wnid = line.split("\t")[:2]
        source = images / name
        if source.exists():  # absent when an earlier, interrupted call already moved it
            target_dir = folder / "val" / wnid
            target_dir.mkdir(exist_ok=True)
            os.replace(source, target_dir / name)
    leftover = list(images.iterdir())
    if leftover:
        raise FileNotFoundError(
            f"{len(leftover)} images in {images} are not listed in {annotations} "
            f"(e.g. {leftover[0].name}); restore the official val_annotations.txt"
        )
    images.rmdir()


def _decode(paths: list[Path]) -> torch.Tensor:
    images = []
    for path in paths:
        with Image.open(path) as image:  # a few Tiny ImageNet JPEGs are grayscale
            images.append(np.asarray(image.convert("RGB")))  # (H, W, 3) uint8
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"Tiny ImageNet images differ in shape: {sorted(shapes)}")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


def _check_layout(root: Path, folder: Path) -> list[str]:
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise FileNotFoundError(missing_message(root, "wnids.txt is missing"))
    wnids = sorted(w.strip() for w in wnids_file.read_text().split() if w.strip())
    for wnid in wnids:
        if not any((folder / "train" / wnid / "images").glob("*.JPEG")):
            raise FileNotFoundError(missing_message(root, f"no train/{wnid}/images/*.JPEG"))
    has_val = (folder / "val" / "val_annotations.txt").is_file() or all(
        (folder / "val" / w).is_dir() for w in wnids
    )
    if not has_val:
        raise FileNotFoundError(missing_message(root, "val/val_annotations.txt is missing"))
    return wnids


def prepare(root: Path, download: bool) -> dict[str, torch.Tensor | list[str]]:
    """The cached dataset: {"classes", "train_x", "train_y", "test_x", "test_y"} (uint8 images).

    Builds the cache on first use (`fetch` if allowed and missing, check, restructure val,
    decode); later calls only load it.
    """
    folder = root / FOLDER
    cache = folder / CACHE
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    if not folder.is_dir():
        if not download:
            raise FileNotFoundError(missing_message(root, "the folder does not exist"))
        fetch(root)
    wnids = _check_layout(root, folder)
    restructure_val(folder)
    data: dict[str, torch.Tensor | list[str]] = {"classes": wnids}
    for split, pattern, key in (
        ("train", "{}/images/*.JPEG", "train"),
        ("val", "{}/*.JPEG", "test"),
    ):
        paths, labels = [], []
        for label, wnid in enumerate(wnids):
            found = sorted((folder / split).glob(pattern.format(wnid)))
            if not found:
                raise FileNotFoundError(missing_message(root, f"no {split} images for {wnid}"))
            paths += found
            labels += [label] * len(found)
        data[f"{key}_x"] = _decode(paths)
        data[f"{key}_y"] = torch.tensor(labels, dtype=torch.int64)
    tmp = cache.with_name(cache.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, cache)
    return data
