"""Batched SimCLR augmentation on the batch's device, with independent random parameters per image.

Every function takes a batch ``[N, 3, H, W]`` (uint8 or float in [0, 1]) and returns float32 in
[0, 1]. Randomness comes from an explicit ``torch.Generator`` on the batch's device, so a run is
reproducible; there is no Python loop over images and no host-device synchronisation, except for
photos of different sizes: one copy of each crop into a padded batch, after one read of the boxes.

The semantics are torchvision's (``transforms.v2``) applied image by image, so that
:mod:`simclrv2.data.augment` is the per-image reference:

* crop: ``RandomResizedCrop`` box sampling (10 tries, then the central crop) on each image's own
  size (photos of different sizes come as :class:`~simclrv2.data.ragged.RaggedImages`), crop then
  bilinear resize (antialiased when shrinking) and the horizontal flip, all in one resampling op
  with per-image coordinates: ``grid_sample`` when every crop is enlarged, else two batched
  matrix products ``Wy @ img @ Wx^T`` with the weights of ``F.interpolate(..., antialias=True)``;
* colour: ``ColorJitter`` factors and per-image random op order, grayscale with the ITU-R 601
  weights torchvision uses, Gaussian blur with reflect padding.

Unlike the uint8 per-image path the batch stays in float32 throughout (no rounding to 8 bits
between ops). On CUDA with TF32 matmuls enabled the shrinking resize is TF32-accurate (~1e-3),
below the 8-bit quantisation of the source images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from simclrv2.data.tf_resize import resize_bicubic_tf

__all__ = [
    "sample_crop_boxes", "resized_crop", "resized_crop_ragged", "random_resized_crop",
    "rgb_to_grayscale", "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue",
    "apply_color_jitter", "color_jitter", "random_grayscale",
    "blur_kernel_size", "apply_gaussian_blur", "gaussian_blur",
    "CROP_PROPORTION", "center_crop_box", "eval_crop_proportion", "to_float", "simclr_views", "crop_flip",
]

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
_IDENTITY = 4  # op code of the "do nothing" slot in apply_color_jitter


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=device).mul_(high - low).add_(low)


def _bernoulli(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def _float01(x: Tensor, copy: bool = False) -> Tensor:
    """Float32 in [0, 1]: uint8 is scaled by 1/255 (as ``v2.ToDtype(scale=True)``), floats kept --
    copied if ``copy``, so that the result may be modified in place."""
    if x.dtype == torch.uint8:
        return x.float().mul_(1 / 255)
    y = x.float()  # x itself if already float32
    return y.clone() if copy and y is x else y


def _as_tensor(v: Tensor | float, x: Tensor) -> Tensor:
    """``v`` as a tensor on ``x``'s device (a fill, not a host-to-device copy, which would sync)."""
    if isinstance(v, Tensor):
        return v.to(device=x.device, dtype=x.dtype)
    return torch.full((), float(v), dtype=x.dtype, device=x.device)


def _per_image(v: Tensor | float, x: Tensor) -> Tensor:
    """A scalar or ``[N]`` per-image value shaped to broadcast against ``[N, C, H, W]``."""
    return _as_tensor(v, x).reshape(-1, 1, 1, 1)


# ---------------------------------------------------------------------------------------------
# crop, resize and flip


