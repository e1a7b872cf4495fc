"""Linear evaluation: the paper protocol against the logistic-regression optimum, a frozen encoder, and
the reports naming the protocol they show."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simclrv2.cli import main
from simclrv2.config import Config, merge
from simclrv2.eval.linear import describe, paper_linear_eval


def _overlapping_classes(n=300, classes=3, dim=4, seed=0):
    """uint8 'images' whose first ``dim`` pixels hold Gaussian class clusters that overlap (so the
    unregularised logistic regression has a finite optimum), and the map back to those features."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    f = torch.randn(classes, dim, generator=g)[y] + torch.randn(n, dim, generator=g)
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images.view(n, -1)[:, :dim] = (128 + 20 * f).round().clamp(0, 255).to(torch.uint8)
    return images, y, (lambda x: (x.flatten(1)[:, :dim] - 128 / 255) * 12.75)


def test_paper_protocol_without_augmentation_reaches_the_logistic_regression_optimum():
    from sklearn.linear_model import LogisticRegression

    images, y, features = _overlapping_classes()
    no_aug = lambda x: x.float() / 255  # noqa: E731
    x = features(no_aug(images))
    cfg = merge(Config(), {"device": "cpu", "eval": {"linear": "paper", "epochs": 150, "batch_size": 300, "lr": 1.0,
                                                     "lr_scaling": "none", "weight_decay": 0.0}})
    scores = paper_linear_eval(features, images, y, x, 3, cfg, torch.device("cpu"), views=no_aug)
    optimum = LogisticRegression(C=1e6, max_iter=5000).fit(x.numpy(), y.numpy())
    best = torch.from_numpy(optimum.predict_proba(x.numpy())).float()
    ours, theirs = F.cross_entropy(scores, y).item(), F.nll_loss(best.log(), y).item()
    assert theirs - 1e-3 < ours < 1.03 * theirs
    assert (scores.argmax(1) == best.argmax(1)).float().mean() >= 0.98


def test_paper_protocol_leaves_the_encoder_and_its_batchnorm_statistics_untouched():
    images, y, _ = _overlapping_classes(n=40)
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    encoder.eval()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    cfg = merge(Config(), {"device": "cpu", "data": {"image_size": 8},
                           "eval": {"linear": "paper", "epochs": 2, "batch_size": 16}})
    scores = paper_linear_eval(encoder, images, y, torch.randn(5, 4), 3, cfg, torch.device("cpu"))
    assert scores.shape == (5, 3) and scores.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert all(p.grad is None for p in encoder.parameters())


def test_batch_statistics_leave_the_encoder_handed_over_untouched_and_score_with_the_updated_ones():
    """``eval.encoder_bn=batch`` (the official linear evaluation's BatchNorm): a copy of the encoder trains in
    training mode, and the evaluation images are scored with the moving statistics that copy ended with."""
    images, y, _ = _overlapping_classes(n=40)
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    encoder.eval()
    encoder.forward_features = encoder.forward
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    cfg = merge(Config(), {"device": "cpu", "data": {"image_size": 8},
                           "eval": {"linear": "paper", "epochs": 2, "batch_size": 16, "encoder_bn": "batch"}})
    scores = paper_linear_eval(encoder, images, y, torch.zeros(5, 4), 3, cfg, torch.device("cpu"),
                               encoder=encoder, val_images=images[:5])
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert scores.shape == (5, 3) and scores.abs().sum() > 0
    with pytest.raises(ValueError, match="needs the encoder"):
        paper_linear_eval(encoder, images, y, torch.zeros(5, 4), 3, cfg, torch.device("cpu"))
    assert "batch statistics" in describe(cfg.eval)


def test_describe_names_the_protocol():
    assert describe(Config().eval).startswith("fast probe")
    paper = merge(Config(), {"eval": {"linear": "paper", "epochs": 7}}).eval
    assert describe(paper).startswith("paper protocol") and "7 epochs" in describe(paper)


@pytest.fixture(scope="module")
def folder_checkpoint(tmp_path_factory):
    from conftest import write_image_folder

    root = write_image_folder(tmp_path_factory.mktemp("images"), per_class=12)
    out = tmp_path_factory.mktemp("pre")
    assert main(["pretrain", "--data", str(root), "--out", str(out), "image_size=8", "width=0.125",
                 "head_layers=2", "knn_every=0", "device=cpu", "epochs=1", "batch_size=16"]) == 0
    return out


@pytest.mark.parametrize("protocol,printed", [("fast", "linear (fast probe"), ("paper", "linear (paper protocol")])
def test_evaluate_says_which_linear_evaluation_it_shows(folder_checkpoint, tmp_path, capsys, protocol, printed):
    assert main(["evaluate", "--checkpoint", str(folder_checkpoint / "last"), "--out", str(tmp_path),
                 f"eval.linear={protocol}", "eval.epochs=2", "eval.batch_size=8"]) == 0
    assert printed in capsys.readouterr().out
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert result["linear"]["protocol"] == protocol and 0 <= result["linear"]["top1"] <= 100
    assert result["linear_protocol"].startswith(printed[len("linear ("):])


def test_evaluate_with_the_encoder_batchnorm_on_batch_statistics(folder_checkpoint, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(folder_checkpoint / "last"), "--out", str(tmp_path),
                 "eval.linear=paper", "eval.encoder_bn=batch", "eval.epochs=2", "eval.batch_size=8"]) == 0
    assert "encoder BatchNorm on batch statistics" in capsys.readouterr().out
    assert 0 <= json.loads((tmp_path / "evaluation.json").read_text())["linear"]["top1"] <= 100
