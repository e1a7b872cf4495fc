"""The paper presets' training augmentation against the official code (``tf2/data_util.py``), by execution.

* the crop sampler against ``tf.image.sample_distorted_bounding_box`` by distribution (20,000 boxes
  per image shape, two-sample Kolmogorov-Smirnov), the same test rejecting torchvision's sampler;
* the resize, every colour op and the blur against TensorFlow / ``data_util`` with the factors fixed;
* ``preprocess_for_train`` + ``batch_random_blur`` end to end with every random draw fixed (the
  official functions run with their draws replaced by ours);
* whole views by distribution against the official ``preprocess_for_train`` (probabilities, op order,
  factor ranges), again rejecting the torchvision-style views;
* the presets select the official path (digits keeps torchvision's), photos of different sizes.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import official
from simclrv2.config import ConfigError, build_config, from_dict, preset
from simclrv2.data import gpu_augment
from simclrv2.data import official_augment as oa
from simclrv2.data.ragged import RaggedImages
from simclrv2.data.views import ViewMaker

ks_2samp = pytest.importorskip("scipy.stats").ks_2samp

N_BOXES = 20_000
ALPHA = 1e-3  # per statistic; the draws are seeded, so a pass is repeatable


def _tf_boxes(off, height: int, width: int, n: int) -> np.ndarray:
    """``n`` boxes ``(top, left, h, w)`` from TF's sampler with ``crop_and_resize``'s arguments (one graph call)."""
    tf = off.tf
    tf.random.set_seed(1234)

    @tf.function
    def draw():
        bbox = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])

        def one(_):
            begin, size, _ = tf.image.sample_distorted_bounding_box(
                tf.constant([height, width, 3]), bbox, min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
                area_range=(0.08, 1.0), max_attempts=100, use_image_if_no_bounding_boxes=True)
            return tf.concat([begin[:2], size[:2]], 0)

        return tf.map_fn(one, tf.range(n), fn_output_signature=tf.int32, parallel_iterations=64)

    return draw().numpy()


def _box_stats(b: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    return {"area": b[:, 2] * b[:, 3] / (height * width), "aspect": b[:, 3] / b[:, 2], "top": b[:, 0],
            "left": b[:, 1]}


@pytest.mark.parametrize("height,width", [(224, 224), (375, 500), (500, 375), (32, 32), (5, 7)])
def test_crop_sampler_matches_tf_by_distribution(height, width):
    off = official.load()
    ref = _tf_boxes(off, height, width, N_BOXES)
    g = torch.Generator().manual_seed(7)
    ours = oa.sample_distorted_boxes(height, width, N_BOXES, generator=g).numpy()
    tv = gpu_augment.sample_crop_boxes(N_BOXES, height, width, generator=g).numpy()
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    r, o, t = (_box_stats(b, height, width) for b in (ref, ours, tv))
    for k in r:
        assert ks_2samp(r[k], o[k]).pvalue > ALPHA, (k, r[k].mean(), o[k].mean())
    # the same test tells torchvision's RandomResizedCrop sampler apart (area: ~0.48 vs ~0.42 on a square)
    assert ks_2samp(r["area"], t["area"]).pvalue < 1e-6
    if height == width == 224:
        assert abs(r["area"].mean() - 0.42) < 0.01 and abs(o["area"].mean() - 0.42) < 0.01


def test_resize_matches_tf_bicubic():
    off = official.load()
    tf = off.tf
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 40, 30, generator=g)
    boxes = torch.tensor([[0, 0, 40, 30], [3, 5, 9, 7], [10, 2, 30, 27], [1, 1, 2, 3], [39, 29, 1, 1]])
    flips = torch.tensor([False, True, False, True, False])
    for size in (8, 24):
        out = oa.resize_bicubic_boxes(img.expand(len(boxes), -1, -1, -1), boxes, size, flips)
        hwc = tf.constant(img[0].permute(1, 2, 0).numpy())
        for k, (top, left, h, w) in enumerate(boxes.tolist()):
            crop = tf.image.crop_to_bounding_box(hwc, top, left, h, w)
            ref = tf.image.resize([crop], [size, size], method=tf.image.ResizeMethod.BICUBIC)[0]
            if flips[k]:
                ref = tf.image.flip_left_right(ref)
            np.testing.assert_allclose(out[k].permute(1, 2, 0).numpy(), ref.numpy(), atol=2e-6, rtol=0)


def _hwc(x: torch.Tensor, k: int):
    return x[k].permute(1, 2, 0).numpy()


def test_colour_ops_and_blur_match_tf():
    """Op by op with the factors fixed, on values slightly outside [0, 1] (the jitter's first op sees the
    unclipped bicubic resize)."""
    off = official.load()
    tf, du = off.tf, off.data_util
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 20, 16, generator=g) * 1.2 - 0.1
    x[0, :, :4] = x[0, :1, :4]  # some gray pixels (no hue)
    factors = [0.2, 0.7, 1.3, 1.8]
    hues = [-0.2, -0.05, 0.13, 0.2]
    out = {
        "contrast": oa.adjust_contrast(x, torch.tensor(factors)),
        "saturation": oa.adjust_saturation(x, torch.tensor(factors)),
        "hue": oa.adjust_hue(x, torch.tensor(hues)),
        "gray": oa.rgb_to_grayscale(x),
        "blur": oa.gaussian_blur(x, torch.tensor([0.1, 0.5, 1.2, 2.0]), oa.blur_radius(20)),
    }
    for k in range(4):
        img = tf.constant(_hwc(x, k))
        ref = {
            "contrast": tf.image.adjust_contrast(img, factors[k]),
            "saturation": tf.image.adjust_saturation(img, factors[k]),
            "hue": tf.image.adjust_hue(img, hues[k]),
            "gray": du.to_grayscale(img),
            "blur": du.gaussian_blur(img, kernel_size=20 // 10, sigma=[0.1, 0.5, 1.2, 2.0][k], padding="SAME"),
        }
        for name in ref:
            np.testing.assert_allclose(_hwc(out[name], k), ref[name].numpy(), atol=2e-6, rtol=0, err_msg=name)
    assert oa.blur_radius(224) == 11 and oa.blur_radius(96) == 4 and oa.blur_radius(32) == 1


class _Script:
    """The official code's random draws replaced by fixed ones (monkeypatched for one call)."""

    def __init__(self, monkeypatch, du, tf, box, flip, p, k, strength):
        self.applies = [True, True, bool(p["jitter"][k]), bool(p["gray"][k])]  # crop, colour, jitter, gray
        s = 0.8 * strength
        tfi = du.tf.image

        def random_apply(func, p, x):  # noqa: ARG001 - the official signature
            return func(x) if self.applies.pop(0) else x

        def brightness(image, max_delta, impl):
            assert impl == "simclrv2" and abs(max_delta - s) < 1e-9
            return image * float(p["brightness"][k])

        def sample(shape, bounding_boxes, min_object_covered, aspect_ratio_range, area_range, max_attempts,
                   use_image_if_no_bounding_boxes):
            assert (min_object_covered, area_range, max_attempts) == (0.1, (0.08, 1.0), 100)
            assert np.allclose(aspect_ratio_range, (3 / 4, 4 / 3))
            return tf.constant([box[0], box[1], 0]), tf.constant([box[2], box[3], -1]), None

        def contrast(x, lower, upper):
            assert np.allclose((lower, upper), (1 - s, 1 + s))
            return tf.image.adjust_contrast(x, float(p["contrast"][k]))

        def saturation(x, lower, upper):
            assert np.allclose((lower, upper), (1 - s, 1 + s))
            return tf.image.adjust_saturation(x, float(p["saturation"][k]))

        def hue(x, max_delta):
            assert np.isclose(max_delta, 0.2 * strength)
            return tf.image.adjust_hue(x, float(p["hue"][k]))

        monkeypatch.setattr(du, "random_apply", random_apply)
        monkeypatch.setattr(du, "random_brightness", brightness)
        monkeypatch.setattr(tfi, "sample_distorted_bounding_box", sample)
        monkeypatch.setattr(tfi, "random_flip_left_right", lambda x: tf.image.flip_left_right(x) if flip else x)
        monkeypatch.setattr(tfi, "random_contrast", contrast)
        monkeypatch.setattr(tfi, "random_saturation", saturation)
        monkeypatch.setattr(tfi, "random_hue", hue)
        monkeypatch.setattr(du.tf.random, "shuffle", lambda v: tf.constant(p["order"][k].numpy(), dtype=tf.int32))


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_preprocess_for_train_end_to_end_with_draws_fixed(monkeypatch, strength):
    off = official.load()
    tf, du = off.tf, off.data_util
    n, size = 24, 12  # every op order once
    g = torch.Generator().manual_seed(3)
    images = (torch.rand(n, 3, 30, 22, generator=g) * 255).round().to(torch.uint8)
    boxes = oa.sample_distorted_boxes(30, 22, n, generator=g)
    idx = torch.arange(n)
    flips = idx % 2 == 0
    p = oa.color_params(n, strength, g)
    p["jitter"] = idx % 6 != 5
    p["gray"] = idx % 4 == 1
    p["order"] = torch.tensor(list(itertools.permutations(range(4))))
    monkeypatch.setattr(oa, "_COLOR_CHUNK", 5)  # chunk boundaries inside the batch (32 in use)
    ours = oa.apply_color(oa.resize_bicubic_boxes(images, boxes, size, flips), p)
    refs = []
    for k in range(n):
        with monkeypatch.context() as m:
            _Script(m, du, tf, boxes[k].tolist(), bool(flips[k]), p, k, strength)
            image = tf.image.convert_image_dtype(tf.constant(images[k].permute(1, 2, 0).numpy()), tf.float32)
            refs.append(du.preprocess_for_train(image, size, size, color_jitter_strength=strength, impl="simclrv2"))
        np.testing.assert_allclose(_hwc(ours, k), refs[k].numpy(), atol=1e-5, rtol=0,
                                   err_msg=f"image {k}, order {p['order'][k].tolist()}")
    # batch_random_blur with its sigma and per-image selector fixed
    sigma, keep = 1.3, torch.rand(n, generator=g).tolist()  # uniform draws: blur where < 0.5

    def uniform(shape, minval=0, maxval=None, dtype=tf.float32):
        if minval == 0.1:
            return tf.constant(sigma)
        return tf.zeros(shape) if list(shape) == [] else tf.reshape(tf.constant(keep), shape)

    with monkeypatch.context() as m:
        m.setattr(du.tf.random, "uniform", uniform)
        ref = du.batch_random_blur([tf.stack(refs)], size, size)[0].numpy()
    x = ours.clone()
    blurred = oa.gaussian_blur(x, sigma, oa.blur_radius(size))
    ours_blur = torch.where((torch.tensor(keep) < 0.5).view(-1, 1, 1, 1), blurred, x).clamp(0, 1)
    np.testing.assert_allclose(ours_blur.permute(0, 2, 3, 1).numpy(), ref, atol=1e-5, rtol=0)


