"""The public Python API (``simclrv2.load`` and the building blocks): the same results as the command
line, exactly, on the same files; checkpoints of every kind; inputs and errors; the example runs."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import simclrv2
from simclrv2 import checkpoint
from simclrv2.cli import main
from simclrv2.data.files import decode_file
from simclrv2.inference.predict import collect_images, format_table, predict_files
from simclrv2.train.classifier import load_classifier

ROOT = Path(__file__).resolve().parents[1]
TINY = ["image_size=8", "width=0.125", "head_layers=2", "knn_every=0", "device=cpu", "workers=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A one-epoch pretraining on the bundled digits and a one-epoch fine-tuning of it (a few seconds)."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["pretrain", "--out", str(root / "pre"), *TINY, "epochs=1"]) == 0
    assert main(["finetune", "--pretrained", str(root / "pre" / "last"), "--out", str(root / "ft"),
                 "finetune.epochs=1", "finetune.batch_size=64"]) == 0
    return {"pre": root / "pre", "ft": root / "ft"}


def write_photos(folder: Path) -> Path:
    """Images of mixed sizes and modes, each decoded by another path of ``decode_file``: RGB JPEG and
    PNG (one over the kept copy's cap of 29 px at image_size 8, one exactly 8 x 8), greyscale,
    16-bit greyscale, RGBA and palette with transparency, CMYK, a JPEG with EXIF orientation 6."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    sub = folder / "more"
    sub.mkdir()

    def rgb(h, w):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    Image.fromarray(rgb(40, 30)).save(folder / "rgb_40x30.jpg", quality=90)
    Image.fromarray(rgb(8, 8)).save(folder / "rgb_8x8.png")
    Image.fromarray(rgb(13, 61)).save(sub / "rgb_13x61.png")
    Image.fromarray(rng.integers(0, 256, (50, 20), dtype=np.uint8), "L").save(folder / "grey_50x20.png")
    Image.fromarray(rng.integers(0, 65536, (33, 35), dtype=np.uint16)).save(folder / "grey16_33x35.png")
    rgba = np.concatenate([rgb(16, 24), rng.integers(0, 256, (16, 24, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba_16x24.png")
    pal = Image.fromarray(rgb(10, 14)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(sub / "palette_10x14.gif", transparency=3)
    Image.fromarray(rgb(45, 60)).convert("CMYK").save(folder / "cmyk_45x60.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: seen as 20 x 36
    Image.fromarray(rgb(36, 20)).save(folder / "exif_36x20.jpg", exif=exif)
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos") / "photos")


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------- the package


def test_import_is_light_and_does_no_io():
    """``import simclrv2`` imports neither torch nor any submodule, and opens no file."""
    code = ("import builtins, io, sys; opened = []\n"
            "real = builtins.open; builtins.open = lambda *a, **k: opened.append(a) or real(*a, **k)\n"
            "io.open = builtins.open\n"
            "import simclrv2\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('simclrv2')), opened)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    assert out.strip() == "['simclrv2'] []"


def test_public_names_resolve_to_their_modules_with_docstrings():
    from simclrv2 import api
    from simclrv2.data import gpu_augment, views
    from simclrv2.losses import ntxent
    from simclrv2.models import registry
    from simclrv2.optim import build, lars, schedule

    homes = {"nt_xent": ntxent, "LARS": lars, "lr_at": schedule, "scaled_lr": schedule, "param_groups": build,
             "ViewMaker": views, "simclr_views": gpu_augment, "crop_flip": gpu_augment, "build_encoder": registry,
             "list_encoders": registry}
    for name in simclrv2.__all__:
        if name == "__version__":
            continue
        value = getattr(simclrv2, name)
        assert value is getattr(homes.get(name, api), name), name
        assert value.__doc__ and len(value.__doc__.strip()) > 20, f"{name} has no docstring"
        assert name in dir(simclrv2)
    for name in ("features", "predict_proba", "predict", "preprocess", "to", "kind", "stage", "classes",
                 "image_size", "encoder", "head_layers", "preprocessing"):
        assert getattr(simclrv2.Model, name).__doc__, name
    with pytest.raises(AttributeError, match="no attribute 'checkpoint_tools'"):
        simclrv2.checkpoint_tools  # noqa: B018


# ---------------------------------------------------------------------------------------------- loading


def test_load_every_form_of_checkpoint(runs):
    pre, ft = runs["pre"], runs["ft"]
    assert checkpoint.exists(ft / "best") and not checkpoint.exists(pre / "best")
    for path, stem, kind, stage in [(pre, pre / "last", "pretrain", "pretrain"),
                                    (pre / "last", pre / "last", "pretrain", "pretrain"),
                                    (ft, ft / "best", "classifier", "finetune"),  # a run directory: best first
                                    (ft / "best", ft / "best", "classifier", "finetune"),
                                    (str(ft / "last"), ft / "last", "classifier", "finetune")]:
        model = simclrv2.load(path, device="cpu")
        tensors, meta = checkpoint.load(stem)
        assert (model.path, model.kind, model.stage) == (stem, kind, stage)
        assert model.classes == meta["classes"] == [str(d) for d in range(10)]
        assert model.image_size == 8 and model.device == torch.device("cpu")
        assert isinstance(model.network, torch.nn.Module) and not model.network.training
        state = model.network.state_dict()
        assert set(state) == set(tensors) and all(torch.equal(state[k], tensors[k]) for k in tensors)
        assert model.preprocessing == {"image_size": 8, "crop": "full", "cap": None}
    assert simclrv2.load(pre).head_layers == 2 and simclrv2.load(ft).head_layers == 0
    assert isinstance(simclrv2.load(ft).encoder, torch.nn.Module)
    assert "kind='classifier', stage='finetune'" in repr(simclrv2.load(ft))


def test_load_errors(runs, tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint not found"):
        simclrv2.load(tmp_path / "missing")
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        simclrv2.load(tmp_path)
    with pytest.raises(ValueError, match="CUDA is not available|not a device name"):
        simclrv2.load(runs["pre"], device="cuda:99" if torch.cuda.is_available() else "cuda")


# ---------------------------------------------------------------------------------------------- = the CLI


@pytest.mark.parametrize("which, layer", [("pre", None), ("pre", 1), ("pre", 2), ("ft", None)])
def test_features_equal_embed_exactly(runs, photos, tmp_path, capsys, which, layer):
    out = tmp_path / "features.safetensors"
    argv = ["embed", "--checkpoint", runs[which], "--data", photos, "--device", "cpu", "--out", out]
    code, _, err = cli(capsys, *argv, *(["--layer", layer] if layer is not None else []))
    assert code == 0, err
    expected = load_file(str(out))["features"]  # a flat folder: one split, the unlabeled images
    with safe_open(str(out), framework="pt") as f:
        names = json.loads(f.metadata()["names"])["unlabeled"]
    model = simclrv2.load(runs[which], device="cpu")
    files = simclrv2.list_images(photos)
    assert [str(f.relative_to(photos)) for f in files] == names  # the same rows, in the same order
    got = model.features(photos, layer=layer)
    assert got.dtype == torch.float32 and got.shape == expected.shape == (9, 128 if layer == 2 else 64)
    assert torch.equal(got, expected)
    assert torch.equal(model.features([str(f) for f in files], layer=layer), expected)


def test_predictions_equal_predict_exactly(runs, photos, tmp_path, capsys):
    table = tmp_path / "pred.csv"
    code, out, err = cli(capsys, "predict", "--checkpoint", runs["ft"], photos, "--top", 3, "--csv", table,
                         "--device", "cpu")
    assert code == 0, err
    model = simclrv2.load(runs["ft"], device="cpu")
    predictions = model.predict(photos, top=3)
    assert format_table(predictions) + f"\ncsv: {table}\n" == out  # the printed table, character for character
    rows = list(csv.DictReader(table.open()))
    assert [(r["path"], r["class"], r["probability"]) for r in rows] == \
           [(p.path, c, f"{v:.6f}") for p in predictions for c, v in zip(p.classes, p.probabilities)]

    net, meta = load_classifier(runs["ft"] / "best")  # the CLI's own call, unrounded
    files = collect_images([photos])
    theirs, _ = predict_files(net, meta["classes"], 8, files, top=10, device="cpu")
    probs = model.predict_proba(photos)
    assert probs.shape == (9, 10)
    for p, row in zip(theirs, probs):
        assert p.probabilities == row.sort(descending=True).values.tolist()
        assert p.classes == [model.classes[i] for i in row.sort(descending=True, stable=True).indices.tolist()]


# ---------------------------------------------------------------------------------------------- inputs


def test_tensors_are_taken_as_decoded_files(runs, photos):
    """A decoded image tensor gives what its file gives (cap and evaluation crop included), alone, in a
    batch or mixed with files; batches of any size give the same rows."""
    model = simclrv2.load(runs["pre"], device="cpu")
    files = simclrv2.list_images(photos)
    by_file = model.features(files)
    decoded = [decode_file(f) for f in files]  # full size: the 40 x 30 image is over the cap
    assert max(min(d.shape[-2:]) for d in decoded) > 29
    assert torch.equal(model.features(decoded), by_file)
    assert torch.equal(model.features(decoded, batch_size=2), model.features(files, batch_size=2))
    # other batches: the same up to rounding (a CPU convolution's sums depend on the batch size)
    torch.testing.assert_close(model.features(decoded[0]), by_file[:1], rtol=1e-5, atol=1e-6)
    mixed = [files[0], decoded[1], photos / "more"]
    more = [files.index(f) for f in simclrv2.list_images(photos / "more")]
    assert torch.equal(model.features(mixed, batch_size=1), model.features([*files[:2], *(files[i] for i in more)],
                                                                            batch_size=1))
    torch.testing.assert_close(model.features(mixed), by_file[[0, 1, *more]], rtol=1e-5, atol=1e-6)
    same_size = torch.stack([d for d in decoded if d.shape[-2:] == (8, 8)] * 3)
    assert torch.equal(model.features(same_size), model.features(list(same_size)))
    torch.testing.assert_close(model.features(photos, batch_size=2), by_file, rtol=1e-5, atol=1e-6)
    views = model.preprocess(photos)
    assert views.dtype == torch.float32 and views.shape == (9, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.network.encoder(views), by_file, rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_one_clear_error(runs, photos, tmp_path):
    pre, ft = simclrv2.load(runs["pre"], device="cpu"), simclrv2.load(runs["ft"], device="cpu")
    cases = [(lambda: pre.features(torch.rand(2, 3, 8, 8)), "must be uint8"),
             (lambda: pre.features(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)), "got shape"),
             (lambda: pre.features(photos, layer=3), "has 2 layer"),
             (lambda: ft.features(photos, layer=1), "applies to pretrain"),
             (lambda: pre.predict_proba(photos), "needs a classifier checkpoint"),
             (lambda: ft.predict(photos, top=0), "must be >= 1"),
             (lambda: pre.features(photos, batch_size=0), "must be >= 1"),
             (lambda: pre.features(tmp_path / "nothing.png"), "not found"),
             (lambda: pre.features([]), "no images given")]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(TypeError, match="images\\[1\\] is a int"):
        pre.features([photos, 3])


def test_unreadable_files_skipped_by_predict_as_on_the_command_line(runs, photos, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a_bad.jpg").write_bytes(b"not a jpeg")
    files = [broken / "a_bad.jpg", *simclrv2.list_images(photos)]
    model = simclrv2.load(runs["ft"], device="cpu")
    with pytest.raises(ValueError, match="1 unreadable image\\(s\\): .*a_bad.jpg"):
        model.predict_proba(files)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictions = model.predict(files, top=10, batch_size=4)
    caught = [str(w.message) for w in caught if "cannot read" in str(w.message)]
    assert len(caught) == 1 and "a_bad.jpg" in caught[0]
    # the batches are those of the readable images, as the CLI forms them: the same sums, bit for bit
    net, meta = load_classifier(runs["ft"] / "best")
    theirs, bad = predict_files(net, meta["classes"], 8, files, top=10, device="cpu", batch_size=4)
    assert len(bad) == 1 and [(p.path, p.classes, p.probabilities) for p in predictions] == \
           [(p.path, p.classes, p.probabilities) for p in theirs]
    code, out, err = cli(capsys, "predict", "--checkpoint", runs["ft"], *files, "--top", 2, "--batch-size", 4,
                         "--device", "cpu")
    assert code == 0 and "a_bad.jpg" in err
    assert format_table(model.predict(files, top=2, batch_size=4)) + "\n" == out


def test_gpu_results_equal_the_cli_on_gpu(runs, photos, tmp_path, capsys):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = tmp_path / "f.safetensors"
    assert cli(capsys, "embed", "--checkpoint", runs["pre"], "--data", photos, "--device", "cuda", "--out", out)[0] == 0
    model = simclrv2.load(runs["pre"], device="cuda")
    assert next(model.network.parameters()).is_cuda
    assert torch.equal(model.features(photos), load_file(str(out))["features"])
    assert torch.equal(model.to("cpu").features(photos), simclrv2.load(runs["pre"], device="cpu").features(photos))


# ---------------------------------------------------------------------------------------------- import-tf


def test_imported_official_model(photos, tmp_path, capsys):
    """``simclrv2 import-tf`` output (written by TensorFlow, see test_tf_import.py) loads; the API's
    network gives TensorFlow's logits, and the API equals ``predict``/``embed`` on it."""
    tf = pytest.importorskip("tensorflow")
    from test_tf_import import _write_official

    folder, ref = _write_official(tf, tmp_path / "official", "r50_0.25x_sk1")
    out = tmp_path / "imported"
    code, _, err = cli(capsys, "import-tf", folder, "--out", out)
    assert code == 0, err
    with pytest.raises(checkpoint.CheckpointError, match="holds the checkpoints .*classifier.*pretrain"):
        simclrv2.load(out)
    model = simclrv2.load(out / "classifier", device="cpu")
    assert (model.kind, model.stage, len(model.classes), model.image_size) == ("classifier", "import-tf", 1000, 224)
    with torch.no_grad():
        logits = model.network(torch.from_numpy(ref["x"]).permute(0, 3, 1, 2))
    np.testing.assert_allclose(logits.numpy(), ref["logits"], rtol=1e-4, atol=1e-4)
    code, printed, err = cli(capsys, "predict", "--checkpoint", out / "classifier", photos, "--top", 2,
                             "--device", "cpu")
    assert code == 0, err
    assert format_table(model.predict(photos, top=2)) + "\n" == printed
    pre = simclrv2.load(out / "pretrain", device="cpu")
    assert (pre.kind, pre.stage, pre.classes, pre.head_layers) == ("pretrain", "import-tf", [], 3)
    feats = tmp_path / "f.safetensors"
    assert cli(capsys, "embed", "--checkpoint", out / "pretrain", "--data", photos, "--layer", 3, "--device", "cpu",
               "--out", feats)[0] == 0
    assert torch.equal(pre.features(photos, layer=3), load_file(str(feats))["features"])


# ---------------------------------------------------------------------------------------------- building


def test_build_by_name_gives_the_published_sizes():
    """Parameters (BN statistics included, as the official table counts) of the SimCLRv2 encoders."""
    with torch.device("meta"):
        for args, millions in [(("resnet50", 1.0, 0.0), 24), (("resnet50", 2.0, 0.0625), 140),
                               (("resnet101", 1.0, 0.0625), 65)]:
            for net in (simclrv2.build_encoder(*args), simclrv2.build_simclr(*args).encoder):
                count = sum(p.numel() for p in net.parameters())
                count += sum(b.numel() for n, b in net.named_buffers() if "running" in n)
                assert round(count / 1e6) == millions, args
    simclr = simclrv2.build_simclr("resnet18", width=0.125, cifar_stem=True, head_layers=3, proj_dim=32)
    assert simclr.head.dims == [64, 64, 64, 32]
    with pytest.raises(ValueError, match="unknown encoder 'resnet51'"):
        simclrv2.build_simclr("resnet51")


def test_a_training_loop_of_your_own():
    """The building blocks fit together: SimCLR views, nt_xent, LARS with the schedule; then a classifier
    on the trained encoder. A few steps on one fixed batch lower the loss."""
    torch.manual_seed(0)
    net = simclrv2.build_simclr("resnet18", width=0.125, cifar_stem=True, head_layers=2, proj_dim=16)
    images = torch.randint(0, 256, (32, 3, 12, 12), dtype=torch.uint8)
    views = simclrv2.ViewMaker("simclr", 8, seed=0)
    x1, x2 = views(images), views(images)
    assert x1.shape == (32, 3, 8, 8) and not torch.equal(x1, x2)
    opt = simclrv2.LARS(simclrv2.param_groups(net, weight_decay=1e-6), lr=0.0)
    losses = []
    for step in range(6):
        for group in opt.param_groups:
            group["lr"] = simclrv2.lr_at(step, simclrv2.scaled_lr(0.5, 32, "linear"), 2, 6)
        loss = simclrv2.nt_xent(net(x1), net(x2), temperature=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    clf = simclrv2.build_classifier(net, num_classes=5, ft_layer=1)
    net.eval(), clf.eval()
    with torch.no_grad():
        assert torch.equal(clf.forward_features(x1), net.head(net.encoder(x1))[1])
        assert torch.equal(clf(x1), torch.zeros(32, 5))  # zero-initialised, as the official fine-tuning
    assert clf.encoder is net.encoder
    with pytest.raises(ValueError, match="ft_layer must be in \\[0, 2\\]"):
        simclrv2.build_classifier(net, 5, ft_layer=3)


# ---------------------------------------------------------------------------------------------- the example


def test_the_example_runs(runs, photos, capsys):
    """On a classifier checkpoint and a folder (in this process), and as a user runs it: no arguments,
    a tiny pretraining first."""
    spec = importlib.util.spec_from_file_location("use_from_python", ROOT / "examples" / "use_from_python.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    capsys.readouterr()
    example.main([str(runs["ft"]), str(photos)])
    out = capsys.readouterr().out
    assert "kind='classifier'" in out and "features: (9, 64) for 9 images" in out and "probabilities: (9, 10)" in out
    assert "rgb_8x8.png: " in out and "own training loop: loss" in out
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "use_from_python.py")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "kind='pretrain'" in done.stdout and "features: (6, 64) for 6 images" in done.stdout
    assert "most similar" in done.stdout and "own training loop: loss" in done.stdout
