"""Fill the README's results from the JSON under ``benchmarks/results/``, so that no quoted number can go stale.

Each generated part of README.md sits between ``<!-- generated: NAME -->`` and ``<!-- /generated -->``;
this script re-renders every such block from the JSON files (the prose around the numbers lives in the
``BLOCKS`` functions below: edit it there, not in the README). ``tests/test_readme.py`` fails when the
README and the JSON disagree.

    python benchmarks/render_readme.py            # rewrite README.md in place
    python benchmarks/render_readme.py --check    # exit 1, naming the stale blocks, when it is out of date

After new measurements (e.g. ``benchmarks/quickstart_seeds.py ... --json benchmarks/results/quickstart-seeds.json``)
run it once and commit README.md with the JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)
STAGES = ("supervised", "knn", "linear", "finetune", "distill")


def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def _quickstart_module():
    """``benchmarks/quickstart_seeds.py`` (its table is the README's), imported by path."""
    spec = importlib.util.spec_from_file_location("quickstart_seeds", ROOT / "benchmarks" / "quickstart_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _top1(rows: list[dict[str, Any]]) -> dict[tuple[float, str], float]:
    return {(r["labels"], r["stage"]): r["top1"] for r in rows}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} minutes"


def _count(n: int) -> str:
    """Small counts in words, as the README's prose has them."""
    return {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
            10: "ten"}.get(n, str(n))


def _prose(text: str) -> str:
    """A paragraph wrapped as the README's (100 columns)."""
    return textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False) + "\n"


# -- the blocks --------------------------------------------------------------------------------------------

def quickstart_intro() -> str:
    """Which runs the Quickstart table summarises."""
    summary = load("quickstart-seeds.json")
    seeds = summary["seeds"]
    span = f"{seeds[0]}–{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ", ".join(map(str, seeds))
    return (_prose(
        f"**Embedded default** — `simclrv2 pipeline`, the Quickstart command (1,438 training and 359 validation "
        f"digits, ResNet-18 at width 0.25, 8 px, one thread), run for seeds {span} on {summary['date']} (`seed=N` "
        f"draws the labeled images and every other random choice; seed 0 is the Quickstart itself):")
        + f"\n    python benchmarks/quickstart_seeds.py --seeds {','.join(map(str, seeds))} "
        + "--out runs/quickstart-seeds \\\n        --json benchmarks/results/quickstart-seeds.json "
        + "--markdown benchmarks/results/quickstart-seeds.md\n"
        + f"\nTop-1 (%), min–max over the {_count(len(seeds))} runs (mean):\n")


def quickstart_table() -> str:
    """Top-1 min–max (mean) over the seeds: the table of ``quickstart_seeds.py``."""
    table = _quickstart_module().markdown(load("quickstart-seeds.json"))
    return table.split("\n\n")[0] + "\n"


def quickstart_seed0() -> str:
    """What the Quickstart prints (seed 0), kNN after pretraining, wall time."""
    summary, extra = load("quickstart-seeds.json"), load("quickstart-extra.json")
    run = next(r for r in summary["runs"] if r["seed"] == 0)
    top1 = _top1(run["rows"])
    fractions = sorted({labels for labels, _ in top1})
    first = ", ".join(f"{name} {top1[(fractions[0], stage)]:.1f}" for stage, name in
                      zip(STAGES, ("supervised", "kNN", "linear", "fine-tune", "distill")))
    rest = "; ".join(f"{100 * f:g}%: " + ", ".join(f"{top1[(f, stage)]:.1f}" for stage in STAGES)
                     for f in fractions[1:])
    knn = [r["pretrain_knn_top1"] for r in summary["runs"] if r["pretrain_knn_top1"] is not None]
    walls = [r["wall_seconds"] for r in summary["runs"]]
    clone = extra["fresh_clone"]
    return _prose(
            f"What the Quickstart prints (seed 0): {100 * fractions[0]:g}% labels: {first}; {rest}. A run repeats "
            f"exactly on the same machine (one thread; other CPUs or torch versions may differ in the last digits). "
            f"Pretraining raises kNN accuracy with all training labels to {min(knn):.1f}–{max(knn):.1f}% (seed 0: "
            f"{run['pretrain_knn_top1']:.1f}%), from {extra['random_init_knn_top1']:.1f}% for the randomly "
            f"initialised encoder (`{extra['random_init_command']}`). Alone on the idle machine the Quickstart "
            f"command (seed 0) took {extra['idle_run']['seconds']:.0f} s ({extra['idle_run']['date']}); the seed "
            f"runs above took {min(walls):.0f}–{max(walls):.0f} s each, {summary.get('jobs', 1)} at a time; on a fresh clone (2026-11-29) with a new virtual environment the first Quickstart command took "
            f"{clone['pipeline_seconds']:.0f} s in all (installing torch included), the second "
            f"{clone['tests_seconds']:.0f} s (installing the test extra, TensorFlow included, and "
            f"{clone['tests']} tests).")


