"""Streaming image folders (data/files.py, data/feed.py): the same images, batches and training
results as the decode-once path, read through DataLoader workers."""

import logging

import numpy as np
import pytest
import torch

from simclrv2.config import ConfigError, build_config
from simclrv2.data import datasets
from simclrv2.data.feed import BatchFeed, chunks
from simclrv2.data.files import FileImages, UnreadableImage, decode_file, fit_square
from simclrv2.data.ragged import RaggedImages
from simclrv2.train import classifier, distill, pretrain

TINY = ["image_size=12", "model=resnet18", "width=0.125", "head_layers=2", "knn_every=1", "knn_k=5",
        "pretrain.epochs=2", "pretrain.batch_size=16", "finetune.epochs=1", "finetune.batch_size=8",
        "distill.epochs=1", "distill.batch_size=16", "labels=0.5", "device=cpu", "workers=2",
        "val_fraction=0.2"]


def _png_folder(root, size=12, per_class=10, photos=False):
    """PNG only: lossless, so both decoders must give the very same pixels. ``photos``: sizes and
    aspect ratios vary (portrait, landscape, 1:3, smaller and larger than the views)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    shapes = [(12, 17), (20, 12), (9, 27), (30, 30), (14, 11)]
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = shapes[i % len(shapes)] if photos else (size, size)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    return root


def _config(path, *extra):
    return build_config("digits", overrides=TINY + [f"data.path={path}", "dataset=folder", *extra])


def test_auto_streams_only_what_does_not_fit(image_folder):
    small = datasets.load(_config(image_folder).data)
    assert isinstance(small.train.images, torch.Tensor)
    big = datasets.load(_config(image_folder, "data.memory_gb=0.000001").data)
    assert isinstance(big.train.images, FileImages) and isinstance(big.val.images, FileImages)
    forced = datasets.load(_config(image_folder, "data.stream=on").data)
    assert isinstance(forced.train.images, FileImages)
    off = datasets.load(_config(image_folder, "data.stream=off", "data.memory_gb=0.000001").data)
    assert isinstance(off.train.images, torch.Tensor)
    # the same split, names and labels either way
    assert big.train.names == small.train.names and big.val.names == small.val.names
    assert torch.equal(big.train.labels, small.train.labels) and big.classes == small.classes


def test_file_images_match_the_decoded_tensor(tmp_path):
    root = _png_folder(tmp_path / "png")
    memory = datasets.load(_config(root, "data.stream=off").data)
    files = datasets.load(_config(root, "data.stream=on").data)
    assert files.train.images.shape == tuple(memory.train.images.shape)
    views = torch.cat(list(chunks(memory.train.images, 100)))  # the evaluation views: at 12 px, only converted
    assert views.dtype == torch.float32 and torch.equal(views, memory.train.images.float().mul_(1 / 255))
    assert torch.equal(files.train.images[:], views)
    assert torch.equal(files.train.images[[3, 1]], views[[3, 1]])
    sub = files.train.subset([5, 0, 2])
    assert isinstance(sub.images, FileImages) and torch.equal(sub.images[:], views[[5, 0, 2]])
    assert torch.equal(torch.cat(list(chunks(files.val.images, 4, workers=2))),
                      torch.cat(list(chunks(memory.val.images, 100))))


def _pil_reference(path, size: int) -> torch.Tensor:
    """Short side to ``size`` with PIL's bilinear filter, then the centre crop."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        scale = size / min(w, h)
        im = im.convert("RGB").resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
        return torch.from_numpy(np.asarray(im.crop((left, top, left + size, top + size))).copy()).permute(2, 0, 1)