def sample_crop_boxes(n: int, height: int | Tensor, width: int | Tensor, scale: tuple[float, float] = (0.08, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu", attempts: int = 10) -> Tensor:
    """``n`` crop boxes as int64 ``[n, 4]`` rows ``(top, left, height, width)``, drawn as
    ``RandomResizedCrop.get_params`` does: up to ``attempts`` (area, log-ratio) draws, the first
    that fits is kept, else the central crop at the nearest allowed ratio. All draws at once.

    ``height`` and ``width`` are one image size for all, or ``[n]`` tensors (one per image).
    """
    device = torch.device(device)
    per_image = isinstance(height, Tensor) or isinstance(width, Tensor)
    if per_image:
        height = torch.as_tensor(height, device=device).float().reshape(-1, 1)
        width = torch.as_tensor(width, device=device).float().reshape(-1, 1)
    area = height * width
    target = _uniform(n * attempts, scale[0], scale[1], generator, device).view(n, attempts) * area
    log_r = _uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), generator, device).view(n, attempts)
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round_()
    h = torch.sqrt(target / aspect).round_()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)  # first valid try (0 when none is valid)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    if per_image:
        height, width = height.squeeze(1), width.squeeze(1)
    # offsets uniform over the valid integer positions, as torch.randint(0, size - crop + 1)
    u = torch.rand(n, 2, generator=generator, device=device)
    top = torch.minimum((u[:, 0] * (height - h + 1)).floor_(), height - h)
    left = torch.minimum((u[:, 1] * (width - w + 1)).floor_(), width - w)
    fallback = ~ok.any(1)
    central = _central_boxes(height, width, ratio) if per_image else _central_box(height, width, ratio)
    return torch.stack([torch.where(fallback, c, v) for c, v in zip(central, (top, left, h, w))], 1).long()


