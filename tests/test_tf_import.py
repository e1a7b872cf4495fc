"""Importing official SimCLRv2 TensorFlow checkpoints: the bundle reader, the name mapping, numerics.

The checkpoints are written by TensorFlow itself in the official TF1 naming (variables numbered in
creation order under ``base_model/``), with random values, ``/Momentum`` slots, an ``ema_model/``
copy and ``global_step``. The reference forward is written here with TensorFlow ops from the
documented architecture ('SAME' max pool, fixed padding for strided convs, inference BN with
epsilon 1e-5, selective kernels as in the official tf2/resnet.py) and reads the same variables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_image_folder

try:  # triton, which torch loads lazily, segfaults when loaded after TensorFlow's libraries: load it first
    import triton  # noqa: F401
except ImportError:
    pass
from simclrv2 import checkpoint
from simclrv2.official import tf_import
from simclrv2.official.tf_bundle import TFBundle

ROOT = Path(__file__).resolve().parents[1]

# The reference's figures: conv / BN counts per (depth, sk) and parameters (M) per released architecture.
COUNTS = {(50, 0): (53, 53), (50, 1): (87, 71), (101, 0): (104, 104), (101, 1): (172, 139),
          (152, 0): (155, 155), (152, 1): (257, 207)}
PARAMS_M = {"r50_1x_sk0": 24, "r50_1x_sk1": 35, "r50_2x_sk0": 94, "r50_2x_sk1": 140, "r101_1x_sk0": 43,
            "r101_1x_sk1": 65, "r101_2x_sk0": 170, "r101_2x_sk1": 257, "r152_1x_sk0": 58, "r152_1x_sk1": 89,
            "r152_2x_sk0": 233, "r152_2x_sk1": 354, "r152_3x_sk1": 795}


def test_counts_and_params_of_the_13_released_architectures():
    for name, params_m in PARAMS_M.items():
        arch = tf_import.parse_arch(name)
        with torch.device("meta"):
            enc = arch.encoder()
        convs, bns = tf_import.creation_order(enc)
        assert (len(convs), len(bns)) == COUNTS[(arch.depth, int(arch.sk))], name
        assert len(set(convs)) == len(convs) and len(set(bns)) == len(bns)
        n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in enc.modules())
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
        assert (n_conv, n_bn) == (len(convs), len(bns))  # creation order visits every layer once
        # The official figure counts every encoder variable, BN moving statistics included (with trainable
        # parameters only, r152_2x_sk0 would be 232.25 M against the table's 233).
        stats = sum(b.numel() for n, b in enc.named_buffers() if "running" in n)
        params = (sum(p.numel() for p in enc.parameters()) + stats) / 1e6
        assert round(params) == params_m, (name, params)


def test_parse_arch():
    assert tf_import.parse_arch("r152_3x_sk1") == tf_import.OfficialArch(152, 3.0, True)
    assert tf_import.parse_arch("r18_0.25x_sk0_cifar").name == "r18_0.25x_sk0_cifar"
    for bad in ("r51_1x_sk0", "resnet50", "r50_1x_sk2"):
        with pytest.raises(tf_import.TFImportError):
            tf_import.parse_arch(bad)


# ---- TensorFlow side -------------------------------------------------------------------------------

class OfficialTF:
    """SimCLRv2 ResNet + heads in TensorFlow ops; variables named and numbered as the official TF1 code.

    ``values`` maps names to arrays; a missing name is created with random values (so the first
    forward defines the checkpoint, later forwards read it).
    """

    def __init__(self, tf, values: dict[str, np.ndarray], seed: int = 0) -> None:
        self.tf, self.values, self.rng = tf, values, np.random.default_rng(seed)
        self.counts = {"conv2d": 0, "batch_normalization": 0}

    def var(self, name, shape, init):
        if name not in self.values:
            r = self.rng
            self.values[name] = {
                "kernel": lambda: r.normal(0, 1, shape) * np.sqrt(1.0 / np.prod(shape[:-1])),
                "gamma": lambda: r.uniform(0.5, 1.0, shape), "beta": lambda: r.normal(0, 0.1, shape),
                "mean": lambda: r.normal(0, 0.1, shape), "var": lambda: r.uniform(0.5, 1.5, shape),
                "bias": lambda: r.normal(0, 0.1, shape)}[init]().astype(np.float32)
        assert self.values[name].shape == tuple(shape), name
        return self.tf.constant(self.values[name])

    def _next(self, kind):
        i = self.counts[kind]
        self.counts[kind] += 1
        return f"base_model/{kind}" + (f"_{i}" if i else "")

    def conv(self, x, filters, k, stride):
        tf = self.tf
        w = self.var(self._next("conv2d") + "/kernel", (k, k, x.shape[-1], filters), "kernel")
        if stride > 1:  # official fixed padding, independent of the input size
            beg = (k - 1) // 2
            x = tf.pad(x, [[0, 0], [beg, k - 1 - beg], [beg, k - 1 - beg], [0, 0]])
            return tf.nn.conv2d(x, w, stride, "VALID")
        return tf.nn.conv2d(x, w, 1, "SAME")

    def bn(self, x, relu=True, name=None, center=True):
        name = name or self._next("batch_normalization")
        c = (x.shape[-1],)
        beta = self.var(f"{name}/beta", c, "beta") if center else None
        y = self.tf.nn.batch_normalization(x, self.var(f"{name}/moving_mean", c, "mean"),
                                           self.var(f"{name}/moving_variance", c, "var"), beta,
                                           self.var(f"{name}/gamma", c, "gamma"), 1e-5)
        return self.tf.nn.relu(y) if relu else y

    def sk_conv(self, x, f, stride):
        tf = self.tf
        y = self.bn(self.conv(x, 2 * f, 3, stride))
        a, b = tf.split(y, 2, axis=-1)
        g = tf.reduce_mean(a + b, [1, 2], keepdims=True)
        g = self.bn(self.conv(g, max(int(f * 0.0625), 32), 1, 1))
        m = tf.nn.softmax(tf.stack(tf.split(self.conv(g, 2 * f, 1, 1), 2, axis=-1), 0), axis=0)
        return tf.reduce_sum(tf.stack([a, b], 0) * m, 0)

    def shortcut(self, x, out, stride, sk):
        tf = self.tf
        if not sk:
            return self.bn(self.conv(x, out, 1, stride), relu=False)
        if stride > 1:
            x = tf.nn.avg_pool2d(tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]]), 2, stride, "VALID")
        else:
            x = tf.nn.avg_pool2d(x, 2, 1, "SAME")  # TF averages over the valid cells only
        return self.bn(self.conv(x, out, 1, 1), relu=False)

    def block(self, x, f, stride, proj, sk, bottleneck):
        out = 4 * f if bottleneck else f
        s = self.shortcut(x, out, stride, sk) if proj else x  # created before the main path
        if bottleneck:
            y = self.bn(self.conv(x, f, 1, 1))
            y = self.sk_conv(y, f, stride) if sk else self.bn(self.conv(y, f, 3, stride))
            y = self.bn(self.conv(y, out, 1, 1), relu=False)
        else:
            y = self.bn(self.conv(x, f, 3, stride))
            y = self.bn(self.conv(y, out, 3, 1), relu=False)
        return self.tf.nn.relu(y + s)

    def encoder(self, x, depth, width, sk, cifar):
        tf = self.tf
        self.counts = {"conv2d": 0, "batch_normalization": 0}
        c = int(64 * width)
        if cifar:
            x = self.bn(self.conv(x, c, 3, 1))
        else:
            if sk:
                x = self.bn(self.conv(x, c // 2, 3, 2))
                x = self.bn(self.conv(x, c // 2, 3, 1))
                x = self.bn(self.conv(x, c, 3, 1))
            else:
                x = self.bn(self.conv(x, c, 7, 2))
            x = tf.nn.max_pool2d(x, 3, 2, "SAME")
        blocks = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3]}[depth]
        for i, n in enumerate(blocks):
            for j in range(n):
                x = self.block(x, int(64 * 2 ** i * width), (1 if i == 0 else 2) if j == 0 else 1, j == 0, sk,
                               depth >= 50)
        return tf.reduce_mean(x, [1, 2])

    def heads(self, h, proj_dim, num_classes, head_input):
        tf = self.tf
        outs = [h]
        for i in range(3):
            k = self.var(f"head_contrastive/nl_{i}/dense/kernel",
                         (outs[-1].shape[-1], proj_dim if i == 2 else h.shape[-1]), "kernel")
            outs.append(self.bn(tf.matmul(outs[-1], k), relu=i < 2, center=i < 2,
                                name=f"head_contrastive/nl_{i}/batch_normalization"))
        logits = None
        if num_classes:
            x = outs[head_input]
            k = self.var("head_supervised/linear_layer/dense/kernel", (x.shape[-1], num_classes), "kernel")
            logits = tf.matmul(x, k) + self.var("head_supervised/linear_layer/dense/bias", (num_classes,), "bias")
        return outs, logits


CASES = {  # official name, (depth, width, sk, cifar), image size, classes, kind directory, supervised-head input
    "r50_0.25x_sk0": ((50, 0.25, False, False), 64, 1000, "pretrained", 0),
    "r50_0.25x_sk1": ((50, 0.25, True, False), 64, 1000, "finetuned_10pct", 1),
    "r18_0.25x_sk0_cifar": ((18, 0.25, False, True), 32, 0, "pretrained", 0),
}


def _write_official(tf, root: Path, name: str):
    (depth, width, sk, cifar), size, classes, kind, head_input = CASES[name]
    x = np.random.default_rng(1).uniform(0, 1, (2, size, size, 3)).astype(np.float32)  # RGB in [0, 1]
    values: dict[str, np.ndarray] = {}
    net = OfficialTF(tf, values, seed=hash(name) % 1000)
    outs, logits = net.heads(net.encoder(tf.constant(x), depth, width, sk, cifar), 128, classes, head_input)
    main = dict(values)
    jitter = np.random.default_rng(2)  # the EMA copy: close to the weights, but distinct
    ema = {k: (v * (1 + 0.02 * jitter.standard_normal(v.shape))).astype(np.float32) for k, v in main.items()}
    ema_outs, ema_logits = OfficialTF(tf, ema).heads(OfficialTF(tf, ema).encoder(tf.constant(x), depth, width, sk,
                                                                                  cifar), 128, classes, head_input)
    tensors = dict(main)
    tensors |= {f"{k}/Momentum": np.full_like(v, 7.0) for k, v in main.items() if "moving" not in k}
    tensors |= {f"ema_model/{k}": v for k, v in ema.items()}
    tensors["global_step"] = np.array(751, dtype=np.int64)
    folder = root / kind / name
    folder.mkdir(parents=True)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(folder / "model.ckpt-751"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tensors[n] for n in names])
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-751"\n')
    ref = {"x": x, "outs": [o.numpy() for o in outs], "logits": None if logits is None else logits.numpy(),
           "ema_outs": [o.numpy() for o in ema_outs], "ema_logits": None if ema_logits is None else ema_logits.numpy()}
    return folder, ref


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    tf = pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("official")
    return {name: _write_official(tf, root, name) for name in CASES}


def test_reader_gives_the_tensors_of_tensorflow(official):
    tf = pytest.importorskip("tensorflow")
    for folder, _ in official.values():
        prefix = str(folder / "model.ckpt-751")
        reader, ours = tf.train.load_checkpoint(prefix), TFBundle(prefix)
        assert sorted(reader.get_variable_to_shape_map()) == ours.names()
        for n in ours.names():
            a, b = ours.read(n), reader.get_tensor(n)
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), n


def _torch_outputs(result, x: np.ndarray):
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    pre, _ = result.pretrain
    with torch.no_grad():
        outs = [o.numpy() for o in pre.head(pre.encoder(xt))]
        logits = result.classifier[0](xt).numpy() if result.classifier else None
    return outs, logits


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("ema", [False, True])
def test_forward_equals_tensorflow(official, name, ema):
    folder, ref = official[name]
    result = tf_import.import_tf(folder, ema=ema)
    assert result.arch.name == name
    outs, logits = _torch_outputs(result, ref["x"])
    want_outs, want_logits = (ref["ema_outs"], ref["ema_logits"]) if ema else (ref["outs"], ref["logits"])
    assert len(outs) == 4  # encoder features and the three projection-head layers
    for got, want in zip(outs, want_outs):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4
    if want_logits is None:
        assert result.classifier is None
    else:
        assert np.abs(logits - want_logits).max() <= 1e-4
    # every tensor: used or one of the skipped kinds (slots, the other copy, global_step)
    n_main = len(TFBundle(folder / "model.ckpt-751").names())
    assert result.used + result.skipped == n_main


def test_head_input_choice(official):
    folder, ref = official["r50_0.25x_sk1"]  # written with the supervised head on nl_0 (finetuned_10pct)
    auto = tf_import.import_tf(folder)
    assert auto.classifier[1]["head_input"] == "nl_0" and auto.classifier[1]["arch"]["head_kept"] == 1
    wrong = tf_import.import_tf(folder, head_input="encoder")  # same shapes: a choice, not a check
    _, logits = _torch_outputs(wrong, ref["x"])
    assert np.abs(logits - ref["logits"]).max() > 1e-2
    folder0, ref0 = official["r50_0.25x_sk0"]  # written with the supervised head on the encoder (pretrained)
    assert tf_import.import_tf(folder0).classifier[1]["head_input"] == "encoder"
    _, logits = _torch_outputs(tf_import.import_tf(folder0, head_input="nl_0"), ref0["x"])
    assert np.abs(logits - ref0["logits"]).max() > 1e-2


def _cli(capsys, *args):
    """Run the command line in this process: (exit code, stdout, stderr)."""
    from simclrv2 import cli

    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _tf():
    return pytest.importorskip("tensorflow")


def test_bad_inputs_one_line_no_file(official, tmp_path, capsys):
    tf = _tf()
    folder, _ = official["r50_0.25x_sk0"]
    empty = tmp_path / "empty"
    empty.mkdir()
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for f in folder.iterdir():
        data = f.read_bytes()
        (truncated / f.name).write_bytes(data[: len(data) // 2] if ".data-" in f.name else data)
    other = tmp_path / "other"
    other.mkdir()
    tf.raw_ops.SaveV2(prefix=str(other / "model.ckpt-1"), tensor_names=["vit/embedding/kernel", "global_step"],
                      shape_and_slices=["", ""], tensors=[np.ones((16, 16, 3, 8), np.float32), np.array(1, np.int64)])
    extra = tmp_path / "extra"
    extra.mkdir()
    reader = TFBundle(folder / "model.ckpt-751")
    names = reader.names() + ["base_model/dense/kernel"]
    tf.raw_ops.SaveV2(prefix=str(extra / "model.ckpt-751"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[reader.read(n) for n in names[:-1]] + [np.ones((4, 4), np.float32)])
    cases = [(empty, [], "no TensorFlow checkpoint"), (truncated, [], "truncated"),
             (other, [], "not a SimCLR ResNet checkpoint"), (folder, ["--arch", "r50_0.25x_sk1"], "contradicts"),
             (extra, [], "base_model/dense/kernel")]
    for i, (src, flags, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code, out_, err = _cli(capsys, "import-tf", src, "--out", out, *flags)
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("simclrv2 import-tf: error: ") and message in lines[0], err
        assert not out.exists()


def test_imported_checkpoints_work_in_the_stages(official, tmp_path, capsys):
    folder, _ = official["r18_0.25x_sk0_cifar"]
    out = tmp_path / "imported"
    code, out_, err = _cli(capsys, "import-tf", folder, "--out", out, "--arch", "r18_0.25x_sk0_cifar")
    assert code == 0, err
    assert "checkpoint:" in out_ and not checkpoint.exists(out / "classifier")
    _, meta = checkpoint.load(out / "pretrain")
    assert meta["kind"] == "pretrain" and meta["official_arch"] == "r18_0.25x_sk0_cifar"
    images = write_image_folder(tmp_path / "images", per_class=6, size=16)
    overrides = ["finetune.epochs=1", "finetune.batch_size=8", "data.image_size=16", "workers=0"]
    code, out_, err = _cli(capsys, "finetune", "--pretrained", out / "pretrain", "--data", images,
                           "--out", tmp_path / "ft",
             "--labels", "0.5", *overrides)
    assert code == 0, err
    code, out_, err = _cli(capsys, "evaluate", "--checkpoint", tmp_path / "ft" / "best", "--data", images)
    assert code == 0 and "classifier:" in out_, err
    code, out_, err = _cli(capsys, "evaluate", "--checkpoint", out / "pretrain", "--data", images,
                           "data.image_size=16")
    assert code == 0 and "knn:" in out_, err
    code, _, err = _cli(capsys, "embed", "--checkpoint", out / "pretrain", "--data", images, "--layer", "3",
                        "--out", tmp_path / "feats.safetensors")
    assert code == 0 and (tmp_path / "feats.safetensors").is_file(), err
    code, _, err = _cli(capsys, "distill", "--teacher", tmp_path / "ft" / "best", "--student", "resnet18",
                        "--student-width", "0.125", "--out", tmp_path / "student", "distill.epochs=1",
                        "distill.batch_size=8", "workers=0")
    assert code == 0, err

    folder, _ = official["r50_0.25x_sk1"]
    code, out_, err = _cli(capsys, "import-tf", folder, "--out", tmp_path / "imported50")
    assert code == 0, err
    _, meta = checkpoint.load(tmp_path / "imported50" / "classifier")
    assert meta["kind"] == "classifier" and len(meta["classes"]) == 1000 and meta["classes"][0] == "n01440764"
    code, out_, err = _cli(capsys, "predict", "--checkpoint", tmp_path / "imported50" / "classifier", images / "cat",
                           "--top", "2")
    assert code == 0 and "n0" in out_, err
    code, _, err = _cli(capsys, "export", "--checkpoint", tmp_path / "imported50" / "classifier", "--format",
                        "torchscript", "--out", tmp_path / "r50.pt")
    assert code == 0 and (tmp_path / "r50.pt").is_file(), err


def test_crc32c_and_corruption(official, tmp_path):
    from simclrv2.crc32c import crc32c
    from simclrv2.official.tf_bundle import BundleError

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    folder, _ = official["r18_0.25x_sk0_cifar"]
    prefix = folder / "model.ckpt-751"
    bundle = TFBundle(prefix)
    entry = bundle.entries["base_model/batch_normalization/gamma"]
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    shard = tmp_path / "model.ckpt-751.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[entry.offset] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        TFBundle(tmp_path / "model.ckpt-751").read("base_model/batch_normalization/gamma")


OFFICIAL_1PCT = ROOT.parent / "shared" / "data" / "imagenet-subsets" / "1percent.txt"


def test_labels_file_takes_the_official_list_as_it_is(tmp_path, capsys, caplog):
    """An ImageNet-style folder with the listed images of 3 classes plus others; the list also names a 4th class."""
    from PIL import Image

    if OFFICIAL_1PCT.is_file():  # a few lines of the official list, in its own order and format
        lines = OFFICIAL_1PCT.read_text().split()
        wnids = sorted({line.split("_")[0] for line in lines})[:4]
        listed = [line for line in lines if line.split("_")[0] in wnids]
    else:
        wnids = ["n01440764", "n01443537", "n01484850", "n01491361"]
        listed = [f"{w}_{1000 + 7 * i}.JPEG" for w in wnids for i in range(5)]
    in_folder = [name for name in listed if not name.startswith(wnids[3])]  # class 4: listed, not in the folder
    rng = np.random.default_rng(0)
    for split, names in (("train", in_folder + [f"{w}_{90000 + i}.JPEG" for w in wnids[:3] for i in range(4)]),
                         ("val", [f"ILSVRC2012_val_{w}_{i}.JPEG" for w in wnids[:3] for i in range(2)])):
        for name in names:
            wnid = name.split("_")[-2] if split == "val" else name.split("_")[0]
            (tmp_path / "imagenet" / split / wnid).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                tmp_path / "imagenet" / split / wnid / name)
    list_file = tmp_path / "1percent.txt"
    list_file.write_text("".join(f"{name}\n" for name in listed))
    code, _, err = _cli(capsys, "supervised", "--data", tmp_path / "imagenet", "--labels-file", list_file,
                        "--out", tmp_path / "run", "supervised.epochs=1", "supervised.batch_size=8",
                        "data.image_size=12", "workers=0")
    assert code == 0, err
    used = [Path(line).name for line in (tmp_path / "run" / "labeled.txt").read_text().split()]
    assert sorted(used) == sorted(in_folder)  # exactly the listed images present, none of the others
    missing = len(listed) - len(in_folder)
    assert f"{missing} of {len(listed)} names" in caplog.text


def test_find_prefix_accepts_the_released_layouts(tmp_path):
    (tmp_path / "tf1").mkdir()
    for step in (5, 751, 80):  # newest step wins without a 'checkpoint' file; the file decides when present
        (tmp_path / "tf1" / f"model.ckpt-{step}.index").write_bytes(b"")
    (tmp_path / "tf1" / "hub" / "variables").mkdir(parents=True)
    (tmp_path / "tf1" / "hub" / "variables" / "variables.index").write_bytes(b"")
    assert tf_import.find_prefix(tmp_path / "tf1") == tmp_path / "tf1" / "model.ckpt-751"
    (tmp_path / "tf1" / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/model.ckpt-80"\n')
    assert tf_import.find_prefix(tmp_path / "tf1") == tmp_path / "tf1" / "model.ckpt-80"
    assert tf_import.find_prefix(tmp_path / "tf1" / "model.ckpt-5") == tmp_path / "tf1" / "model.ckpt-5"
    assert tf_import.find_prefix(tmp_path / "tf1" / "model.ckpt-5.index") == tmp_path / "tf1" / "model.ckpt-5"
    assert tf_import.find_prefix(tmp_path / "tf1" / "hub") == tmp_path / "tf1" / "hub" / "variables" / "variables"
    (tmp_path / "tf2" / "saved_model" / "variables").mkdir(parents=True)
    (tmp_path / "tf2" / "saved_model" / "variables" / "variables.index").write_bytes(b"")
    assert tf_import.find_prefix(tmp_path / "tf2") == tmp_path / "tf2" / "saved_model" / "variables" / "variables"
    with pytest.raises(tf_import.TFImportError, match="does not exist"):
        tf_import.find_prefix(tmp_path / "nothing")


# ---- TF2 SavedModels ---------------------------------------------------------------------------------

class TF2Official:
    """The tracked attribute structure of the official tf2/ code (model.py, resnet.py, run.py's export).

    ``tf.Module`` objects stand in for its Keras layers, with the same attribute names and lists, the
    parameter-free layers (padding, pooling, identity, DropBlock) included so that list positions
    match. Layers are created in the official order; conv ``i`` and BN ``i`` take the values of the
    TF1 names ``base_model/conv2d_<i>`` and ``base_model/batch_normalization_<i>`` (what a conversion
    of the TF1 checkpoint keeps). ``root`` is what run.py saves: ``model`` and
    ``trainable_variables_list``, the latter shuffled so that checkpoint keys say nothing of position.
    """

    def __init__(self, tf, values: dict[str, np.ndarray], depth, sk, cifar, classes) -> None:
        self.tf, self.values = tf, values
        self.n = {"conv2d": 0, "batch_normalization": 0}
        self.trainable = []
        self.placed: set[str] = set()
        m = self.module
        stem = [self.conv(), m(), self.bn()] if cifar or not sk else [
            self.conv(), self.bn(), self.conv(), self.bn(), self.conv(), m(), self.bn()]
        stem += [m()] if cifar else [m(), m()]  # (max pool,) identity 'initial_max_pool'
        groups = [m(layers=[self.block(j == 0, sk, i > 0, depth >= 50) for j in range(n)])
                  for i, n in enumerate({18: [2, 2, 2, 2], 50: [3, 4, 6, 3]}[depth])]
        model = m(resnet_model=m(initial_conv_relu_max_pool=stem, block_groups=groups))
        model._projection_head = m(linear_layers=[
            m(dense=m(kernel=self.var(f"head_contrastive/nl_{i}/dense/kernel")),
              bn_relu=self.bn(f"head_contrastive/nl_{i}/batch_normalization", center=i < 2)) for i in range(3)])
        if classes:
            dense = "head_supervised/linear_layer/dense"
            model.supervised_head = m(linear_layer=m(dense=m(kernel=self.var(f"{dense}/kernel"),
                                                             bias=self.var(f"{dense}/bias"))))
        order = np.random.default_rng(3).permutation(len(self.trainable))
        self.root = m(model=model, trainable_variables_list=[self.trainable[i] for i in order])

    def module(self, **attrs):
        mod = self.tf.Module()
        for k, v in attrs.items():
            setattr(mod, k, v)
        return mod

    def var(self, name, trainable=True):
        assert name not in self.placed, name
        self.placed.add(name)
        v = self.tf.Variable(self.values[name], trainable=trainable, name=f"keras_like/{name}")
        if trainable:
            self.trainable.append(v)
        return v

    def _next(self, kind):
        i = self.n[kind]
        self.n[kind] += 1
        return f"base_model/{kind}" + (f"_{i}" if i else "")

    def conv(self):  # Conv2dFixedPadding: conv2d (Keras Conv2D)
        return self.module(conv2d=self.module(kernel=self.var(self._next("conv2d") + "/kernel")))

    def bn(self, name=None, center=True):  # BatchNormRelu: bn (Keras BatchNormalization)
        name = name or self._next("batch_normalization")
        bn = self.module(gamma=self.var(f"{name}/gamma"))
        if center:
            bn.beta = self.var(f"{name}/beta")
        bn.moving_mean = self.var(f"{name}/moving_mean", trainable=False)
        bn.moving_variance = self.var(f"{name}/moving_variance", trainable=False)
        return self.module(bn=bn)

    def sk_conv(self):
        m = self.module
        return m(conv2d_fixed_padding=self.conv(), batch_norm_relu=self.bn(),
                 conv2d_0=m(kernel=self.var(self._next("conv2d") + "/kernel")), batch_norm_relu_1=self.bn(),
                 conv2d_1=m(kernel=self.var(self._next("conv2d") + "/kernel")))

    def block(self, first, sk, strided, bottleneck):
        m = self.module
        shortcut = []
        if first:  # ResNet-D for sk1: [fixed padding,] average pool, then the 1x1 conv
            shortcut = ([m()] if sk and strided else []) + ([m()] if sk else []) + [self.conv(), self.bn()]
        if not bottleneck:
            return m(shortcut_layers=shortcut, conv2d_bn_layers=[self.conv(), self.bn(), self.conv(), self.bn()])
        block = m(projection_layers=shortcut, shortcut_dropblock=m())
        main = [self.conv(), self.bn(), m()] + ([self.sk_conv()] if sk else [self.conv(), self.bn()])
        block.conv_relu_dropblock_layers = main + [m(), self.conv(), self.bn(), m()]
        return block


def _tf1_values(folder: Path) -> dict[str, np.ndarray]:
    bundle = TFBundle(folder / "model.ckpt-751")
    return {n: bundle.read(n) for n in bundle.names()
            if not (n.startswith("ema_model/") or n.endswith("/Momentum") or n == "global_step")}


@pytest.fixture(scope="module")
def official_tf2(official, tmp_path_factory):
    """The CASES as TF2 SavedModels (``<kind>/<name>/saved_model``) holding the TF1 checkpoints' weights."""
    tf = pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("official_tf2")
    out = {}
    for name, ((depth, _, sk, cifar), _, classes, kind, _) in CASES.items():
        folder, ref = official[name]
        model = TF2Official(tf, _tf1_values(folder), depth, sk, cifar, classes)
        assert model.placed == set(model.values)  # every weight of the TF1 checkpoint, once
        saved = root / kind / name / "saved_model"
        tf.saved_model.save(model.root, str(saved))
        out[name] = (saved, ref)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_tf2_saved_model_forward_equals_tensorflow(official_tf2, name):
    saved, ref = official_tf2[name]
    bundle = TFBundle(saved / "variables" / "variables")
    keys = bundle.names()
    assert any(k.startswith("trainable_variables_list/") for k in keys)  # keys as the official export makes them
    assert not any(k.startswith("base_model/") for k in keys)
    result = tf_import.import_tf(saved.parent)  # the model directory, as downloaded
    assert result.arch.name == name
    outs, logits = _torch_outputs(result, ref["x"])
    assert len(outs) == 4
    for got, want in zip(outs, ref["outs"]):
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4
    if ref["logits"] is None:
        assert result.classifier is None
    else:
        assert np.abs(logits - ref["logits"]).max() <= 1e-4
        assert result.classifier[1]["head_input"] == ("nl_0" if "10pct" in str(saved) else "encoder")
    assert result.used + result.skipped == len(keys) and result.skipped == 1  # the object graph itself


def test_tf2_training_checkpoint_skips_optimizer_and_counters(official, tmp_path):
    """A TF2 ``tf.train.Checkpoint(model=..., global_step=..., optimizer=...)``, with real slot variables."""
    tf = pytest.importorskip("tensorflow")
    folder, ref = official["r18_0.25x_sk0_cifar"]
    model = TF2Official(tf, _tf1_values(folder), 18, False, True, 0)
    optimizer = tf.compat.v1.train.MomentumOptimizer(0.1, 0.9)
    variables = model.trainable[:3]
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])  # creates the Momentum slots

    class Config(tf.train.experimental.PythonState):  # serialized state that is not a variable
        def serialize(self):
            return '{"name": "model"}'

        def deserialize(self, string_value):
            pass

    model.root.model.config = Config()
    ckpt = tf.train.Checkpoint(model=model.root.model, global_step=tf.Variable(751, dtype=tf.int64),
                               optimizer=optimizer)
    prefix = ckpt.save(str(tmp_path / "ckpt"))  # also writes save_counter and the 'checkpoint' state file
    keys = TFBundle(prefix).names()
    for start in ("global_step/", "save_counter/", "model/config/.ATTRIBUTES/"):
        assert any(k.startswith(start) for k in keys), start
    assert any(".OPTIMIZER_SLOT" in k for k in keys)
    result = tf_import.import_tf(tmp_path)
    outs, _ = _torch_outputs(result, ref["x"])
    assert max(np.abs(g - w).max() for g, w in zip(outs, ref["outs"])) <= 1e-4
    assert result.used + result.skipped == len(keys)


