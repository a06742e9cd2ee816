"""Tests of mmlib.data.sources: LDAM-DRW's class counts and selection, every image source, the cache, digits."""

import dataclasses
import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from mmlib.data import cache as caches
from mmlib.data import imbalance, sources

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_PER_CLASS, TEST_PER_CLASS = 6, 2  # the tiny fixtures' stand-ins for 5000/1000 and 500/100


@pytest.fixture(autouse=True)
def tiny_cifar(monkeypatch, tmp_path):
    """Shrink the expected CIFAR sizes to the fixtures' and keep the decode cache inside tmp_path."""
    for name in ("cifar10", "cifar100"):
        spec = dataclasses.replace(sources.CIFAR_SPECS[name], train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS)
        monkeypatch.setitem(sources.CIFAR_SPECS, name, spec)
    monkeypatch.setenv("MMLIB_CACHE", str(tmp_path / "cache"))


def classes_of(name):
    return CIFAR10_CLASSES if name == "cifar10" else [f"class_{c:03d}" for c in range(100)]


def random_split(name, seed=0):
    """Random uint8 images, class by class: (train_images, train_labels, test_images, test_labels)."""
    rng = np.random.default_rng(seed)
    num_classes = len(classes_of(name))
    arrays = []
    for per_class in (TRAIN_PER_CLASS, TEST_PER_CLASS):
        labels = np.repeat(np.arange(num_classes), per_class)
        arrays += [rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8), labels]
    return arrays


def write_pickles(folder, name, train_images, train_labels, test_images, test_labels):
    """The official python layout: b'data' as (N, 3072) row-major CHW uint8, labels as a list."""
    folder.mkdir(parents=True)
    label_key = b"labels" if name == "cifar10" else b"fine_labels"

    def dump(file, images, labels):
        batch = {b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1), label_key: labels.tolist()}
        with open(folder / file, "wb") as f:
            pickle.dump(batch, f)

    names = [c.encode() for c in classes_of(name)]
    if name == "cifar10":
        for i, part in enumerate(np.array_split(np.arange(len(train_labels)), 5), start=1):
            dump(f"data_batch_{i}", train_images[part], train_labels[part])
        dump("test_batch", test_images, test_labels)
        meta_file, meta = "batches.meta", {b"label_names": names}
    else:
        dump("train", train_images, train_labels)
        dump("test", test_images, test_labels)
        meta_file, meta = "meta", {b"fine_label_names": names, b"coarse_label_names": [b"x"] * 20}
    with open(folder / meta_file, "wb") as f:
        pickle.dump(meta, f)


def write_image_folder(root, name, train_images, train_labels, test_images, test_labels):
    """ROOT/{train,test}/<class>/<file>.png, file names sorting in the arrays' order."""
    classes = classes_of(name)
    for split, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        for k, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{k:05d}.png")


def load_balanced(name, root, **kwargs):
    return sources.load_dataset(name, root, imb_type="balanced", ratio=1, **kwargs)


def assert_same_split(dataset, train_images, train_labels, test_images, test_labels):
    """The dataset holds exactly these images: its training subset is the full set at dataset.indices."""
    np.testing.assert_array_equal(dataset.train_images, train_images[dataset.indices])
    np.testing.assert_array_equal(dataset.train_labels, train_labels[dataset.indices])
    np.testing.assert_array_equal(dataset.test_images, test_images)
    np.testing.assert_array_equal(dataset.test_labels, test_labels)
    assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int64


# ---- class counts and selection ------------------------------------------------------------------

@pytest.mark.parametrize("num_classes, n_max, imb_type, ratio, total", [
    (10, 5000, "exp", 100, 12406), (10, 5000, "exp", 10, 20431),
    (10, 5000, "step", 100, 25250), (10, 5000, "step", 10, 27500),
    (100, 500, "exp", 100, 10847), (100, 500, "exp", 10, 19573),
    (100, 500, "step", 100, 25250), (100, 500, "step", 10, 27500),
])
def test_class_counts_match_the_papers_totals(num_classes, n_max, imb_type, ratio, total):
    counts = imbalance.class_counts(n_max, num_classes, imb_type, ratio)
    assert len(counts) == num_classes and sum(counts) == total
    assert counts[0] == n_max and counts[-1] == int(n_max / ratio)


def test_class_counts_for_an_arbitrary_ratio():
    ratio = 37.5
    assert imbalance.class_counts(5000, 10, "exp", ratio) == [int(5000 * ratio ** (-i / 9)) for i in range(10)]
    assert imbalance.class_counts(500, 100, "step", ratio) == [500] * 50 + [int(500 / ratio)] * 50
    assert imbalance.class_counts(120, 10, "balanced", 1) == [120] * 10


