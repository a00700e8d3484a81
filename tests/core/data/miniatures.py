"""Miniature datasets in the official file layouts, written for tests: CIFAR pickle batches,
Tiny ImageNet's folder tree, and the archives they are downloaded as."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from core.data.tiny_imagenet import FOLDER


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def write_cifar(folder, name, labels_key, files_and_sizes, num_classes, seed=0, byte_keys=True):
    """CIFAR batches `(file, images)` in `folder`: pickled dicts with `data` (N, 3072) uint8 and
    `labels_key` labels; keys as bytes (a Python 3 pickle of the batch) or, with
    `byte_keys=False`, as str (what the official Python 2 pickles decode to). Returns
    {file: (data, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    for file, n in files_and_sizes:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, num_classes, n).tolist()
        batch = {"batch_label": name, "data": data, labels_key: labels}
        if byte_keys:
            batch = {k.encode(): v.encode() if isinstance(v, str) else v for k, v in batch.items()}
        with open(folder / file, "wb") as f:
            pickle.dump(batch, f)
        written[file] = (data, labels)
    return written


def write_tiny_imagenet(root, wnids, train_per_class=3, val_per_class=2):
    """`root/tiny-imagenet-200/` as unzipped: wnids.txt, train/<wnid>/images/*.JPEG (flat colours
    20 k + i for the k-th wnid of `wnids`), val/images/*.JPEG (grayscale noise) and
    val/val_annotations.txt. Returns (folder, {val file: wnid})."""
    folder = root / FOLDER
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(0)
    annotations = []
    expected_val = {}
    for k, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(train_per_class):
            flat = np.full((64, 64, 3), 20 * k + i, dtype=np.uint8)  # JPEG keeps flat colours
            Image.fromarray(flat).save(images / f"{wnid}_{i}.JPEG", format="JPEG")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(val_per_class):
            name = f"val_{k * val_per_class + i}.JPEG"
            gray = rng.integers(0, 256, (64, 64), dtype=np.uint8)
            Image.fromarray(gray, mode="L").save(folder / "val" / "images" / name, format="JPEG")
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
            expected_val[name] = wnid
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return folder, expected_val


def zip_folder(folder: Path, archive: Path) -> Path:
    """`folder` zipped with its own name as the top-level entry (as tiny-imagenet-200.zip is)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(folder.rglob("*")):
            out.write(path, path.relative_to(folder.parent))
    return archive


def tar_folder(folder: Path, archive: Path) -> Path:
    """`folder` as a gzipped tarball with its own name as the top-level entry (as the CIFAR
    archives are)."""
    with tarfile.open(archive, "w:gz") as out:
        out.add(folder, arcname=folder.name)
    return archive
