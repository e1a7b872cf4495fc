"""Encoders (ResNet +/- selective kernels), the projection head and the encoder factory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from simclrv2.models import ProjectionHead, ResNet, build_encoder, list_encoders
from simclrv2.models.resnet import (AvgPoolSame2x2, BasicBlock, Bottleneck, MaxPoolSame, SelectiveKernelConv,
                                    projection_shortcut)

SK = 0.0625  # the SimCLRv2 sk_ratio


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def meta_encoder(name: str, **kwargs) -> ResNet:
    """Encoder built without allocating memory: enough to count parameters of 800M-parameter models."""
    with torch.device("meta"):
        return build_encoder(name, **kwargs)


# --------------------------------------------------------------------------- factory


def test_list_encoders():
    assert list_encoders() == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_encoder("resnet99")
    msg = str(err.value)
    assert "resnet99" in msg
    assert all(name in msg for name in list_encoders())


def test_attributes_kept_for_reporting():
    m = build_encoder("resnet18", width=0.25, sk_ratio=SK, cifar_stem=True)
    assert (m.depth, m.width, m.sk_ratio, m.cifar_stem) == (18, 0.25, SK, True)
    assert not any(isinstance(mod, nn.Linear) for mod in m.modules())  # no classifier inside


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
@pytest.mark.parametrize("sk_ratio", [0.0, SK])
def test_output_shapes(name, sk_ratio):
    expansion = 1 if name in ("resnet18", "resnet34") else 4
    for cifar_stem, size in ((True, 32), (False, 64)):
        torch.manual_seed(0)
        m = build_encoder(name, width=0.25, sk_ratio=sk_ratio, cifar_stem=cifar_stem)
        assert m.num_features == 128 * expansion  # 512 * width * expansion
        out = m(torch.randn(2, 3, size, size))
        assert out.shape == (2, m.num_features)
        assert torch.isfinite(out).all()


def test_forward_is_forward_features():
    torch.manual_seed(0)
    m = build_encoder("resnet18", width=0.25, cifar_stem=True).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m(x), m.forward_features(x))


@pytest.mark.parametrize("name,expected", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048),
                                           ("resnet101", 2048), ("resnet152", 2048)])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_num_features(name, expected, width):
    assert meta_encoder(name, width=width, sk_ratio=SK).num_features == expected * width


def test_fractional_width_rounds_channels():
    m = meta_encoder("resnet50", width=0.1)  # 51.2 -> 51 channels in the last stage
    assert m.num_features == 51 * 4
    assert m.stem[0][0].out_channels == 6  # round(6.4)
    assert meta_encoder("resnet18", width=0.001).num_features == 1  # never zero channels


def test_in_channels_and_backward():
    torch.manual_seed(0)
    m = build_encoder("resnet50", width=0.25, sk_ratio=SK, in_channels=1)
    m(torch.randn(2, 1, 64, 64)).square().sum().backward()
    assert m.stem[0][0].weight.grad.abs().sum() > 0
    sk = m.stages[0][0].conv2
    assert sk.conv[0].weight.grad is not None


# --------------------------------------------------------------------------- parameter counts

# SimCLRv2 paper, Table 1 / google-research/simclr README "Pre-trained models for SimCLRv2":
# (depth, width, SK) -> Param (M).
TABLE1 = {
    (50, 1, False): 24, (50, 1, True): 35, (50, 2, False): 94, (50, 2, True): 140,
    (101, 1, False): 43, (101, 1, True): 65, (101, 2, False): 170, (101, 2, True): 257,
    (152, 1, False): 58, (152, 1, True): 89, (152, 2, False): 233, (152, 2, True): 354,
    (152, 3, True): 795,
}


def test_param_counts_match_table1():
    """Encoder size vs SimCLRv2 Table 1 ("Param", identical in the google-research/simclr README).

    The published figures count the encoder alone (no fc: ResNet-50 1x with the 1000-way fc has
    25.6M, published 24M) including the BatchNorm moving mean/variance (TF counts every
    variable: ResNet-152 2x has 232.25M trainable parameters, 232.56M variables, published 233M).
    They are rounded to whole millions, so a 1% tolerance is not meaningful for the small models
    (23.56M vs 24M is -1.8%); each count must round to the published figure instead, which is
    tighter than 1% for every model of 50M+ parameters.
    """
    for (depth, width, sk), published in TABLE1.items():
        m = meta_encoder(f"resnet{depth}", width=width, sk_ratio=SK if sk else 0.0)
        variables = n_params(m) + sum(b.numel() for b in m.buffers() if b.is_floating_point())
        assert round(variables / 1e6) == published, (depth, width, sk, variables)
        assert abs(n_params(m) / 1e6 - published) <= max(0.01 * published, 0.5), (depth, width, sk)


@pytest.mark.parametrize("name,extra", [("resnet18", 64 * 64 + 2 * 64), ("resnet34", 64 * 64 + 2 * 64),
                                        ("resnet50", 0), ("resnet101", 0), ("resnet152", 0)])
def test_plain_resnet_matches_torchvision(name, extra):
    """Without SK the encoder is torchvision's ResNet minus its fc, except that (as in the official
    code) the first block of stage 1 always has a projection shortcut, which adds one 64x64 1x1 conv
    + BN to ResNet-18/34."""
    with torch.device("meta"):
        ref = getattr(torchvision.models, name)()
    expected = n_params(ref) - n_params(ref.fc) + extra
    assert n_params(meta_encoder(name)) == expected


# --------------------------------------------------------------------------- SimCLRv2 structure


def test_sk_structure_follows_official_code():
    m = meta_encoder("resnet50", width=1, sk_ratio=SK)
    # Deep stem: 3x3/2 (32), 3x3 (32), 3x3 (64), then max pool.
    convs = [mod[0] for mod in m.stem if not isinstance(mod, MaxPoolSame)]
    assert [(c.kernel_size, c.stride, c.out_channels) for c in convs] == [
        ((3, 3), (2, 2), 32), ((3, 3), (1, 1), 32), ((3, 3), (1, 1), 64)]
    assert isinstance(m.stem[-1], MaxPoolSame)
    block = m.stages[1][0]  # 128-channel stage, stride 2
    sk = block.conv2
    assert isinstance(sk, SelectiveKernelConv)
    assert sk.conv[0].out_channels == 2 * 128 and sk.conv[0].stride == (2, 2) and sk.conv[0].kernel_size == (3, 3)
    assert sk.squeeze[0].out_channels == 32  # max(int(128 * 0.0625), 32)
    assert m.stages[3][0].conv2.squeeze[0].out_channels == 32
    assert meta_encoder("resnet50", width=0.5, sk_ratio=0.5).stages[3][0].conv2.squeeze[0].out_channels == 128
    assert sk.expand.out_channels == 2 * 128 and sk.expand.bias is None
    # ResNet-D shortcut: average pool does the stride, then a stride-1 1x1 conv.
    kinds = [type(mod) for mod in block.shortcut]
    assert kinds[:3] == [nn.ZeroPad2d, nn.AvgPool2d, nn.Conv2d] and isinstance(block.shortcut[3], nn.BatchNorm2d)
    assert block.shortcut[2].stride == (1, 1)
    assert isinstance(m.stages[0][0].shortcut[0], AvgPoolSame2x2)  # stage 1: stride 1, still pooled
    # Basic blocks keep plain 3x3 convs with SK on; only stem and shortcut change (official code).
    r18 = build_encoder("resnet18", width=0.25, sk_ratio=SK)
    assert not any(isinstance(mod, SelectiveKernelConv) for mod in r18.modules())
    assert len(r18.stem) == 4 and isinstance(r18.stages[1][0].shortcut[1], nn.AvgPool2d)


def test_plain_structure():
    m = build_encoder("resnet50", width=0.25)
    assert m.stem[0][0].kernel_size == (7, 7) and isinstance(m.stem[1], MaxPoolSame)
    assert not any(isinstance(mod, (SelectiveKernelConv, nn.AvgPool2d)) for mod in m.modules())
    assert m.stages[1][0].shortcut[0].stride == (2, 2)
    cifar = build_encoder("resnet18", width=0.25, sk_ratio=SK, cifar_stem=True)
    assert len(cifar.stem) == 1 and cifar.stem[0][0].kernel_size == (3, 3) and cifar.stem[0][0].stride == (1, 1)


def test_sk_mixing_is_softmax_over_two_branches():
    torch.manual_seed(0)
    sk = SelectiveKernelConv(8, 6, stride=1, sk_ratio=SK).eval()
    nn.init.normal_(sk.expand.weight)
    x = torch.randn(3, 8, 5, 5)
    feats = sk.conv(x)
    a, b = feats[:, :6], feats[:, 6:]
    out = sk(x)
    # Per (sample, channel) the output is a convex combination of the two branches...
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    assert (out >= lo - 1e-6).all() and (out <= hi + 1e-6).all()
    # ...with weights softmax(expand(squeeze(mean(a + b)))) over the branch axis.
    logits = sk.expand(sk.squeeze((a + b).mean((2, 3), keepdim=True)))
    w = torch.stack([logits[:, :6], logits[:, 6:]]).softmax(0)
    torch.testing.assert_close(out, w[0] * a + w[1] * b)
    assert not torch.allclose(out, (a + b) / 2)  # the weights are not trivially uniform
    nn.init.zeros_(sk.expand.weight)
    torch.testing.assert_close(sk(x), (a + b) / 2)


def test_tf_same_pooling():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # Max 3x3/2 with TF SAME on an even size pads only bottom/right: windows start at 0 and 2.
    torch.testing.assert_close(MaxPoolSame(3, 2)(x), torch.tensor([[[[10.0, 11.0], [14.0, 15.0]]]]))
    assert MaxPoolSame(3, 2)(torch.randn(1, 1, 7, 7)).shape[-1] == 4
    y = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(MaxPoolSame(3, 2)(y), F.max_pool2d(y, 3, 2, padding=1))  # odd: symmetric
    # 2x2 stride-1 average with SAME: last row/column average only the cells that exist.
    out = AvgPoolSame2x2()(x)
    assert out.shape == x.shape
    assert out[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4
    assert out[0, 0, 0, 3] == (3 + 7) / 2
    assert out[0, 0, 3, 3] == 15
    # Stride-2 ResNet-D pool: zeros padded bottom/right are counted (TF FixedPadding + VALID pool).
    sc = projection_shortcut(1, 1, 2, avg_down=True)
    pooled = sc[1](sc[0](torch.ones(1, 1, 3, 3)))
    torch.testing.assert_close(pooled, torch.tensor([[[[1.0, 0.5], [0.5, 0.25]]]]))


def test_initialisation_zeroes_last_bn_of_each_block():
    torch.manual_seed(0)
    m = build_encoder("resnet50", width=0.25, sk_ratio=SK).eval()
    blocks = [b for b in m.modules() if isinstance(b, (BasicBlock, Bottleneck))]
    assert len(blocks) == 16
    for b in blocks:
        assert torch.all(b.conv3.bn.weight == 0)
        assert torch.all(b.conv1.bn.weight == 1)
        x = torch.randn(2, b.conv1[0].in_channels, 8, 8)
        # The residual branch contributes nothing: block(x) = relu(shortcut(x)).
        torch.testing.assert_close(b(x), F.relu(b.shortcut(x)))
        if isinstance(b.shortcut, nn.Identity):
            torch.testing.assert_close(b(x.relu()), x.relu())
    r18 = build_encoder("resnet18", width=0.25)
    assert all(torch.all(b.conv2.bn.weight == 0) for b in r18.modules() if isinstance(b, BasicBlock))


def test_conv_init_is_fan_in_variance_scaling():
    torch.manual_seed(0)
    conv = build_encoder("resnet50", width=0.25).stages[2][0].conv2[0]  # 3x3, 64 -> 64
    w, target = conv.weight, (1 / (64 * 9)) ** 0.5  # TF VarianceScaling(): std sqrt(1 / fan_in)
    assert abs(w.std().item() - target) < 0.03 * target
    assert w.abs().max() <= 2 * target / 0.87962566103423978 + 1e-6  # truncated at 2 sigma


# --------------------------------------------------------------------------- projection head


def test_head_outputs_and_dims():
    torch.manual_seed(0)
    head = ProjectionHead(64, out_dim=16, num_layers=3)
    assert head.dims == [64, 64, 64, 16] and head.out_dim == 16
    outs = head(torch.randn(4, 64))
    assert len(outs) == 4
    assert [o.shape[1] for o in outs] == head.dims
    assert (outs[1] >= 0).all() and (outs[2] >= 0).all()  # hidden layers end in ReLU
    assert (outs[3] < 0).any()  # the projection does not
    wide = ProjectionHead(64, hidden_dim=32, out_dim=8, num_layers=2)
    assert wide.dims == [64, 32, 8] and [o.shape[1] for o in wide(torch.randn(4, 64))] == [64, 32, 8]


def test_head_bias_and_shift():
    head = ProjectionHead(32, out_dim=8, num_layers=3)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(linears) == 3 and all(lin.bias is None for lin in linears)  # BN follows every linear
    assert [bn.bias is None for bn in bns] == [False, False, True]  # last BN: scale, no shift (center=False)
    assert bns[-1].weight is not None
    assert not any(k.endswith("2.1.bias") for k in head.state_dict())
    assert "layers.2.1.weight" in head.state_dict()


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_layers_upto_matches_hiddens(k):
    torch.manual_seed(0)
    head = ProjectionHead(32, out_dim=8, num_layers=3)
    head.train()
    head(torch.randn(16, 32))  # populate running stats so eval mode is not trivial
    head.eval()
    x = torch.randn(5, 32)
    sub = head.layers_upto(k)
    assert isinstance(sub, nn.Sequential) and len(sub) == k
    torch.testing.assert_close(sub(x), head(x)[k])
    assert sub(x).shape[1] == head.dims[k]
    if k:
        assert sub[0][0].weight is head.layers[0][0].weight  # shares parameters with the head


def test_layers_upto_out_of_range():
    head = ProjectionHead(8, num_layers=2)
    for k in (-1, 3):
        with pytest.raises(ValueError):
            head.layers_upto(k)


def test_zero_layer_head_is_identity():
    head = ProjectionHead(12, num_layers=0)
    x = torch.randn(3, 12)
    outs = head(x)
    assert len(outs) == 1 and outs[0] is x
    assert head.dims == [12] and head.out_dim == 12 and n_params(head) == 0


def test_head_on_encoder():
    torch.manual_seed(0)
    enc = build_encoder("resnet18", width=0.25, cifar_stem=True)
    head = ProjectionHead(enc.num_features)
    outs = head(enc(torch.randn(2, 3, 32, 32)))
    assert [o.shape for o in outs] == [(2, 128), (2, 128), (2, 128), (2, 128)]


def test_a_conv_whose_taps_see_only_padding_runs_in_float32_under_cpu_autocast():
    """1x1 maps under a 3x3 (the last stages of a small-image network): oneDNN's bf16 weight gradient now and
    then left NaN in the taps that see only padding, so ConvBnAct runs such a convolution in float32; its
    outer taps then get exactly the zero gradient they have. Maps of 2x2 and up keep bf16."""
    from simclrv2.models.resnet import ConvBnAct

    block = ConvBnAct(8, 8, 3)
    for side, dtype in ((1, torch.float32), (2, torch.bfloat16)):
        x = torch.randn(4, 8, side, side)
        block.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block(x)
        assert out.dtype == dtype
        out.float().sum().backward()
        grad = block[0].weight.grad
        assert torch.isfinite(grad).all()
        if side == 1:
            outer = grad.clone()
            outer[:, :, 1, 1] = 0
            assert torch.equal(outer, torch.zeros_like(outer))