@pytest.mark.parametrize("imb_type, ratio, match", [
    ("exp", 0.5, "ratio"), ("exp", float("inf"), "ratio"), ("step", float("nan"), "ratio"),
    ("balanced", 10, "ratio has no meaning"), ("linear", 10, "exp"), ("exp", 6000, "ratio"),
])
def test_class_counts_rejects_bad_arguments(imb_type, ratio, match):
    with pytest.raises(ValueError, match=match):
        imbalance.class_counts(5000, 10, imb_type, ratio)


def test_select_indices_follows_ldams_rule_without_touching_numpys_global_state():
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(5), 20))
    counts = [20, 11, 6, 3, 1]
    np.random.seed(7)  # LDAM-DRW's own code: a global seed, then one shuffle per class in ascending order
    expected = []
    for cls, n in enumerate(counts):
        idx = np.where(labels == cls)[0]
        np.random.shuffle(idx)
        expected.extend(idx[:n])

    np.random.seed(123)
    global_draw = np.random.rand()
    np.random.seed(123)
    selected = imbalance.select_indices(labels, counts, rand_number=7)
    assert np.random.rand() == global_draw
    np.testing.assert_array_equal(selected, expected)
    assert selected.dtype == np.int64
    assert not np.array_equal(selected, imbalance.select_indices(labels, counts, rand_number=8))


def test_select_indices_rejects_a_class_with_too_few_images():
    with pytest.raises(ValueError, match="class 1"):
        imbalance.select_indices(np.array([0, 0, 1]), [1, 2])


def test_groups_split_at_100_and_20_training_images():
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    dataset = imbalance.ImbalancedDataset(
        name="cifar10", imb_type="exp", ratio=101.0, rand_number=0, classes=list("abcde"),
        train_images=empty, train_labels=np.zeros(0, np.int64), test_images=empty,
        test_labels=np.zeros(0, np.int64), indices=np.zeros(0, np.int64),
        cls_num_list=[101, 100, 20, 19, 1], source="test",
    )
    assert dataset.num_classes == 5
    assert dataset.groups == {"many": [0], "medium": [1, 2], "few": [3, 4]}


# ---- sources -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_pickle_layout_is_read_in_the_official_order(tmp_path, name):
    split = random_split(name)
    folder = tmp_path / sources.CIFAR_SPECS[name].pickle_folder
    write_pickles(folder, name, *split)
    for root in (tmp_path, folder):  # the parent of the official folder, or that folder itself
        dataset = load_balanced(name, root)
        assert_same_split(dataset, *split)
        assert dataset.classes == classes_of(name)
        assert str(folder) in dataset.source and "pickle" in dataset.source


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_image_folder_and_pickles_give_identical_arrays(tmp_path, name):
    split = random_split(name)
    write_pickles(tmp_path / "pickles" / sources.CIFAR_SPECS[name].pickle_folder, name, *split)
    write_image_folder(tmp_path / "folder", name, *split)
    from_pickles = sources.load_dataset(name, tmp_path / "pickles", imb_type="exp", ratio=3)
    from_folder = sources.load_dataset(name, tmp_path / "folder", imb_type="exp", ratio=3)
    for field in ("train_images", "train_labels", "test_images", "test_labels", "indices"):
        np.testing.assert_array_equal(getattr(from_pickles, field), getattr(from_folder, field))
    assert from_folder.classes == from_pickles.classes == classes_of(name)
    assert from_folder.source == f"image folder {tmp_path / 'folder'}"
    expected_counts = [int(TRAIN_PER_CLASS * 3 ** (-i / (len(classes_of(name)) - 1))) for i in range(len(classes_of(name)))]
    assert from_folder.cls_num_list == expected_counts
    np.testing.assert_array_equal(np.bincount(from_folder.train_labels), expected_counts)


def test_image_folder_orders_classes_and_files_by_name(tmp_path):
    train_images, train_labels, test_images, test_labels = random_split("cifar10")
    write_image_folder(tmp_path, "cifar10", train_images, train_labels, test_images, test_labels)
    # Renaming the first file of "airplane" to sort last moves that image to the end of its class.
    first = tmp_path / "train" / "airplane" / "00000.png"
    first.rename(first.with_name("zzz.png"))
    order = np.r_[1:TRAIN_PER_CLASS, 0, TRAIN_PER_CLASS:len(train_labels)]
    assert_same_split(load_balanced("cifar10", tmp_path), train_images[order], train_labels, test_images, test_labels)