def test_resized_files_match_pil(tmp_path):
    """Non-square images, shrunk: torchvision's antialiased resize against PIL's, same crop, rounding apart."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(40, 64), (64, 40), (33, 33), (90, 50)]):
        smooth = np.kron(rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)), np.ones((4, 4, 1)))[:h, :w]
        Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    ours = torch.stack([fit_square(decode_file(p), 16) for p in paths])  # the data.crop=square copy
    pil = torch.stack([_pil_reference(p, 16) for p in paths])
    diff = (ours.float() - pil.float()).abs()
    assert diff.mean() < 0.1 and diff.max() <= 2  # a crop one pixel off would differ by ~38 on average


def test_feed_delivers_the_planned_batches_through_workers(tmp_path):
    root = _png_folder(tmp_path / "png")
    files = datasets.load(_config(root, "data.stream=on").data).train.images
    reference = torch.stack([files.decode(i) for i in range(len(files))])  # as kept for training (12 px)
    feed = BatchFeed(files, torch.device("cpu"), workers=2)
    batches = list(torch.randperm(len(files), generator=torch.Generator().manual_seed(0)).split(7))
    feed.plan(batches)
    for b in batches:
        assert torch.equal(feed(b), reference[b])
    with pytest.raises(RuntimeError, match="more batches"):
        feed(batches[0])
    feed.plan(batches)
    with pytest.raises(RuntimeError, match="not the next planned"):
        feed(batches[1])


def test_device_decoding_matches_worker_decoding(image_folder):
    """``decode=device`` (workers read bytes, the batch is decoded in the training process) on the CPU."""
    files = datasets.load(_config(image_folder, "data.stream=on").data).train.images
    assert any(f.endswith(".jpg") for f in files.files) and any(f.endswith(".png") for f in files.files)
    batches = [torch.arange(len(files))]
    outputs = []
    for decode in ("workers", "device"):
        feed = BatchFeed(files, torch.device("cpu"), workers=1, decode=decode)
        feed.plan(batches)
        outputs.append(feed(batches[0]))
    assert torch.equal(outputs[0], outputs[1])


def test_cache_size_caps_the_short_side_of_training_images(tmp_path):
    root = _png_folder(tmp_path / "png", photos=True)
    cfg = _config(root, "data.stream=on", "data.cache_size=10")
    images = datasets.load(cfg.data).train.images
    assert images[:2].shape == (2, 3, 12, 12)  # evaluation size
    feed = BatchFeed(images, torch.device("cpu"), workers=0)
    feed.plan([torch.arange(5)])
    batch = feed(torch.arange(5))
    assert isinstance(batch, RaggedImages)  # cropped on the device later, each on its own size
    h, w = batch.sizes.unbind(1)
    assert (torch.minimum(h, w) <= 10).all() and (torch.minimum(h, w) == 10).any()
    full = [decode_file(images.files[i]).shape[-2:] for i in range(5)]  # aspect ratios kept
    assert all(abs(a[0] / a[1] - b[0] / b[1]) < 0.15 for a, b in zip(full, batch.sizes.tolist()))
    memory = datasets.load(_config(root, "data.stream=off", "data.cache_size=10").data).train.images
    assert torch.equal(memory.sizes[:5], batch.sizes) and torch.equal(memory[:5].data, batch.data)


def test_unreadable_file_is_replaced_or_fatal_when_strict(image_folder, caplog):
    bad = image_folder / "cat" / "0000.jpg"
    bad.write_bytes(b"not an image")
    images = datasets.load(_config(image_folder, "data.stream=on").data).pretrain_images()
    where = images.files.index(str(bad))
    feed = BatchFeed(images, torch.device("cpu"), workers=1)
    feed.plan([torch.tensor([where])])
    with caplog.at_level(logging.WARNING):
        x = feed(torch.tensor([where]))
    assert torch.equal(x[0], images.decode(where + 1))
    strict = datasets.load(_config(image_folder, "data.stream=on", "data.strict=true").data).pretrain_images()
    feed = BatchFeed(strict, torch.device("cpu"), workers=1)
    feed.plan([torch.tensor([where])])
    with pytest.raises(UnreadableImage) as err:
        feed(torch.tensor([where]))
    assert str(err.value).startswith(f"{bad}: cannot decode")


def test_bad_streaming_settings_are_named():
    with pytest.raises(ConfigError, match="data.stream"):
        build_config("digits", overrides=["data.stream=maybe"])
    with pytest.raises(ConfigError, match="data.decode"):
        build_config("digits", overrides=["data.decode=gpu"])


@pytest.mark.parametrize("photos", [False, True], ids=["squares", "photos"])
def test_streamed_training_equals_decoded_training(tmp_path, photos):
    """Same files, order and augmentation: pretraining, fine-tuning and distillation give the same
    losses and accuracies whether the images were decoded once or are streamed by workers -- also
    for photos of different sizes and aspect ratios, cropped from the whole image."""
    root = _png_folder(tmp_path / "png", photos=photos)
    runs = {}
    for mode in ("off", "on"):
        cfg = _config(root, f"data.stream={mode}")
        if photos and mode == "off":
            assert isinstance(datasets.load(cfg.data).train.images, RaggedImages)
        splits = datasets.load(cfg.data)
        out = tmp_path / mode
        pre = pretrain.run(cfg, out / "pre", splits, show_progress=False)
        ft = classifier.run_finetune(cfg, out / "ft", out / "pre" / "last", splits, show_progress=False)
        dist = distill.run(cfg, out / "dist", out / "ft" / "best", splits, show_progress=False)
        runs[mode] = [pre["history"], ft["history"], dist["history"]]
    for decoded, streamed in zip(runs["off"], runs["on"]):
        for a, b in zip(decoded, streamed):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            for key in ("knn_top1", "val_top1"):
                assert a.get(key) == pytest.approx(b.get(key))



def test_streamed_pretraining_resumes_mid_epoch_exactly(tmp_path, monkeypatch):
    """SIGTERM in the middle of an epoch, then --resume: the feed plans the rest of that epoch and
    the result equals an uninterrupted streamed run."""
    import os
    import signal

    from simclrv2 import checkpoint
    from simclrv2.train.stepper import Stepper
    from simclrv2.train.loop import Interrupted

    root = _png_folder(tmp_path / "png")
    cfg = _config(root, "data.stream=on", "pretrain.batch_size=8", "knn_every=0")
    splits = datasets.load(cfg.data)
    whole = pretrain.run(cfg, tmp_path / "whole", splits, show_progress=False)

    real_step, calls = Stepper.step, []

    def step_then_stop(self, loss):
        calls.append(1)
        if len(calls) == 2:  # the second of three steps of epoch 1
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, loss)

    monkeypatch.setattr(Stepper, "step", step_then_stop)
    with pytest.raises(Interrupted):
        pretrain.run(cfg, tmp_path / "cut", splits, show_progress=False)
    monkeypatch.setattr(Stepper, "step", real_step)
    resumed = pretrain.run(cfg, tmp_path / "cut", splits, show_progress=False, resume=True)
    assert [r["loss"] for r in resumed["history"]] == pytest.approx([r["loss"] for r in whole["history"]], rel=1e-5)
    a, _ = checkpoint.load(tmp_path / "whole" / "last")
    b, _ = checkpoint.load(tmp_path / "cut" / "last")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_residency_and_nvjpeg_decoding(image_folder):
    small = datasets.load(_config(image_folder).data)
    assert BatchFeed(small.train.images, torch.device("cuda")).resident.startswith("cuda")
    files = datasets.load(_config(image_folder, "data.stream=on").data).train.images
    batches = [torch.arange(len(files))]
    outputs = []
    for decode in ("workers", "device"):
        feed = BatchFeed(files, torch.device("cuda"), workers=1, decode=decode)
        feed.plan(batches)
        x = feed(batches[0])
        assert x.device.type == "cuda"
        outputs.append(x.float().cpu())
    assert (outputs[0] - outputs[1]).abs().mean() < 2.0  # nvJPEG and libjpeg-turbo round differently
