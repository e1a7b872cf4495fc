"""Batched augmentation (gpu_augment) against torchvision's per-image transforms (augment).

Deterministic ops are compared value by value with ``torchvision.transforms.v2.functional``;
random ones by the distribution of their parameters or of image statistics, with tolerances
from the standard error (about 4.5 sigma, or a two-sample Kolmogorov-Smirnov bound at
alpha = 1e-4). All seeds are fixed, so the tests are deterministic.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from simclrv2.data import augment
from simclrv2.data import gpu_augment as G

Z = 4.5  # tolerance in standard errors
KS_C = math.sqrt(-0.5 * math.log(1e-4 / 2))  # two-sample KS critical constant at alpha = 1e-4


def colourful_images(n: int, size: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    """uint8 ``[n, 3, H, W]``: a gradient between two random colours, a disc of a third, noise."""
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    c0, c1, c2 = (torch.rand(n, 3, 1, 1, generator=g) for _ in range(3))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    angle = torch.rand(n, 1, 1, 1, generator=g) * 2 * math.pi
    t = (xx * torch.cos(angle) + yy * torch.sin(angle) + 1.5) / 3
    img = c0 * (1 - t) + c1 * t
    centre, radius = torch.rand(n, 2, 1, 1, generator=g), 0.1 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)
    disc = (xx - centre[:, :1]) ** 2 + (yy - centre[:, 1:]) ** 2 < radius ** 2  # [n, 1, H, W]
    img = torch.where(disc, c2, img) + 0.04 * torch.randn(n, 3, h, w, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_same_mean(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Two samples (rows = observations, columns = statistics) have equal means within Z s.e."""
    a, b = a.double().reshape(a.shape[0], -1), b.double().reshape(b.shape[0], -1)
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt().clamp(min=1e-12)
    z = (a.mean(0) - b.mean(0)).abs() / se
    assert (z < Z).all(), f"{what}: means differ by {z.max():.1f} s.e. ({a.mean(0)} vs {b.mean(0)})"


