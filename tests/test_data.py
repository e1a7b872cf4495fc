"""Datasets decode once to uint8 tensors; folder layouts, the validation split rule, bad files."""

import numpy as np
import pytest
import torch
from PIL import Image

from simclrv2.config import DataConfig
from simclrv2.data.datasets import DataError, load, resize_uint8


def test_digits_is_embedded_and_split_per_class():
    splits = load(DataConfig(dataset="digits", image_size=16, val_fraction=0.2))
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape[1:] == (3, 16, 16)
    assert len(splits.train) + len(splits.val) == 1797
    assert abs(len(splits.val) - 0.2 * 1797) < 10
    assert set(splits.train.names).isdisjoint(splits.val.names)
    assert torch.bincount(splits.val.labels).min() >= 30  # every class held out
    assert splits.classes == [str(i) for i in range(10)]


def test_folder_holds_out_the_last_files_of_each_class(image_folder):
    splits = load(DataConfig(dataset="folder", path=str(image_folder), image_size=8, val_fraction=0.2))
    assert sorted(splits.val.names) == sorted(f"{c}/{i:04d}.{'png' if i % 2 else 'jpg'}"
                                              for c in ("cat", "dog", "frog") for i in (8, 9))
    assert len(splits.train) == 24 and splits.classes == ["cat", "dog", "frog"]
    assert splits.train.images.shape == (24, 3, 8, 8)
    assert splits.train.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8


def test_folder_with_train_and_val_trees(tmp_path):
    from conftest import write_image_folder

    write_image_folder(tmp_path / "d" / "train", per_class=4)
    write_image_folder(tmp_path / "d" / "val", per_class=2)
    splits = load(DataConfig(dataset="folder", path=str(tmp_path / "d"), image_size=12))
    assert (len(splits.train), len(splits.val)) == (12, 6)


def test_flat_folder_is_unlabeled(tmp_path):
    from conftest import write_image_folder

    write_image_folder(tmp_path / "x", per_class=3)
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in (tmp_path / "x").rglob("*.png"):
        f.rename(flat / f"{f.parent.name}_{f.name}")
    splits = load(DataConfig(dataset="folder", path=str(flat), image_size=12))
    assert len(splits.train) == 0 and len(splits.unlabeled) == 3 and splits.val is None
    assert (splits.unlabeled.labels == -1).all()
    assert splits.pretrain_images().shape[0] == 3


def test_mixed_modes_and_sizes_are_converted(tmp_path):
    root = tmp_path / "mixed" / "a"
    root.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(root / "grey.png")
    Image.fromarray(np.zeros((9, 9, 4), dtype=np.uint8)).save(root / "rgba.png")
    Image.new("P", (16, 16)).save(root / "palette.gif")
    splits = load(DataConfig(dataset="folder", path=str(tmp_path / "mixed"), image_size=8, val_fraction=0.34))
    assert splits.train.images.shape[1:] == (3, 8, 8) and len(splits.train) + len(splits.val) == 3


def test_corrupt_images_are_skipped_or_fatal_with_strict(image_folder, caplog):
    (image_folder / "cat" / "9999.jpg").write_bytes(b"not a jpeg at all")
    splits = load(DataConfig(dataset="folder", path=str(image_folder), image_size=8))
    assert len(splits.train) + len(splits.val) == 30
    assert "skipped 1 unreadable image" in caplog.text
    with pytest.raises(DataError, match="1 unreadable image\\(s\\).*9999.jpg"):
        load(DataConfig(dataset="folder", path=str(image_folder), image_size=8, strict=True))


@pytest.mark.parametrize("case,message", [
    ("missing", "data path does not exist"),
    ("empty", "no images found"),
    ("nopath", "needs a path"),
    ("unknown", "unknown dataset 'mnist'"),
])
def test_bad_data_paths(tmp_path, case, message):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("no images here")
    cfg = {"missing": DataConfig(dataset="folder", path=str(tmp_path / "nope")),
           "empty": DataConfig(dataset="folder", path=str(tmp_path / "empty")),
           "nopath": DataConfig(dataset="cifar10"),
           "unknown": DataConfig(dataset="mnist")}[case]
    with pytest.raises(DataError, match=message):
        load(cfg)


def test_resize_uint8_keeps_constant_images_constant():
    x = torch.full((2, 3, 10, 10), 77, dtype=torch.uint8)
    assert torch.equal(resize_uint8(x, 4), torch.full((2, 3, 4, 4), 77, dtype=torch.uint8))


def test_cifar_preset_on_an_image_folder_reads_the_folder(image_folder):
    splits = load(DataConfig(dataset="cifar10", path=str(image_folder), image_size=8))
    assert splits.classes == ["cat", "dog", "frog"] and len(splits.train) == 27
