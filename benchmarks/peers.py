"""simclrv2 vs lightly, side by side on the same machine, in one run (issue #21).

Each side trains with its own documented SimCLR recipe on the same image folder, model size, batch,
thread budget and torch, each run a separate process, the sides alternating (A B A B ...):

  ours      ``simclrv2 pretrain --data DIR`` (the folder preset) at ``image_size``, ResNet-18 x1,
            ``threads`` torch threads, ``knn_every=0``: the images decoded once, up front
  ours (streamed)  the same with ``data.stream=on``: ``threads`` DataLoader workers decode each
            batch while the model trains (nothing decoded up front); with ``--ours stream``
  lightly   lightly's SimCLR example (docs: examples/pytorch/simclr.py): torchvision ResNet-18 without
            its classifier, ``SimCLRProjectionHead(512, 512, 128)``, ``SimCLRTransform(input_size)``,
            ``NTXentLoss()``, SGD lr 0.06, a DataLoader (shuffle, drop_last) over ``LightlyDataset``
            with ``--lightly-workers`` workers (each count its own side, e.g. ``2,0``),
            ``threads`` torch threads in the main process

Per run: launch to the first optimizer step (from the moment the process is started), steady-state
images/s over steps ``--warmup + 1`` to the last, images per CPU-second over the same steps (the
CPU time of the whole process tree, DataLoader workers included), peak RSS of the main process (its
VmHWM when training ends) and peak PSS of the whole tree (sampled every 0.2 s until training ends).
In the ``ours`` runs the model-only ceiling is measured after training: forward + backward + LARS
step of the same network on views made once. ``--ours plain`` adds our decoded run with the views
made in the loop between steps (no prefetch thread), to see what the thread gains.

Accuracy: every run trains ``--epochs`` epochs on the same training subset; then ONE evaluator (this
process) takes each run's encoder, computes features of the same images with the same evaluation
preprocessing (decode, the central crop resized to ``image_size``: ``simclrv2.data.files.eval_crop``;
then each side's own input normalisation: [0, 1] for ours, ImageNet mean/std for lightly, as each
was trained) and runs the same weighted kNN (``simclrv2.core.knn``, k=20, t=0.1): training subset as
the bank, a disjoint validation subset as the queries. Each repeat uses its own seed on both sides.

    pip install -e ".[peers]"
    python benchmarks/peers.py --data .data/imagenette2-160/train --json benchmarks/results/peers-cpu.json \\
        --markdown benchmarks/results/peers-cpu.md

The defaults (2 repeats, 1,280 training images = 5 steps of 256 per epoch, 2 epochs, 64-px views,
2 threads, 2 lightly workers) take about 8-10 minutes on 2 idle cores. On a GPU
(``benchmarks/gpu_session.sh``): ``--device cuda --lightly-workers 16``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import threading
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- process measurements

def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid``'s process tree (live processes)."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def _kib(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def memory(pid: int) -> tuple[float, float]:
    """(RSS of ``pid``, PSS of its whole tree), GiB."""
    rss = _kib(f"/proc/{pid}/status", "VmRSS:")
    pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in tree(pid))
    return rss / 2 ** 20, pss / 2 ** 20


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return "?"


class StepClock:
    """Wall time and tree CPU seconds at the end of every optimizer step (child side)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def mark(self) -> None:
        self.marks.append((time.time(), cpu_seconds(os.getpid())))

    def done(self) -> dict:
        """What the parent needs once training is over: the step marks, when training ended and the
        main process's peak RSS so far (VmHWM; anything measured later, the ceiling, is not counted)."""
        return {"marks": self.marks, "train_end": time.time(),
                "peak_rss_main_gib": _kib(f"/proc/{os.getpid()}/status", "VmHWM:") / 2 ** 20}


# ----------------------------------------------------------------------------- the data