def assert_same_distribution(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Two-sample KS test per column (covers all quantiles; conservative for discrete values)."""
    a, b = a.double().reshape(a.shape[0], -1), b.double().reshape(b.shape[0], -1)
    n, m = a.shape[0], b.shape[0]
    for col in range(a.shape[1]):
        x, y = a[:, col].sort().values, b[:, col].sort().values
        v = torch.cat([x, y]).unique()
        d = (torch.searchsorted(x, v, right=True) / n - torch.searchsorted(y, v, right=True) / m).abs().max()
        crit = KS_C * math.sqrt((n + m) / (n * m))
        assert d < crit, f"{what}[{col}]: KS distance {d:.3f} >= {crit:.3f}"


def assert_binomial(k: int | torch.Tensor, n: int, p: float, what: str) -> None:
    se = math.sqrt(p * (1 - p) / n)
    assert abs(float(k) / n - p) < Z * se, f"{what}: {float(k) / n:.3f} vs p = {p}"


def view_stats(out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """Per view, relative to its source image (the same sources on both sides of a comparison, so
    subtracting them keeps the null hypothesis and removes the between-image variance): change of
    channel means, log-change of channel stds, change of mean chroma, rotation of the mean colour
    in the opponent-colour plane, and the mean |horizontal gradient| (crop scale, blur)."""
    def opponent_angle(x):
        r, g, b = x.mean((2, 3)).unbind(1)
        return torch.atan2((g - b) * math.sqrt(3) / 2, r - (g + b) / 2)

    inp = inp.float() / 255 if inp.dtype == torch.uint8 else inp
    chroma = lambda x: (x.amax(1) - x.amin(1)).mean((1, 2))  # noqa: E731
    log_std = lambda x: (x.std((2, 3)) + 1e-3).log()  # noqa: E731
    rotation = torch.remainder(opponent_angle(out) - opponent_angle(inp) + math.pi, 2 * math.pi) - math.pi
    grad = (out[..., 1:] - out[..., :-1]).abs().mean((1, 2, 3))
    return torch.cat([out.mean((2, 3)) - inp.mean((2, 3)), log_std(out) - log_std(inp),
                      (chroma(out) - chroma(inp))[:, None], rotation[:, None], grad[:, None]], 1)


def per_image(transform, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.stack([transform(img) for img in images])


# ---------------------------------------------------------------------------------------------
# shapes, dtypes, determinism, independence


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("hw,size,blur", [((32, 32), 32, None), ((20, 28), 16, None), ((40, 40), 48, True)])
def test_views_are_float_in_unit_range(dtype, hw, size, blur):
    x = colourful_images(12, hw)
    x = x if dtype == torch.uint8 else x.float() / 255
    for out in (G.simclr_views(x, size, blur=blur, generator=gen()), G.crop_flip(x, size, generator=gen()),
                G.to_float(x, size)):
        assert out.shape == (12, 3, size, size) and out.dtype == torch.float32 and out.is_contiguous()
        assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


def test_colour_ops_take_uint8():
    x = colourful_images(4, 8)
    as_float = TF.to_dtype(x, torch.float32, scale=True)
    assert torch.equal(G.random_grayscale(x, p=0.0, generator=gen()), as_float)
    assert torch.equal(G.color_jitter(x, 0.5, p=0.0, generator=gen()), as_float)
    assert torch.equal(G.gaussian_blur(x, p=0.0, kernel_size=3, generator=gen()), as_float)
    assert torch.equal(G.adjust_brightness(x, 1.0), as_float)
    torch.testing.assert_close(G.adjust_hue(x, 0.0), as_float, atol=1e-6, rtol=0)


def test_same_seed_same_views_other_seed_other_views():
    x = colourful_images(16, 32)
    a, b = G.simclr_views(x, 32, generator=gen(1)), G.simclr_views(x, 32, generator=gen(1))
    c = G.simclr_views(x, 32, generator=gen(2))
    assert torch.equal(a, b)
    assert (a - c).abs().flatten(1).amax(1).min() > 0  # every image differs
    # the generator advances: two calls give two different views (the two SimCLR views)
    g = gen(3)
    assert not torch.equal(G.simclr_views(x, 32, generator=g), G.simclr_views(x, 32, generator=g))


def test_images_of_a_batch_get_independent_parameters():
    x = colourful_images(1, 32).expand(64, -1, -1, -1)
    views = G.simclr_views(x, 32, generator=gen()).flatten(1)
    assert torch.cdist(views, views).add(torch.eye(64)).min() > 0  # all 64 views are different
    boxes = G.sample_crop_boxes(4000, 32, 32, generator=gen()).double()
    area = boxes[:, 2] * boxes[:, 3]
    r = torch.corrcoef(torch.stack([area[:-1], area[1:]]))[0, 1]  # neighbours are uncorrelated
    assert abs(r) < Z / math.sqrt(4000)


# ---------------------------------------------------------------------------------------------
# crop


@pytest.mark.parametrize("hw,scale", [((32, 32), (0.08, 1.0)), ((24, 40), (0.08, 1.0)), ((32, 32), (0.6, 1.0)),
                                      ((12, 60), (0.3, 1.0))])
def test_crop_boxes_follow_torchvision(hw, scale):
    height, width = hw
    ratio = (3 / 4, 4 / 3)
    ours = G.sample_crop_boxes(20000, height, width, scale, ratio, generator=gen()).double()
    torch.manual_seed(0)
    img = torch.zeros(3, height, width)
    ref = torch.tensor([T.RandomResizedCrop.get_params(img, scale, ratio) for _ in range(3000)]).double()

    def stats(b):  # area fraction, log aspect ratio, normalised box centre
        top, left, h, w = b.unbind(1)
        return torch.stack([h * w / (height * width), (w / h).log(), (top + h / 2) / height,
                            (left + w / 2) / width], 1)

    assert ours[:, 2].min() >= 1 and ours[:, 3].min() >= 1
    assert (ours[:, 0] + ours[:, 2]).max() <= height and (ours[:, 1] + ours[:, 3]).max() <= width
    assert_same_mean(stats(ours), stats(ref), f"crop {hw} {scale}")
    assert_same_distribution(stats(ours), stats(ref), f"crop {hw} {scale}")


def test_crop_falls_back_to_torchvisions_central_crop():
    img = torch.zeros(3, 8, 200)
    expected = T.RandomResizedCrop.get_params(img, (0.9, 1.0), (3 / 4, 4 / 3))  # never fits: fallback
    boxes = G.sample_crop_boxes(5, 8, 200, (0.9, 1.0), generator=gen())
    assert boxes.tolist() == [list(expected)] * 5


@pytest.mark.parametrize("size", [16, 24, 50])
def test_resized_crop_matches_torchvision(size):
    x = colourful_images(8, (32, 40))
    xf = x.float() / 255
    boxes = torch.tensor([[3, 5, 10, 12], [0, 0, 32, 40], [2, 1, 30, 20], [5, 5, 7, 33],
                          [0, 3, 32, 9], [4, 4, 20, 20], [1, 2, 3, 4], [31, 39, 1, 1]])
    flip = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1], dtype=torch.bool)
    ref = torch.stack([TF.resized_crop(xf[i], *boxes[i].tolist(), [size, size], antialias=True) for i in range(8)])
    ref = torch.where(flip.view(-1, 1, 1, 1), TF.horizontal_flip(ref), ref)
    torch.testing.assert_close(G.resized_crop(xf, boxes, size, flip), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(G.resized_crop(x, boxes, size, flip), ref, atol=1e-5, rtol=0)  # uint8 in


def test_flip_probability_is_one_half():
    x = colourful_images(2000, 8)
    out = G.random_resized_crop(x, 8, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=gen())  # whole image
    xf = x.float() / 255
    same = (out - xf).abs().flatten(1).amax(1) < 1e-6
    mirrored = (out - xf.flip(-1)).abs().flatten(1).amax(1) < 1e-6
    assert (same | mirrored).all()
    assert_binomial(mirrored.sum(), 2000, 0.5, "flip")
    no_flip = G.crop_flip(x, 8, min_scale=1.0, generator=gen(), flip=0.0)  # square: the whole image
    torch.testing.assert_close(no_flip, xf, atol=1e-6, rtol=0)
    mirrored = xf[:50].flip(-1)
    always = G.simclr_views(x[:50], 8, strength=0.0, min_scale=1.0, generator=gen(), flip=1.0)
    gray = G.rgb_to_grayscale(mirrored).expand_as(mirrored)
    err = torch.minimum((always - mirrored).abs().flatten(1).amax(1), (always - gray).abs().flatten(1).amax(1))
    assert err.max() < 1e-6  # mirrored, then grayscale or not
    t = augment.finetune_transform(8, min_scale=1.0, flip=1.0)
    torch.testing.assert_close(t(x[0]), xf[0].flip(-1), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# colour


@pytest.fixture(scope="module")
def small_float_images() -> torch.Tensor:
    return colourful_images(8, (12, 16)).float() / 255


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_single_colour_ops_match_torchvision(name, small_float_images):
    x = small_float_images
    ours = {"brightness": G.adjust_brightness, "contrast": G.adjust_contrast, "saturation": G.adjust_saturation,
            "hue": G.adjust_hue}[name]
    ref = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast, "saturation": TF.adjust_saturation,
           "hue": TF.adjust_hue}[name]
    factors = torch.linspace(-0.5, 0.45, 8) if name == "hue" else torch.linspace(0.0, 1.8, 8)
    expected = torch.stack([ref(x[i], float(f)) for i, f in enumerate(factors)])
    # same arithmetic: exact to float rounding; hue goes through a different (equivalent) HSV formula
    tol = 5e-6 if name == "hue" else 1e-6
    torch.testing.assert_close(ours(x, factors), expected, atol=tol, rtol=0)
    torch.testing.assert_close(ours(x, 0.3 if name == "hue" else 1.3), ref(x, 0.3 if name == "hue" else 1.3),
                               atol=tol, rtol=0)


def test_hue_keeps_gray_pixels(small_float_images):
    gray = small_float_images[:, :1].expand(-1, 3, -1, -1)
    assert torch.equal(G.adjust_hue(gray, torch.linspace(-0.5, 0.5, 8)), gray)


def test_grayscale_matches_torchvision(small_float_images):
    x = small_float_images
    torch.testing.assert_close(G.rgb_to_grayscale(x), TF.rgb_to_grayscale(x), atol=0, rtol=0)
    out = G.random_grayscale(x, p=1.0, generator=gen())
    torch.testing.assert_close(out, TF.rgb_to_grayscale(x, num_output_channels=3), atol=0, rtol=0)


@pytest.mark.parametrize("with_hue", [True, False])
def test_color_jitter_applies_ops_in_each_images_order(with_hue):
    n = 24
    x = colourful_images(n, (10, 14), seed=1).float() / 255
    g = gen(5)
    b, c, s = (0.2 + 1.6 * torch.rand(n, generator=g) for _ in range(3))
    h = torch.rand(n, generator=g) - 0.5 if with_hue else None
    order = torch.rand(n, 4, generator=g).argsort(1)
    ops = [lambda y, i: TF.adjust_brightness(y, float(b[i])), lambda y, i: TF.adjust_contrast(y, float(c[i])),
           lambda y, i: TF.adjust_saturation(y, float(s[i])),
           lambda y, i: TF.adjust_hue(y, float(h[i])) if with_hue else y]
    expected = []
    for i in range(n):
        y = x[i]
        for op in order[i].tolist():
            y = ops[op](y, i)
        expected.append(y)
    out = G.apply_color_jitter(x, b, c, s, h, order)
    torch.testing.assert_close(out, torch.stack(expected), atol=2e-5, rtol=0)


def test_color_jitter_probability_and_strength_zero():
    x = colourful_images(2000, 6).float() / 255
    out = G.color_jitter(x, 0.8, 0.8, 0.8, 0.2, p=0.8, generator=gen())
    unchanged = (out == x).flatten(1).all(1)
    assert_binomial(unchanged.sum(), 2000, 0.2, "jitter applied")
    assert torch.equal(G.color_jitter(x, 0, 0, 0, 0, p=1.0, generator=gen()), x)
    grey = G.random_grayscale(x, p=0.2, generator=gen())
    assert_binomial((grey[:, 0] == grey[:, 1]).flatten(1).all(1).sum(), 2000, 0.2, "grayscale")


def test_color_jitter_parameters_follow_torchvision():
    n, m = 24000, 3000
    prm = G._jitter_params(n, 0.8, 0.8, 0.8, 0.2, 0.8, gen(), torch.device("cpu"))
    cj = T.ColorJitter(0.8, 0.8, 0.8, 0.2)
    torch.manual_seed(0)
    ref = [T.ColorJitter.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue) for _ in range(m)]
    ours = torch.stack([prm["brightness"], prm["contrast"], prm["saturation"], prm["hue"]], 1)
    theirs = torch.tensor([r[1:] for r in ref])
    assert_same_mean(ours, theirs, "jitter factors")
    assert_same_distribution(ours, theirs, "jitter factors")
    assert ours[:, :3].min() >= 0.2 and ours[:, :3].max() <= 1.8 and ours[:, 3].abs().max() <= 0.2
    assert_binomial(prm["apply"].sum(), n, 0.8, "jitter applied")
    # op order: each of the 24 permutations equally likely (chi-square, 23 dof, alpha ~ 1e-4)
    code = (prm["order"] * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.unique(code, return_counts=True)[1].double()
    assert len(counts) == 24 and ((counts - n / 24) ** 2 / (n / 24)).sum() < 57.1


def test_color_jitter_statistics_match_torchvision():
    x = colourful_images(3000, 12, seed=2).float() / 255
    ours = G.color_jitter(x, 0.8, 0.8, 0.8, 0.2, p=0.8, generator=gen(7))
    ref = per_image(v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), x)
    assert_same_mean(view_stats(ours, x), view_stats(ref, x), "color jitter")
    assert_same_distribution(view_stats(ours, x), view_stats(ref, x), "color jitter")


# ---------------------------------------------------------------------------------------------
# blur


def test_blur_kernel_size_is_ten_percent_odd():
    assert [G.blur_kernel_size(s) for s in (16, 32, 96, 224)] == [1, 3, 9, 23]


@pytest.mark.parametrize("k", [3, 9])
def test_gaussian_blur_matches_torchvision(k):
    x = colourful_images(6, (20, 24)).float() / 255
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 3.0])
    expected = torch.stack([TF.gaussian_blur(x[i], [k, k], [float(s), float(s)]) for i, s in enumerate(sigma)])
    torch.testing.assert_close(G.apply_gaussian_blur(x, sigma, k), expected, atol=1e-5, rtol=0)
    # with sigma fixed through the random path
    out = G.gaussian_blur(x, p=1.0, sigma_range=(1.2, 1.2), kernel_size=k, generator=gen())
    torch.testing.assert_close(out, TF.gaussian_blur(x, [k, k], [1.2, 1.2]), atol=1e-5, rtol=0)


def test_gaussian_blur_probability():
    x = colourful_images(2000, 8).float() / 255
    out = G.gaussian_blur(x, p=0.5, kernel_size=3, generator=gen())
    assert_binomial((out != x).flatten(1).any(1).sum(), 2000, 0.5, "blur applied")


# ---------------------------------------------------------------------------------------------
# full pipelines against the per-image reference


def test_simclr_views_statistics_match_torchvision():
    x = colourful_images(2500, 32, seed=3)
    ours = G.simclr_views(x, 32, blur=True, generator=gen(11))
    ref = per_image(augment.simclr_transform(32, blur=True), x)
    assert ref.shape == ours.shape and ref.dtype == ours.dtype
    assert_same_mean(view_stats(ours, x), view_stats(ref, x), "simclr views")
    assert_same_distribution(view_stats(ours, x), view_stats(ref, x), "simclr views")


def test_crop_flip_statistics_match_torchvision():
    x = colourful_images(1000, 24, seed=4)
    ours = G.crop_flip(x, 16, min_scale=0.2, generator=gen(13))
    ref = per_image(augment.finetune_transform(16, min_scale=0.2), x)
    assert_same_mean(view_stats(ours, x), view_stats(ref, x), "crop flip")
    assert_same_distribution(view_stats(ours, x), view_stats(ref, x), "crop flip")


def test_eval_views_match_and_are_identity_at_size():
    """At 32 px (the official ``crop=False``) images of that size are only converted; other sizes get the
    official ``preprocess_for_eval`` (checked against TensorFlow in test_official_eval.py), batched and
    per image alike."""
    x = colourful_images(4, 32)
    as_float = TF.to_dtype(x, torch.float32, scale=True)
    assert torch.equal(G.to_float(x, 32), as_float) and torch.equal(G.to_float(x), as_float)
    assert torch.equal(per_image(augment.eval_transform(32), x), as_float)
    for hw, size in (((40, 48), 32), ((40, 48), 64), ((64, 64), 64), ((90, 50), 48)):
        big = colourful_images(4, hw)
        expected = per_image(augment.eval_transform(size), big)
        torch.testing.assert_close(G.to_float(big, size), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(G.to_float(big.float() / 255, size), expected, atol=1e-6, rtol=0)
    assert not torch.equal(G.to_float(colourful_images(2, 64), 64), G.to_float(colourful_images(2, 64)))  # cropped
    assert G.center_crop_box(40, 48) == (3, 7, 35, 35)


def test_per_image_transforms_take_pil_and_tensors():
    from PIL import Image

    x = colourful_images(1, 40)[0]
    pil = Image.fromarray(x.permute(1, 2, 0).numpy())
    for t in (augment.simclr_transform(32), augment.finetune_transform(32), augment.eval_transform(32)):
        for img in (pil, x):
            out = t(img)
            assert type(out) is torch.Tensor and out.shape == (3, 32, 32) and out.dtype == torch.float32
            assert 0 <= out.min() and out.max() <= 1
    v1, v2_ = augment.SimCLRViews(32)(pil)
    assert v1.shape == v2_.shape == (3, 32, 32) and not torch.equal(v1, v2_)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_fixed_parameters():
    x = colourful_images(16, (24, 28))
    boxes = G.sample_crop_boxes(16, 24, 28, generator=gen())
    flip = torch.arange(16) % 2 == 0
    g = gen(1)
    b, c, s = (0.2 + 1.6 * torch.rand(16, generator=g) for _ in range(3))
    h, sigma = torch.rand(16, generator=g) - 0.5, 0.1 + torch.rand(16, generator=g)
    order = torch.rand(16, 4, generator=g).argsort(1)

    def run(dev):
        y = G.resized_crop(x.to(dev), boxes.to(dev), 20, flip.to(dev))
        y = G.apply_color_jitter(y, b.to(dev), c.to(dev), s.to(dev), h.to(dev), order.to(dev))
        return G.apply_gaussian_blur(y, sigma.to(dev), 3).cpu()

    torch.testing.assert_close(run("cuda"), run("cpu"), atol=2e-3, rtol=0)  # TF32 matmuls allowed
    out = G.simclr_views(x.cuda(), 32, blur=True, generator=torch.Generator("cuda").manual_seed(0))
    assert out.device.type == "cuda" and out.shape == (16, 3, 32, 32) and 0 <= out.min() and out.max() <= 1


@pytest.mark.slow
def test_batched_is_faster_than_per_image_on_cpu():
    x = colourful_images(512, 32)
    t = augment.simclr_transform(32)
    start = time.perf_counter()
    for img in x[:128]:
        t(img), t(img)
    per_image_rate = 128 / (time.perf_counter() - start)
    g = gen()
    G.simclr_views(x, 32, generator=g)
    start = time.perf_counter()
    for _ in range(4):
        G.simclr_views(x, 32, generator=g), G.simclr_views(x, 32, generator=g)
    batched_rate = 4 * 512 / (time.perf_counter() - start)
    assert batched_rate > 3 * per_image_rate, (batched_rate, per_image_rate)
