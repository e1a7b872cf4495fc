"""The whole method in one call: pretrain once, then per label fraction fine-tune, distill, and compare
with a supervised baseline (and kNN / linear evaluation of the frozen pretrained encoder)."""

from __future__ import annotations

import copy
import platform
import time
from pathlib import Path
from typing import Any

import torch

from simclrv2 import checkpoint, distributed
from simclrv2 import report as report_figures
from simclrv2.config import Config, EvalConfig
from simclrv2.data import datasets
from simclrv2.core.knn import knn_predict
from simclrv2.eval.linear import describe, linear_probe
from simclrv2.models.networks import build_network, build_pretrain_model
from simclrv2.train import classifier, distill, pretrain, summary
from simclrv2.train.summary import count_params
from simclrv2.core.batched import infer
from simclrv2.core.runtime import resolve_device
from simclrv2.core.metrics import chance_level, topk_accuracy, warn_if_degenerate
from simclrv2.core.runtime import configure_threads

STAGE_ORDER = ("supervised", "knn", "linear", "finetune", "distill")


def frozen_eval(cfg: Config, pretrained: Path, splits: datasets.Splits, labeled_names: Path
                ) -> list[dict[str, Any]]:
    """kNN and linear evaluation of the frozen pretrained encoder, using only the labeled subset (no rows
    when the data has no validation split to score on)."""
    from simclrv2.data import subsets

    if splits.val is None or not len(splits.val):
        return []
    start = time.time()
    tensors, meta = checkpoint.load(pretrained)
    net = build_network(meta["arch"])
    checkpoint.load_weights(net, tensors, source=str(pretrained))
    device = resolve_device(cfg.device)
    encoder = net.encoder.to(device).eval()
    idx = subsets.from_file(splits.train.names, labeled_names)
    train_feats = infer(encoder.forward_features, splits.train.subset(idx).images, device, amp=cfg.amp)
    train_labels = splits.train.labels[idx]
    val_feats = infer(encoder.forward_features, splits.val.images, device, amp=cfg.amp)
    feature_seconds = time.time() - start
    num_classes = len(splits.classes)
    knn_start = time.time()
    scores = knn_predict(train_feats, train_labels, val_feats, num_classes, k=min(cfg.pretrain.knn_k, len(idx)),
                         temperature=cfg.pretrain.knn_temperature)
    knn = topk_accuracy(scores, splits.val.labels)
    warn_if_degenerate(scores, splits.val.labels, f"{100 * cfg.labels:g}% labels: knn")
    knn_seconds = feature_seconds + time.time() - knn_start
    lin_start = time.time()
    scores = linear_probe(cfg, encoder.forward_features, splits.train.subset(idx).images, train_labels, train_feats,
                          val_feats, num_classes, device, encoder=encoder, val_images=splits.val.images)
    linear = {**topk_accuracy(scores, splits.val.labels), "protocol": cfg.eval.linear}
    warn_if_degenerate(scores, splits.val.labels, f"{100 * cfg.labels:g}% labels: linear")
    params = sum(p.numel() for p in encoder.parameters())
    return [{"stage": "knn", **knn, "params": params, "seconds": knn_seconds},
            {"stage": "linear", **linear, "params": params, "seconds": feature_seconds + time.time() - lin_start}]


class Progress:
    """What a person watching the pipeline sees: ``[k/n] title`` before each step with the elapsed time
    and an estimate of the time left, and each result row as soon as its step is done (rank 0 only).

    The estimate weighs each step by the images it will push through the network (epochs x images x
    passes) and assumes the rest runs at the rate measured so far.
    """

    def __init__(self, steps: list[tuple[str, float]], enabled: bool = True, clock=time.time) -> None:
        self.steps, self.enabled, self.clock = steps, enabled, clock
        self.start, self.done, self.index = clock(), 0.0, 0
        self.step_start = self.start

    def begin(self) -> None:
        title = self.steps[self.index][0]
        self.step_start = self.clock()
        if self.enabled:
            print(f"\n[{self.index + 1}/{len(self.steps)}] {title} ({self.timing()})", flush=True)

    def end(self, rows: list[dict[str, Any]] = ()) -> None:
        title, cost = self.steps[self.index]
        self.done += cost
        self.index += 1
        if self.enabled:
            print(f"[{self.index}/{len(self.steps)}] {title}: done in {_clock(self.clock() - self.step_start)}",
                  flush=True)
            for line in results_table(list(rows)).splitlines()[2:]:
                print(f"  {line}", flush=True)

    def timing(self) -> str:
        elapsed = self.clock() - self.start
        total = sum(c for _, c in self.steps)
        if self.done <= 0 or elapsed <= 0:
            return f"elapsed {_clock(elapsed)}"
        left = elapsed / self.done * (total - self.done)
        return f"elapsed {_clock(elapsed)}, about {_clock(left)} left"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def plan(cfg: Config, splits: datasets.Splits) -> list[tuple[str, float]]:
    """The steps of the pipeline with their relative cost: images through the network, forward = 1,
    training step = 3 (forward and backward), two views when pretraining."""
    n, n_val = len(splits.pretrain_images()), len(splits.val)
    knn = cfg.pretrain.epochs // cfg.pretrain.knn_every * (len(splits.train) + n_val) if cfg.pretrain.knn_every else 0
    steps = [("pretrain", cfg.pretrain.epochs * n * 6 + knn)]
    for fraction in cfg.label_fractions:
        labeled = max(len(splits.classes), fraction * len(splits.train))
        tag = f"{100 * fraction:g}% labels"
        steps += [(f"{tag}: supervised baseline", cfg.supervised.epochs * (labeled * 3 + n_val)),
                  (f"{tag}: fine-tune", cfg.finetune.epochs * (labeled * 3 + n_val)),
                  (f"{tag}: kNN and linear probes", labeled + n_val),
                  (f"{tag}: distill", cfg.distill.epochs * (n * 4 + n_val))]
    return steps


