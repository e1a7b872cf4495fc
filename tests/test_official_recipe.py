"""The paper's recipe where the official code or its authors state it: which network produces the memory
buffer's keys (google-research/simclr issue #115), distillation as the official colab does it, the
published presets, and fine-tuning epochs for the official label lists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simclrv2.losses import nt_xent
from simclrv2.train.memory import MovingAverage, momentum_contrast


def _rule(queries_a, queries_b, keys_a, keys_b, queue, temperature, offset):
    """The documented rule written out, one query at a time: query ``q`` of view v of image i (online
    network) against the keys of the moving-average network -- positive: the other view of image i;
    negatives: both views of every other image of the batch, and the queue -- cross entropy, the two
    views summed, averaged over the images."""
    norm = lambda t: t / t.norm(dim=1, keepdim=True)  # noqa: E731
    qa, qb, ka, kb, kq = map(norm, (queries_a, queries_b, keys_a, keys_b, queue))
    total = 0.0
    for i in range(qa.shape[0]):
        g = offset + i
        for q, positive in ((qa[i], kb[g]), (qb[i], ka[g])):
            others = [k[j] for k in (ka, kb) for j in range(ka.shape[0]) if j != g] + list(kq)
            pos = torch.exp(q @ positive / temperature)
            total = total - torch.log(pos / (pos + sum(torch.exp(q @ k / temperature) for k in others)))
    return total / qa.shape[0]


def _differing_networks():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    ema = MovingAverage(online, decay=0.5)
    with torch.no_grad():  # a few "steps" later: the online network has moved away from its average
        for p in online.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return online, ema


@pytest.mark.parametrize("offset", [0, 3], ids=["one-device", "second-of-two-devices"])
def test_memory_keys_of_current_and_past_batches_come_from_the_momentum_network(offset):
    """Issue #115: "the contrasting examples are from momentum encoder from current and past batches".
    Loss and gradient equal the rule written out; the other assignment (the online network's
    embeddings of the current batch as keys, as before) gives another loss and gradient."""
    online, ema = _differing_networks()
    n, batch = 3, 6  # this device's images, the global batch
    xa, xb = torch.randn(batch, 6, dtype=torch.double), torch.randn(batch, 6, dtype=torch.double)
    queue = torch.randn(5, 4, dtype=torch.double)  # keys of past batches
    mine = slice(offset, offset + n)
    za, zb = online(xa[mine]), online(xb[mine])
    ka, kb = ema(xa), ema(xb)
    assert not (ka.requires_grad or kb.requires_grad)
    assert (ka[mine] - za).abs().max() > 0.1  # the two networks really differ

    loss = momentum_contrast(za, zb, ka, kb, 0.3, offset, queue)
    grads = torch.autograd.grad(loss, list(online.parameters()))
    za2, zb2 = online(xa[mine]), online(xb[mine])
    expected = _rule(za2, zb2, ka, kb, queue, 0.3, offset)
    expected_grads = torch.autograd.grad(expected, list(online.parameters()))
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)

    # the previous assignment: in-batch keys from the online network (gradient through them too)
    all_a, all_b = online(xa), online(xb)
    old = nt_xent(all_a[mine], all_b[mine], 0.3, all_a, all_b, offset, queue)
    old_grads = torch.autograd.grad(old, list(online.parameters()))
    assert abs(old.item() - loss.item()) > 1e-3
    assert max((g - o).abs().max().item() for g, o in zip(grads, old_grads)) > 1e-3


def test_pretraining_contrasts_with_the_momentum_networks_keys(monkeypatch, tmp_path):
    """The pretraining step routes through ``momentum_contrast`` with the moving-average network's keys
    of the whole batch (no gradient) and the queue of the earlier steps' keys."""
    from simclrv2.config import build_config
    from simclrv2.data.datasets import load
    from simclrv2.train import pretrain

    calls = []
    real = momentum_contrast

    def spy(z_a, z_b, keys_a, keys_b, temperature, offset=0, queue=None):
        calls.append((z_a.detach().clone(), keys_a.clone(), keys_a.requires_grad, z_a.requires_grad,
                      0 if queue is None else queue.shape[0]))
        return real(z_a, z_b, keys_a, keys_b, temperature, offset, queue)

    monkeypatch.setattr(pretrain, "momentum_contrast", spy)
    cfg = build_config("digits", overrides=["image_size=8", "model=resnet18", "width=0.125", "head_layers=2",
                                            "knn_every=0", "pretrain.epochs=1", "pretrain.batch_size=128",
                                            "memory_size=512", "memory_momentum=0.9", "device=cpu",
                                            "amp=false"])  # float32: the queries and keys compared below
    pretrain.run(cfg, tmp_path, load(cfg.data), show_progress=False)
    assert len(calls) >= 3
    assert [c[4] for c in calls[:3]] == [0, 256, 512]  # the queue holds both views of the earlier batches
    assert all(not c[2] and c[3] for c in calls)  # keys without gradient, queries with
    assert torch.allclose(calls[0][0], calls[0][1], atol=1e-4)  # step 1: the average is still the network
    assert (calls[2][0] - calls[2][1]).abs().max() > 1e-3  # later: the keys are the lagging average's


