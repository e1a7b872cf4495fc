"""The official SimCLR training augmentation (``preprocess_for_train`` and ``batch_random_blur`` of
google-research/simclr ``tf2/data_util.py``), batched on the batch's device.

Every image gets its own random parameters from an explicit ``torch.Generator``; there is no
Python loop over images and no host-device synchronisation, except for photos of different sizes
(:class:`~simclrv2.data.ragged.RaggedImages`): each crop is resized on its own, after one read of
the boxes. On a CPU the colour ops run over chunks of 32 images (cache-sized; the same values). The
steps, in the official order, with TensorFlow's semantics:

* crop: ``tf.image.sample_distorted_bounding_box`` (area 0.08--1 of the image, aspect ratio
  (width / height) uniform in 3/4--4/3, crop height uniform over the integers allowed, the crop
  covering at least 10% of the image, 100 attempts, else the whole image; offsets uniform in
  ``[0, H - h)``, so a smaller crop never touches the bottom or right edge, as TF's), all attempts
  of all images drawn at once;
* resize: ``tf.image.resize(..., BICUBIC)`` without antialiasing: Keys' cubic (a = -0.5),
  half-pixel centres, the sample position quantised to 1/1024 (TF's weight table), taps outside
  the crop dropped and the weights renormalised; no clipping (the official code clips later);
* horizontal flip;
* colour (only when the strength is > 0): with probability 0.8 ``color_jitter_rand`` -- the four
  ops in a random order, clipping to [0, 1] after each: brightness ``x * f`` (the ``simclrv2``
  impl), contrast ``(x - m_c) * f + m_c`` around each channel's mean (``tf.image.adjust_contrast``),
  saturation scaling HSV S and clipping it to 1 (``tf.image.adjust_saturation``), hue rotation
  (``tf.image.adjust_hue``); then with probability 0.2 grayscale (``tf.image.rgb_to_grayscale``
  weights); then the clip to [0, 1];
* blur (pretraining views only, ``batch_random_blur``): one sigma in [0.1, 2) for the whole batch of
  views, applied to each image with probability 0.5; separable Gaussian with ``2 * (size // 10 // 2)
  + 1`` taps and zero ('SAME') padding, which darkens the border; then the clip.

Why it exists beside :mod:`simclrv2.data.gpu_augment` (torchvision semantics): the paper presets
must train on the augmentation the paper's numbers were measured with; the two differ measurably
(torchvision's crop area averages about 0.48 of a square image against TF's 0.42, its contrast and
saturation blend with the gray image instead of the channel means and HSV).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from simclrv2.data.gpu_augment import _as_tensor, _per_image  # shared helpers of the batched ops
from simclrv2.data.ragged import RaggedImages

__all__ = [
    "sample_distorted_boxes", "resize_bicubic_boxes", "resized_crop", "resized_crop_ragged",
    "rgb_to_grayscale", "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue",
    "color_params", "apply_color", "gaussian_blur", "blur_radius", "random_blur",
    "simclr_views", "crop_flip",
]

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # tf.image.rgb_to_grayscale
_TABLE = 1024  # TF's bicubic weight table resolution (resize_bicubic_op.cc kTableSize)
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)  # op codes of color_jitter_rand's perm


def _float01(x: Tensor) -> Tensor:
    """Float32: uint8 scaled by 1/255 (``tf.image.convert_image_dtype``), floats copied."""
    return x.float().mul_(1 / 255) if x.dtype == torch.uint8 else x.float().clone()


# ---------------------------------------------------------------------------------------------
# crop box sampling


def _f32(v: float) -> float:
    """``v`` rounded to float32 (TF's float attributes and constants)."""
    return torch.tensor(v, dtype=torch.float32).item()


def _rint(x: Tensor) -> Tensor:
    return torch.round(x)  # half to even, as lrintf in the default rounding mode


def sample_distorted_boxes(height: int | Tensor, width: int | Tensor, n: int | None = None,
                           area_range: tuple[float, float] = (0.08, 1.0),
                           aspect_range: tuple[float, float] = (3 / 4, 4 / 3), min_object_covered: float = 0.1,
                           max_attempts: int = 100, generator: torch.Generator | None = None,
                           device: torch.device | str = "cpu") -> Tensor:
    """Crop boxes int64 ``[n, 4]`` rows ``(top, left, height, width)`` drawn as
    ``tf.image.sample_distorted_bounding_box(..., use_image_if_no_bounding_boxes=True)`` with the
    whole image as the object box (``distorted_bounding_box_crop`` of ``crop_and_resize``).

    ``height``/``width``: one image size (then ``n`` boxes) or ``[n]`` tensors, one per image.
    Each of the ``max_attempts`` tries of every image is evaluated at once and the first valid
    one kept (TF draws its random numbers lazily, but the tries are independent, so the box has
    the same distribution). The arithmetic is TF's in float32 (``GenerateRandomCrop``).
    """
    device = torch.device(device)
    if isinstance(height, Tensor) or isinstance(width, Tensor):
        hh = torch.as_tensor(height, device=device).reshape(-1).float()
        ww = torch.as_tensor(width, device=device).reshape(-1).float()
        n = hh.shape[0]
    else:
        if n is None:
            raise ValueError("n is needed for a single image size")
        hh = torch.full((n,), float(height), device=device)
        ww = torch.full((n,), float(width), device=device)
    H, W = hh[:, None], ww[:, None]  # [n, 1]
    u = torch.rand(n, max_attempts, 4, generator=generator, device=device)
    lo_r, hi_r, lo_a, hi_a, covered = (_f32(v) for v in (*aspect_range, *area_range, min_object_covered))
    aspect = u[..., 0] * (hi_r - lo_r) + lo_r
    min_area = lo_a * W * H
    max_area = hi_a * W * H
    h = _rint(torch.sqrt(min_area / aspect))
    max_h = _rint(torch.sqrt(max_area / aspect))
    too_wide = _rint(max_h * aspect) > W
    wide = torch.float32 if device.type == "mps" else torch.float64  # double in TF; MPS has none
    fixed = ((W.to(wide) + 0.5 - _f32(1e-7)) / aspect.to(wide)).trunc().float()
    fixed = torch.where(_rint(fixed * aspect) > W, fixed - 1, fixed)
    max_h = torch.minimum(torch.where(too_wide, fixed, max_h), H)
    h = torch.minimum(h, max_h)
    h = h + (u[..., 1] * (max_h - h + 1)).floor().clamp_(max=(max_h - h).clamp(min=0))  # [h, max_h]
    w = _rint(h * aspect)
    area = w * h
    small = area < min_area
    h = torch.where(small, h + 1, h)
    w = torch.where(small, _rint(h * aspect), w)
    area = w * h
    big = area > max_area
    h = torch.where(big, h - 1, h)
    w = torch.where(big, _rint(h * aspect), w)
    area = w * h
    ok = (area >= min_area) & (area <= max_area) & (w <= W) & (h <= H) & (w > 0) & (h > 0)
    # SatisfiesOverlapConstraints against the whole image: at least 1 pixel, covering enough of it
    ok &= (area >= 1) & (area / (W * H) >= covered)
    top = (u[..., 2] * (H - h)).floor().clamp_(max=(H - h - 1).clamp(min=0))  # Uniform(H - h): [0, H - h)
    left = (u[..., 3] * (W - w)).floor().clamp_(max=(W - w - 1).clamp(min=0))
    first = ok.to(torch.uint8).argmax(1, keepdim=True)
    found = ok.any(1)
    pick = [t.gather(1, first).squeeze(1) for t in (top, left, h, w)]
    whole = (torch.zeros_like(hh), torch.zeros_like(hh), hh, ww)
    return torch.stack([torch.where(found, p, q) for p, q in zip(pick, whole)], 1).long()


# ---------------------------------------------------------------------------------------------
# crop + TF bicubic resize + flip
# The same kernel as data/tf_resize.py (TF's bicubic, a = -0.5, renormalised border taps), whose weights
# depend only on the two sizes and are cached on the host; here every image has its own box (and
# flip), so the weights are built batched on the device from the sampled boxes, with no host sync.


def _keys_table(x: Tensor) -> tuple[Tensor, ...]:
    """TF's coefficient table entries at ``x = offset / 1024``: the weights of the taps at distances
    ``x``, ``1 + x`` (table slots ``2i`` and ``2i + 1``), computed in double and stored as float."""
    a = -0.5
    x = x.double()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    x1 = x + 1
    far = ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a
    return near.float(), far.float()


def _bicubic_weights(start: Tensor, length: Tensor, in_size: int, out_size: int, flip: Tensor | None) -> Tensor:
    """``[N, out_size, in_size]``: row j holds the 4 weights TF's ``ResizeBicubic`` (half-pixel
    centres, Keys cubic) gives output pixel j when the crop ``[start, start + length)`` is resized
    to ``out_size``, placed at the crop's pixels (so a zero-padded batch is resized crop by crop)."""
    device = start.device
    n = start.shape[0]
    length = length.float()[:, None]  # [N, 1]
    scale = length / out_size  # CalculateResizeScale in float32
    j = torch.arange(out_size, device=device, dtype=torch.float32).expand(n, out_size)
    if flip is not None:
        j = torch.where(flip[:, None], out_size - 1 - j, j)
    in_f = (j + 0.5) * scale - 0.5
    in_loc = in_f.floor()
    offset = _rint((in_f - in_loc) * _TABLE)
    near_a, far_a = _keys_table(offset / _TABLE)
    near_b, far_b = _keys_table((_TABLE - offset) / _TABLE)
    taps = in_loc[..., None] + torch.arange(-1, 3, device=device, dtype=torch.float32)  # [N, S, 4]
    weights = torch.stack([far_a, near_a, near_b, far_b], -1)
    inside = (taps >= 0) & (taps <= length[..., None] - 1)
    weights = weights * inside
    total = weights.sum(-1, keepdim=True)
    weights = torch.where(total.abs() >= 1000 * torch.finfo(torch.float32).tiny, weights / total, weights)
    index = (taps.clamp(min=0) + start.float()[:, None, None]).clamp_(max=in_size - 1).long()
    out = torch.zeros(n, out_size, in_size, device=device, dtype=torch.float32)
    return out.scatter_add_(2, index, weights)


def resize_bicubic_boxes(images: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """The box ``(top, left, height, width)`` of each image of ``[N, C, H, W]`` (uint8 or float),
    resized to ``size`` x ``size`` as ``tf.image.resize(crop, (size, size), BICUBIC)`` and mirrored
    where ``flip``: float32, not clipped. Two batched products ``Wy @ img @ Wx^T`` (x first, as TF)."""
    n, c, height, width = images.shape
    x = _float01(images) if images.dtype == torch.uint8 else images.float()
    with torch.autocast(images.device.type, enabled=False):
        wy = _bicubic_weights(boxes[:, 0], boxes[:, 2], height, size, None)
        wx = _bicubic_weights(boxes[:, 1], boxes[:, 3], width, size, flip)
        rows = torch.bmm(x.reshape(n, c * height, width), wx.transpose(1, 2))  # [N, C*H, S]
        return torch.matmul(wy.unsqueeze(1), rows.view(n, c, height, size))


def resized_crop(images: Tensor, size: int, generator: torch.Generator | None, flip_p: float = 0.5,
                 area_range: tuple[float, float] = (0.08, 1.0)) -> Tensor:
    """``crop_and_resize`` then ``random_flip_left_right`` (probability ``flip_p``) per image of a batch."""
    n, _, height, width = images.shape
    boxes = sample_distorted_boxes(height, width, n, area_range, generator=generator, device=images.device)
    flip = torch.rand(n, generator=generator, device=images.device) < flip_p
    return resize_bicubic_boxes(images, boxes, size, flip)


def resized_crop_ragged(images: Sequence[Tensor], sizes: Tensor, size: int, generator: torch.Generator | None,
                        flip_p: float = 0.5, area_range: tuple[float, float] = (0.08, 1.0)) -> Tensor:
    """:func:`resized_crop` for images of different sizes ``sizes`` ``[N, 2]`` (``[3, h_i, w_i]`` each):
    boxes drawn on each image's own size, each crop resized on its own pixels (a zero-padded batch of
    whole crops, resized together, cost twice the arithmetic and a fill of ``N x 3 x H x W`` floats)."""
    n = len(images)
    device = images[0].device if n else torch.device("cpu")
    sizes = sizes.to(device)
    boxes = sample_distorted_boxes(sizes[:, 0], sizes[:, 1], area_range=area_range, generator=generator,
                                   device=device)
    flip = torch.rand(n, generator=generator, device=device) < flip_p
    rows = boxes.tolist()  # the one host read
    crop_h, crop_w = max(r[2] for r in rows), max(r[3] for r in rows)
    zero = torch.zeros(n, dtype=boxes.dtype, device=device)
    with torch.autocast(device.type, enabled=False):
        wy = _bicubic_weights(zero, boxes[:, 2], crop_h, size, None)  # [N, S, crop_h], zero past each crop
        wx = _bicubic_weights(zero, boxes[:, 3], crop_w, size, flip)  # [N, S, crop_w]
        out = torch.empty(n, 3, size, size, dtype=torch.float32, device=device)
        for k, (top, left, h, w) in enumerate(rows):
            crop = _float01(images[k][:, top:top + h, left:left + w])
            along_x = (crop.view(3 * h, w) @ wx[k, :, :w].t()).view(3, h, size)  # x first, as TF
            both = wy[k, :, :h] @ along_x.transpose(0, 1).reshape(h, 3 * size)  # [S, 3 S]
            out[k] = both.view(size, 3, size).transpose(0, 1)
        return out


# ---------------------------------------------------------------------------------------------
# colour ops (float images, any range: the first op of the jitter sees the unclipped resize)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """``tf.image.rgb_to_grayscale`` tiled to 3 channels (``data_util.to_grayscale``)."""
    r, g, b = x.unbind(1)
    gray = r * _GRAY_WEIGHTS[0] + g * _GRAY_WEIGHTS[1] + b * _GRAY_WEIGHTS[2]
    return gray.unsqueeze(1).expand_as(x).contiguous()


def adjust_brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    """``random_brightness(impl='simclrv2')`` with its factor drawn: ``x * factor`` (not clipped)."""
    return x * _per_image(factor, x)


def adjust_contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    """``tf.image.adjust_contrast``: ``(x - m) * factor + m``, ``m`` the mean of each channel."""
    mean = x.mean((2, 3), keepdim=True)
    return (x - mean) * _per_image(factor, x) + mean


def _hsv(x: Tensor, delta: Tensor | None, saturation: Tensor | None, sat_on: Tensor | None = None) -> Tensor:
    """Hue rotation by ``delta`` turns and/or HSV saturation scaled by ``saturation`` (per image;
    None: that part off; saturation only where ``sat_on`` if given), without the HSV round trip.

    With ``v`` the max channel and chroma ``C = v - min``, channel ``n`` in (R 5, G 3, B 1) is
    ``v - C' * clip(2 - |k_n - 2|, 0, 1)``, ``k_n = (n + 6 h) mod 6``: TF's ``adjust_hue`` keeps
    ``C' = C`` (max and min kept); ``adjust_saturation`` scales S = C / v and clips it to [0, 1],
    i.e. ``C' = min(v, f C)``, and makes pixels with ``v <= 0`` gray (TF's ``s = 0``).
    """
    r, g, b = x.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    chroma = torch.minimum(torch.minimum(r, g), b).neg_().add_(v)
    num = torch.where(v == r, g - b, torch.where(v == g, (b - r).add_(chroma, alpha=2), (r - g).add_(chroma, alpha=4)))
    hue6 = num.div_(torch.where(chroma > 0, chroma, 1.0))  # chroma 0: num is 0, so hue 0
    if delta is not None:
        hue6.add_(_per_image(delta, x).view(-1, 1, 1), alpha=6.0)
    if saturation is not None:
        scaled = torch.minimum(chroma * _per_image(saturation, x).view(-1, 1, 1).clamp(min=0), v)
        scaled = scaled.mul_(v > 0)  # v <= 0: S = 0, gray
        chroma = scaled if sat_on is None else torch.where(sat_on.view(-1, 1, 1), scaled, chroma)
    k = hue6.unsqueeze(1) + torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1)  # R, G, B (no copy)
    k.sub_(k.mul(1 / 6).floor_(), alpha=6.0)  # mod 6
    weight = k.sub_(2.0).abs_().neg_().add_(2.0).clamp_(0, 1)
    return torch.addcmul(v.unsqueeze(1), chroma.unsqueeze(1), weight, value=-1, out=weight)


def adjust_saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    """``tf.image.adjust_saturation``: HSV S scaled by ``factor`` and clipped to [0, 1], H and V kept."""
    return _hsv(x, None, _as_tensor(factor, x))


def adjust_hue(x: Tensor, delta: Tensor | float) -> Tensor:
    """``tf.image.adjust_hue``: rotate the hue by ``delta`` turns keeping the max and min channels."""
    return _hsv(x, _as_tensor(delta, x), None)


def color_params(n: int, strength: float, generator: torch.Generator | None,
                 device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The random draws of ``random_color_jitter(strength)`` per image: ``jitter`` (p 0.8), the four
    factors (brightness ``max(0, 1 - 0.8s)``--``1 + 0.8s``, contrast and saturation ``1 -+ 0.8s``,
    hue shift ``-+0.2s``), ``order`` (a uniform permutation ``[n, 4]``, ``tf.random.shuffle``),
    ``gray`` (p 0.2)."""
    device = torch.device(device)

    def uniform(lo: float, hi: float) -> Tensor:
        return torch.rand(n, generator=generator, device=device) * (hi - lo) + lo

    b, c, s, h = 0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength
    return {
        "jitter": torch.rand(n, generator=generator, device=device) < 0.8,
        "brightness": uniform(max(1 - b, 0.0), 1 + b),
        "contrast": uniform(1 - c, 1 + c),
        "saturation": uniform(1 - s, 1 + s),
        "hue": uniform(-h, h),
        "order": torch.rand(n, 4, generator=generator, device=device).argsort(1),
        "gray": torch.rand(n, generator=generator, device=device) < 0.2,
    }


_NONE = 4  # op code of an empty slot
_SLOTS = 8  # affine, affine, HSV, affine, affine, HSV, affine, affine
_HSV_SLOTS = (2, 5)


def _schedule(order: Tensor, jitter: Tensor) -> Tensor:
    """``[n, 8]`` op codes per slot: each image's ops in its order, hue and saturation (the HSV ops)
    in slots 2 and 5, brightness and contrast (affine) in the slots around them, the rest empty."""
    n = order.shape[0]
    slots = torch.full((n, _SLOTS), _NONE, dtype=order.dtype, device=order.device)
    hsv_seen = torch.zeros(n, dtype=order.dtype, device=order.device)
    affine_seen = torch.zeros_like(hsv_seen)  # in the current group, since the last HSV op
    for i in range(4):
        op = order[:, i]
        hsv = (op == _SATURATION) | (op == _HUE)
        slot = torch.where(hsv, 3 * hsv_seen + 2, 3 * hsv_seen + affine_seen)
        slots.scatter_(1, slot[:, None], op[:, None])
        affine_seen = torch.where(hsv, 0, affine_seen + 1)
        hsv_seen = hsv_seen + hsv.to(hsv_seen.dtype)
    return slots.masked_fill_(~jitter[:, None], _NONE)


_COLOR_CHUNK = 32  # images per pass of the colour ops: a chunk's ~40 passes stay in the core's cache


def apply_color(x: Tensor, p: dict[str, Tensor]) -> Tensor:
    """``random_color_jitter`` with its draws ``p`` fixed (see :func:`color_params`), then the final
    clip of ``preprocess_for_train`` (``x`` is modified).

    Where ``jitter``, each image gets its four ops in its ``order``, clipping after each. Vectorised
    by slots (:func:`_schedule`): in an affine slot brightness (``x * f``) and contrast
    (``m + f (x - m)``, ``m`` the channel means) are one ``r + f (x - r)`` for every image; in an
    HSV slot hue and saturation are one :func:`_hsv` -- two HSV passes for the batch, not four.
    Every op is per image, so the batch goes through in chunks of ``_COLOR_CHUNK`` images (on a
    CPU 1.5x faster than whole-batch passes that stream it through memory each time; same values).
    """
    slots = _schedule(p["order"].to(x.device), p["jitter"].to(x.device))
    chunk = _COLOR_CHUNK if x.device.type == "cpu" else x.shape[0]
    for start in range(0, x.shape[0], chunk):
        part = slice(start, start + chunk)
        done = _color_chunk(x[part], slots[part], {k: v[part] for k, v in p.items() if k != "order"})
        if done.data_ptr() != x[part].data_ptr():
            x[part] = done
    return x


def _color_chunk(x: Tensor, slots: Tensor, p: dict[str, Tensor]) -> Tensor:
    """:func:`apply_color` on some images with their slots (``x`` is modified)."""
    one = torch.ones_like(p["brightness"])
    for i in range(_SLOTS):
        op = slots[:, i]
        on = (op != _NONE).view(-1, 1, 1, 1)
        if i in _HSV_SLOTS:
            y = _hsv(x, torch.where(op == _HUE, p["hue"], 0.0), p["saturation"], op == _SATURATION)
            x = torch.where(on, y.clamp_(0, 1), x, out=x)
        else:  # x * f + m (1 - f) in place, clipped only where an op ran (the input may be unclipped)
            contrast = op == _CONTRAST
            f = torch.where(op == _BRIGHTNESS, p["brightness"], torch.where(contrast, p["contrast"], one))
            bias = x.mean((2, 3), keepdim=True).mul_(((1 - f) * contrast).view(-1, 1, 1, 1))
            x.mul_(_per_image(f, x)).add_(bias)
            x.clamp_(torch.where(on, 0.0, -torch.inf), torch.where(on, 1.0, torch.inf))
    x = torch.where(p["gray"].view(-1, 1, 1, 1), rgb_to_grayscale(x), x, out=x)
    return x.clamp_(0, 1)


# ---------------------------------------------------------------------------------------------
# blur


def blur_radius(size: int) -> int:
    """``gaussian_blur``'s radius for ``kernel_size=size // 10``: ``int(size // 10 / 2)``."""
    return int(size // 10 / 2)


def gaussian_blur(x: Tensor, sigma: Tensor | float, radius: int) -> Tensor:
    """``data_util.gaussian_blur(padding='SAME')``: separable, horizontal then vertical, zero padding;
    ``sigma`` one value or one per image. Not clipped."""
    if radius <= 0:
        return x.clone()
    n, c, height, width = x.shape
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    s = _per_image(sigma, x).reshape(-1, 1).expand(n, 1)
    kernel = torch.exp(-t.pow(2) / (2 * s.pow(2)))
    kernel = kernel / kernel.sum(1, keepdim=True)  # [N, k]
    k = 2 * radius + 1
    weight = kernel.repeat_interleave(c, 0)
    with torch.autocast(x.device.type, enabled=False):
        y = F.conv2d(x.reshape(1, n * c, height, width), weight.view(n * c, 1, 1, k), padding=(0, radius),
                     groups=n * c)
        y = F.conv2d(y, weight.view(n * c, 1, k, 1), padding=(radius, 0), groups=n * c)
    return y.view(n, c, height, width)


def random_blur(x: Tensor, size: int, generator: torch.Generator | None, p: float = 0.5) -> Tensor:
    """``batch_random_blur`` on one batch of views: one sigma uniform in [0.1, 2) for the batch,
    the blur kept per image with probability ``p``, then the clip to [0, 1]."""
    sigma = torch.rand((), generator=generator, device=x.device) * 1.9 + 0.1
    keep = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    blurred = gaussian_blur(x, sigma, blur_radius(size))
    return torch.where(keep.view(-1, 1, 1, 1), blurred, x).clamp_(0, 1)


# ---------------------------------------------------------------------------------------------
# pipelines


def _crop(images, size: int, generator: torch.Generator | None, flip: float, min_scale: float) -> Tensor:
    area = (min_scale, 1.0)
    if isinstance(images, RaggedImages):
        return resized_crop_ragged([images.image(i) for i in range(len(images))], images.sizes, size, generator,
                                   flip, area)
    return resized_crop(images, size, generator, flip, area)


def simclr_views(images, size: int, strength: float = 1.0, blur: bool | None = None, min_scale: float = 0.08,
                 generator: torch.Generator | None = None, flip: float = 0.5) -> Tensor:
    """One pretraining view per image (``preprocess_for_train`` with ``color_jitter_strength``
    ``strength``, then ``batch_random_blur`` when ``blur``; ``None``: on iff ``size >= 96``).
    ``images``: uint8/float ``[N, 3, H, W]`` or RaggedImages; float32 ``[N, 3, size, size]`` in [0, 1].
    ``min_scale`` is the lower end of the area range (the official 0.08 by default)."""
    x = _crop(images, size, generator, flip, min_scale)
    if strength > 0:
        x = apply_color(x, color_params(x.shape[0], strength, generator, x.device))
    else:
        x = x.clamp_(0, 1)
    if size >= 96 if blur is None else blur:
        x = random_blur(x, size, generator)
    return x


def crop_flip(images, size: int, min_scale: float = 0.08, generator: torch.Generator | None = None,
              flip: float = 0.5) -> Tensor:
    """Fine-tuning view: ``preprocess_for_train`` without colour (crop, resize, flip, clip)."""
    return _crop(images, size, generator, flip, min_scale).clamp_(0, 1)
