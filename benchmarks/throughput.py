"""Pretraining throughput: the conventional per-image data path vs ours vs the model-only ceiling.

In one process, on one device, steady-state images/s (after warm-up, and after the workers'
prefetch has drained) of SimCLR pretraining steps (two views, NT-Xent, LARS) fed by:

  conventional  PIL/torchvision transforms per image in DataLoader workers (lightly/torchvision style)
  ours          uint8 images kept on the device, both views made batch-wise there (simclrv2's default)
  ceiling       the same model, loss and optimizer on views already on the device

and the augmentation alone (two views per image, no model), ours vs conventional with the same CPU
budget (``--workers`` worker processes vs as many torch threads). With ``--data FOLDER`` it also
times the streaming path for folders too large for memory, decoding included on both sides, with
random resized crops drawn on the whole photo on both sides:

  stream                  training fed by workers that only read + decode files, augmented on the device
  aug_stream              the same without the model
  aug_conventional_files  PIL open + RandomResizedCrop and the rest per image in the workers
                          (torchvision ImageFolder style)

A folder of photos (e.g. Imagenette) is kept decoded at each photo's own size for ``ours`` and
``conventional`` too (crops from the whole image on both).

``--json FILE`` writes the figures.

    python benchmarks/throughput.py --device cpu --steps 10            # a quick CPU run
    python benchmarks/throughput.py --device cpu --data .data/imagenette2-160 --image-size 64 \
        --width 0.25 --batch-size 128 --strength 1 --num-images 2000 --steps 5   # photos
    python benchmarks/throughput.py --device cuda --compile --workers 16 --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from simclrv2.config import ModelConfig
from simclrv2.data.augment import SimCLRViews
from simclrv2.data.views import ViewMaker
from simclrv2.losses import nt_xent
from simclrv2.models.networks import build_pretrain_model
from simclrv2.optim import build_optimizer
from simclrv2.core.runtime import autocast, setup_backend


class PILFiles(Dataset):
    """Image files opened with PIL and transformed per image in the workers (torchvision ImageFolder style)."""

    def __init__(self, files: list[str], transform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB"))


class PILImages(Dataset):
    """Decoded images as PIL, transformed per image in the workers (decode excluded on both paths);
    photos of different sizes (a folder's RaggedImages) keep their own sizes."""

    def __init__(self, images, transform) -> None:
        if isinstance(images, torch.Tensor):
            self.arrays = images.permute(0, 2, 3, 1).numpy()
        else:
            self.arrays = [images.image(i).permute(1, 2, 0).numpy() for i in range(len(images))]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.arrays[i]))


def load_images(args):
    """A uint8 batch tensor, or (a folder of photos) RaggedImages kept at their own sizes."""
    if args.data:
        from simclrv2.config import DataConfig
        from simclrv2.data.datasets import load

        splits = load(DataConfig(dataset="folder", path=args.data, image_size=args.image_size, stream="off"),
                      workers=4)
        images = splits.pretrain_images()
    else:  # synthetic: smooth random colour fields, so colour ops and crops do real work
        g = torch.Generator().manual_seed(0)
        low = torch.rand(args.num_images, 3, 4, 4, generator=g)
        images = torch.nn.functional.interpolate(low, size=args.image_size, mode="bilinear", align_corners=False)
        images = (images * 255).round().to(torch.uint8)
    return images[: args.num_images]


