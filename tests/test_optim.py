"""LARS against its published update rule on a hand-computable case; the lr schedule and scaling."""

import math

import pytest
import torch
from torch import nn

from simclrv2.optim import LARS, build_optimizer, lr_at, param_groups, scaled_lr


def test_lars_first_step_by_hand():
    # w = (3, 4): |w| = 5. g = (0.6, 0.8). With wd 0.1: g' = g + 0.1 w = (0.9, 1.2), |g'| = 1.5.
    # trust = eta |w| / |g'| = 0.001 * 5 / 1.5 = 1/300; v = lr * trust * g' = 0.5/300 * (0.9, 1.2)
    #       = (0.0015, 0.002); w <- w - v = (2.9985, 3.998).
    w = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    opt = LARS([w], lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.001)
    w.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(w.data, torch.tensor([2.9985, 3.998], dtype=torch.float64))


def test_lars_second_step_follows_the_rule_with_momentum():
    w0 = [3.0, 4.0]
    g = [0.6, 0.8]
    lr, m, wd, eta = 0.5, 0.9, 0.1, 0.001
    w, v = list(w0), [0.0, 0.0]
    for _ in range(2):  # the rule, in plain Python
        gp = [gi + wd * wi for gi, wi in zip(g, w)]
        trust = eta * math.hypot(*w) / math.hypot(*gp)
        v = [m * vi + lr * trust * gi for vi, gi in zip(v, gp)]
        w = [wi - vi for wi, vi in zip(w, v)]
    p = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = LARS([p], lr=lr, momentum=m, weight_decay=wd, eta=eta)
    for _ in range(2):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    torch.testing.assert_close(p.data, torch.tensor(w, dtype=torch.float64), rtol=0, atol=1e-12)


def test_lars_excluded_group_is_plain_momentum_sgd_without_decay():
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = LARS([dict(params=[p], weight_decay=0.0, exclude=True)], lr=0.1, momentum=0.9)
    g = torch.tensor([0.5, 0.25], dtype=torch.float64)
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(p.data, torch.tensor([0.95, -2.025], dtype=torch.float64))
    p.grad = g.clone()
    opt.step()  # v = 0.9 * 0.1 g + 0.1 g = 0.19 g
    torch.testing.assert_close(p.data, torch.tensor([0.95 - 0.095, -2.025 - 0.0475], dtype=torch.float64))


def test_lars_zero_weight_uses_trust_one():
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = LARS([p], lr=0.1, momentum=0.0, eta=0.001)
    p.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.data, torch.full((3,), -0.1, dtype=torch.float64))


def test_param_groups_exclude_bn_and_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 1e-4)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[1].weight), id(model[1].bias), id(model[3].bias)}
    assert no_decay["exclude"] and no_decay["weight_decay"] == 0 and decay["weight_decay"] == 1e-4
    for name in ("lars", "sgd", "adamw"):
        assert build_optimizer(model, name, 0.1, 1e-4) is not None
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, "adam9", 0.1, 0.0)


def test_scaled_lr():
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)  # SimCLRv2
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)  # SimCLR v1
    assert scaled_lr(0.2, 100, "none") == 0.2
    with pytest.raises(ValueError):
        scaled_lr(0.1, 256, "cube")


def test_lr_at_warmup_then_cosine():
    peak, warm, total = 2.0, 10, 110  # the official rule: step / warmup x peak, so step 0 has rate 0
    assert lr_at(0, peak, warm, total) == 0.0
    assert lr_at(4, peak, warm, total) == pytest.approx(0.8)
    assert lr_at(9, peak, warm, total) == pytest.approx(1.8)
    assert lr_at(10, peak, warm, total) == pytest.approx(peak)
    assert lr_at(60, peak, warm, total) == pytest.approx(peak / 2)
    assert lr_at(110, peak, warm, total) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(500, peak, warm, total) == pytest.approx(0.0, abs=1e-12)
    values = [lr_at(s, peak, warm, total) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_at(0, 1.0, 0, 100) == pytest.approx(1.0)  # no warmup


def test_supervised_head_is_excluded_like_the_official_head_supervised():
    from simclrv2.models.networks import Classifier

    clf = Classifier(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.Identity(), 4, 2)
    decay, no_decay, head = param_groups(clf, 1e-4)
    assert {id(p) for p in decay["params"]} == {id(clf.encoder[0].weight)}
    assert id(clf.fc.bias) in {id(p) for p in no_decay["params"]}
    # the official head_supervised kernel: out of LARS's trust ratio, but decayed (add_weight_decay)
    assert [id(p) for p in head["params"]] == [id(clf.fc.weight)] and head["exclude"] and head["weight_decay"] == 1e-4
