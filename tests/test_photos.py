"""Photos of every size: crop boxes on the whole image (torchvision's RandomResizedCrop.get_params),
the batched resampling against torchvision's resized_crop, the official evaluation crop, the kept
copy's cap, and bad input (tiny, 1:10, greyscale, CMYK, 16-bit, palette with transparency, EXIF
rotation, decompression bombs)."""

import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from simclrv2.config import build_config
from simclrv2.data import datasets
from simclrv2.data.errors import DataError
from simclrv2.data.feed import chunks
from simclrv2.data.files import UnreadableImage, cap_size, decode_file, eval_crop, fit_short_side
from simclrv2.data.gpu_augment import random_resized_crop, resized_crop_ragged, sample_crop_boxes
from simclrv2.data.ragged import RaggedImages


def _smooth(h, w, seed=0, cell=6):
    """A photo-like uint8 ``[3, h, w]``: blocks of random colour, blurred (edges, but no pixel noise)."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (3, h // cell + 2, w // cell + 2), generator=g, dtype=torch.uint8)
    big = blocks.repeat_interleave(cell, 1).repeat_interleave(cell, 2)[:, :h, :w].float()
    return TF.gaussian_blur(big, [7, 7], [1.5, 1.5]).round().to(torch.uint8)


def _torchvision_boxes(h, w, n, seed=0):
    torch.manual_seed(seed)
    img = torch.empty(3, h, w)
    return torch.tensor([v2.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)])


@pytest.mark.parametrize("h,w", [(60, 200), (200, 60), (37, 91), (160, 160)])
def test_boxes_follow_torchvision_get_params_on_the_whole_image(h, w):
    n = 4000
    # one batch of photos of different sizes: the image (h, w) among others
    sizes = torch.tensor([[h, w], [31, 17], [400, 90]]).repeat(n, 1)
    ours = sample_crop_boxes(3 * n, sizes[:, 0], sizes[:, 1], generator=torch.Generator().manual_seed(1))[0::3]
    ref = _torchvision_boxes(h, w, n)
    for boxes in (ours, ref):
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= h).all() and (boxes[:, 1] + boxes[:, 3] <= w).all()
    for stat in (lambda b: b[:, 2] * b[:, 3] / (h * w), lambda b: torch.log(b[:, 3] / b[:, 2])):
        a, b = stat(ours.double()).sort().values, stat(ref.double()).sort().values
        assert (a - b).abs().max() < 0.06  # two-sample Kolmogorov-Smirnov-like: quantile by quantile
        assert a.mean().item() == pytest.approx(b.mean().item(), abs=0.01)
    # every border is reached: crops touch the top, left, bottom and right edges
    assert (ours[:, 0] == 0).any() and (ours[:, 1] == 0).any()
    assert (ours[:, 0] + ours[:, 2] == h).any() and (ours[:, 1] + ours[:, 3] == w).any()
    # and the centre of the crops spreads over the whole image, as torchvision's
    for k, side in ((0, h), (1, w)):
        centre_ours = (ours[:, k] + ours[:, k + 2] / 2) / side
        centre_ref = (ref[:, k] + ref[:, k + 2] / 2) / side
        assert centre_ours.mean().item() == pytest.approx(centre_ref.mean().item(), abs=0.02)
        assert centre_ours.std().item() == pytest.approx(centre_ref.std().item(), abs=0.02)


def test_fallback_is_torchvision_central_crop_per_image():
    """No try fits (scale near 1 on 1:10 and 10:1 images): the central crop at the nearest ratio."""
    sizes = torch.tensor([[10, 200], [200, 10], [50, 60]])
    ours = sample_crop_boxes(3, sizes[:, 0], sizes[:, 1], scale=(0.95, 1.0), attempts=10,
                             generator=torch.Generator().manual_seed(0))
    for (h, w), box in zip(sizes.tolist()[:2], ours.tolist()[:2]):
        torch.manual_seed(0)
        ref = v2.RandomResizedCrop.get_params(torch.empty(3, h, w), [0.95, 1.0], [3 / 4, 4 / 3])
        assert box == list(ref)


def test_one_size_for_all_draws_exactly_as_before():
    """Per-image sizes all equal draw the very boxes the one-size path draws (CIFAR's fast path)."""
    a = sample_crop_boxes(64, 32, 32, generator=torch.Generator().manual_seed(3))
    b = sample_crop_boxes(64, torch.full((64,), 32), torch.full((64,), 32), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("size", [24, 64])
def test_resampled_box_equals_torchvision_resized_crop(size):
    images = [_smooth(h, w, seed=i) for i, (h, w) in enumerate([(90, 140), (140, 90), (17, 170), (48, 48), (300, 220)])]
    boxes = torch.tensor([[10, 20, 70, 100], [5, 3, 120, 60], [0, 50, 17, 23], [4, 4, 40, 44], [0, 0, 300, 220]])
    flip = torch.tensor([False, True, False, True, False])
    out = resized_crop_ragged(images, boxes, size, flip)
    for k, (image, (top, left, h, w)) in enumerate(zip(images, boxes.tolist())):
        ref = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
        ref = TF.horizontal_flip(ref) if flip[k] else ref
        assert (out[k] - ref.float() / 255).abs().mean() < 1 / 255, k


def test_crop_from_the_capped_copy_is_close_to_the_original():
    """The kept copy downscaled to the default cap for 32-px views (short side 114 of 342): a box,
    in the copy's coordinates, resampled to 32 px differs from torchvision's crop of the original
    by less than 1/255 on average for the whole image and less than 3.5/255 down to a minimum-scale
    (8%) crop of this sharp-edged image (measured 2.8/255: the two antialiasing filters in a row
    blur edges a little more than one; a larger data.cache_size brings it down)."""
    assert cap_size(32) == 114
    original = _smooth(342, 513, seed=5, cell=12)
    kept = fit_short_side(original, cap_size(32))
    assert kept.shape[-2:] == (114, 171)
    errors = []
    # boxes on the copy's pixel grid (multiples of 3 in the original); the last ones are 8% crops
    for top, left, h, w in [(30, 60, 150, 180), (0, 0, 342, 513), (201, 300, 117, 117), (120, 90, 105, 132),
                            (0, 393, 120, 120)]:
        ref = TF.resized_crop(original, top, left, h, w, [32, 32], antialias=True).float() / 255
        ours = resized_crop_ragged([kept], torch.tensor([[top // 3, left // 3, h // 3, w // 3]]), 32)[0]
        errors.append((ours - ref).abs().mean().item())
    assert errors[1] < 1 / 255 and max(errors) < 3.5 / 255, errors


@pytest.mark.parametrize("h,w", [(33, 47), (40, 48), (101, 64), (64, 150), (160, 213), (31, 45), (7, 7)])
def test_eval_crop_is_the_official_rule(h, w):
    """The official ``data.get_preprocess_fn(is_training=False)`` run by TensorFlow: above 32 px
    ``preprocess_for_eval`` (side rint(0.875 x short side), offsets (H - side + 1) // 2, TF's bicubic
    resize without antialiasing, clip); at 24 px the whole central square (the official code only
    takes images already 24 x 24 there, which are kept as they are)."""
    import official

    off = official.load()
    data = __import__("importlib").import_module("data")
    image = _smooth(h, w, seed=h)
    hwc = image.permute(1, 2, 0).numpy()
    for size in (24, 48):
        got = eval_crop(image, size).permute(1, 2, 0).numpy()
        old = official.set_flags(off.FLAGS, image_size=size)
        try:
            if size > 32:
                ref = data.get_preprocess_fn(is_training=False, is_pretrain=False)(off.tf.constant(hwc)).numpy()
            else:
                x = off.tf.image.convert_image_dtype(off.tf.constant(hwc), off.tf.float32)
                ref = off.tf.clip_by_value(off.data_util.center_crop(x, size, size, 1.0), 0.0, 1.0).numpy()
        finally:
            official.set_flags(off.FLAGS, **old)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0, err_msg=f"{h}x{w} at {size}")
    if (h, w) == (40, 48):
        side = int(np.rint(0.875 * 40))
        assert (side, (h - side + 1) // 2, (w - side + 1) // 2) == (35, 3, 7)  # rint(35.0), offsets rounded up


def _photo_folder(root, shapes, per_class=4):
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = shapes[i % len(shapes)]
            Image.fromarray(_smooth(h, w, seed=i).permute(1, 2, 0).numpy()).save(root / c / f"{i}.png")
    return root


def _cfg(root, *extra):
    return build_config("digits", overrides=[f"data.path={root}", "dataset=folder", "image_size=16",
                                             "val_fraction=0.25", "workers=1", *extra])


def test_training_evaluation_and_predict_see_the_same_photo(tmp_path):
    """Decoded once, streamed, and predict's decoding: the same evaluation views; training views
    of photos are drawn from the whole image at its own size."""
    root = _photo_folder(tmp_path / "p", [(40, 70), (90, 30), (16, 160), (50, 50)])
    memory = datasets.load(_cfg(root, "data.stream=off").data)
    streamed = datasets.load(_cfg(root, "data.stream=on").data)
    assert isinstance(memory.train.images, RaggedImages)
    views = torch.cat(list(chunks(memory.train.images, 4)))
    assert torch.equal(views, torch.cat(list(chunks(streamed.train.images, 4, workers=1))))
    files = [root / n for n in memory.train.names]
    predicted, errors = datasets.decode_images(files, 16)
    assert errors == [None] * len(files) and torch.equal(predicted, views)
    x = random_resized_crop(memory.train.images, 16, generator=torch.Generator().manual_seed(0))
    assert x.shape == (len(files), 3, 16, 16) and 0 <= x.min() and x.max() <= 1


def test_kept_copy_is_capped_and_the_memory_estimate_counts_it(tmp_path):
    root = _photo_folder(tmp_path / "p", [(40, 70), (90, 35), (60, 60)])
    cfg = _cfg(root, "data.stream=off", "data.cache_size=32")
    images = datasets.load(cfg.data).pretrain_images()
    short = images.sizes.min(1).values
    assert (short == 32).all()  # all were larger: downscaled, aspect ratio kept
    files = datasets.list_images(root)
    assert datasets.kept_bytes(cfg.data, files) == sum(
        3 * int(h) * int(w) for h, w in RaggedImages.stack([decode_file(f, 32) for f in files], 16).sizes)
    square = _cfg(root, "data.crop=square")
    assert datasets.kept_bytes(square.data, files) == len(files) * 3 * 16 * 16
    assert cap_size(224) == 792 and cap_size(64) == 227


def test_small_and_extreme_images_train_with_one_warning(tmp_path, caplog):
    root = _photo_folder(tmp_path / "p", [(8, 10), (12, 120), (120, 12), (30, 30)])
    with caplog.at_level(logging.WARNING):
        splits = datasets.load(_cfg(root, "data.stream=off").data)
    assert "side below image_size=16" in caplog.text and "aspect ratio beyond 4:1" in caplog.text
    images = splits.pretrain_images()
    x = random_resized_crop(images, 16, generator=torch.Generator().manual_seed(0))
    assert x.shape == (len(images), 3, 16, 16) and torch.isfinite(x).all()
    assert torch.cat(list(chunks(images, 8))).shape == (len(images), 3, 16, 16)


def _png16(path, array, colour):
    """A 16-bit PNG written by hand (PIL cannot write 16-bit RGB)."""
    h, w = array.shape[:2]
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if colour else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) +
                     chunk(b"IEND", b""))


def test_every_mode_and_depth_decodes_to_the_right_rgb(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, (6, 7, 3))
    _png16(tmp_path / "rgb16.png", rgb16, colour=True)
    expected = torch.from_numpy(np.round(rgb16 / 257).astype(np.uint8)).permute(2, 0, 1)
    assert torch.equal(decode_file(tmp_path / "rgb16.png"), expected)  # scaled, not the low byte
    grey16 = rng.integers(0, 65536, (6, 7))
    _png16(tmp_path / "grey16.png", grey16, colour=False)
    assert torch.equal(decode_file(tmp_path / "grey16.png"),
                       torch.from_numpy(np.round(grey16 / 257).astype(np.uint8)).expand(3, -1, -1))

    grey = rng.integers(0, 256, (5, 9), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert torch.equal(decode_file(tmp_path / "grey.png"), torch.from_numpy(grey).expand(3, -1, -1))

    Image.new("CMYK", (8, 4), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    cmyk = decode_file(tmp_path / "cmyk.jpg")
    with Image.open(tmp_path / "cmyk.jpg") as im:  # PIL's CMYK -> RGB conversion as the reference
        ref = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    assert cmyk.shape == (3, 4, 8) and (cmyk.float() - ref.float()).abs().max() <= 2

    palette = Image.new("P", (4, 2))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    palette.save(tmp_path / "palette.png", transparency=1)  # index 1 (blue) is transparent
    out = decode_file(tmp_path / "palette.png")
    assert out[:, 0, 0].tolist() == [255, 0, 0] and out[:, 0, 1].tolist() == [255, 255, 255]

    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgba[0, 1] = (10, 20, 30, 0)
    rgba[1, :] = (0, 0, 0, 128)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = decode_file(tmp_path / "rgba.png")
    assert out[:, 0, 0].tolist() == [10, 20, 30] and out[:, 0, 1].tolist() == [255, 255, 255]
    assert out[:, 1, 0].tolist() == [127, 127, 127]  # half-transparent black on white


def test_exif_orientation_is_applied_everywhere(tmp_path):
    from PIL import Image

    array = _smooth(20, 40).permute(1, 2, 0).numpy()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(array).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    image = decode_file(tmp_path / "rot.jpg")
    assert image.shape == (3, 40, 20)  # shown upright: portrait
    assert datasets.image_size_of(tmp_path / "rot.jpg") == (40, 20)
    with Image.open(tmp_path / "rot.jpg") as im:
        upright = np.asarray(im.transpose(Image.Transpose.ROTATE_270))
    assert (image.permute(1, 2, 0).float() - torch.from_numpy(upright.copy()).float()).abs().mean() < 2


def _bomb(path, side=20000):
    """A PNG whose header claims side x side pixels (400 million: over PIL's limit), a few bytes long."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) +
                     chunk(b"IEND", b""))


def test_decompression_bombs_are_refused_or_skipped_with_the_file_named(tmp_path, caplog):
    root = _photo_folder(tmp_path / "p", [(20, 30)])
    _bomb(root / "a" / "bomb.png")
    with pytest.raises(UnreadableImage, match="bomb.png: .*over.*limit"):
        decode_file(root / "a" / "bomb.png")
    with pytest.raises(UnreadableImage, match=r"0.png: 30 x 20 = 600 pixels is over the limit of 500 \(data.max_pixels\)"):
        decode_file(root / "a" / "0.png", max_pixels=500)
    for stream in ("off", "on"):
        with pytest.raises(DataError, match="bomb.png"):
            splits = datasets.load(_cfg(root, f"data.stream={stream}", "data.strict=true").data)
            assert "a/bomb.png" in splits.val.names  # streamed: refused when it is read
            list(chunks(splits.val.images, 8, workers=0))
    with caplog.at_level(logging.WARNING):
        splits = datasets.load(_cfg(root, "data.stream=off").data)
    assert "skipped 1 unreadable image(s)" in caplog.text and "bomb.png" in caplog.text
    assert len(splits.train) + len(splits.val) == 8  # the other images are all there


def test_cli_bomb_is_one_line(tmp_path, capsys):
    from simclrv2.cli import main

    root = _photo_folder(tmp_path / "p", [(20, 30)])
    _bomb(root / "b" / "bomb.png")
    code = main(["pretrain", "--data", str(root), "--strict", "--out", str(tmp_path / "o"), "image_size=16",
                 "model=resnet18", "width=0.125", "pretrain.epochs=1", "pretrain.batch_size=4", "device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "bomb.png" in err and "Traceback" not in err