def label_seeds() -> str:
    """Why kNN beats fine-tuning at 1%: ``digits_label_seeds.py`` and the Quickstart's ranges."""
    summary, variants = load("quickstart-seeds.json"), load("digits-label-seeds-variants.json")
    extra = load("quickstart-extra.json")
    cells = summary["cells"]
    low, high = sorted(cells, key=float)[0], sorted(cells, key=float)[-1]
    moves = [cells[low][s]["max"] - cells[low][s]["min"] for s in STAGES[1:] if s in cells[low]]
    default = [r for r in variants["rows"] if r["variant"] == "default" and r["labels"] == float(low)]
    knn_wins = sum(r["knn"] > r["finetune_last"] for r in default)
    spans = variants["spans"]

    def mean(variant: str, metric: str = "finetune_last") -> str:
        return f"{spans[f'{variant} labels={float(low):g}'][metric][1]:.1f}"

    runs = [_top1(r["rows"]) for r in summary["runs"]]
    ft_wins = sum(t[(float(high), "finetune")] > t[(float(high), "knn")] for t in runs)
    best = max(STAGES, key=lambda s: cells[high][s]["mean"])
    best_words = {"distill": "distillation", "finetune": "fine-tuning", "knn": "kNN", "linear": "the linear probe",
                  "supervised": "the supervised baseline"}[best]
    labeled = cells[low]["labeled_images"]["max"]
    images = _count(round(labeled))
    return _prose(
            f"Why the frozen kNN probe beats fine-tuning at {100 * float(low):g}%: one labeled image per class. The "
            f"choice of the {images} images moves every method by {min(moves):.0f}–{max(moves):.0f} points "
            f"(the ranges above), more than the methods differ. On one pretrained encoder with the same images per "
            f"seed (`benchmarks/digits_label_seeds.py`, measured {extra['label_seeds_measured']} with the recipe of "
            f"then), kNN beat fine-tuning's last epoch in {knn_wins} of "
            f"{len(default)} seeds, and every way of letting fine-tuning move the encoder more was worse still: SGD "
            f"instead of LARS, 30 SGD epochs, or 10x LARS's learning rate gave means of {mean('sgd')}, "
            f"{mean('sgd.epochs=30')} and {mean('finetune.lr=0.1')}% against {mean('default')}% for the preset and "
            f"{mean('default', 'knn')}% for kNN. {images.capitalize()} images are too few to adapt the encoder; a "
            f"nearest-neighbour "
            f"vote on pretrained features is the better use of them, and distillation on all the unlabeled images "
            f"recovers most of the gap. At {100 * float(high):g}% fine-tuning beats kNN in {ft_wins} of {len(runs)} "
            f"seeds and {best_words} is best on average. This comparison used the validation split; the preset was "
            f"left as it was. Details: `benchmarks/README.md`.")


