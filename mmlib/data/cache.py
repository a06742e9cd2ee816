"""mmlib's caches under $MMLIB_CACHE (default ~/.cache/mmlib): decoded image folders and SSP backbones.

Each CIFAR image folder is decoded once into a file named by a hash of its images' content, so a
moved or copied folder finds it; an index remembers each folder's files so that an unchanged folder
is not hashed again. ``entries`` lists what is cached, ``clear`` deletes it (all is rebuilt when needed).
The K curve that benchmarks/throughput.py --save-curve measured (mmlib.train.fusion) lives in the same folder,
but it is a measurement, not a cache: neither lists nor deletes it.
"""

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np

from mmlib.files import atomic_write, read_json, write_json


def cache_dir() -> Path:
    """The folder for mmlib's caches: $MMLIB_CACHE or ~/.cache/mmlib."""
    return Path(os.environ.get("MMLIB_CACHE", Path.home() / ".cache" / "mmlib"))


IMAGE_CACHE_INDEX = "imagefolder-index.json"  # absolute root -> its files' signature and content hash


def image_folder_file(root: Path, train_files: dict[str, list[Path]], test_files: dict[str, list[Path]]) -> Path:
    """The cache file of an image folder: named by a hash of its images' content, so a moved copy finds it.

    The index remembers each folder's files (paths, sizes, mtimes) so an unchanged folder is not
    hashed again. When a folder's content changes, its former cache file is deleted unless another
    existing folder holds that content: one file per dataset content.
    """
    index_path = cache_dir() / IMAGE_CACHE_INDEX
    try:
        index = read_json(index_path)
    except (OSError, ValueError):  # absent or damaged: it only saves hashing, so start it afresh
        index = {}
    files = _files_signature(root, train_files, test_files)
    before = index.get(str(root.resolve()))
    content = before["content"] if before and before["files"] == files else _content_hash(root, train_files, test_files)
    if before != {"files": files, "content": content}:
        index = {r: e for r, e in index.items() if Path(r).is_dir()}
        index[str(root.resolve())] = {"files": files, "content": content}
        if before and all(e["content"] != before["content"] for e in index.values()):
            (cache_dir() / f"imagefolder-{before['content']}.npz").unlink(missing_ok=True)
        write_json(index_path, index)
    return cache_dir() / f"imagefolder-{content}.npz"


def _files_signature(root: Path, *splits: dict[str, list[Path]]) -> str:
    """Hash of every image's (relative path, size, mtime_ns): cheap, and changes with any changed file."""
    digest = hashlib.sha256(b"mmlib image folder files v1\n")
    for split in splits:
        for images in split.values():
            for path in images:
                stat = path.stat()
                digest.update(f"{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _content_hash(root: Path, *splits: dict[str, list[Path]]) -> str:
    """Hash of every image's relative path and bytes: the same for any copy of the folder, wherever it lies."""
    digest = hashlib.sha256(b"mmlib image folder content v1\n")
    for split in splits:
        for images in split.values():
            for path in images:
                digest.update(f"{path.relative_to(root).as_posix()}\n".encode())
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


def entries() -> list[tuple[Path, int, str]]:
    """mmlib's cache files and folders as (path, bytes, what): decoded image folders, the index, SSP backbones."""
    folder = cache_dir()
    try:
        roots = read_json(folder / IMAGE_CACHE_INDEX)
    except (OSError, ValueError):
        roots = {}
    found = []
    for path in sorted(folder.glob("imagefolder-*.npz")):
        users = [r for r, e in roots.items() if path.name == f"imagefolder-{e['content']}.npz"]
        found.append((path, path.stat().st_size,
                      "decoded image folder of " + (", ".join(users) or "a folder not seen lately")))
    if (folder / IMAGE_CACHE_INDEX).is_file():
        found.append((folder / IMAGE_CACHE_INDEX, (folder / IMAGE_CACHE_INDEX).stat().st_size,
                      "index of the image folders"))
    for path in sorted(p for p in (folder / "ssp").glob("*") if p.is_dir()):
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        found.append((path, size, "ldam-drw-ssp pre-trained backbone"))
    return found


def clear() -> list[tuple[Path, int, str]]:
    """Delete every entry of entries() (nothing else under cache_dir()); returns what was deleted."""
    found = entries()
    for path, _, _ in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return found



def read_arrays(path: Path, names: tuple[str, ...]) -> tuple[list[str], list[np.ndarray]]:
    """A decoded image folder's class names and arrays; one error line saying how to recover if unreadable."""
    try:
        with np.load(path) as cached:
            return [str(c) for c in cached["classes"]], [cached[name] for name in names]
    except Exception as err:  # written atomically, so this is outside damage; say how to recover
        raise ValueError(f"{path}: unreadable image cache ({err!r}); delete it to decode the images again") from err


def write_arrays(path: Path, classes: list[str], arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda f: np.savez(f, classes=np.array(classes), **arrays))
