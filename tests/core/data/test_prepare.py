"""Eight processes prepare and load the same freshly placed, read-only Tiny ImageNet at once.

Tests run as root here, where `chmod -R a-w` does not stop a write, so the dataset folder is
guarded three ways: its permissions, an audit hook in every worker that records each write-like
operation (an `open` for writing, rename, remove, mkdir, chmod, ...) on a path inside it, and its
file tree (names, sizes, modification times of files and folders) compared before and after.
Every worker also counts the JPEGs it opened: with the cache built under the lock, exactly one
process decodes and the other seven read its cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.data import load_images
from tests.core.data.miniatures import write_tiny_imagenet

WORKERS = 8
REPO = Path(__file__).resolve().parents[3]

WORKER = r"""
import hashlib, json, os, sys, time

folder, ready, go = (os.path.abspath(a) for a in sys.argv[1:4])
writes, jpegs = [], set()
WRITE_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                "os.utime", "os.link", "os.symlink", "os.truncate", "shutil.rmtree",
                "shutil.move", "shutil.copyfile", "shutil.copytree"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def inside(path):
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None
    path = os.path.abspath(os.fsdecode(path))
    return path if path == folder or path.startswith(folder + os.sep) else None


def audit(event, args):
    if event == "open":
        path = inside(args[0])
        if path is None:
            return
        mode, flags = args[1], args[2]
        if (isinstance(mode, str) and set(mode) & set("wax+")) or (flags or 0) & WRITE_FLAGS:
            writes.append(f"open {path} {mode} {flags}")
        elif path.endswith(".JPEG"):
            jpegs.add(path)
    elif event in WRITE_EVENTS:
        touched = [p for p in map(inside, args) if p]
        if touched:
            writes.append(f"{event} {touched}")


sys.addaudithook(audit)
import torch  # imported before the start signal, so that the workers really start together
from core.data import load_images, prepare_dataset

open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
prepare_dataset("tiny_imagenet", os.path.dirname(folder))
data = load_images("tiny_imagenet", os.path.dirname(folder))
digests = {
    key: hashlib.sha256(getattr(data, key).numpy().tobytes()).hexdigest()
    for key in ("train_x", "train_y", "test_x", "test_y")
}
print(json.dumps({"writes": writes, "jpegs": len(jpegs), "digests": digests}))
"""


def _tree(folder: Path) -> dict[str, tuple]:
    """Name -> (is a folder, size, mtime): any file written, created, moved or removed shows."""
    return {
        str(path.relative_to(folder)): (path.is_dir(), path.stat().st_size, path.stat().st_mtime_ns)
        for path in [folder, *sorted(folder.rglob("*"))]
    }


def _set_writable(folder: Path, writable: bool) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~0o222)


@pytest.mark.slow
def test_eight_processes_prepare_a_read_only_dataset_at_once(tmp_path, lop_cache):
    folder, _ = write_tiny_imagenet(tmp_path / "data", ["n04", "n02", "n01", "n03"])
    signals = tmp_path / "signals"
    signals.mkdir()
    go = signals / "go"
    _set_writable(folder, False)  # chmod -R a-w
    before = _tree(folder)
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOP_CACHE": str(lop_cache)}
    try:
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(folder), str(signals / f"ready{i}"), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=tmp_path,
            )
            for i in range(WORKERS)
        ]
        deadline = time.monotonic() + 300
        while len(list(signals.glob("ready*"))) < WORKERS:
            assert time.monotonic() < deadline, "the workers did not start"
            assert all(w.poll() is None for w in workers), [w.communicate() for w in workers]
            time.sleep(0.05)
        go.touch()  # all eight start preparing now
        results = []
        for worker in workers:
            out, err = worker.communicate(timeout=300)
            assert worker.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        after = _tree(folder)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        _set_writable(folder, True)
    assert [r["writes"] for r in results] == [[]] * WORKERS  # no write into the dataset folder
    assert after == before
    assert sorted(r["jpegs"] for r in results) == [0] * (WORKERS - 1) + [4 * 3 + 4 * 2]
    assert all(r["digests"] == results[0]["digests"] for r in results)
    # and they are the dataset: this process's load (from the same cache) matches by value
    data = load_images("tiny_imagenet", tmp_path / "data")
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert data.test_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    flat = data.train_x.float().mean(dim=(1, 2, 3))  # sorted wnid k is n0{k+1}: 20 * index + i
    index = [2, 1, 3, 0]  # of n01..n04 in wnids.txt
    expected = torch.tensor([20.0 * index[k] + i for k in range(4) for i in range(3)])
    assert (flat - expected).abs().max() < 2
    digest = hashlib.sha256(data.test_x.numpy().tobytes()).hexdigest()
    assert digest == results[0]["digests"]["test_x"]
    assert len(list(lop_cache.rglob("*.pt"))) == 1
    assert not list(lop_cache.rglob("*.tmp"))  # no temporary file left behind