def _stage_table(columns: list[tuple[str, dict[str, Any]]], label_column: str | None = None) -> str:
    """Top-1 per label fraction (one row per ``columns`` entry), the best of each row in bold."""
    head = "| labels | " + (f"{label_column} | " if label_column else "labeled images | ") + \
        "supervised | kNN | linear | fine-tune | distill (self) |"
    lines = [head, "|---:|" + ("---|" if label_column else "---:|") + "---:|" * 5]
    for f in sorted({r["labels"] for _, results in columns for r in results["rows"]}):
        for name, results in columns:
            top1 = _top1(results["rows"])
            count = next(r["labeled_images"] for r in results["rows"] if r["labels"] == f)
            best = max(top1[(f, s)] for s in STAGES)
            cells = [f"**{top1[(f, s)]:.1f}**" if top1[(f, s)] == best else f"{top1[(f, s)]:.1f}" for s in STAGES]
            lines.append(f"| {100 * f:g}% | {name if label_column else f'{count:,}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cifar10_cpu() -> str:
    results = load("cifar10-cpu.json")
    return (_prose(
        f"**CIFAR-10, CPU scale** — `OMP_NUM_THREADS=1 python benchmarks/cifar10_semisup.py --data "
        f"../shared/data/cifar10-train-jpeg.tar.gz --scale cpu` ({results['train_images']:,} training images, "
        f"validation = files 4500–4999 of each class; images downsampled to "
        f"{results['config']['data']['image_size']} "
        f"px, ResNet-18 at width {results['width']:g}, {results['pretrain']['epochs']} pretraining epochs; "
        f"{_minutes(results['seconds'])} in all on one thread), measured 2026-11-29 with the recipe of then (NT-Xent "
        f"summed over both directions; before the official augmentation, evaluation resize and schedule of "
        f"2026-12-01, not yet rerun). kNN accuracy with all labels after pretraining: "
        f"{results['pretrain']['knn_top1_all_labels']:.1f}%. Top-1 (%), one seed, the best of each row in bold:")
        + "\n" + _stage_table([("", results)]))


def cifar10_cpu_budget() -> str:
    """What the CIFAR-10 CPU run says and does not say, from its numbers."""
    results = load("cifar10-cpu.json")
    top1 = _top1(results["rows"])
    low, high = min(f for f, _ in top1), max(f for f, _ in top1)
    gap = top1[(high, "finetune")] - top1[(high, "supervised")]
    finetune = ("only matches" if abs(gap) < 1 else "beats" if gap > 0 else "trails")
    probes = max(top1[(low, "knn")], top1[(low, "linear")])
    trained = max(top1[(low, s)] for s in ("supervised", "finetune", "distill"))
    worth = "is not yet worth more than the labels" if gap < 1 else "already adds to the labels"
    return _prose(
        f"This tiny CPU budget ({results['pretrain']['epochs']} epochs of a "
        f"{results['pretrain']['params'] / 1e6:.2f}M-parameter network at {results['config']['data']['image_size']} "
        f"px) says little about the method's ceiling: the paper reaches far higher with hundreds of epochs of a "
        f"big model. It checks that the stages work together on real data, and at this budget pretraining {worth}: "
        f"fine-tuning {finetune} the supervised baseline at {100 * high:g}%"
        + (f", and the frozen probes win at {100 * low:g}%" if probes > trained else "")
        + ". The GPU recipe (`--scale gpu`) is still to be measured. Details, logs and JSON: "
          "`benchmarks/README.md`, `benchmarks/results/`.")


def imagenette_cpu() -> str:
    full, square = load("imagenette-cpu-full.json"), load("imagenette-cpu-square.json")
    return (_prose(
        f"**Imagenette, CPU scale: crops from the whole photo** — `python benchmarks/semisup.py --dataset "
        f"imagenette --data ../shared/data/imagenette2-160-train.tar.gz --scale cpu` ({full['train_images']:,} "
        f"training and {full['val_images']:,} validation photos of 10 ImageNet classes, "
        f"{full['config']['data']['image_size']}-px views, ResNet-18 at width {full['width']:g}, "
        f"{full['pretrain']['epochs']} pretraining epochs; about {_minutes(full['seconds'])} on a shared core), "
        f"measured 2026-11-29 against the same run with the old data path (`--crop square`: crops cut from a centre "
        f"square), same seed, with the recipe of then (torchvision-style augmentation, antialiased evaluation "
        f"resize; not yet rerun with the official ones). Top-1 (%), the best of each row in bold:")
        + "\n" + _stage_table([("full photo", full), ("centre square", square)], label_column="data path") + "\n"
        + _prose(f"kNN with all labels after pretraining: {full['pretrain']['knn_top1_all_labels']:.1f}% (full "
                 f"photo) vs {square['pretrain']['knn_top1_all_labels']:.1f}% (centre square). One seed per path; "
                 f"details and the noise level in `benchmarks/README.md`."))


def throughput() -> str:
    cifar, photos = load("throughput-cpu.json"), load("throughput-imagenette-cpu.json")
    return _prose(
        f"**Data path** — `benchmarks/throughput.py` on the same 2 cores (CIFAR-10 JPEGs, batch "
        f"{cifar['batch_size']}): making both SimCLR views of a batch on the device runs at {cifar['aug_ours']:,.0f} "
        f"images/s against {cifar['aug_conventional']:,.0f} for per-image PIL/torchvision transforms in "
        f"{cifar['workers']} DataLoader workers ({cifar['aug_ours_over_conventional']:.1f}x); streamed from the "
        f"files, decoding included, {cifar['aug_stream']:,.0f} against {cifar['aug_conventional_files']:,.0f} "
        f"({cifar['aug_stream_over_conventional_files']:.1f}x). On Imagenette photos ({photos['image_size']}-px "
        f"views, crops drawn on the whole photo on both sides, decoding included): {photos['aug_stream']:,.0f} "
        f"against {photos['aug_conventional_files']:,.0f} images/s for torchvision `ImageFolder` + "
        f"`RandomResizedCrop` in {photos['workers']} workers ({photos['aug_stream_over_conventional_files']:.2f}x). "
        f"The GPU row is still to be measured. Command and table: `benchmarks/README.md`.")


def _peers_module():
    """``benchmarks/peers.py`` (its table is the README's), imported by path."""
    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peers_cpu() -> str:
    """Side by side with lightly: ``benchmarks/peers.py`` on the CPU (its markdown table and the ratios)."""
    result = load("peers-cpu.json")
    args, machine, s = result["args"], result["machine"], result["summary"]
    ours = s["ours"]
    intro = _prose(
        f"Imagenette ({int(args['train_per_class']) * 10:,} training and {int(args['val_per_class']) * 10:,} "
        f"held-out photos), ResNet-18 x1, {args['image_size']}-px views, batch {args['batch_size']}, "
        f"{args['threads']} torch threads (lightly: {args['lightly_workers'].replace(',', ' and ')} DataLoader workers), "
        f"{args['epochs']} epochs, {args['repeats']} repeats per side alternating (seed = repeat), torch "
        f"{machine['torch']}, lightly {machine['lightly']}, {machine['cpus']} CPUs, load average at the end "
        f"{machine['loadavg_end']}:")
    table = _peers_module().markdown(result)
    fp32 = s.get("ours (float32, amp=false)")
    precision = (f"Our runs compute in bf16 autocast (this CPU has AMX; `amp=true`, the default); the same "
                 f"command with `amp=false` (float32) ran at {fp32['over_best_lightly_images_per_s']:.2f}x lightly's "
                 f"images/s. " if s.get("bf16_autocast") and fp32 else "")
    peak = (f"float32 matmul reaches {s['matmul_gflops']:.0f} GFLOP/s with the same threads, bf16 matmul "
            f"{s['matmul_gflops_bf16']:.0f}" if s.get("matmul_gflops_bf16") else
            f"float32 matmul reaches {s['matmul_gflops']:.0f} GFLOP/s with the same threads")
    ratios = _prose(
        f"Ours over lightly's faster configuration: {ours['over_best_lightly_images_per_s']:.2f}x images/s; over "
        f"our own model-only ceiling (forward + backward + step on pre-made views, same run): "
        f"{ours['over_ceiling']:.2f}x; launch to the first step {ours['launch_over_fastest_lightly']:.2f}x "
        f"lightly's; peak RSS of the main process {ours['peak_rss_main_over_lightly']:.2f}x, of all processes "
        f"(PSS) {ours['peak_pss_tree_over_lightly']:.2f}x. {precision}A step is {s['step_gflop']:.0f} GFLOP; the "
        f"cores' {peak}, the model-only step {s['ceiling_gflops_achieved']:.0f} GFLOP/s.")
    return intro + "\n\n" + table + "\n" + ratios


BLOCKS: dict[str, Callable[[], str]] = {
    "quickstart-intro": quickstart_intro, "quickstart-table": quickstart_table,
    "quickstart-seed0": quickstart_seed0, "label-seeds": label_seeds,
    "cifar10-cpu": cifar10_cpu, "cifar10-cpu-budget": cifar10_cpu_budget, "imagenette-cpu": imagenette_cpu, "throughput": throughput,
    "peers-cpu": peers_cpu,
}


def render(text: str) -> tuple[str, list[str]]:
    """``text`` with every generated block re-rendered, and the names of the blocks that changed."""
    changed: list[str] = []
    seen: set[str] = set()

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise SystemExit(f"README block {name!r} has no renderer (known: {', '.join(BLOCKS)})")
        seen.add(name)
        body = BLOCKS[name]()
        if body != match["body"]:
            changed.append(name)
        return match[1] + body + match[4]

    out = BLOCK.sub(fill, text)
    missing = set(BLOCKS) - seen
    if missing:
        raise SystemExit(f"the README lacks the generated block(s) {', '.join(sorted(missing))}")
    return out, changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only report stale blocks (exit 1), write nothing")
    p.add_argument("--readme", type=Path, default=README)
    args = p.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new, changed = render(text)
    if args.check:
        if changed:
            print(f"{args.readme}: stale generated block(s): {', '.join(changed)}; run python "
                  f"benchmarks/render_readme.py", file=sys.stderr)
            return 1
        return 0
    if changed:
        args.readme.write_text(new, encoding="utf-8")
    print(f"{args.readme}: " + (f"re-rendered {', '.join(changed)}" if changed else "up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