def _view_stats(v: np.ndarray) -> dict[str, np.ndarray]:
    """Per view (NHWC): channel means, spread, and how gray it is."""
    return {"mean_r": v[..., 0].mean((1, 2)), "mean_b": v[..., 2].mean((1, 2)), "std": v.std((1, 2, 3)),
            "chroma": (v.max(-1) - v.min(-1)).mean((1, 2))}


def test_views_match_official_by_distribution():
    """The cifar10 preset's pretraining views of one photo-like image against ``preprocess_for_train``'s:
    crop, flip, jitter probability, op order, factor ranges and grayscale together."""
    off = official.load()
    tf, du = off.tf, off.data_util
    n, size, strength = 4000, 8, 0.5
    g = torch.Generator().manual_seed(5)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 14), torch.linspace(0, 1, 11), indexing="ij")
    image = torch.stack([yy, xx * 0.7 + 0.2, (1 - yy) * xx]) * 0.8 + 0.1 * torch.rand(3, 14, 11, generator=g)
    image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    tf.random.set_seed(99)

    @tf.function
    def official_views():
        img = tf.image.convert_image_dtype(tf.constant(image.permute(1, 2, 0).numpy()), tf.float32)
        return tf.map_fn(lambda _: du.preprocess_for_train(img, size, size, color_jitter_strength=strength),
                         tf.range(n), fn_output_signature=tf.float32, parallel_iterations=64)

    ref = _view_stats(official_views().numpy())
    cfg = preset("cifar10")
    cfg.data.image_size = size
    batch = image.unsqueeze(0).expand(n, -1, -1, -1)
    ours = ViewMaker.for_pretraining(cfg, torch.device("cpu"), seed=11)(batch)
    ours = _view_stats(ours.permute(0, 2, 3, 1).numpy())
    for k in ref:
        assert ks_2samp(ref[k], ours[k]).pvalue > ALPHA, k
    tv = gpu_augment.simclr_views(batch, size, strength=strength, blur=False, generator=g)
    tv = _view_stats(tv.permute(0, 2, 3, 1).numpy())
    assert min(ks_2samp(ref[k], tv[k]).pvalue for k in ref) < 1e-6  # the torchvision-style views are told apart