def subset_folder(data: Path, work: Path, train_per_class: int, val_per_class: int) -> Path:
    """``work/subset/{train,val}/<class>/``: symlinks to the first ``train_per_class`` and the last
    ``val_per_class`` files (sorted) of each class of ``data`` (disjoint)."""
    root = work / "subset"
    if root.exists():
        shutil.rmtree(root)
    classes = sorted(d.name for d in data.iterdir() if d.is_dir())
    if not classes:
        raise SystemExit(f"peers.py: error: {data} has no class folders")
    for c in classes:
        files = sorted(f for f in (data / c).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if len(files) < train_per_class + val_per_class:
            raise SystemExit(f"peers.py: error: {data / c} has {len(files)} images, fewer than "
                             f"{train_per_class} + {val_per_class}")
        for split, picked in (("train", files[:train_per_class]), ("val", files[len(files) - val_per_class:])):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for f in picked:
                (root / split / c / f.name).symlink_to(f.resolve())
    return root


# ----------------------------------------------------------------------------- the two sides (children)

def child_ours(args, out: Path) -> dict:
    import torch

    from simclrv2 import cli
    from simclrv2.train import stepper as stepper_module

    clock, original = StepClock(), stepper_module.Stepper.step

    def step(self, loss):
        value = original(self, loss)
        clock.mark()
        return value

    stepper_module.Stepper.step = step
    if args.child == "ours-plain":  # the views made in the loop, between steps (as before the prefetch thread)
        from simclrv2.data.prefetch import Inline
        from simclrv2.train import pretrain

        pretrain.Prefetcher = Inline
    run_dir = out / f"{args.child}-{args.seed}"
    argv = ["pretrain", "--data", str(args.subset), "--out", str(run_dir), "--overwrite",
            f"image_size={args.image_size}", "model=resnet18", "width=1.0", "cifar_stem=false",
            f"batch_size={args.batch_size}", f"pretrain.epochs={args.epochs}", f"threads={args.threads}",
            f"workers={args.threads}", "knn_every=0", f"seed={args.seed}", f"device={args.device}",
            f"data.stream={'on' if args.child == 'ours-stream' else 'auto'}",
            f"amp={'false' if args.child == 'ours-fp32' else 'true'}"]
    code = cli.main(argv)
    if code:
        raise SystemExit(code)
    result = {**clock.done(), "checkpoint": str(run_dir / "last")}
    if args.ceiling_steps and args.child == "ours":
        result["ceiling"] = ceiling(args, torch)
    return result


def ceiling(args, torch) -> dict:
    """Model-only steps of our network (forward + backward + LARS) on one batch of views made once."""
    from simclrv2.config import ModelConfig
    from simclrv2.core.runtime import autocast, prepare_model
    from simclrv2.data import datasets
    from simclrv2.config import DataConfig
    from simclrv2.data.views import ViewMaker
    from simclrv2.losses import nt_xent
    from simclrv2.models.networks import build_pretrain_model
    from simclrv2.optim import build_optimizer

    device = torch.device(args.device)
    splits = datasets.load(DataConfig(dataset="folder", path=str(args.subset / "train"), image_size=args.image_size,
                                      stream="off"), workers=args.threads, need_val=False)
    images = splits.pretrain_images()
    idx = torch.arange(args.batch_size) % len(images)
    views = ViewMaker("simclr", args.image_size, seed=0, device=device)
    x = images[idx] if isinstance(images, torch.Tensor) else images.take(idx)
    x = x.to(device)
    both = torch.cat([views(x), views(x)])
    net = prepare_model(build_pretrain_model(ModelConfig(model="resnet18", width=1.0, cifar_stem=False)), device,
                        amp=True)
    opt = build_optimizer(net, "lars", 0.3, 1e-4, fused=device.type == "cuda")
    n = args.batch_size

    def step():
        with autocast(device, True):
            z = net(both)
        loss = nt_xent(z[:n], z[n:], 0.2)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    wall, cpu = time.perf_counter(), cpu_seconds(os.getpid())
    for _ in range(args.ceiling_steps):
        step()
    wall, cpu = time.perf_counter() - wall, cpu_seconds(os.getpid()) - cpu
    return {"images_per_s": args.ceiling_steps * n / wall, "images_per_cpu_s": args.ceiling_steps * n / max(cpu, 1e-9),
            "steps": args.ceiling_steps}


def child_lightly(args, out: Path) -> dict:
    """lightly's documented SimCLR example (examples/pytorch/simclr.py), on a folder."""
    import torch
    import torchvision
    from torch import nn

    from lightly.data import LightlyDataset
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms.simclr_transform import SimCLRTransform

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    class SimCLR(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone
            self.projection_head = SimCLRProjectionHead(512, 512, 128)

        def forward(self, x):
            x = self.backbone(x).flatten(start_dim=1)
            return self.projection_head(x)

    resnet = torchvision.models.resnet18()
    backbone = nn.Sequential(*list(resnet.children())[:-1])
    model = SimCLR(backbone)
    device = args.device
    model.to(device)
    transform = SimCLRTransform(input_size=args.image_size)
    dataset = LightlyDataset(str(args.subset / "train"), transform=transform)
    dataloader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                             num_workers=args.workers)
    criterion = NTXentLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    clock = StepClock()
    for _ in range(args.epochs):
        for batch in dataloader:
            x0, x1 = batch[0]
            x0, x1 = x0.to(device), x1.to(device)
            z0, z1 = model(x0), model(x1)
            loss = criterion(z0, z1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            clock.mark()
    weights = out / f"lightly-w{args.workers}-{args.seed}.pt"
    torch.save(backbone.state_dict(), weights)
    return {**clock.done(), "checkpoint": str(weights)}


# ----------------------------------------------------------------------------- the one evaluator

def evaluate(runs: list[dict], subset: Path, image_size: int, threads: int) -> None:
    """kNN top-1 (%) of every run's encoder, same images, same crops, same kNN."""
    import torch
    import torchvision
    from torch import nn

    from simclrv2.core.knn import knn_predict
    from simclrv2.core.metrics import topk_accuracy
    from simclrv2.data.files import decode_file, eval_crop
    from simclrv2.inference.embed import load_network

    torch.set_num_threads(threads)

    def views(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        classes = sorted(d.name for d in (subset / split).iterdir())
        files = [(f, i) for i, c in enumerate(classes) for f in sorted((subset / split / c).iterdir())]
        x = torch.stack([eval_crop(decode_file(f), image_size) for f, _ in files])
        return x, torch.tensor([i for _, i in files])

    (bank_x, bank_y), (query_x, query_y) = views("train"), views("val")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def features(fn, x, normalise):
        out = []
        for start in range(0, len(x), 256):
            v = x[start:start + 256]  # eval_crop: float32 views in [0, 1] (the official preprocess_for_eval)
            out.append(fn((v - mean) / std if normalise else v).flatten(1))
        return torch.cat(out)

    for run in runs:
        if run["side"].startswith("ours"):
            net, _ = load_network(run["checkpoint"])
            fn, normalise = net.encoder.forward_features, False
        else:
            resnet = torchvision.models.resnet18()
            backbone = nn.Sequential(*list(resnet.children())[:-1])
            backbone.load_state_dict(torch.load(run["checkpoint"], map_location="cpu", weights_only=True))
            fn, normalise = backbone.eval(), True
        scores = knn_predict(features(fn, bank_x, normalise), bank_y, features(fn, query_x, normalise),
                             int(bank_y.max()) + 1, k=20, temperature=0.1)
        run["knn_top1"] = topk_accuracy(scores, query_y)["top1"]


# ----------------------------------------------------------------------------- orchestration

def run_child(args, side: str, workers: int, seed: int) -> dict:
    """Start one side in its own process, sample its memory, return its measurements."""
    result_file = args.work / f"{side}-w{workers}-{seed}.json"
    shutil.rmtree(args.work / f"{side}-{seed}", ignore_errors=True)  # a run left there would be resumed
    cmd = [sys.executable, str(HERE), "--child", side, "--subset", str(args.subset), "--work", str(args.work),
           "--seed", str(seed), "--workers", str(workers), "--threads", str(args.threads),
           "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
           "--device", args.device, "--ceiling-steps", str(args.ceiling_steps), "--result", str(result_file)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    load_before = loadavg()
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: list[tuple[float, float, float]] = []  # (time, RSS of the main process, PSS of the tree)
    lines: list[str] = []

    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        samples.append((time.time(), *memory(proc.pid)))
        time.sleep(0.2)
    reader.join(5)
    if proc.returncode:
        sys.stderr.write("".join(lines[-40:]))
        raise SystemExit(f"peers.py: error: the {side} run (seed {seed}) failed with exit code {proc.returncode}")
    child = json.loads(result_file.read_text())
    marks = child.pop("marks")
    train_end = child.pop("train_end")
    training = [m for m in samples if m[0] <= train_end] or samples[:1]
    peak_pss = max((m[2] for m in training), default=0.0)  # while training (the ceiling comes after)
    peak_rss = max(child.pop("peak_rss_main_gib"), max((m[1] for m in training), default=0.0))
    first = args.warmup  # steps 1..warmup are warm-up; steady state from the end of step `warmup`
    if len(marks) <= first + 1:
        raise SystemExit(f"peers.py: error: {len(marks)} steps is too few for --warmup {args.warmup}")
    (t0, c0), (t1, c1) = marks[first - 1], marks[-1]
    images = (len(marks) - first) * args.batch_size
    name = {"ours": "ours", "ours-stream": "ours (streamed)", "ours-plain": "ours (no prefetch)",
            "ours-fp32": "ours (float32, amp=false)"}.get(
        side, f"lightly ({workers} workers)")
    return {"side": side, "name": name, "workers": workers, "seed": seed, "steps": len(marks),
            "images_per_s": images / (t1 - t0), "images_per_cpu_s": images / max(c1 - c0, 1e-9),
            "launch_to_first_step_s": marks[0][0] - start, "wall_s": time.time() - start,
            "peak_rss_main_gib": peak_rss, "peak_pss_tree_gib": peak_pss,
            "loadavg_before": load_before, "loadavg_after": loadavg(), **child}


def matmul_gflops(threads: int, dtype: str = "float32", n: int = 1024, reps: int = 10) -> float:
    """What the cores can do: matmul GFLOP/s in ``dtype`` with ``threads`` threads (the machine's limit)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def step_gflop(image_size: int, batch: int) -> float:
    """GFLOP of one of our training steps: 2 views x batch images, forward x 3 (forward + backward)."""
    import torch

    from simclrv2.config import ModelConfig
    from simclrv2.models.networks import build_pretrain_model
    from torch.utils.flop_counter import FlopCounterMode

    net = build_pretrain_model(ModelConfig(model="resnet18", width=1.0, cifar_stem=False))
    with FlopCounterMode(display=False) as counter:
        net(torch.rand(2, 3, image_size, image_size))
    return counter.get_total_flops() / 2 * 2 * batch * 3 / 1e9


def summarise(runs: list[dict], args, gflops: float, gflop: float, gflops_bf16: float = 0.0,
              bf16: bool = False) -> dict:
    def mean(rows, key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    sides = {}
    for r in runs:
        sides.setdefault(r["name"], []).append(r)
    table = {name: {k: mean(rows, k) for k in ("images_per_s", "images_per_cpu_s", "launch_to_first_step_s",
                                               "peak_rss_main_gib", "peak_pss_tree_gib", "knn_top1")}
             | {"knn_top1_by_seed": {r["seed"]: r.get("knn_top1") for r in rows}}
             for name, rows in sides.items()}
    ceilings = [r["ceiling"]["images_per_s"] for r in runs if "ceiling" in r]
    ceiling_rate = sum(ceilings) / len(ceilings) if ceilings else None
    lightly = [v for k, v in table.items() if not k.startswith("ours")]
    best = max(lightly, key=lambda v: v["images_per_s"]) if lightly else None
    summary: dict = {"ceiling_images_per_s": ceiling_rate, "matmul_gflops": gflops, "matmul_gflops_bf16": gflops_bf16,
                     "bf16_autocast": bf16, "step_gflop": gflop,
                     "ceiling_gflops_achieved": gflop * ceiling_rate / args.batch_size if ceilings else None}
    for name, ours in table.items():
        if not name.startswith("ours") or best is None:
            continue
        summary[name] = {
            "over_best_lightly_images_per_s": ours["images_per_s"] / best["images_per_s"],
            # the ceiling is timed as our default runs (bf16 where the CPU has AMX), not in float32
            "over_ceiling": ours["images_per_s"] / ceiling_rate if ceilings and "float32" not in name else None,
            "launch_over_fastest_lightly": ours["launch_to_first_step_s"] / min(v["launch_to_first_step_s"]
                                                                                for v in lightly),
            "peak_rss_main_over_lightly": ours["peak_rss_main_gib"] / min(v["peak_rss_main_gib"] for v in lightly),
            "peak_pss_tree_over_lightly": ours["peak_pss_tree_gib"] / min(v["peak_pss_tree_gib"] for v in lightly),
            "gflops_achieved": gflop * ours["images_per_s"] / args.batch_size,
        }
    return {"table": table, "summary": summary}


def markdown(result: dict) -> str:
    rows = ["| side | images/s | images per CPU-s | launch to first step (s) | peak RSS main (GiB) | "
            "peak PSS all processes (GiB) | kNN top-1 (%) by seed |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, v in result["table"].items():
        seeds = ", ".join(f"{s}: {a:.1f}" for s, a in v["knn_top1_by_seed"].items() if a is not None)
        rows.append(f"| {name} | {v['images_per_s']:.1f} | {v['images_per_cpu_s']:.1f} | "
                    f"{v['launch_to_first_step_s']:.1f} | {v['peak_rss_main_gib']:.2f} | "
                    f"{v['peak_pss_tree_gib']:.2f} | {seeds} |")
    s = result["summary"]
    if s.get("ceiling_images_per_s"):
        rows.append(f"| ours, model only (ceiling) | {s['ceiling_images_per_s']:.1f} | | | | | |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="an ImageFolder tree (class folders), e.g. imagenette2-160/train")
    p.add_argument("--work", type=Path, default=Path("/tmp/simclrv2-peers"),
                   help="scratch folder (its subset/ and run files are replaced)")
    p.add_argument("--repeats", type=int, default=2, help="runs per side, alternating; seed = repeat index")
    p.add_argument("--train-per-class", type=int, default=128)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="steps before the steady-state window")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="torch threads on both sides (and our decode workers)")
    p.add_argument("--lightly-workers", default="2", help="comma-separated DataLoader worker counts, e.g. 2,0")
    p.add_argument("--ours", default="decoded,stream",
                   help="our variants: decoded (once, up front), stream, plain (decoded, views made between steps), "
                        "float32 (decoded, amp=false: no bf16 autocast on an AMX CPU)")
    p.add_argument("--ceiling-steps", type=int, default=5, help="model-only steps after each of our runs (0: none)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    # child side
    p.add_argument("--child", choices=["ours", "ours-stream", "ours-plain", "ours-fp32", "lightly"],
                   help=argparse.SUPPRESS)
    p.add_argument("--subset", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        result = (child_lightly if args.child == "lightly" else child_ours)(args, args.work)
        args.result.write_text(json.dumps(result))
        return 0

    if args.data is None:
        p.error("--data is required")
    try:
        import lightly
    except ImportError:
        p.error('lightly is not installed: pip install -e ".[peers]"')
    import torch

    args.work.mkdir(parents=True, exist_ok=True)  # its subset/ is replaced, the runs' files overwritten
    args.subset = subset_folder(args.data, args.work, args.train_per_class, args.val_per_class)
    workers = [int(w) for w in args.lightly_workers.split(",") if w.strip()]
    print(f"peers: torch {torch.__version__}, lightly {lightly.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {loadavg()}; {args.train_per_class * 10} training images, "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.image_size} px, {args.threads} threads", flush=True)
    runs = []
    for seed in range(args.repeats):
        ours = [{"decoded": "ours", "stream": "ours-stream", "plain": "ours-plain", "float32": "ours-fp32"}[v.strip()]
                for v in args.ours.split(",") if v.strip()]
        for side, w in [(o, args.threads) for o in ours] + [("lightly", w) for w in workers]:
            r = run_child(args, side, w, seed)
            runs.append(r)
            print(f"  {r['name']:<22} seed {seed}: {r['images_per_s']:6.1f} img/s, {r['images_per_cpu_s']:5.1f} "
                  f"img/CPU-s, first step {r['launch_to_first_step_s']:5.1f} s, RSS {r['peak_rss_main_gib']:.2f} "
                  f"GiB, PSS {r['peak_pss_tree_gib']:.2f} GiB, load {r['loadavg_before']}"
                  + (f", ceiling {r['ceiling']['images_per_s']:.1f} img/s" if "ceiling" in r else ""), flush=True)
    evaluate(runs, args.subset, args.image_size, args.threads)
    for r in runs:
        print(f"  {r['name']:<22} seed {r['seed']}: kNN top-1 {r['knn_top1']:.2f}%", flush=True)
    from simclrv2.core.runtime import uses_bf16

    cpu = args.device == "cpu"
    gflops = matmul_gflops(args.threads) if cpu else 0.0
    gflops_bf16 = matmul_gflops(args.threads, "bfloat16") if cpu else 0.0
    result = summarise(runs, args, gflops, step_gflop(args.image_size, args.batch_size), gflops_bf16,
                       uses_bf16(torch.device(args.device)))
    result |= {"runs": runs, "args": {k: str(v) for k, v in vars(args).items()},
               "machine": {"torch": torch.__version__, "lightly": lightly.__version__, "cpus": os.cpu_count(),
                           "platform": platform.platform(), "loadavg_end": loadavg()}}
    print(markdown(result))
    print(json.dumps(result["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
