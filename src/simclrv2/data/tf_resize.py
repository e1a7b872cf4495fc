"""TensorFlow's ``tf.image.resize`` (TF2, ``antialias=False``) in PyTorch: bicubic and bilinear.

The official SimCLR code resizes with ``tf.image.resize(..., method=BICUBIC)`` (evaluation crop) and
``BILINEAR`` is TF's default. Without antialiasing these are TF's ``ResizeBicubic`` /
``ResizeBilinear`` kernels with half-pixel centres, which differ from PyTorch's
``F.interpolate``:

* sample position ``(i + 0.5) * in / out - 0.5`` in float32, as TF computes it;
* bicubic: Keys' cubic with ``a = -0.5`` (PyTorch uses -0.75), its weights read from a table of
  1024 steps per pixel (the fraction rounded to the nearest step, as TF does); taps outside the
  image get weight 0 and the other weights are renormalised to sum to 1 (no edge replication);
* bilinear: the two neighbours, positions clamped to the image;
* no antialiasing when shrinking: every output pixel reads 4 (bicubic) or 2 (bilinear) input
  pixels per axis, whatever the scale.

Both are separable, so a resize is two matrix products ``Wy @ x @ Wx^T`` with ``[out, in]`` weight
matrices (cached per size pair), on any device, for any float batch ``[..., H, W]``. Where CUDA
matmuls may use TF32 (as training enables), float32 input is resized in float64, so the result is
float32-accurate everywhere.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["bicubic_weights", "bilinear_weights", "resize_bicubic_tf", "resize_bilinear_tf"]

_TABLE = 1024  # TF's kTableSize: the cubic weights are tabulated at 1/1024 px
_A = -0.5  # Keys' coefficient of TF2's half-pixel bicubic (the legacy kernel used -0.75)


def _positions(in_size: int, out_size: int) -> np.ndarray:
    """Sample positions in the input, float32 as TF's ``HalfPixelScaler``."""
    scale = np.float32(in_size) / np.float32(out_size)
    return (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)


def _keys(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with ``a = -0.5`` at distances ``t`` (float64)."""
    t = np.abs(t)
    near = ((_A + 2) * t - (_A + 3)) * t * t + 1
    far = ((_A * t - 5 * _A) * t + 8 * _A) * t - 4 * _A
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


@lru_cache(maxsize=256)
def _bicubic(in_size: int, out_size: int) -> np.ndarray:
    pos = _positions(in_size, out_size)
    base = np.floor(pos).astype(np.int64)
    step = np.rint((pos - base.astype(np.float32)) * np.float32(_TABLE)).astype(np.int64)  # TF: lrintf
    delta = step / _TABLE
    taps = base[:, None] + np.arange(-1, 3)[None, :]  # the four inputs around each position
    w = _keys(delta[:, None] - np.arange(-1, 3)[None, :]).astype(np.float32)
    w = np.where((taps >= 0) & (taps < in_size), w, np.float32(0))  # outside: weight 0 ...
    total = w.sum(axis=1, keepdims=True)
    w = np.where(np.abs(total) > 0, w / np.where(total == 0, 1, total), w)  # ... and the rest renormalised
    out = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.repeat(np.arange(out_size), 4)
    np.add.at(out, (rows, np.clip(taps, 0, in_size - 1).reshape(-1)), w.reshape(-1))
    out.flags.writeable = False
    return out


@lru_cache(maxsize=256)
def _bilinear(in_size: int, out_size: int) -> np.ndarray:
    pos = _positions(in_size, out_size)
    floor = np.floor(pos)
    lerp = (pos - floor).astype(np.float64)
    lower = np.clip(floor.astype(np.int64), 0, in_size - 1)
    upper = np.clip(np.ceil(pos).astype(np.int64), 0, in_size - 1)
    out = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(out, (rows, lower), 1 - lerp)
    np.add.at(out, (rows, upper), lerp)
    out.flags.writeable = False
    return out


def bicubic_weights(in_size: int, out_size: int, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """``[out_size, in_size]``: row ``i`` holds the weights TF's bicubic resize gives output ``i``."""
    return torch.tensor(_bicubic(in_size, out_size), dtype=dtype, device=device)


def bilinear_weights(in_size: int, out_size: int, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """``[out_size, in_size]``: row ``i`` holds the weights TF's bilinear resize gives output ``i``."""
    return torch.tensor(_bilinear(in_size, out_size), dtype=dtype, device=device)


def _separable(x: Tensor, size_hw: tuple[int, int], weights) -> Tensor:
    if x.dim() < 2:
        raise ValueError(f"expected an image batch [..., H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    (h, w), (out_h, out_w) = x.shape[-2:], (int(size_hw[0]), int(size_hw[1]))
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resize to {out_h} x {out_w}: sizes must be positive")
    if (h, w) == (out_h, out_w):
        return x.clone()
    if x.dtype == torch.float32 and x.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        return _separable(x.double(), size_hw, weights).float()  # TF32 matmuls would cost ~1e-3 per pixel
    wy = weights(h, out_h, x.device, x.dtype)
    wx = weights(w, out_w, x.device, x.dtype)
    return torch.matmul(torch.matmul(wy, x), wx.t())


def resize_bicubic_tf(x: Tensor, size_hw: tuple[int, int]) -> Tensor:
    """``tf.image.resize(x, size_hw, method="bicubic")`` (antialias off) of float ``[..., H, W]``.

    Not clipped: bicubic overshoots [0, 1] near edges, as TF's does (the official code clips after).
    Integer input is converted to float32 first (TF's resize also returns float).
    """
    return _separable(x, size_hw, bicubic_weights)


def resize_bilinear_tf(x: Tensor, size_hw: tuple[int, int]) -> Tensor:
    """``tf.image.resize(x, size_hw, method="bilinear")`` (antialias off) of float ``[..., H, W]``."""
    return _separable(x, size_hw, bilinear_weights)