def test_draw_probabilities_and_order():
    """``random_color_jitter``'s probabilities and ranges, ``tf.random.shuffle``'s uniform order, the flip
    and ``batch_random_blur``'s selector (binomial bounds of 5 sigma, chi-square over the 24 orders)."""
    n = 20_000
    g = torch.Generator().manual_seed(2)
    p = oa.color_params(n, 1.0, g)
    for key, rate in (("jitter", 0.8), ("gray", 0.2)):
        assert abs(p[key].float().mean().item() - rate) < 5 * (rate * (1 - rate) / n) ** 0.5
    assert 0.2 <= p["brightness"].min() and p["brightness"].max() < 1.8 and abs(p["hue"]).max() <= 0.2
    codes = (p["order"] * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.bincount(codes, minlength=256)
    counts = counts[counts > 0].double()
    assert counts.numel() == 24
    chi2 = ((counts - n / 24) ** 2 / (n / 24)).sum().item()
    assert chi2 < 49.7  # chi-square(23) at p = 0.001
    x = torch.zeros(n, 3, 4, 4)
    x[:, :, :, :2] = 1  # the left half white: a flip moves it
    flipped = oa.resized_crop(x, 4, g, flip_p=0.5, area_range=(1.0, 1.0))[:, 0, 0, 0] < 0.5
    assert abs(flipped.float().mean().item() - 0.5) < 5 * (0.25 / n) ** 0.5
    y = torch.zeros(n, 3, 3, 3)
    y[:, :, 1, 1] = 1
    blurred = oa.random_blur(y, 20, g)[:, 0, 1, 1] < 1  # 20 px: a 3-tap blur
    assert abs(blurred.float().mean().item() - 0.5) < 5 * (0.25 / n) ** 0.5


def test_presets_select_the_official_path():
    images = (torch.rand(5, 3, 20, 17, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    for name in ("imagenet", "cifar10", "folder"):
        cfg = preset(name)
        cfg.data.image_size = 12
        assert cfg.aug.style == "official"
        a = cfg.aug
        got = ViewMaker.for_pretraining(cfg, torch.device("cpu"), seed=4)(images)
        want = oa.simclr_views(images, 12, a.color_strength, a.blur, a.min_scale,
                               torch.Generator().manual_seed(4), a.flip)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        got = ViewMaker.for_finetuning(cfg, torch.device("cpu"), seed=4)(images)
        want = oa.crop_flip(images, 12, a.min_scale, torch.Generator().manual_seed(4), a.flip)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    cfg = preset("digits")
    assert cfg.aug.style == "torchvision"
    got = ViewMaker.for_pretraining(cfg, torch.device("cpu"), seed=4)(images)
    want = gpu_augment.simclr_views(images, 8, 0.5, False, 0.3, torch.Generator().manual_seed(4), 0.0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_style_option():
    assert build_config("cifar10", overrides=["aug.style=torchvision"]).aug.style == "torchvision"
    with pytest.raises(ConfigError, match="aug.style must be official or torchvision"):
        build_config("cifar10", overrides=["aug.style=tf"])
    with pytest.raises(ConfigError, match="needs aug.style=torchvision"):
        build_config("imagenet", overrides=["aug.backend=torchvision"])
    saved = preset("cifar10").to_dict()
    del saved["aug"]["style"]  # a config saved before the option: its run resumes with what it trained with
    assert from_dict(saved).aug.style == "torchvision"


def test_ragged_photos_crop_on_their_own_size():
    g = torch.Generator().manual_seed(8)
    photos = [(torch.rand(3, h, w, generator=g) * 255).to(torch.uint8) for h, w in ((30, 20), (12, 40), (25, 25))]
    ragged = RaggedImages.stack(photos, 16)
    out = oa.crop_flip(ragged, 16, generator=torch.Generator().manual_seed(1), flip=0.5)
    g1 = torch.Generator().manual_seed(1)
    boxes = oa.sample_distorted_boxes(ragged.sizes[:, 0], ragged.sizes[:, 1], generator=g1)
    flips = torch.rand(3, generator=g1) < 0.5
    for k, photo in enumerate(photos):
        want = oa.resize_bicubic_boxes(photo[None], boxes[k:k + 1], 16, flips[k:k + 1]).clamp(0, 1)
        torch.testing.assert_close(out[k:k + 1], want, atol=1e-6, rtol=0)
    views = ViewMaker("simclr", 16, style="official", seed=2)(ragged)
    assert views.shape == (3, 3, 16, 16) and 0 <= views.min() and views.max() <= 1
    same = RaggedImages.stack([photos[2]] * 4, 16)  # one size: the ragged path equals the batch path
    torch.testing.assert_close(oa.simclr_views(same, 16, generator=torch.Generator().manual_seed(3)),
                               oa.simclr_views(torch.stack([photos[2]] * 4), 16,
                                               generator=torch.Generator().manual_seed(3)), atol=1e-5, rtol=0)


def test_colour_ops_by_chunks_equal_image_by_image():
    """The colour ops go through a batch in chunks (cache-sized): every image comes out as alone."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(70, 3, 9, 11, generator=g) * 1.2 - 0.1  # unclipped, as a resize leaves it
    p = oa.color_params(70, 1.0, g)
    batch = oa.apply_color(x.clone(), p)
    for k in range(70):
        alone = oa.apply_color(x[k:k + 1].clone(), {key: v[k:k + 1] for key, v in p.items()})
        torch.testing.assert_close(batch[k:k + 1], alone, atol=0, rtol=0)