class Step:
    """One pretraining step on two views; ``__call__(v1, v2)`` returns nothing, synchronises the device."""

    def __init__(self, args, device: torch.device) -> None:
        cfg = ModelConfig(model=args.model, width=args.width, cifar_stem=args.image_size <= 64)
        self.net = build_pretrain_model(cfg).to(device)
        if device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.model = torch.compile(self.net) if args.compile else self.net
        self.opt = build_optimizer(self.net, "lars", 1.0, 1e-6, fused=device.type == "cuda")
        self.device, self.amp = device, not args.no_amp

    def __call__(self, v1: torch.Tensor, v2: torch.Tensor) -> None:
        with autocast(self.device, self.amp):
            z = self.model(torch.cat([v1, v2]))
        loss = nt_xent(z[: len(v1)], z[len(v1):], 0.5)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync(self.device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run_step, warmup: int, steps: int, batch: int) -> float:
    """Images/s over ``steps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        run_step()
    start = time.perf_counter()
    for _ in range(steps):
        run_step()
    return steps * batch / (time.perf_counter() - start)


def conventional_loader(images, args):
    ds = PILImages(images, SimCLRViews(args.image_size, args.strength, min_scale=args.min_scale))
    return DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
                      pin_memory=args.device.startswith("cuda"), persistent_workers=args.workers > 0,
                      prefetch_factor=2 if args.workers > 0 else None)


def endless(loader):
    while True:
        yield from loader


def measure(args) -> dict:
    device = torch.device(args.device)
    setup_backend(device)
    images = load_images(args)
    b = args.batch_size
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                     f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
                     "torch": torch.__version__, "batch_size": b, "model": f"{args.model} x{args.width:g}",
                     "image_size": args.image_size, "workers": args.workers, "compile": args.compile}

    views = ViewMaker("simclr", args.image_size, args.strength, min_scale=args.min_scale, seed=0, device=device)
    on_device = images.to(device)
    gen = torch.Generator().manual_seed(0)

    def our_views():
        idx = torch.randint(0, len(on_device), (b,), generator=gen).to(device)
        x = on_device[idx]
        return views(x), views(x)

    # augmentation alone
    def aug_ours():
        our_views()
        sync(device)

    results["aug_ours"] = timed(aug_ours, args.warmup, args.steps, b)
    batches = endless(conventional_loader(images, args))
    results["aug_conventional"] = timed(lambda: next(batches), args.warmup + 2 * max(args.workers, 1),
                                        args.steps, b)

    # training: ceiling, ours, conventional
    step = Step(args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fixed = our_views()
    results["ceiling"] = timed(lambda: step(*fixed), args.warmup, args.steps, b)
    results["ours"] = timed(lambda: step(*our_views()), args.warmup, args.steps, b)

    def conventional_step():
        v1, v2 = next(batches)
        kw = {"memory_format": torch.channels_last} if device.type == "cuda" else {}
        step(v1.to(device, non_blocking=True, **kw), v2.to(device, non_blocking=True, **kw))

    results["conventional"] = timed(conventional_step, args.warmup + 2 * max(args.workers, 1), args.steps, b)
    if args.data:
        measure_streaming(args, device, views, step, results)
    results["ours_over_ceiling"] = results["ours"] / results["ceiling"]
    results["ours_over_conventional"] = results["ours"] / results["conventional"]
    results["aug_ours_over_conventional"] = results["aug_ours"] / results["aug_conventional"]
    if device.type == "cuda":
        results["peak_device_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        results["peak_host_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return results


def measure_streaming(args, device: torch.device, views: ViewMaker, step: Step, results: dict) -> None:
    """Large-folder figures, decoding included on both sides: ours streams files through workers that
    only read and decode (``data.stream=on``) and augments on the device; the conventional path opens
    each file with PIL and transforms it in the workers."""
    from simclrv2.data.datasets import list_images
    from simclrv2.data.feed import BatchFeed
    from simclrv2.data.files import FileImages

    files = [str(f) for f in list_images(Path(args.data))][: args.num_images]
    b = args.batch_size
    drain = args.warmup + 4 * max(args.workers, 1)  # BatchFeed prefetches 4 batches per worker
    total = drain + args.steps + 1

    def stream_batches():
        feed = BatchFeed(FileImages(files, args.image_size), device, workers=args.workers, decode=args.decode)
        order = torch.Generator().manual_seed(1)
        planned = [torch.randint(0, len(files), (b,), generator=order) for _ in range(total)]
        feed.plan(planned)
        return feed, iter(planned)

    feed, planned = stream_batches()

    def aug_stream():
        x = feed(next(planned))
        views(x), views(x)
        sync(device)

    results["aug_stream"] = timed(aug_stream, drain, args.steps, b)
    conventional = DataLoader(PILFiles(files, SimCLRViews(args.image_size, args.strength, min_scale=args.min_scale)),
                              batch_size=b, shuffle=True, drop_last=True, num_workers=args.workers,
                              persistent_workers=args.workers > 0, prefetch_factor=2 if args.workers > 0 else None)
    from_files = endless(conventional)
    results["aug_conventional_files"] = timed(lambda: next(from_files), args.warmup + 2 * max(args.workers, 1),
                                              args.steps, b)
    feed, planned = stream_batches()

    def stream_step():
        x = feed(next(planned))
        step(views(x), views(x))

    results["stream"] = timed(stream_step, drain, args.steps, b)
    results["aug_stream_over_conventional_files"] = results["aug_stream"] / results["aug_conventional_files"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", help="ImageFolder of small images (default: synthetic images)")
    ap.add_argument("--num-images", type=int, default=10_000)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--min-scale", type=float, default=0.08)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional path")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: --workers on CPU)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--decode", default="workers", choices=("workers", "device"),
                    help="streamed JPEGs (with --data): decoded in the workers, or on the device (nvJPEG)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads or max(args.workers, 1))  # the same CPU budget for both paths
    r = measure(args)
    print(f"device {r['device']}, torch {r['torch']}, {r['model']}, batch {r['batch_size']}, "
          f"{r['image_size']} px, {r['workers']} workers, compile {r['compile']}")
    print("| path | images/s |\n|---|---:|")
    for key in ("conventional", "ours", "ceiling", "aug_conventional", "aug_ours",
                "stream", "aug_conventional_files", "aug_stream"):
        if key in r:
            print(f"| {key} | {r[key]:,.0f} |")
    print(f"ours / ceiling = {r['ours_over_ceiling']:.2f}, ours / conventional = {r['ours_over_conventional']:.2f}, "
          f"augmentation alone: ours / conventional = {r['aug_ours_over_conventional']:.2f}")
    if "aug_stream" in r:
        print(f"streaming from files, augmentation alone: ours / conventional = "
              f"{r['aug_stream_over_conventional_files']:.2f}; training: stream / ceiling = "
              f"{r['stream'] / r['ceiling']:.2f}")
    mem = r.get("peak_device_memory_gib", r.get("peak_host_memory_gib"))
    print(f"peak {'device' if 'peak_device_memory_gib' in r else 'host'} memory {mem:.2f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