def _central_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """get_params' fallback: the whole image clamped to the ratio range, centred."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    return (height - fh) // 2, (width - fw) // 2, fh, fw


def _central_boxes(height: Tensor, width: Tensor, ratio: tuple[float, float]) -> tuple[Tensor, ...]:
    """:func:`_central_box` per image (float64, so that ``round`` matches Python's)."""
    hd, wd = height.double(), width.double()
    in_ratio = wd / hd
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fw = torch.where(wide, (hd * max(ratio)).round(), wd)
    fh = torch.where(narrow, (wd / min(ratio)).round(), hd)
    return (hd - fh).div(2).floor().float(), (wd - fw).div(2).floor().float(), fh.float(), fw.float()


def _resize_weights(start: Tensor, length: Tensor, in_size: int, out_size: int, flip: Tensor | None,
                    gain: float) -> Tensor:
    """``[N, out_size, in_size]``: row j averages the input pixels of output pixel j.

    The crop ``[start, start + length)`` is resized with the triangle (bilinear) filter widened by
    the downscale factor and renormalised at the crop edges -- PIL's and
    ``F.interpolate(mode="bilinear", antialias=True)``'s weights (plain bilinear when upscaling).
    """
    device = start.device
    start, length = start.float()[:, None, None], length.float()[:, None, None]
    j = torch.arange(out_size, device=device, dtype=torch.float32).expand(start.shape[0], out_size)
    if flip is not None:
        j = torch.where(flip[:, None], out_size - 1 - j, j)
    step = length / out_size
    centre = start + (j[:, :, None] + 0.5) * step  # [N, out, 1], in pixel-edge coordinates
    pixel = torch.arange(in_size, device=device, dtype=torch.float32) + 0.5  # pixel centres
    weight = (pixel - centre).abs_().div_(step.clamp(min=1.0)).neg_().add_(1).clamp_(min=0)  # triangle
    weight.mul_((pixel > start) & (pixel < start + length))  # only pixels inside the crop
    return weight.mul_(gain / weight.sum(-1, keepdim=True))


def _source_coords(start: Tensor, length: Tensor, size: int, flip: Tensor | None) -> Tensor:
    """``[N, size]`` source pixel index (fractional) of each output pixel when the crop
    ``[start, start + length)`` is resized to ``size`` by bilinear interpolation (half-pixel
    centres), clamped into the crop as cropping first then resizing does."""
    start, length = start.float()[:, None], length.float()[:, None]
    j = torch.arange(size, device=start.device, dtype=torch.float32).expand(start.shape[0], size)
    if flip is not None:
        j = torch.where(flip[:, None], size - 1 - j, j)
    src = j.add(0.5).mul_(length / size).sub_(0.5).clamp_(min=0)
    return torch.minimum(src, length - 1).add_(start)


def resized_crop(images: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop box ``(top, left, height, width)`` of each image, resize it to ``size`` x ``size``
    (bilinear, antialiased when shrinking, as torchvision's ``resized_crop``) and mirror it where
    ``flip``.

    Images no larger than ``size`` are only ever enlarged: one ``grid_sample`` on the whole batch
    with per-image sampling grids. Larger images may be shrunk, where bilinear sampling would alias:
    two batched matrix products ``Wy @ img @ Wx^T`` with PIL's antialiasing weights.
    """
    n, c, height, width = images.shape
    with torch.autocast(images.device.type, enabled=False):  # float32 even inside the caller's autocast
        if height <= size and width <= size:
            ys = _source_coords(boxes[:, 0], boxes[:, 2], size, None).mul_(2 / max(height - 1, 1)).sub_(1)
            xs = _source_coords(boxes[:, 1], boxes[:, 3], size, flip).mul_(2 / max(width - 1, 1)).sub_(1)
            grid = torch.stack([xs[:, None, :].expand(n, size, size), ys[:, :, None].expand(n, size, size)], -1)
            out = F.grid_sample(_float01(images), grid, mode="bilinear", padding_mode="border", align_corners=True)
        else:
            gain = 1 / 255 if images.dtype == torch.uint8 else 1.0
            wy = _resize_weights(boxes[:, 0], boxes[:, 2], height, size, None, 1.0)  # [N, S, H]
            wx = _resize_weights(boxes[:, 1], boxes[:, 3], width, size, flip, gain)  # [N, S, W]
            rows = torch.bmm(images.float().reshape(n, c * height, width), wx.transpose(1, 2))  # [N, C*H, S]
            out = torch.matmul(wy.unsqueeze(1), rows.view(n, c, height, size))  # [N, C, S, S]
    return out.clamp_(0, 1)  # weights sum to 1 up to rounding


def resized_crop_ragged(images: Sequence[Tensor], boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """:func:`resized_crop` for images of different sizes (uint8 or float ``[3, h_i, w_i]``).

    The crops are copied into one zero-padded batch (a memory copy per image, the only per-image
    step) and resampled together by the matrix path with per-image lengths: the weights of
    :func:`_resize_weights` never reach the padding, so this is the resize of each crop alone.
    """
    n = len(images)
    rows = boxes.tolist()
    crop_h, crop_w = max(r[2] for r in rows), max(r[3] for r in rows)
    uint8 = images[0].dtype == torch.uint8
    batch = torch.zeros(n, 3, crop_h, crop_w, dtype=torch.float32, device=boxes.device)
    for k, (top, left, h, w) in enumerate(rows):
        batch[k, :, :h, :w] = images[k][:, top:top + h, left:left + w]
    zero = torch.zeros(n, dtype=torch.long, device=boxes.device)
    with torch.autocast(boxes.device.type, enabled=False):
        wy = _resize_weights(zero, boxes[:, 2], crop_h, size, None, 1.0)  # [N, S, h]
        wx = _resize_weights(zero, boxes[:, 3], crop_w, size, flip, 1 / 255 if uint8 else 1.0)  # [N, S, w]
        out = torch.bmm(batch.view(n, 3 * crop_h, crop_w), wx.transpose(1, 2))  # [N, 3*h, S]
        out = torch.matmul(wy.unsqueeze(1), out.view(n, 3, crop_h, size))  # [N, 3, S, S]
    return out.clamp_(0, 1)


def _uniform_batch(images) -> Tensor | None:
    """Ragged images that all have one size, as a ``[N, 3, h, w]`` tensor (a view); else None."""
    sizes = images.sizes
    if len(sizes) == 0 or not bool((sizes == sizes[0]).all()):
        return None
    h, w = sizes[0].tolist()
    expected = torch.arange(len(sizes)) * (3 * h * w)
    if not torch.equal(images.offsets, expected):
        return None
    return images.data[:len(sizes) * 3 * h * w].view(len(sizes), 3, h, w)


def random_resized_crop(images, size: int, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                        generator: torch.Generator | None = None) -> Tensor:
    """``RandomResizedCrop(size, scale, ratio)`` then ``RandomHorizontalFlip(flip_p)``, per image,
    in one pass over the batch.

    ``images`` is a ``[N, 3, H, W]`` tensor, or :class:`~simclrv2.data.ragged.RaggedImages` whose
    boxes are drawn on each image's own size (images of one common size take the tensor path).
    """
    if not isinstance(images, Tensor):
        same = _uniform_batch(images)
        if same is None:
            n, device = len(images), images.device
            boxes = sample_crop_boxes(n, images.sizes[:, 0].to(device), images.sizes[:, 1].to(device), scale, ratio,
                                      generator, device)
            flip = _bernoulli(n, flip_p, generator, device) if flip_p > 0 else None
            return resized_crop_ragged([images.image(i) for i in range(n)], boxes, size, flip)
        images = same
    n, _, height, width = images.shape
    boxes = sample_crop_boxes(n, height, width, scale, ratio, generator, images.device)
    flip = _bernoulli(n, flip_p, generator, images.device) if flip_p > 0 else None
    return resized_crop(images, boxes, size, flip)


# ---------------------------------------------------------------------------------------------
# colour


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma ``[N, 1, H, W]`` with torchvision's weights (0.2989, 0.587, 0.114)."""
    r, g, b = x.unbind(1)
    return r.mul(_GRAY_WEIGHTS[0]).add_(g, alpha=_GRAY_WEIGHTS[1]).add_(b, alpha=_GRAY_WEIGHTS[2]).unsqueeze(1)


# The colour ops below come in two forms: public pure functions, and private in-place ones
# (trailing underscore) that the pipeline runs on the buffer the crop produced, so that a view
# costs one full-size allocation, not one per op (fresh CPU allocations are slow: page faults).


def _blend_(x: Tensor, alpha: Tensor, beta: Tensor, gamma: Tensor) -> Tensor:
    """In place: ``clamp(alpha * x + beta * gray(x) + gamma * mean(gray(x)), 0, 1)``, per image.

    Brightness (b, 0, 0), contrast (c, 0, 1 - c), saturation (s, 1 - s, 0) and identity (1, 0, 0)
    are all of this form, so one slot of the colour jitter serves every op for every image.
    """
    gray = rgb_to_grayscale(x)
    mean_term = gray.mean((2, 3), keepdim=True).mul_(_per_image(gamma, x))
    offset = torch.addcmul(mean_term, gray, _per_image(beta, x), out=gray)
    return torch.addcmul(offset, x, _per_image(alpha, x), out=x).clamp_(0, 1)


def _hue_(x: Tensor, shift: Tensor | float, mask: Tensor | None = None) -> Tensor:
    """In place: rotate the HSV hue by ``shift`` turns (images where ``mask``; all if None).

    The RGB->HSV->RGB round trip is written without the 6-way case split: with chroma
    ``C = max - min`` and ``k_n = (n + 6 h) mod 6``, channel ``n`` in (R 5, G 3, B 1) is
    ``max - C * clamp(min(k_n, 4 - k_n), 0, 1)``, and ``min(k, 4 - k) = 2 - |k - 2|``.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)  # (aminmax over dim 1 is slow on CPU)
    chroma = torch.minimum(torch.minimum(r, g), b).neg_().add_(maxc)
    # hue * 6 as torchvision/PIL: the max channel picks the sector (ties: R, then G)
    is_r, is_g = maxc == r, maxc == g
    num = torch.where(is_r, g - b, torch.where(is_g, (b - r).add_(chroma, alpha=2), (r - g).add_(chroma, alpha=4)))
    hue6 = num.div_(torch.where(chroma > 0, chroma, 1.0))  # in [-1, 5]
    hue6 = hue6.add_(_as_tensor(shift, x).reshape(-1, 1, 1), alpha=6.0)
    k = hue6.unsqueeze(1) + torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1)  # R, G, B
    k = k.sub_(k.mul(1 / 6).floor_(), alpha=6.0)  # mod 6 (torch.remainder is slow on CPU)
    weight = k.sub_(2.0).abs_().neg_().add_(2.0).clamp_(0, 1)
    if mask is None:
        return torch.addcmul(maxc.unsqueeze(1), chroma.unsqueeze(1), weight, value=-1, out=x)
    out = torch.addcmul(maxc.unsqueeze(1), chroma.unsqueeze(1), weight, value=-1, out=weight)
    return torch.where(mask.view(-1, 1, 1, 1), out, x, out=x)


def adjust_brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    """``x * factor`` clipped to [0, 1] (torchvision's multiplicative brightness), per image."""
    x = _float01(x)
    return x.mul(_per_image(factor, x)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    """Blend with the image's mean gray level (torchvision), per image."""
    x = _float01(x, copy=True)
    f = _as_tensor(factor, x)
    return _blend_(x, f, torch.zeros_like(f), 1 - f)


def adjust_saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    """Blend with the pixel's gray level (torchvision), per image."""
    x = _float01(x, copy=True)
    f = _as_tensor(factor, x)
    return _blend_(x, f, 1 - f, torch.zeros_like(f))


def adjust_hue(x: Tensor, shift: Tensor | float) -> Tensor:
    """Rotate the HSV hue by ``shift`` (in turns, [-0.5, 0.5]) keeping S and V (torchvision), per image."""
    return _hue_(_float01(x, copy=True), shift)


def _color_jitter_(x: Tensor, brightness: Tensor | None, contrast: Tensor | None, saturation: Tensor | None,
                   hue: Tensor | None, order: Tensor, apply: Tensor | None = None) -> Tensor:
    """In place :func:`apply_color_jitter`, leaving the images where ``apply`` is False unchanged."""
    n = x.shape[0]
    one, zero = torch.ones(n, dtype=x.dtype, device=x.device), torch.zeros(n, dtype=x.dtype, device=x.device)
    b = one if brightness is None else brightness.to(x.dtype)
    c = one if contrast is None else contrast.to(x.dtype)
    s = one if saturation is None else saturation.to(x.dtype)
    # coefficient tables indexed by op code: brightness, contrast, saturation, hue, identity
    alpha = torch.stack([b, c, s, one, one], 1)
    beta = torch.stack([zero, zero, 1 - s, zero, zero], 1)
    gamma = torch.stack([zero, 1 - c, zero, zero, zero], 1)
    order = order.to(x.device)
    if hue is None:
        slots, hue_slot = order.masked_fill(order == 3, _IDENTITY), -1
    else:
        offset = 3 - (order == 3).to(torch.uint8).argmax(1, keepdim=True)  # moves hue to slot 3
        slots = torch.full((n, 7), _IDENTITY, dtype=order.dtype, device=x.device)
        slots.scatter_(1, torch.arange(4, device=x.device) + offset, order)
        hue_slot = 3
    if apply is not None:
        slots.masked_fill_(~apply[:, None], _IDENTITY)
    for i in range(slots.shape[1]):
        if i == hue_slot:
            _hue_(x, hue, apply)
        else:
            op = slots[:, i:i + 1]
            _blend_(x, alpha.gather(1, op), beta.gather(1, op), gamma.gather(1, op))
    return x


def apply_color_jitter(x: Tensor, brightness: Tensor | None, contrast: Tensor | None, saturation: Tensor | None,
                       hue: Tensor | None, order: Tensor) -> Tensor:
    """Apply the four jitter ops with per-image factors ``[N]`` (None: op off) in the per-image
    ``order`` ``[N, 4]`` (a permutation of 0 brightness, 1 contrast, 2 saturation, 3 hue, as
    torchvision's ``fn_idx``), clipping to [0, 1] after each.

    Vectorised by slots: each slot applies one blend op whose coefficients pick, per image, that
    image's op. Hue is not a blend, so the order is aligned on it: 3 slots for the ops before hue,
    hue for all images at once, 3 slots for the ops after -- hue runs once, the cheap ops 6 times.
    """
    return _color_jitter_(_float01(x, copy=True), brightness, contrast, saturation, hue, order)


def _jitter_params(n: int, brightness: float, contrast: float, saturation: float, hue: float, p: float,
                   generator: torch.Generator | None, device: torch.device) -> dict[str, Tensor | None]:
    """Per-image ``ColorJitter`` parameters: whether to apply, the factors (None: op off), the order."""
    def factor(v: float) -> Tensor | None:
        return _uniform(n, max(0.0, 1 - v), 1 + v, generator, device) if v > 0 else None

    return {
        "apply": _bernoulli(n, p, generator, device),
        "brightness": factor(brightness),
        "contrast": factor(contrast),
        "saturation": factor(saturation),
        "hue": _uniform(n, -hue, hue, generator, device) if hue > 0 else None,
        "order": torch.rand(n, 4, generator=generator, device=device).argsort(1),  # uniform permutations
    }


def _random_color_jitter_(x: Tensor, brightness: float, contrast: float, saturation: float, hue: float, p: float,
                          generator: torch.Generator | None) -> Tensor:
    prm = _jitter_params(x.shape[0], brightness, contrast, saturation, hue, p, generator, x.device)
    if all(prm[k] is None for k in ("brightness", "contrast", "saturation", "hue")):
        return x
    return _color_jitter_(x, prm["brightness"], prm["contrast"], prm["saturation"], prm["hue"], prm["order"],
                          prm["apply"])


def color_jitter(x: Tensor, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0, p: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """``RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`` per image.

    Factors are uniform in ``[max(0, 1 - v), 1 + v]`` (hue shift in ``[-hue, hue]``), the op order
    is a uniform random permutation per image, exactly as torchvision's ``ColorJitter``.
    """
    return _random_color_jitter_(_float01(x, copy=True), brightness, contrast, saturation, hue, p, generator)


def _random_grayscale_(x: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    apply = _bernoulli(x.shape[0], p, generator, x.device)
    return torch.where(apply.view(-1, 1, 1, 1), rgb_to_grayscale(x), x, out=x)


def random_grayscale(x: Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """``RandomGrayscale(p)``: the luma copied to all 3 channels, per image with probability ``p``."""
    return _random_grayscale_(_float01(x, copy=True), p, generator)


# ---------------------------------------------------------------------------------------------
# blur


def blur_kernel_size(size: int) -> int:
    """The official SimCLR blur kernel, about 10% of the image side: ``2 * (size // 10 // 2) + 1``
    (9 at 96 px, 23 at 224 px; 1, i.e. no blur, below 20 px)."""
    return 2 * (size // 10 // 2) + 1


def apply_gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Gaussian blur with per-image ``sigma`` ``[N]``: separable, reflect padding, as torchvision's
    ``gaussian_blur`` -- one depthwise (grouped) conv per direction for the whole batch."""
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    x = _float01(x)
    if kernel_size == 1:
        return x
    n, c, height, width = x.shape
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    kernel = torch.softmax(-0.5 * (t / sigma.float().reshape(-1, 1)) ** 2, dim=1)  # [N, k], sums to 1
    weight = kernel.repeat_interleave(c, 0)  # [N*C, k]
    y = F.pad(x.reshape(1, n * c, height, width), (r, r, r, r), mode="reflect")
    with torch.autocast(x.device.type, enabled=False):
        y = F.conv2d(y, weight.view(n * c, 1, 1, kernel_size), groups=n * c)
        y = F.conv2d(y, weight.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, height, width).clamp_(0, 1)  # weights sum to 1 up to rounding


def gaussian_blur(x: Tensor, p: float = 0.5, sigma_range: tuple[float, float] = (0.1, 2.0),
                  kernel_size: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """``RandomApply([GaussianBlur(kernel_size, sigma_range)], p)`` per image; the kernel size
    defaults to :func:`blur_kernel_size` of the image height."""
    n, device = x.shape[0], x.device
    sigma = _uniform(n, sigma_range[0], sigma_range[1], generator, device)
    apply = _bernoulli(n, p, generator, device)
    k = blur_kernel_size(x.shape[-2]) if kernel_size is None else kernel_size
    x = _float01(x)
    if k == 1:
        return x
    blurred = apply_gaussian_blur(x, sigma, k)
    return torch.where(apply.view(-1, 1, 1, 1), blurred, x, out=blurred)


# ---------------------------------------------------------------------------------------------
# pipelines


CROP_PROPORTION = 0.875  # data_util.CROP_PROPORTION: the evaluation crop keeps 0.875 of the shorter side
NO_CROP_MAX_SIZE = 32  # data.get_preprocess_fn: at image_size <= 32 (CIFAR) the official code does not crop


def center_crop_box(height: int, width: int, proportion: float = CROP_PROPORTION) -> tuple[int, int, int, int]:
    """The official SimCLR eval crop ``(top, left, side, side)``: a centred square keeping
    ``proportion`` of the shorter side (side ``rint``, offsets rounded up, as ``data_util.center_crop``)."""
    side = max(1, int(round(proportion * min(height, width))))  # round() is rint: half to even
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def eval_crop_proportion(size: int) -> float:
    """The share of the shorter side the evaluation view keeps at ``image_size`` ``size``: 0.875,
    or the whole central square at 32 px and below, where the official code does not crop."""
    return CROP_PROPORTION if size > NO_CROP_MAX_SIZE else 1.0


def to_float(images: Tensor, size: int | None = None, crop_proportion: float | None = None) -> Tensor:
    """Evaluation view of uint8 (or float [0, 1]) ``[..., 3, H, W]``: the official
    ``data_util.preprocess_for_eval`` at ``image_size`` ``size``, float32 ``[..., 3, size, size]``.

    That is: uint8 scaled by 1/255; above 32 px the central square keeping 0.875 of the shorter side
    (:func:`center_crop_box`), resized to ``size`` x ``size`` with TensorFlow's bicubic resize
    (:func:`simclrv2.data.tf_resize.resize_bicubic_tf`: Keys a = -0.5, no antialiasing, as
    ``tf.image.resize``), clipped to [0, 1]. At 32 px and below (``crop=False`` in the official
    code) images already ``size`` x ``size`` are only converted; others -- which the official code
    cannot take -- get their whole central square resized the same way. ``size=None``: only
    converted. ``crop_proportion`` overrides the 0.875 / 1.0 choice.
    """
    x = _float01(images)
    if size is None:
        return x.contiguous()
    proportion = eval_crop_proportion(size) if crop_proportion is None else crop_proportion
    height, width = x.shape[-2:]
    if proportion == 1.0 and height == size and width == size:
        return x.contiguous()
    top, left, h, w = center_crop_box(height, width, proportion)
    x = resize_bicubic_tf(x[..., top:top + h, left:left + w], (size, size))
    return x.clamp_(0, 1)


def simclr_views(images: Tensor, size: int, strength: float = 1.0, blur: bool | None = None,
                 min_scale: float = 0.08, generator: torch.Generator | None = None, flip: float = 0.5) -> Tensor:
    """One SimCLR view per image: crop (scale ``(min_scale, 1)``) + flip, colour jitter
    (0.8s, 0.8s, 0.8s, 0.2s) with p 0.8, grayscale p 0.2, blur p 0.5 (``blur=None``: on iff
    ``size >= 96``). Call twice (or on the batch repeated) for the two views."""
    x = random_resized_crop(images, size, (min_scale, 1.0), flip_p=flip, generator=generator)  # a new buffer
    if strength > 0:
        s = strength
        _random_color_jitter_(x, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, 0.8, generator)  # in place
    _random_grayscale_(x, 0.2, generator)
    if size >= 96 if blur is None else blur:
        x = gaussian_blur(x, 0.5, (0.1, 2.0), blur_kernel_size(size), generator)
    return x


def crop_flip(images: Tensor, size: int, min_scale: float = 0.08, generator: torch.Generator | None = None,
              flip: float = 0.5) -> Tensor:
    """Fine-tuning / distillation view: random resized crop and horizontal flip (probability ``flip``) only."""
    return random_resized_crop(images, size, (min_scale, 1.0), flip_p=flip, generator=generator)
