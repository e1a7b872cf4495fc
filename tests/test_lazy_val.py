"""Pretraining without the kNN monitor never decodes the validation images (issue #21: training
starts sooner and holds less), and trains on exactly the images it trained on before."""

import torch

from simclrv2.config import DataConfig
from simclrv2.data import datasets
from simclrv2.data.files import FileImages

from conftest import write_image_folder

DECODE = datasets.decode_file


def _load(root, need_val, monkeypatch):
    decoded = []
    monkeypatch.setattr(datasets, "decode_file",
                        lambda path, *a, **k: decoded.append(str(path)) or DECODE(path, *a, **k))
    cfg = DataConfig(dataset="folder", path=str(root), image_size=12, val_fraction=0.2, stream="off")
    return datasets.load(cfg, workers=1, need_val=need_val), decoded


def _unit(x):
    """Evaluation views as float [0, 1], whether kept as uint8 or float."""
    return x.float().div(255) if x.dtype == torch.uint8 else x


def test_held_out_images_are_listed_not_decoded(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "images")
    full, decoded_all = _load(root, True, monkeypatch)
    lazy, decoded = _load(root, False, monkeypatch)
    assert len(decoded_all) == 30 and len(decoded) == len(full.train) == 24
    assert not any(name in path for path in decoded for name in lazy.val.names)
    assert isinstance(lazy.val.images, FileImages) and lazy.val.names == full.val.names
    assert lazy.train.names == full.train.names and torch.equal(lazy.train.labels, full.train.labels)
    assert torch.equal(lazy.train.images, full.train.images)
    assert torch.allclose(_unit(lazy.val.images[:]), _unit(full.val.images), atol=1e-6)  # read on demand


def test_a_val_tree_is_listed_not_decoded(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "d" / "train", per_class=4)
    write_image_folder(tmp_path / "d" / "val", per_class=2, seed=1)
    lazy, decoded = _load(tmp_path / "d", False, monkeypatch)
    assert len(decoded) == 12 and all("/train/" in p for p in decoded)
    assert isinstance(lazy.val.images, FileImages) and len(lazy.val) == 6


def test_stacking_decoded_photos_releases_each_as_it_is_copied():
    """decode_images keeps one copy of the photos at a time (issue #21: peak memory)."""
    from simclrv2.data.ragged import RaggedImages

    g = torch.Generator().manual_seed(0)
    photos = [torch.randint(0, 256, (3, 5 + i, 9 - i), generator=g, dtype=torch.uint8) for i in range(4)]
    plain = RaggedImages.stack(photos, 4)
    handed = list(photos)
    released = RaggedImages.stack(handed, 4, release=True, chunk=3)
    assert handed == [None] * 4
    assert torch.equal(released.data, plain.data) and torch.equal(released.offsets, plain.offsets)
    assert all(torch.equal(released.image(i), photos[i]) for i in range(4))
