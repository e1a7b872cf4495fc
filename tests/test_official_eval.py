"""Evaluation as the official SimCLR TF2 code evaluates, shown by running it beside ours.

* The evaluation view is ``data_util.preprocess_for_eval`` as ``data.get_preprocess_fn`` applies it
  (the 0.875 central crop above 32 px, none at or below; TF's bicubic resize without antialiasing;
  the clip): compared with TensorFlow on synthetic images of many sizes (1 px to 1200 px, up- and
  downscaled) and on Imagenette photos, through every entry point that makes evaluation views.
* End to end: a model built by the official ``model.Model`` (R50 SK1 1x, ImageNet stem, fine-tune
  mode with its supervised head; random BN statistics and head), exported as the official ``run.py``
  does (SavedModel) and as a TF2 training checkpoint, imported with ``simclrv2 import-tf`` and run
  with ``simclrv2 predict``: the top-1 class and probabilities of the official evaluation forward.
"""

from __future__ import annotations

import csv
import importlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import official
from simclrv2.data import augment, datasets, feed, gpu_augment
from simclrv2.data.files import FileImages, decode_file, eval_crop
from simclrv2.data.ragged import RaggedImages

NETTE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenette2-160-train.tar.gz"
SHAPES = [(1, 1), (2, 3), (7, 5), (24, 24), (31, 45), (32, 32), (40, 48), (64, 64), (99, 140), (160, 213),
          (213, 160), (375, 500), (900, 1200), (3, 400)]
TOLERANCE = 1e-4  # per pixel, float32 in [0, 1]; measured <= 1e-6 (float32 rounding of the two matmuls)


def _official_eval(off, image: np.ndarray, size: int) -> np.ndarray:
    """``data.get_preprocess_fn(is_training=False)`` at ``FLAGS.image_size = size`` on uint8 HWC."""
    data = importlib.import_module("data")  # the official tf2/data.py (on sys.path once official.load() ran)
    old = official.set_flags(off.FLAGS, image_size=size)
    try:
        fn = data.get_preprocess_fn(is_training=False, is_pretrain=False)
        return fn(off.tf.constant(image)).numpy()
    finally:
        official.set_flags(off.FLAGS, **old)


def _official_no_crop_square(off, image: np.ndarray, size: int) -> np.ndarray:
    """Our extension at <= 32 px for images not already ``size`` x ``size`` (the official code would fail):
    the whole central square, ``data_util.center_crop(..., crop_proportion=1.0)``, clipped."""
    tf = off.tf
    x = tf.image.convert_image_dtype(tf.constant(image), tf.float32)
    return tf.clip_by_value(off.data_util.center_crop(x, size, size, 1.0), 0.0, 1.0).numpy()