def _readme_command(readme, dataset: str) -> dict[str, str]:
    """The ``--flag=value`` pairs of the README's ``run.py`` command line for ``dataset``."""
    import re

    for block in re.findall(r"```\n(python run.py.*?)```", readme.read_text(), flags=re.S):
        flags = dict(re.findall(r"--(\w+)=(\S+)", block))
        if flags.get("dataset") == dataset:
            return flags
    raise AssertionError(f"no {dataset} command line in {readme}")


def _official_flag_defaults(run_py) -> dict[str, object]:
    """name -> (kind, default) of every ``flags.DEFINE_<kind>(name, default, ...)`` in the official
    ``run.py``, read from its source (importing it would load TensorFlow into the test process)."""
    import ast

    out = {}
    for node in ast.walk(ast.parse(run_py.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "").startswith("DEFINE_"):
            name, default = (ast.literal_eval(a) for a in node.args[:2])
            out[name] = (node.func.attr.removeprefix("DEFINE_"), default)
    return out


def _parse_flag(kind: str, text: str):
    """A command-line value as absl parses a flag of ``kind``."""
    if kind in ("bool", "boolean"):
        return {"true": True, "false": False}[text.lower()]
    return {"float": float, "integer": int}.get(kind, str)(text)


def test_cifar10_preset_is_the_official_readmes_command_line():
    """tf2/README.md's CIFAR-10 pretraining command, with the flags it leaves at their defaults (read
    from the official ``run.py``), is what the cifar10 preset pretrains with."""
    import official
    from simclrv2.config import preset

    if not official.OFFICIAL_TF2.is_dir():
        pytest.skip(f"official SimCLR reference not found at {official.OFFICIAL_TF2}")
    given = _readme_command(official.OFFICIAL_TF2 / "README.md", "cifar10")
    defaults = _official_flag_defaults(official.OFFICIAL_TF2 / "run.py")
    flags = {name: _parse_flag(defaults[name][0], given[name]) if name in given else defaults[name][1]
             for name in ("train_batch_size", "train_epochs", "learning_rate", "learning_rate_scaling",
                          "warmup_epochs", "weight_decay", "temperature", "optimizer", "momentum", "resnet_depth",
                          "width_multiplier", "sk_ratio", "image_size", "use_blur", "color_jitter_strength",
                          "proj_out_dim", "num_proj_layers", "dataset")}
    assert flags["train_epochs"] == 1000 and flags["temperature"] == 0.5  # the parsing found the command
    cfg = preset("cifar10")
    p = cfg.pretrain
    ours = {"train_batch_size": p.batch_size, "train_epochs": p.epochs, "learning_rate": p.lr,
            "learning_rate_scaling": p.lr_scaling, "warmup_epochs": p.warmup_epochs,
            "weight_decay": p.weight_decay, "temperature": p.temperature, "optimizer": p.optimizer,
            "momentum": p.momentum, "resnet_depth": int(cfg.model.model.removeprefix("resnet")),
            "width_multiplier": cfg.model.width, "sk_ratio": cfg.model.sk_ratio, "image_size": cfg.data.image_size,
            "use_blur": cfg.aug.blur, "color_jitter_strength": cfg.aug.color_strength,
            "proj_out_dim": cfg.model.proj_dim, "num_proj_layers": cfg.model.head_layers,
            "dataset": cfg.data.dataset}
    assert ours == flags
    assert cfg.model.cifar_stem == (flags["image_size"] <= 32)  # official model.py: cifar_stem=image_size <= 32


def test_imagenet_pretraining_has_no_per_epoch_knn_pass(monkeypatch, tmp_path):
    """A kNN pass embeds the whole training set (1.28M images on ImageNet): the imagenet preset has none,
    and with ``knn_every=0`` pretraining never embeds the training set."""
    from simclrv2.config import build_config, preset
    from simclrv2.data.datasets import load
    from simclrv2.train import pretrain

    assert preset("imagenet").pretrain.knn_every == 0

    def refuse(*args, **kwargs):
        raise AssertionError("kNN pass with knn_every=0")

    monkeypatch.setattr(pretrain, "knn_accuracy", refuse)
    cfg = build_config("digits", overrides=["image_size=8", "model=resnet18", "width=0.125", "head_layers=2",
                                            "knn_every=0", "pretrain.epochs=1", "pretrain.batch_size=256",
                                            "device=cpu"])
    result = pretrain.run(cfg, tmp_path, load(cfg.data), show_progress=False)
    assert "knn_top1" not in result["history"][-1]


SUBSETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-subsets"


@pytest.mark.parametrize("listed, per_class, expected", [("10percent.txt", 10, 2), ("1percent.txt", 100, 3)])
def test_the_official_label_lists_get_their_fractions_finetuning_epochs(tmp_path, capsys, listed, per_class,
                                                                        expected):
    """``finetune --labels-file 10percent.txt`` on an ImageNet-style folder holding every class's listed
    images and nine times as many others (the list's 10%, as on ImageNet: 128,116 of 1,281,167) trains
    for ``epochs_by_labels[0.1]``, not the default ``epochs``; the 1% list for ``[0.01]``."""
    import json

    import numpy as np
    from PIL import Image

    from simclrv2 import checkpoint
    from simclrv2.cli import main
    from simclrv2.config import ModelConfig, preset
    from simclrv2.models.networks import arch_of, build_pretrain_model

    assert preset("imagenet").finetune.epochs_by_labels == {0.01: 60, 0.1: 30}  # the paper's, as used below
    path = SUBSETS / listed
    if not path.is_file():
        pytest.skip(f"official label list not found at {path}")
    lines = path.read_text().split()
    wnids = sorted({line.split("_")[0] for line in lines})[:2]
    mine = {w: [line for line in lines if line.startswith(w + "_")][:1] for w in wnids}  # one listed each
    rng = np.random.default_rng(0)
    listed_names = set(lines)
    for w in wnids:
        others = [f"{w}_{n}.JPEG" for n in range(900000, 901000) if f"{w}_{n}.JPEG" not in listed_names]
        for split, names in (("train", mine[w] + others[:per_class - 1]), ("val", [f"{w}_val.JPEG"])):
            (tmp_path / "imagenet" / split / w).mkdir(parents=True, exist_ok=True)
            for name in names:
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "imagenet" / split / w / name)
    model = ModelConfig(model="resnet18", width=0.125, cifar_stem=True, head_layers=2, proj_dim=16)
    checkpoint.save(tmp_path / "pre" / "last", build_pretrain_model(model),
                    {"kind": "pretrain", "stage": "pretrain", "arch": arch_of(model), "config": {}})
    capsys.readouterr()
    code = main(["finetune", "--preset", "imagenet", "--data", str(tmp_path / "imagenet"), "--labels-file", str(path),
                 "--pretrained", str(tmp_path / "pre" / "last"), "--out", str(tmp_path / "ft"), "device=cpu",
                 "workers=0", "data.image_size=8", "finetune.epochs=7", "finetune.epochs_by_labels=0.01:3,0.1:2",
                 "finetune.batch_size=8"])
    assert code == 0, capsys.readouterr().err
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-1] == expected
    assert (tmp_path / "ft" / "labeled.txt").read_text().split() == sorted(
        f"{w}/{mine[w][0]}" for w in wnids)