def test_download_is_used_only_when_no_copy_is_found(tmp_path, monkeypatch):
    import torchvision

    split = random_split("cifar10")
    calls = []

    def fake_cifar10(root, train, download):
        calls.append((root, train, download))
        write_pickles(tmp_path / "cifar-10-batches-py", "cifar10", *split)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    dataset = load_balanced("cifar10", tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True)]
    assert_same_split(dataset, *split)
    assert "downloaded" in dataset.source
    load_balanced("cifar10", tmp_path, download=True)  # now found on disk: no second download
    assert len(calls) == 1


# ---- the decode cache ----------------------------------------------------------------------------

def test_image_folder_cache_hit_and_invalidation(tmp_path, monkeypatch):
    train_images, train_labels, test_images, test_labels = random_split("cifar10")
    root = tmp_path / "folder"
    write_image_folder(root, "cifar10", train_images, train_labels, test_images, test_labels)
    cache = tmp_path / "cache"
    first = load_balanced("cifar10", root)
    assert len(list(cache.glob("*.npz"))) == 1 and not list(cache.glob("*.tmp"))

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache holds it")

    with monkeypatch.context() as patch:
        patch.setattr(sources, "decode_image", no_decoding)
        cached = load_balanced("cifar10", root)
    assert_same_split(cached, train_images, train_labels, test_images, test_labels)
    assert cached.classes == first.classes

    changed = root / "test" / "truck" / "00019.png"
    new_pixels = 255 - test_images[-1]
    Image.fromarray(new_pixels).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    reloaded = load_balanced("cifar10", root)
    np.testing.assert_array_equal(reloaded.test_images[-1], new_pixels)
    assert len(list(cache.glob("*.npz"))) == 1  # the former content's file went: no folder holds it any more


def test_a_moved_copy_reuses_the_cache_one_file_per_content(tmp_path, monkeypatch):
    split = random_split("cifar10")
    root = tmp_path / "folder"
    write_image_folder(root, "cifar10", *split)
    cache = tmp_path / "cache"
    load_balanced("cifar10", root)
    moved = tmp_path / "elsewhere" / "cifar10"
    shutil.copytree(root, moved, copy_function=shutil.copyfile)  # new paths and new mtimes, same bytes
    shutil.rmtree(root)

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache holds its content")

    with monkeypatch.context() as patch:
        patch.setattr(sources, "decode_image", no_decoding)
        assert_same_split(load_balanced("cifar10", moved), *split)
    assert len(list(cache.glob("*.npz"))) == 1

    copy = tmp_path / "copy"  # a second folder of the same content: still one file
    shutil.copytree(moved, copy)
    load_balanced("cifar10", copy)
    assert len(list(cache.glob("*.npz"))) == 1
    changed = copy / "test" / "truck" / "00019.png"
    Image.fromarray(255 - split[2][-1]).save(changed)
    load_balanced("cifar10", copy)
    assert len(list(cache.glob("*.npz"))) == 2  # the first content stays: `moved` still holds it

    listed = caches.entries()
    assert [e[0].name for e in listed].count(caches.IMAGE_CACHE_INDEX) == 1
    described = {e[2] for e in listed if e[0].suffix == ".npz"}
    assert described == {f"decoded image folder of {moved.resolve()}", f"decoded image folder of {copy.resolve()}"}
    (cache / "not-mmlib.txt").write_text("someone else's")
    assert caches.clear() == listed
    assert sorted(p.name for p in cache.iterdir()) == ["not-mmlib.txt"]


# ---- errors --------------------------------------------------------------------------------------

def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path):
    for root in (tmp_path / "nowhere", tmp_path, None):  # absent, present but empty, not given
        with pytest.raises(FileNotFoundError, match="download=True") as error:
            sources.load_dataset("cifar10", root, ratio=2)
        message = str(error.value)
        assert "cifar-10-batches-py" in message and "train/<class>/<image>" in message
        if root is not None:
            assert str(root) in message


def image_folder_root(tmp_path):
    root = tmp_path / "folder"
    write_image_folder(root, "cifar10", *random_split("cifar10"))
    return root


def remove_class(root):
    for split in ("train", "test"):
        for file in (root / split / "truck").iterdir():
            file.unlink()
        (root / split / "truck").rmdir()


def rename_test_class(root):
    (root / "test" / "truck").rename(root / "test" / "lorry")


def remove_one_image(root):
    (root / "train" / "cat" / "00020.png").unlink()


def write_small_image(root):
    Image.new("RGB", (28, 28)).save(root / "train" / "dog" / "00030.png")


def write_grayscale_image(root):
    Image.new("L", (32, 32)).save(root / "test" / "bird" / "00004.png")


def write_corrupt_image(root):
    (root / "train" / "ship" / "00048.png").write_bytes(b"not a png")