def _edgy(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 HWC with hard edges (bicubic overshoot, border taps) and fine texture (aliasing)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (h // 5 + 1, w // 5 + 1, 3))
    image = np.kron(cells, np.ones((5, 5, 1)))[:h, :w]
    noise = rng.integers(-40, 41, (h, w, 3))
    return np.clip(image + noise * (np.arange(w)[None, :, None] % 2), 0, 255).astype(np.uint8)


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("size", [224, 64, 33, 32, 24])
def test_eval_view_equals_preprocess_for_eval_on_many_sizes(size):
    off = official.load()
    for k, (h, w) in enumerate(SHAPES):
        image = _edgy(h, w, seed=k)
        if size > 32 or (h, w) == (size, size):
            ref = _official_eval(off, image, size)
        else:
            ref = _official_no_crop_square(off, image, size)
        ours = _hwc(gpu_augment.to_float(_chw(image), size))
        assert ours.shape == ref.shape == (size, size, 3)
        np.testing.assert_allclose(ours, ref, atol=TOLERANCE, rtol=0, err_msg=f"{h}x{w} at {size}")


def test_crop_rule_and_antialias_matter():
    """The two differences from before, by hand: the crop box (rint half to even, offsets rounded up, and
    a crop at image_size 96 even of a 96 px image) and aliasing (a 1-px stripe pattern shrunk 4x stays
    striped in TF's resize; an antialiased resize would average it to grey)."""
    assert gpu_augment.center_crop_box(40, 48) == (3, 7, 35, 35)  # rint(35.0), (40 - 35 + 1) // 2, (48 - 35 + 1) // 2
    assert gpu_augment.center_crop_box(12, 12) == (1, 1, 10, 10)  # rint(10.5) = 10
    assert gpu_augment.eval_crop_proportion(33) == 0.875 and gpu_augment.eval_crop_proportion(32) == 1.0
    image = np.zeros((96, 96, 3), np.uint8)
    image[:, 1::2] = 255
    off = official.load()
    ref = _official_eval(off, image, 96)
    assert ref.std() > 0.2  # TF's resize (of the 84 px crop) keeps the stripes: no antialiasing
    np.testing.assert_allclose(_hwc(gpu_augment.to_float(_chw(image), 96)), ref, atol=TOLERANCE, rtol=0)
    small = _official_eval(off, image, 48)
    np.testing.assert_allclose(_hwc(gpu_augment.to_float(_chw(image), 48)), small, atol=TOLERANCE, rtol=0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """24 Imagenette photos (every 395th JPEG of the archive: all ten classes), extracted to a folder."""
    if not NETTE.is_file():
        pytest.skip(f"Imagenette photos not found at {NETTE}")
    out = tmp_path_factory.mktemp("nette")
    files, k = [], 0
    with tarfile.open(NETTE, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".JPEG"):
                if k % 395 == 0 and len(files) < 24:
                    path = out / f"{len(files):02d}_{Path(member.name).name}"
                    path.write_bytes(tar.extractfile(member).read())
                    files.append(path)
                k += 1
    return files


def _tf_decode(off, path: Path) -> np.ndarray:
    """TF's decoding; JPEGs with the accurate integer DCT, libjpeg's default and ours (torchvision, PIL).
    ``tf.io.decode_jpeg``'s own default is the fast integer DCT (pixels off by ~1 level on average,
    at most ~4): a decoder choice, not part of ``preprocess_for_eval``; its effect is in the notes."""
    if path.suffix == ".png":
        return off.tf.io.decode_png(path.read_bytes(), channels=3).numpy()
    return off.tf.io.decode_jpeg(path.read_bytes(), channels=3, dct_method="INTEGER_ACCURATE").numpy()


def _official_photo(off, path: Path, size: int) -> np.ndarray:
    """What the official evaluation feeds its model: the decoded photo through the eval preprocessing."""
    return _official_eval(off, _tf_decode(off, path), size)


@pytest.mark.parametrize("size", [224, 128, 64])
def test_photos_equal_the_official_eval_through_every_entry_point(photos, size):
    """Photos 160 px on the short side: upscaled (224), near (128) and downscaled (64), compared with
    TensorFlow's decoding + preprocess_for_eval; our decoded pixels are TF's (accurate DCT) too."""
    off = official.load()
    ref = np.stack([_official_photo(off, p, size) for p in photos])
    decoded = [decode_file(p) for p in photos]
    for p, image in zip(photos, decoded):
        assert np.array_equal(_hwc(image), _tf_decode(off, p)), p
    assert {tuple(im.shape[-2:]) for im in decoded} != {(160, 160)}  # photos of several aspect ratios
    views = {
        "eval_crop": torch.stack([eval_crop(im, size) for im in decoded]),
        "RaggedImages.eval_views": RaggedImages.stack(decoded, size).eval_views(),
        "FileImages[...]": FileImages(photos, size, workers=1)[:],
        "decode_images(eval)": datasets.decode_images(photos, size, workers=1, crop="eval")[0],
        "feed.chunks(ragged)": torch.cat(list(feed.chunks(RaggedImages.stack(decoded, size), 7))),
        "feed.chunks(files)": torch.cat(list(feed.chunks(FileImages(photos, size, workers=1), 7, workers=0))),
        "augment.eval_transform": torch.stack([augment.eval_transform(size)(im) for im in decoded]),
    }
    for name, got in views.items():
        assert got.dtype == torch.float32 and got.shape == (len(photos), 3, size, size), name
        diff = np.abs(got.permute(0, 2, 3, 1).numpy() - ref).max()
        assert diff <= TOLERANCE, (name, diff)


def test_stored_tensors_get_the_official_view_at_their_size():
    """Datasets kept as uint8 tensors at the image size: at 32 px (CIFAR) only converted, as the official
    code; above, the 0.875 central crop resized back, as the official code does to a 96 px STL-10 image."""
    off = official.load()
    for size in (32, 96):
        images = np.stack([_edgy(size, size, seed=s) for s in range(3)])
        got = torch.cat(list(feed.chunks(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), 2)))
        ref = np.stack([_official_eval(off, im, size) for im in images])
        assert np.abs(got.permute(0, 2, 3, 1).numpy() - ref).max() <= TOLERANCE
        assert (size == 32) == (np.abs(ref - images / 255).max() < 1e-6)  # converted only, or cropped


# ---- end to end: an official-built model through import-tf and predict -------------------------------------

CLASSES = 10


def _randomise(tf, model, photos_x: np.ndarray) -> None:
    """Non-trivial BN statistics and affine parameters everywhere, and a supervised head whose logits vary
    across the photos (centred random projection of their encoder features), so top-1 classes differ."""
    rng = np.random.default_rng(1)
    for v in model.variables:
        name, shape = v.name, tuple(v.shape)
        if "moving_mean" in name:
            v.assign(rng.normal(0, 0.1, shape).astype(np.float32))
        elif "moving_variance" in name or "gamma" in name:
            v.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif "beta" in name:
            v.assign(rng.normal(0, 0.1, shape).astype(np.float32))
    features = model.resnet_model(photos_x, training=False).numpy()
    kernel = rng.normal(0, 1, (features.shape[1], CLASSES)).astype(np.float32)
    kernel *= 3 / (features - features.mean(0)).dot(kernel).std()
    bias = -features.mean(0).dot(kernel)
    model.supervised_head.linear_layer.dense.kernel.assign(kernel)
    model.supervised_head.linear_layer.dense.bias.assign(bias.astype(np.float32))


@pytest.fixture(scope="module")
def e2e_photos(photos, tmp_path_factory) -> list[Path]:
    """12 photos as they are (160 px: the 140 px crop is upscaled to 224) and 12 enlarged 2.5x (nearest,
    PNG: a 350 px crop is downscaled to 224, where antialiasing would change the view)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("e2e")
    out = []
    for k, p in enumerate(photos):
        if k < 12:
            out.append(folder / p.name)
            out[-1].write_bytes(p.read_bytes())
        else:
            with Image.open(p) as im:
                big = im.convert("RGB").resize((im.width * 5 // 2, im.height * 5 // 2), Image.NEAREST)
            out.append(folder / f"{p.stem}_x2.5.png")
            big.save(out[-1])
    return out


@pytest.fixture(scope="module")
def official_model(e2e_photos, tmp_path_factory):
    """An official R50 SK1 1x fine-tune-mode model; its SavedModel (run.build_saved_model) and TF2 training
    checkpoint; and the official evaluation's class probabilities on the photos."""
    photos = e2e_photos
    off = official.load()
    tf = off.tf
    old = official.set_flags(off.FLAGS, resnet_depth=50, width_multiplier=1, sk_ratio=0.0625, se_ratio=0.0,
                             image_size=224, train_mode="finetune", proj_head_mode="nonlinear", num_proj_layers=3,
                             ft_proj_selector=0, global_bn=False)
    try:
        model = off.model.Model(CLASSES)
        x = np.stack([_official_photo(off, p, 224) for p in photos])
        model(x[:1], training=False)  # creates the variables
        _randomise(tf, model, x[::3])  # centred on 8 of the photos
        probs = tf.nn.softmax(model(x, training=False)[1]).numpy()
        root = tmp_path_factory.mktemp("official_model")
        tf.saved_model.save(off.run.build_saved_model(model), str(root / "export" / "saved_model"))
        ckpt = tf.train.Checkpoint(model=model, global_step=tf.Variable(1, dtype=tf.int64))
        ckpt.save(str(root / "train" / "ckpt"))
        yield {"saved_model": root / "export" / "saved_model", "checkpoint": root / "train", "probs": probs}
    finally:
        official.set_flags(off.FLAGS, **old)


def _predict_csv(capsys, tmp_path: Path, src: Path, photos: list[Path]) -> np.ndarray:
    from simclrv2 import cli

    out = tmp_path / "imported"
    assert cli.main(["import-tf", str(src), "--out", str(out)]) == 0, capsys.readouterr().err
    table = tmp_path / "predictions.csv"
    code = cli.main(["predict", "--checkpoint", str(out / "classifier"), str(photos[0].parent), "--top",
                     str(CLASSES), "--csv", str(table), "--device", "cpu", "--batch-size", "8"])
    assert code == 0, capsys.readouterr().err
    probs = np.zeros((len(photos), CLASSES))
    index = {str(p): i for i, p in enumerate(photos)}
    with open(table) as f:
        for row in csv.DictReader(f):
            probs[index[row["path"]], int(row["class"])] = float(row["probability"])
    return probs


@pytest.mark.parametrize("export", ["saved_model", "checkpoint"])
def test_import_tf_then_predict_gives_the_official_evaluation(official_model, e2e_photos, export, tmp_path, capsys):
    photos = e2e_photos
    ref = official_model["probs"]
    assert len(set(ref.argmax(1).tolist())) >= 3  # the photos do not all land in one class
    got = _predict_csv(capsys, tmp_path, official_model[export], photos)
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    assert np.abs(got - ref).max() <= 1e-3


def test_export_sidecar_describes_the_official_eval():
    """The JSON beside an exported model tells its users the preprocessing above, not an antialiased resize."""
    from simclrv2.inference.export import sidecar

    meta = {"image_size": 224, "classes": ["a", "b"], "config": {"data": {"crop": "full"}}}
    pre = sidecar(meta, "onnx", "ckpt")["preprocessing"]
    assert "rint(0.875 x short side)" in pre["crop"] and "(H - side + 1) // 2" in pre["crop"]
    assert "antialias=False" in pre["resize"] and "a=-0.5" in pre["resize"] and "antialiased" not in pre["resize"]
    assert pre["clip"] == [0.0, 1.0] and pre["range"] == [0.0, 1.0] and "preprocess_for_eval" in pre["reference"]
    small = sidecar({**meta, "image_size": 32}, "onnx", "ckpt")["preprocessing"]
    assert "no 0.875 crop" in small["crop"]