COLAB_EXCLUDE = ["batch_normalization", "bias"]  # the colab's exclude_from_weight_decay (and layer adaptation)


def _student():
    from simclrv2.config import ModelConfig
    from simclrv2.models.networks import arch_of
    from simclrv2.train.distill import build_student

    torch.manual_seed(0)
    return build_student(arch_of(ModelConfig(model="resnet18", width=0.125, cifar_stem=True, head_layers=2,
                                             proj_dim=16), 5, 0))


def test_the_students_classifier_is_decayed_and_adapted_as_in_the_colab():
    """The colab trains every student variable with LARS(momentum 0.9, weight_decay 1e-4,
    exclude_from_weight_decay=['batch_normalization', 'bias']): the classifier's weight is decayed and
    layer-adapted; only BatchNorm parameters and biases are not. (Fine-tuning excludes its classifier,
    as tf2/model.py's 'head_supervised'; the colab's student has no such exclusion.)"""
    from simclrv2.config import preset
    from simclrv2.optim import build_optimizer

    d = preset("imagenet").distill
    student = _student()
    assert student.fc.weight.abs().sum() > 0  # Keras' Dense init, not zero: LARS adapts it from the first step
    opt = build_optimizer(student, "lars", 2.0, d.weight_decay, d.momentum, d.trust_coefficient)
    adapted = {id(p) for g in opt.param_groups if not g["exclude"] and g["weight_decay"] == d.weight_decay
               for p in g["params"]}
    norms = {id(p) for m in student.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
             for p in m.parameters(recurse=False)}
    for name, p in student.named_parameters():
        assert (id(p) in adapted) == (not name.endswith("bias") and id(p) not in norms), name
    assert id(student.fc.weight) in adapted