def test_tf2_bad_inputs_one_line_no_file(official, official_tf2, tmp_path, capsys):
    tf = _tf()
    saved, _ = official_tf2["r50_0.25x_sk0"]
    code, out_, err = _cli(capsys, "import-tf", saved, "--out", tmp_path / "good")
    assert code == 0 and checkpoint.exists(tmp_path / "good" / "classifier"), err
    folder, _ = official["r50_0.25x_sk0"]
    model = TF2Official(tf, _tf1_values(folder), 50, False, False, 1000)
    block = model.root.model.resnet_model.block_groups[0].layers[0]
    block.se_layer = model.module(se_reduce=model.module(kernel=tf.Variable(np.ones((1, 1, 64, 4), np.float32),
                                                                           name="resnet/se_layer/se_reduce/kernel")))
    tf.saved_model.save(model.root, str(tmp_path / "extra" / "saved_model"))
    other = tmp_path / "other" / "saved_model"
    tf.saved_model.save(model.module(encoder=model.module(kernel=tf.Variable(np.ones(3, np.float32)))), str(other))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    names = ["_CHECKPOINTABLE_OBJECT_GRAPH", "model/x/.ATTRIBUTES/VARIABLE_VALUE"]
    tf.raw_ops.SaveV2(prefix=str(corrupt / "ckpt-1"), tensor_names=names, shape_and_slices=["", ""],
                      tensors=[np.array(b"\x0a\x05ab", dtype=object), np.ones(3, np.float32)])  # a cut message
    cases = [(tmp_path / "extra", [], "resnet/se_layer/se_reduce/kernel"), (saved, ["--ema"], "no ema_model"),
             (other, [], "no model/resnet_model"), (saved, ["--arch", "r50_0.25x_sk1"], "contradicts"),
             (corrupt / "ckpt-1", [], "corrupt _CHECKPOINTABLE_OBJECT_GRAPH")]
    for i, (src, flags, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code, _, err = _cli(capsys, "import-tf", src, "--out", out, *flags)
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("simclrv2 import-tf: error: ") and message in lines[0], err
        assert not out.exists()


def _keras2_official(tf, K, depth, sk_ratio, cifar, classes, selector, width=16):
    """The official tf2/ model rebuilt with tf.keras 2 (``tf_keras``) layers: same classes, attributes, lists.

    Written from the facts in ``simclrv2.official.tf2_graph``; the forward follows tf2/resnet.py and
    model.py (fixed padding for strided convs, 'SAME' pools, BN epsilon 1e-5, SK convs, ResNet-D).
    """

    class BatchNormRelu(K.layers.Layer):
        def __init__(self, relu=True, center=True):
            super().__init__()
            self.relu = relu
            self.bn = K.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, center=center, fused=False)

        def call(self, x, training):
            x = self.bn(x, training=training)
            return tf.nn.relu(x) if self.relu else x

    class Op(K.layers.Layer):  # the parameter-free layers: padding, identity, DropBlock at inference
        def __init__(self, fn=tf.identity):
            super().__init__()
            self.fn = fn

        def call(self, x, training):
            return self.fn(x)

    def pad(before, after):
        return lambda x: tf.pad(x, [[0, 0], [before, after], [before, after], [0, 0]])

    class Conv2dFixedPadding(K.layers.Layer):
        def __init__(self, filters, k, stride):
            super().__init__()
            self.fixed_padding = Op(pad((k - 1) // 2, k - 1 - (k - 1) // 2)) if stride > 1 else None
            self.conv2d = K.layers.Conv2D(filters, k, stride, "SAME" if stride == 1 else "VALID", use_bias=False)

        def call(self, x, training):
            return self.conv2d(self.fixed_padding(x) if self.fixed_padding else x)

    class SK_Conv2D(K.layers.Layer):  # noqa: N801 (the official class name)
        def __init__(self, filters, stride):
            super().__init__()
            self.conv2d_fixed_padding = Conv2dFixedPadding(2 * filters, 3, stride)
            self.batch_norm_relu = BatchNormRelu()
            self.conv2d_0 = K.layers.Conv2D(max(int(filters * sk_ratio), 32), 1, use_bias=False)
            self.batch_norm_relu_1 = BatchNormRelu()
            self.conv2d_1 = K.layers.Conv2D(2 * filters, 1, use_bias=False)

        def call(self, x, training):
            x = tf.stack(tf.split(self.batch_norm_relu(self.conv2d_fixed_padding(x), training), 2, axis=3))
            g = self.batch_norm_relu_1(self.conv2d_0(tf.reduce_mean(tf.reduce_sum(x, 0), [1, 2], keepdims=True)),
                                       training)
            return tf.reduce_sum(x * tf.nn.softmax(tf.stack(tf.split(self.conv2d_1(g), 2, axis=3)), axis=0), 0)

    def projection(filters, stride):
        if not sk_ratio:
            return [Conv2dFixedPadding(filters, 1, stride), BatchNormRelu(relu=False)]
        pool = K.layers.AveragePooling2D(2, stride, "SAME" if stride == 1 else "VALID")
        return [Op(pad(0, 1))] * (stride > 1) + [pool, Conv2dFixedPadding(filters, 1, 1), BatchNormRelu(relu=False)]

    class Block(K.layers.Layer):  # BottleneckBlock / ResidualBlock, by their attribute names
        def __init__(self, f, stride, use_projection=False):
            super().__init__()
            if depth >= 50:
                self.projection_layers = projection(4 * f, stride) if use_projection else []
                self.shortcut_dropblock = Op()
                self.conv_relu_dropblock_layers = [Conv2dFixedPadding(f, 1, 1), BatchNormRelu(), Op()]
                self.conv_relu_dropblock_layers += [SK_Conv2D(f, stride)] if sk_ratio else [
                    Conv2dFixedPadding(f, 3, stride), BatchNormRelu()]
                self.conv_relu_dropblock_layers += [Op(), Conv2dFixedPadding(4 * f, 1, 1), BatchNormRelu(False), Op()]
            else:
                self.conv2d_bn_layers = []
                self.shortcut_layers = projection(f, stride) if use_projection else []
                self.conv2d_bn_layers += [Conv2dFixedPadding(f, 3, stride), BatchNormRelu(),
                                          Conv2dFixedPadding(f, 3, 1), BatchNormRelu(relu=False)]

        def call(self, x, training):
            shortcut, main = ((self.projection_layers, self.conv_relu_dropblock_layers) if depth >= 50
                              else (self.shortcut_layers, self.conv2d_bn_layers))
            s = x
            for layer in shortcut:
                s = layer(s, training=training)
            for layer in main:
                x = layer(x, training=training)
            return tf.nn.relu(x + s)

    class BlockGroup(K.layers.Layer):
        def __init__(self, f, blocks, stride):
            super().__init__()
            self.layers = [Block(f, stride, use_projection=True)]
            for _ in range(1, blocks):
                self.layers.append(Block(f, 1))

        def call(self, x, training):
            for layer in self.layers:
                x = layer(x, training=training)
            return x

    class Resnet(K.layers.Layer):
        def __init__(self):
            super().__init__(name="resnet")
            self.initial_conv_relu_max_pool = []
            stem = self.initial_conv_relu_max_pool
            if cifar:
                stem += [Conv2dFixedPadding(width, 3, 1), Op(), BatchNormRelu(), Op()]
            else:
                stem += [Conv2dFixedPadding(width // 2, 3, 2), BatchNormRelu(), Conv2dFixedPadding(width // 2, 3, 1),
                         BatchNormRelu(), Conv2dFixedPadding(width, 3, 1)] if sk_ratio else [
                    Conv2dFixedPadding(width, 7, 2)]
                stem += [Op(), BatchNormRelu(), K.layers.MaxPooling2D(3, 2, "SAME"), Op()]
            blocks = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3]}[depth]
            self.block_groups = [BlockGroup(width * 2 ** i, n, 1 if i == 0 else 2) for i, n in enumerate(blocks)]

        def call(self, x, training):
            for layer in list(self.initial_conv_relu_max_pool) + list(self.block_groups):
                x = layer(x, training=training)
            return tf.reduce_mean(x, [1, 2])

    class LinearLayer(K.layers.Layer):
        def __init__(self, units, use_bias=True, use_bn=False):
            super().__init__()
            self.units = units
            self.dense = K.layers.Dense(units or 1, use_bias=use_bias and not use_bn)
            self.bn_relu = BatchNormRelu(relu=False, center=use_bias) if use_bn else None

        def build(self, input_shape):
            self.dense.units = self.units or int(input_shape[-1])  # units None: keep the width
            super().build(input_shape)

        def call(self, x, training):
            x = self.dense(x)
            return self.bn_relu(x, training=training) if self.bn_relu else x

    class ProjectionHead(K.layers.Layer):
        def __init__(self):
            super().__init__(name="projection_head")
            self.linear_layers = [LinearLayer(None, True, True), LinearLayer(None, True, True),
                                  LinearLayer(128, False, True)]

        def call(self, x, training):
            hiddens = [x]
            for j, layer in enumerate(self.linear_layers):
                h = layer(hiddens[-1], training)
                hiddens.append(tf.nn.relu(h) if j < 2 else h)
            return hiddens

    class SupervisedHead(K.layers.Layer):
        def __init__(self):
            super().__init__(name="head_supervised")
            self.linear_layer = LinearLayer(classes)

        def call(self, x, training):
            return self.linear_layer(x, training)

    class Model(K.models.Model):
        def __init__(self):
            super().__init__()
            self.resnet_model = Resnet()
            self._projection_head = ProjectionHead()
            if classes:
                self.supervised_head = SupervisedHead()

        def __call__(self, x, training):  # the official model overrides __call__ too
            hiddens = self._projection_head(self.resnet_model(x, training=training), training)
            return hiddens, self.supervised_head(hiddens[selector], training) if classes else None

    class SimCLRModel(tf.Module):  # what run.py saves
        def __init__(self, model):
            self.model = model
            self.trainable_variables_list = model.trainable_variables

    return Model, SimCLRModel


@pytest.mark.parametrize("name", list(CASES))
def test_tf2_saved_model_written_by_tf_keras_2(tmp_path, name):
    """Where tf.keras 2 (``tf_keras``, the Keras of the official TF2 code) is installed: its export, imported."""
    tf = _tf()
    K = pytest.importorskip("tf_keras")
    (depth, width, sk, cifar), size, classes, kind, selector = CASES[name]
    Model, SimCLRModel = _keras2_official(tf, K, depth, 0.0625 if sk else 0.0, cifar, classes, selector,
                                          int(64 * width))
    model = Model()
    x = tf.constant(np.random.default_rng(1).uniform(0, 1, (2, size, size, 3)).astype(np.float32))
    model(x, training=False)
    rng = np.random.default_rng(0)
    for v in model.variables:  # distinct values, BN statistics included
        leaf = v.name.split("/")[-1].split(":")[0]
        value = {"gamma": lambda s: rng.uniform(0.5, 1.5, s), "moving_variance": lambda s: rng.uniform(0.5, 1.5, s),
                 "kernel": lambda s: rng.normal(0, 1, s) / np.sqrt(np.prod(s[:-1]))}.get(
            leaf, lambda s: rng.normal(0, 0.1, s))(tuple(v.shape))
        v.assign(value.astype(np.float32))
    hiddens, logits = model(x, training=False)
    saved = tmp_path / kind / name / "saved_model"
    try:  # the layers' traced functions are not needed here and take most of the time
        from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope
        scope = keras_option_scope(save_traces=False)
    except ImportError:
        import contextlib
        scope = contextlib.nullcontext()
    with scope:
        tf.saved_model.save(SimCLRModel(model), str(saved))
    result = tf_import.import_tf(saved.parent)
    assert result.arch.name == name
    outs, got_logits = _torch_outputs(result, x.numpy())
    for got, want in zip(outs, hiddens):
        assert got.shape == tuple(want.shape) and np.abs(got - want.numpy()).max() <= 1e-4
    assert (logits is None) == (result.classifier is None)
    if logits is not None:
        assert np.abs(got_logits - logits.numpy()).max() <= 1e-4
    assert result.used + result.skipped == len(TFBundle(saved / "variables" / "variables").names())