@pytest.mark.parametrize("damage, error, expected", [
    (remove_class, ValueError, r"folder/train: found 9 class folders, expected 10"),
    (rename_test_class, ValueError, r"folder/test: class folders differ from .*'lorry', 'truck'"),
    (remove_one_image, ValueError, r"train/cat: found 5 images, expected 6"),
    (write_small_image, ValueError, r"dog/00030.png: image is 28x28, expected 32x32"),
    (write_grayscale_image, ValueError, r"bird/00004.png: image mode is 'L', expected 'RGB'"),
    (write_corrupt_image, ValueError, r"ship/00048.png: cannot be decoded"),
])
def test_image_folder_errors_name_the_check_and_path(tmp_path, damage, error, expected):
    root = image_folder_root(tmp_path)
    damage(root)
    with pytest.raises(error, match=expected):
        load_balanced("cifar10", root)


def test_image_folder_missing_split_is_missing_data(tmp_path):
    root = image_folder_root(tmp_path)
    for file in (root / "test").rglob("*.png"):
        file.unlink()
    for folder in (root / "test").iterdir():
        folder.rmdir()
    (root / "test").rmdir()
    with pytest.raises(FileNotFoundError, match=rf"missing folder {root / 'test'}.*download=True"):
        load_balanced("cifar10", root)


def test_pickle_errors_name_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_pickles(folder, "cifar10", *random_split("cifar10"))
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3.*download=True"):
        load_balanced("cifar10", tmp_path)
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="data_batch_3 is not a readable CIFAR pickle"):
        load_balanced("cifar10", tmp_path)


def test_pickle_with_wrong_per_class_count_is_rejected(tmp_path):
    train_images, train_labels, test_images, test_labels = random_split("cifar100")
    test_labels[0] = 1  # class 0 now has one test image too few, class 1 one too many
    write_pickles(tmp_path / "cifar-100-python", "cifar100", train_images, train_labels, test_images, test_labels)
    with pytest.raises(ValueError, match="test batches.*class 0 .* has 1 images, expected 2"):
        load_balanced("cifar100", tmp_path)


def test_check_dataset_args_validates_without_loading(tmp_path):
    with pytest.raises(ValueError, match="cifar10.*cifar100.*digits"):
        sources.check_dataset_args("mnist", tmp_path, "exp", 100, False)
    with pytest.raises(ValueError, match="imb_type"):
        sources.check_dataset_args("cifar10", tmp_path, "long", 100, False)
    with pytest.raises(ValueError, match="ratio"):
        sources.check_dataset_args("cifar100", tmp_path, "exp", 0, False)
    with pytest.raises(FileNotFoundError, match="root=None"):
        sources.check_dataset_args("cifar10", None, "exp", 2, True)
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        sources.check_dataset_args("cifar10", tmp_path / "nowhere", "exp", 2, False)
    sources.check_dataset_args("cifar10", tmp_path / "nowhere", "exp", 2, True)  # download will create it
    sources.check_dataset_args("digits", None, "step", 10, False)


# ---- digits --------------------------------------------------------------------------------------

def test_digits_split_and_counts():
    from sklearn.datasets import load_digits

    source = load_digits()
    n_max = sources.DIGITS_TRAIN_PER_CLASS
    per_class = np.bincount(source.target)
    dataset = sources.load_dataset("digits", root="/ignored", imb_type="exp", ratio=10, download=True)

    expected_counts = [int(n_max * 10 ** (-i / 9)) for i in range(10)]
    assert dataset.cls_num_list == expected_counts and dataset.classes == [str(d) for d in range(10)]
    np.testing.assert_array_equal(np.bincount(dataset.train_labels, minlength=10), expected_counts)
    np.testing.assert_array_equal(np.bincount(dataset.test_labels), per_class - n_max)
    assert (per_class - n_max).min() >= 50  # every class keeps a decent test set
    for images in (dataset.train_images, dataset.test_images):
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)

    # Positions in load_digits: per class, the first n_max are training images, the rest test images.
    rank = np.array([np.sum(source.target[:i] == t) for i, t in enumerate(source.target)])
    train_positions, test_positions = np.where(rank < n_max)[0], np.where(rank >= n_max)[0]
    assert not set(train_positions) & set(test_positions)
    selected = train_positions[dataset.indices]
    np.testing.assert_array_equal(dataset.train_labels, source.target[selected])

    # Each 32x32 image is its 8x8 digit scaled to 0..255, every pixel a 4x4 block on all channels.
    for images, positions in ((dataset.train_images, selected), (dataset.test_images, test_positions)):
        blocks = images.reshape(len(images), 8, 4, 8, 4, 3)
        assert (blocks == blocks[:, :, :1, :, :1, :1]).all()
        np.testing.assert_array_equal(blocks[:, :, 0, :, 0, 0], np.round(source.images[positions] * 255 / 16))