def test_the_students_classifier_steps_as_the_official_lars_with_the_colabs_exclusions():
    """Two steps of the student's classifier (weight and bias) under our optimizer and under the
    official ``LARSOptimizer`` (tf2/lars_optimizer.py, the colab's algorithm) with the colab's
    settings, from the same weights and gradients, agree."""
    import numpy as np

    import official
    from simclrv2.optim import build_optimizer

    ref = official.load()
    tf = ref.tf
    student = _student()
    ours = build_optimizer(student, "lars", 2.0, 1e-4, 0.9, 0.001)
    theirs = ref.lars_optimizer.LARSOptimizer(2.0, momentum=0.9, weight_decay=1e-4,
                                              exclude_from_weight_decay=COLAB_EXCLUDE)
    kernel = tf.Variable(student.fc.weight.detach().double().numpy().T, name="dense_1/kernel")  # Keras: [in, out]
    bias = tf.Variable(student.fc.bias.detach().double().numpy(), name="dense_1/bias")
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    for _ in range(2):
        F.cross_entropy(student(x), y).backward()
        gw, gb = student.fc.weight.grad.double().numpy(), student.fc.bias.grad.double().numpy()
        ours.step()
        ours.zero_grad()
        theirs.apply_gradients([(tf.constant(gw.T), kernel), (tf.constant(gb), bias)])
        np.testing.assert_allclose(student.fc.weight.detach().double().numpy(), kernel.numpy().T, rtol=1e-5,
                                   atol=1e-7)
        np.testing.assert_allclose(student.fc.bias.detach().double().numpy(), bias.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distillation_loss_is_the_colabs(temperature):
    """The colab's ``add_kd_loss`` run in TensorFlow: ``tf.losses.softmax_cross_entropy(softmax(teacher / T),
    student / T, T**2)`` (a mean over the batch; teacher and student at the same temperature)."""
    import official
    from simclrv2.losses import distill_loss

    tf = official.load().tf
    torch.manual_seed(1)
    student, teacher = torch.randn(6, 10, dtype=torch.double), torch.randn(6, 10, dtype=torch.double)
    teacher_probs = tf.nn.softmax(tf.constant(teacher.numpy()) / temperature)
    colab = tf.compat.v1.losses.softmax_cross_entropy(teacher_probs, tf.constant(student.numpy()) / temperature,
                                                      temperature ** 2)
    ours = distill_loss(student, teacher, temperature).item()
    assert ours == pytest.approx(float(colab.numpy()), rel=1e-6)  # TF computes it in float32


@pytest.mark.parametrize("name", ["imagenet", "cifar10"])
def test_distillation_presets_take_the_pretraining_schedule(name):
    """The paper: distillation with the same learning rate schedule, weight decay and batch size as
    pretraining (400 epochs on ImageNet); temperature 1 and the distillation loss alone (alpha 1)."""
    from simclrv2.config import preset

    cfg = preset(name)
    p, d = cfg.pretrain, cfg.distill
    same = ("batch_size", "lr", "lr_scaling", "weight_decay", "optimizer", "momentum", "trust_coefficient")
    assert {k: getattr(d, k) for k in same} == {k: getattr(p, k) for k in same}
    assert d.warmup_epochs / d.epochs == pytest.approx(p.warmup_epochs / p.epochs)
    assert (d.temperature, d.alpha) == (1.0, 1.0)
    if name == "imagenet":
        assert d.epochs == 400
