"""How much the README's Quickstart table moves between runs: the Quickstart command for several seeds.

Runs ``simclrv2 pipeline --out OUT/seed_N seed=N [overrides]`` in a fresh process per seed (exactly the
Quickstart command otherwise: embedded digits, default preset, default threads), then writes the
ranges of every cell (min-max top-1 over the seeds, and the mean) as JSON and as the README's table.

    python benchmarks/quickstart_seeds.py --seeds 0,1,2,3,4 --out runs/quickstart-seeds \\
        --json benchmarks/results/quickstart-seeds.json --markdown benchmarks/results/quickstart-seeds.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

COLUMNS = (("supervised", "supervised"), ("knn", "kNN"), ("linear", "linear"), ("finetune", "fine-tune"),
           ("distill", "distill (self)"))


def run_seed(seed: int, out: Path, overrides: list[str]) -> dict[str, Any]:
    """One Quickstart run; its results.json and wall time."""
    cmd = [sys.executable, "-m", "simclrv2", "pipeline", "--out", str(out), f"seed={seed}", *overrides]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed} failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    return {"seed": seed, "wall_seconds": time.time() - start, "command": " ".join(cmd[1:]), "rows": results["rows"],
            "pretrain_knn_top1": results["pretrain"]["knn_top1_all_labels"], "device": results["device"]}


def ranges(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{labels: {stage: {min, max, mean, n}}}`` of top-1 over the runs; ``labeled_images`` per fraction too."""
    cells: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for row in run["rows"]:
            cell = cells.setdefault(f"{row['labels']:g}", {})
            cell.setdefault(row["stage"], []).append(row["top1"])
            cell.setdefault("labeled_images", []).append(row["labeled_images"])
    return {labels: {stage: {"min": min(v), "max": max(v), "mean": statistics.fmean(v), "n": len(v)}
                     for stage, v in stages.items()} for labels, stages in cells.items()}


def _span(cell: dict[str, float], digits: int = 1) -> str:
    lo, hi = f"{cell['min']:.{digits}f}", f"{cell['max']:.{digits}f}"
    return lo if lo == hi else f"{lo}–{hi}"


def markdown(summary: dict[str, Any]) -> str:
    """The README's Quickstart table: min–max (mean) cells."""
    head = "| labels | labeled images | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [head, "|" + "---:|" * (2 + len(COLUMNS))]
    for labels, cells in sorted(summary["cells"].items(), key=lambda kv: float(kv[0])):
        count = _span(cells["labeled_images"], 0)
        values = [f"{_span(cells[stage])} ({cells[stage]['mean']:.1f})" if stage in cells else "-"
                  for stage, _ in COLUMNS]
        lines.append(f"| {float(labels) * 100:g}% | {count} | " + " | ".join(values) + " |")
    walls = [r["wall_seconds"] for r in summary["runs"]]
    knn = [r["pretrain_knn_top1"] for r in summary["runs"] if r["pretrain_knn_top1"] is not None]
    lines += ["", f"Top-1 (%) on the validation digits, min–max (mean) over seeds {', '.join(map(str, summary['seeds']))} "
                  f"({summary['machine']}, torch {summary['torch']}, {summary['date']}); wall "
                  f"{min(walls):.0f}–{max(walls):.0f} s per run."
                  + (f" kNN with all labels after pretraining: {min(knn):.1f}–{max(knn):.1f}." if knn else "")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default: 0,1,2,3,4)")
    p.add_argument("--out", default="runs/quickstart-seeds", help="one run directory per seed under this")
    p.add_argument("--json", help="write the runs and ranges here")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time (each uses one thread; wall times then include the sharing)")
    p.add_argument("--render", metavar="JSON", help="only print the table of a saved --json (no runs)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="passed to every run (none: the Quickstart)")
    args = p.parse_args(argv)
    if args.render:
        summary = json.loads(Path(args.render).read_text())
        print(markdown(summary), end="")
        return summary
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        runs = list(pool.map(lambda seed: run_seed(seed, Path(args.out) / f"seed_{seed}", args.overrides), seeds))
    summary = {"seeds": seeds, "overrides": args.overrides, "jobs": args.jobs, "runs": runs, "cells": ranges(runs),
               "machine": f"{platform.machine()}, {runs[0]['device']}", "torch": _torch_version(),
               "date": datetime.date.today().isoformat()}
    table = markdown(summary)
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table)
    return summary


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