def run(cfg: Config, out_dir: str | Path, show_progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run every stage; write ``results.json`` and ``report.md`` in ``out_dir``; return the results."""
    out = Path(out_dir)
    total_start = time.time()
    configure_threads(cfg.threads)
    world = distributed.init(cfg.device)
    splits = datasets.load(cfg.data, cfg.workers)
    if splits.val is None or not splits.classes:
        raise datasets.DataError("the pipeline needs labeled data with a validation split (with a few images per "
                                 "class, data.val_fraction rounds to none: raise it, or add a val/ folder)")
    out.mkdir(parents=True, exist_ok=True)  # only once the data is known to be usable
    steps = plan(cfg, splits)
    summary.show("pipeline", cfg, splits, cfg.model, count_params(build_pretrain_model(cfg.model)),
                 resolve_device(cfg.device), world.size, out, is_main=world.is_main, enabled=show_progress,
                 steps=f"{len(steps)}: pretrain, then for " + ", ".join(f"{100 * f:g}%" for f in cfg.label_fractions)
                 + " of the labels: supervised baseline, fine-tune, kNN and linear probes, distill")
    progress = Progress(steps, show_progress and world.is_main)

    progress.begin()
    pre = pretrain.run(cfg, out / "pretrain", splits, show_progress, overwrite=overwrite)
    progress.end()
    pretrained = out / "pretrain" / "last"
    rows: list[dict[str, Any]] = []
    for fraction in cfg.label_fractions:
        c = copy.deepcopy(cfg)
        c.labels, c.labels_per_class, c.labels_file = fraction, None, None
        tag = out / f"labels_{fraction:g}"

        def stage_row(stage: str, result: dict[str, Any]) -> dict[str, Any]:
            final = result["final"]
            labeled_file = tag / stage / "labeled.txt"
            if not labeled_file.is_file():  # distillation uses the teacher's labels, if any
                labeled_file = tag / "finetune" / "labeled.txt"
            labeled = sum(1 for _ in open(labeled_file))
            row = {"stage": stage, "labels": fraction, "labeled_images": labeled, "top1": final.get("val_top1"),
                   "top5": final.get("val_top5"), "best_top1": result["best"].get("val_top1"),
                   "params": result["params"], "seconds": result["seconds"], "checkpoint": str(tag / stage / "last")}
            rows.append(row)
            return row

        progress.begin()
        sup = classifier.run_supervised(c, tag / "supervised", splits, show_progress, overwrite=overwrite)
        progress.end([stage_row("supervised", sup)])
        progress.begin()
        ft = classifier.run_finetune(c, tag / "finetune", pretrained, splits, show_progress, overwrite=overwrite)
        progress.end([stage_row("finetune", ft)])
        progress.begin()
        labeled = sum(1 for _ in open(tag / "finetune" / "labeled.txt"))
        frozen = [{**r, "labels": fraction, "labeled_images": labeled}
                  for r in frozen_eval(c, pretrained, splits, tag / "finetune" / "labeled.txt")]
        rows.extend(frozen)
        progress.end(frozen)
        progress.begin()
        ds = distill.run(c, tag / "distill", tag / "finetune" / "last", splits, show_progress,
                         overwrite=overwrite)
        progress.end([stage_row("distill", ds)])
    rows.sort(key=lambda r: (r["labels"], STAGE_ORDER.index(r["stage"])))
    last = pre["history"][-1] if pre["history"] else {}
    results = {
        "dataset": cfg.data.dataset, "model": cfg.model.model, "width": cfg.model.width,
        "train_images": len(splits.train), "val_images": len(splits.val),
        "pretrain": {"epochs": cfg.pretrain.epochs, "seconds": pre["seconds"], "params": pre["params"],
                     "knn_top1_all_labels": last.get("knn_top1"), "final_loss": last.get("loss")},
        "rows": rows, "seconds": time.time() - total_start, "device": _device_name(cfg),
        "torch": torch.__version__, "config": cfg.to_dict(), "linear_protocol": describe(cfg.eval),
        "classes": len(splits.classes), "chance_top1": chance_level(splits.val.labels)[0],
        "chance_bar_top1": chance_level(splits.val.labels)[1],
    }
    if distributed.current().is_main:  # under torchrun every rank trains; rank 0 writes the results
        checkpoint.write_json(out / "results.json", results)
        figures = report_figures.write_figures(out, results, splits, resolve_device(cfg.device))
        report = render_report(results) + report_figures.figures_markdown(figures)
        checkpoint.atomic_write(out / "report.md", lambda p: p.write_text(report))
    distributed.barrier()
    return results


def _device_name(cfg: Config) -> str:
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def at_chance(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows whose top-1 is no better than always answering the most frequent class (``chance_level``)."""
    bar = results.get("chance_bar_top1")
    return [r for r in results["rows"] if bar is not None and r.get("top1") is not None and r["top1"] <= bar]


def chance_warning(results: dict[str, Any]) -> str | None:
    """One line naming the rows at chance (``at_chance``), or None."""
    rows = at_chance(results)
    if not rows:
        return None
    names = ", ".join(f"{100 * r['labels']:g}% {r['stage']} ({r['top1']:.2f})" for r in rows)
    return (f"no better than chance ({results['chance_top1']:.2f}%: always the most frequent class): {names}; "
            f"these models learned nothing usable")


def results_table(rows: list[dict[str, Any]], chance_bar: float | None = None) -> str:
    """Markdown table: stage x label fraction -> top-1, top-5 (only when some row has it: not with five
    classes or fewer), parameters, wall time; a top-1 at or below ``chance_bar`` is marked ``(chance)``."""
    top5 = any(r.get("top5") is not None for r in rows)
    lines = ["| labels | labeled images | stage | top-1 (%) |" + (" top-5 (%) |" if top5 else "")
             + " params | seconds |",
             "|---:|---:|---|---:|" + ("---:|" if top5 else "") + "---:|---:|"]
    for r in rows:
        top1 = "-" if r["top1"] is None else f"{r['top1']:.2f}"
        if chance_bar is not None and r["top1"] is not None and r["top1"] <= chance_bar:
            top1 += " (chance)"
        cell5 = ("-" if r.get("top5") is None else f"{r['top5']:.2f}") + " | " if top5 else ""
        stage = f"{r['stage']} ({r['protocol']})" if r.get("protocol") else r["stage"]  # linear: fast | paper
        lines.append(f"| {r['labels']:g} | {r['labeled_images']} | {stage} | {top1} | {cell5}"
                     f"{r['params'] / 1e6:.2f}M | {r['seconds']:.1f} |")
    return "\n".join(lines)


def render_report(results: dict[str, Any]) -> str:
    p = results["pretrain"]
    knn = "-" if p["knn_top1_all_labels"] is None else f"{p['knn_top1_all_labels']:.2f}%"
    return "\n".join([
        f"# SimCLRv2 pipeline: {results['dataset']}",
        "",
        f"{results['model']} (width {results['width']:g}), {results['train_images']} training and "
        f"{results['val_images']} held-out validation images; device {results['device']}, torch {results['torch']}; "
        f"total {results['seconds']:.0f} s.",
        "",
        f"Pretraining: {p['epochs']} epochs in {p['seconds']:.0f} s; kNN top-1 with all training labels: {knn}.",
        "",
        "Accuracy on the held-out split after the last epoch of each stage. `knn` and `linear` evaluate the",
        "frozen pretrained encoder with the labeled subset only; `supervised` trains the same encoder from",
        "scratch on the labeled subset.",
        f"`linear` is the {results.get('linear_protocol', describe(EvalConfig()))} (`eval.linear`).",
        "",
        results_table(results["rows"], results.get("chance_bar_top1")),
        "",
    ] + ([f"**Warning**: the rows marked (chance) are no better than always answering the most frequent class "
          f"({results['chance_top1']:.2f}% of the {results['val_images']} validation images, within two "
          f"standard errors): those models learned nothing usable.", ""] if at_chance(results) else []))
