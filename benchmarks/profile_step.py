"""Where a CPU pretraining step goes: the model step (forward + backward + LARS) by operator, and the
official augmentation of one batch by function (issue #21's profile).

    python benchmarks/profile_step.py                      # ResNet-18 x1, 64 px, batch 256, 2 threads
    python benchmarks/profile_step.py --precision float32  # as amp=false
    python benchmarks/profile_step.py --data .data/imagenette2-160/train   # + the augmentation of photos
    python benchmarks/profile_step.py --compare            # + float32 / bf16 x NCHW / channels_last

Prints the step time, then torch.profiler's table (self CPU time by operator and input shape), then
the augmentation's time per batch (two views) with 1 thread, as the prefetch thread runs it.
"""

from __future__ import annotations

import argparse
import time

import torch


def make_step(args, bf16: bool, channels_last: bool):
    """One pretraining step of ResNet-18 x1 + head (forward, NT-Xent, backward, LARS) on fixed views."""
    from simclrv2.config import ModelConfig
    from simclrv2.losses import nt_xent
    from simclrv2.models.networks import build_pretrain_model
    from simclrv2.optim import build_optimizer

    torch.manual_seed(0)
    net = build_pretrain_model(ModelConfig(model="resnet18", width=1.0, cifar_stem=False))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = build_optimizer(net, "lars", 0.3, 1e-4)
    n = args.batch_size
    views = torch.rand(2 * n, 3, args.image_size, args.image_size)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            z = net(views)
        nt_xent(z[:n], z[n:], 0.2).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def images_per_s(args, step) -> float:
    step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    return args.batch_size * args.steps / (time.perf_counter() - start)


def model_step(args) -> None:
    from torch.profiler import ProfilerActivity, profile

    if args.compare:
        for bf16 in (False, True):
            for channels_last in (False, True):
                rate = images_per_s(args, make_step(args, bf16, channels_last))
                print(f"model step, {'bf16 autocast' if bf16 else 'float32'}, "
                      f"{'channels_last' if channels_last else 'NCHW'}: {rate:.1f} images/s")
    bf16 = args.precision == "bf16"
    step = make_step(args, bf16, bf16)  # as the library: channels_last with bf16
    rate = images_per_s(args, step)
    print(f"model step ({args.precision}, {torch.get_num_threads()} threads): {args.batch_size / rate:.2f} s, "
          f"{rate:.1f} images/s")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                                             max_name_column_width=40, max_shapes_column_width=60))
    small_map_weight_gradient(args, bf16)


def small_map_weight_gradient(args, bf16: bool) -> None:
    """Stage 4's 3x3 convolution (512 channels, 2x2 maps at 64-px input): its weight gradient by
    oneDNN against the same product written as unfold + one matmul."""
    import torch.nn.functional as F

    dtype = torch.bfloat16 if bf16 else torch.float32
    layout = torch.channels_last if bf16 else torch.contiguous_format
    side = max(1, args.image_size // 32)
    x = torch.randn(2 * args.batch_size, 512, side, side, dtype=dtype).contiguous(memory_format=layout)
    w = torch.randn(512, 512, 3, 3, dtype=dtype).contiguous(memory_format=layout)
    g = torch.randn_like(x)

    def by_convolution():
        return torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                   [False, True, False])[1]

    def by_matmul():
        cols = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 512 * 9)  # [N L, C k k]
        return (g.flatten(2).transpose(1, 2).reshape(-1, 512).t() @ cols).view(512, 512, 3, 3)

    for name, fn in (("oneDNN convolution_backward", by_convolution), ("unfold + matmul", by_matmul)):
        fn()
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        print(f"weight gradient of a 512x512 3x3 conv on {side}x{side} maps, {dtype}: {name} "
              f"{(time.perf_counter() - start) / args.steps * 1000:.0f} ms")


def augmentation(args) -> None:
    import cProfile
    import pstats

    from simclrv2.config import DataConfig
    from simclrv2.data import datasets
    from simclrv2.data.views import ViewMaker

    splits = datasets.load(DataConfig(dataset="folder", path=args.data, image_size=args.image_size, stream="off"),
                           workers=2, need_val=False)
    images = splits.pretrain_images()
    views = ViewMaker("simclr", args.image_size, seed=0, style="official")
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:args.batch_size]
    torch.set_num_threads(1)
    views(images.take(idx))
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(args.steps):
        x = images.take(idx)
        torch.cat([views(x), views(x)])
    profiler.disable()
    print(f"augmentation, one batch of {len(idx)} images, two views, 1 thread: "
          f"{(time.perf_counter() - start) / args.steps:.3f} s")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(r"simclrv2", 12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", choices=["bf16", "float32"], default="bf16")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--data", help="an image folder: also profile the official augmentation of its photos")
    p.add_argument("--compare", action="store_true", help="first time float32 / bf16 x NCHW / channels_last")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model_step(args)
    if args.data:
        augmentation(args)


if __name__ == "__main__":
    main()
