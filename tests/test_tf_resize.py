"""``simclrv2.data.tf_resize`` against TensorFlow's own ``tf.image.resize`` (antialias off), by execution."""

import numpy as np
import pytest
import torch

import official
from simclrv2.data.tf_resize import bicubic_weights, resize_bicubic_tf, resize_bilinear_tf

SIZES = [  # (in_h, in_w, out_h, out_w): tiny, up, down (by large factors too), odd, identity, thin
    (1, 1, 5, 3), (2, 3, 7, 9), (5, 4, 1, 1), (7, 7, 224, 224), (37, 41, 100, 19), (160, 213, 224, 224),
    (500, 375, 224, 224), (224, 224, 224, 224), (3, 900, 64, 64), (1200, 1000, 32, 48), (140, 140, 160, 160),
]


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
def test_resize_equals_tensorflow(method):
    tf = official.load().tf
    fn = resize_bicubic_tf if method == "bicubic" else resize_bilinear_tf
    rng = np.random.default_rng(0)
    for h, w, oh, ow in SIZES:
        x = rng.random((h, w, 3), dtype=np.float32)
        x[: h // 2] = (x[: h // 2] > 0.5)  # hard edges: overshoot and the border taps show
        ref = tf.image.resize([x], [oh, ow], method=method)[0].numpy()
        ours = fn(torch.from_numpy(x).permute(2, 0, 1), (oh, ow)).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ours, ref, atol=2e-6, rtol=0, err_msg=f"{method} {h}x{w} -> {oh}x{ow}")


def test_kernel_is_tf_keys_half_pixel_not_torch():
    """TF's a = -0.5 Keys cubic, taps outside renormalised: unlike ``F.interpolate``'s a = -0.75."""
    w = bicubic_weights(4, 8)
    torch.testing.assert_close(w.sum(1), torch.ones(8))
    x = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    ours = resize_bicubic_tf(x[None], (1, 8))[0, 0]
    torch_ = torch.nn.functional.interpolate(x[None, None], size=(1, 8), mode="bicubic", align_corners=False)[0, 0, 0]
    assert (ours - torch_).abs().max() > 1e-2
    # position of output 3: (3 + 0.5) / 2 - 0.5 = 1.25, taps 0..3 at distances 1.25, 0.25, 0.75, 1.75
    keys = lambda t: (1.5 * t - 2.5) * t * t + 1 if t <= 1 else ((-0.5 * t + 2.5) * t - 4) * t + 2
    expected = sum(keys(d) * v for d, v in zip((1.25, 0.25, 0.75, 1.75), (0, 0, 1, 1)))
    assert ours[3].item() == pytest.approx(expected, abs=1e-6)


def test_bad_sizes_and_integer_input():
    with pytest.raises(ValueError):
        resize_bicubic_tf(torch.zeros(3, 4, 4), (0, 4))
    with pytest.raises(ValueError):
        resize_bicubic_tf(torch.zeros(4), (2, 2))
    u8 = torch.full((3, 4, 4), 7, dtype=torch.uint8)
    assert torch.equal(resize_bicubic_tf(u8, (4, 4)), u8.float())
    torch.testing.assert_close(resize_bicubic_tf(u8, (9, 2)), torch.full((3, 9, 2), 7.0))
