"""Figures for the pipeline report: training curves, accuracy vs labels, t-SNE and confusion matrix.

Everything here is best effort: the figures are drawn after the results are saved, so a missing
matplotlib (``pip install simclrv2[report]``), a moved checkpoint or a failing figure logs a warning
and leaves the other figures and the report intact. Figures are drawn with matplotlib's object API
and the Agg canvas (no pyplot, no global backend switch), as PNGs next to ``report.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from simclrv2.data.datasets import Splits

log = logging.getLogger(__name__)

__all__ = ["write_figures", "figures_markdown", "stage_dirs", "read_metrics", "final_student_row"]

STAGES = ("pretrain", "supervised", "finetune", "distill")
TSNE_MAX_POINTS = 1000
CAPTIONS = {
    "training_curves": "Training curves: loss and top-1 (kNN for pretraining, validation otherwise) per epoch",
    "accuracy_vs_labels": "Validation top-1 against the number of labeled images",
    "tsne": "t-SNE of the final student's features on validation images, coloured by class",
    "confusion_matrix": "Confusion matrix of the final student on the validation split",
}


# ---------------------------------------------------------------------------- inputs


def _locate(path: str | Path, out_dir: Path, parts: int) -> Path:
    """``path`` as recorded in results.json, or its last ``parts`` components under ``out_dir``
    (the run directory may have been moved, or the pipeline started from another directory)."""
    path = Path(path)
    if path.exists() or path.with_suffix(".safetensors").exists():
        return path
    return out_dir.joinpath(*path.parts[-parts:])


def stage_dirs(out_dir: Path, results: dict[str, Any]) -> list[tuple[str, str, Path]]:
    """``(stage, label, directory)`` of every trained stage: ``out/pretrain`` and each row's checkpoint parent."""
    found = [("pretrain", "pretrain", out_dir / "pretrain")]
    seen = {found[0][2]}
    for row in results.get("rows", []):
        if row.get("stage") not in STAGES or not row.get("checkpoint"):
            continue
        directory = _locate(row["checkpoint"], out_dir, 3).parent
        if directory not in seen:
            seen.add(directory)
            found.append((row["stage"], _run_label(row), directory))
    return found


def _run_label(row: dict[str, Any]) -> str:
    labels = row.get("labels")
    return f"labels {labels:g}" if isinstance(labels, (int, float)) else f"labels {labels}"


def read_metrics(directory: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``directory/metrics.jsonl`` in epoch order (the last record of an
    epoch wins, e.g. after a resume); unreadable lines are skipped."""
    path = directory / "metrics.jsonl"
    if not path.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def final_student_row(results: dict[str, Any]) -> dict[str, Any] | None:
    """The ``distill`` row with the largest label fraction (the final student), if any."""
    rows = [r for r in results.get("rows", []) if r.get("stage") == "distill" and r.get("checkpoint")]
    return max(rows, key=lambda r: r.get("labels") or 0.0) if rows else None


# ---------------------------------------------------------------------------- figures


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path


def plot_training_curves(out_dir: Path, results: dict[str, Any], path: Path) -> Path | None:
    """Loss (top row) and top-1 (bottom row) per epoch, one column per stage kind, one line per run."""
    runs = [(stage, label, read_metrics(d)) for stage, label, d in stage_dirs(out_dir, results)]
    runs = [r for r in runs if r[2]]
    if not runs:
        return None
    from matplotlib.ticker import MaxNLocator

    columns = [s for s in STAGES if any(r[0] == s for r in runs)]
    fig = _figure(3.6 * len(columns), 5.6)
    axes = fig.subplots(2, len(columns), squeeze=False)
    for col, stage in enumerate(columns):
        loss_ax, acc_ax = axes[0][col], axes[1][col]
        metric = "knn_top1" if stage == "pretrain" else "val_top1"
        for _, label, records in (r for r in runs if r[0] == stage):
            epochs = [r["epoch"] for r in records if "loss" in r]
            loss_ax.plot(epochs, [r["loss"] for r in records if "loss" in r], label=label)
            acc = [(r["epoch"], r[metric]) for r in records if r.get(metric) is not None]
            if acc:
                acc_ax.plot(*zip(*acc), marker="o", markersize=3, label=label)
        loss_ax.set_title(stage)
        loss_ax.set_ylabel("loss")
        acc_ax.set_ylabel("kNN top-1 (%)" if stage == "pretrain" else "val top-1 (%)")
        acc_ax.set_xlabel("epoch")
        for ax in (loss_ax, acc_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
    return _save(fig, path)


def plot_accuracy_vs_labels(results: dict[str, Any], path: Path) -> Path | None:
    """Top-1 of every stage (supervised, kNN, linear, fine-tuned, distilled) against the label count."""
    rows = [r for r in results.get("rows", []) if r.get("top1") is not None]
    if not rows:
        return None
    use_count = all(r.get("labeled_images") for r in rows)
    x_of = (lambda r: r["labeled_images"]) if use_count else (lambda r: r["labels"])
    fig = _figure(6.0, 4.2)
    ax = fig.subplots()
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    for stage in stages:
        points = sorted((x_of(r), r["top1"]) for r in rows if r["stage"] == stage)
        style = "--" if stage == "supervised" else "-"  # the baseline stands apart
        ax.plot(*zip(*points), style, marker="o", label=stage)
    ax.set_xscale("log")
    ticks = sorted({x_of(r) for r in rows})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labeled images" if use_count else "label fraction")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(f"{results.get('dataset', '')}: accuracy vs labels".strip(": "))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _class_colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    return [cmap(i if n <= 20 else i / max(n - 1, 1)) for i in range(n)]


def plot_tsne(features: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], path: Path,
              seed: int = 0) -> Path | None:
    """2-D t-SNE (scikit-learn, fixed ``random_state``) of ``features``, coloured by class."""
    from sklearn.manifold import TSNE

    n = features.shape[0]
    if n < 5:
        return None
    perplexity = min(30.0, (n - 1) / 3)
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        features.double().numpy())
    fig = _figure(6.0, 5.4)
    ax = fig.subplots()
    colors = _class_colors(len(classes))
    for c, name in enumerate(classes):
        mask = (labels == c).numpy()
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=8, color=colors[c], label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of student features ({n} validation images)")
    if len(classes) <= 20:
        ax.legend(fontsize="small", markerscale=2, loc="best")
    return _save(fig, path)


def plot_confusion(labels: torch.Tensor, predicted: torch.Tensor, classes: Sequence[str], path: Path) -> Path:
    """Confusion matrix (rows: true class, columns: predicted), coloured by row-normalised recall."""
    from sklearn.metrics import confusion_matrix

    k = len(classes)
    counts = confusion_matrix(labels.numpy(), predicted.numpy(), labels=list(range(k)))
    recall = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    side = min(14.0, 2.5 + 0.45 * k)
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    image = ax.imshow(recall, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=90 if max(map(len, classes)) > 3 else 0)
        ax.set_yticks(range(k), classes)
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    if counts[i, j]:
                        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize="small",
                                color="white" if recall[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = 100.0 * counts.trace() / max(counts.sum(), 1)
    ax.set_title(f"Final student on validation: top-1 {accuracy:.2f}%")
    return _save(fig, path)


def _student_figures(out_dir: Path, results: dict[str, Any], splits: Splits, device: torch.device | str
                     ) -> list[Path]:
    """t-SNE and confusion matrix of the final student on the validation split."""
    from simclrv2.train.classifier import load_classifier
    from simclrv2.core.batched import infer
    from simclrv2.core.runtime import resolve_device

    row = final_student_row(results)
    if row is None or splits.val is None or len(splits.val) == 0:
        return []
    net, meta = load_classifier(_locate(row["checkpoint"], out_dir, 3))
    device = resolve_device(device) if isinstance(device, str) else device
    net = net.to(device)
    val = splits.val
    classes = meta.get("classes") or splits.classes
    if len(val) > TSNE_MAX_POINTS:  # a fixed subsample: t-SNE is quadratic in the number of points
        idx = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:TSNE_MAX_POINTS].sort().values
    else:
        idx = torch.arange(len(val))
    features = infer(net.forward_features, val.images[idx], device, amp=False)
    predicted = infer(net, val.images, device, amp=False).argmax(dim=1)
    written = [
        _guard("t-SNE", lambda: plot_tsne(features, val.labels[idx], classes, out_dir / "tsne.png")),
        _guard("confusion matrix", lambda: plot_confusion(val.labels, predicted, classes,
                                                          out_dir / "confusion_matrix.png")),
    ]
    return [p for p in written if p is not None]


def _guard(what: str, draw: Callable[[], Any]) -> Any:
    """Run one figure's drawing; a failure is logged and yields None (the report is still written)."""
    try:
        return draw()
    except Exception as e:  # noqa: BLE001 - figures are optional; training results are already saved
        log.warning("report: could not draw the %s: %s: %s", what, type(e).__name__, e)
        return None


# ---------------------------------------------------------------------------- public API


def write_figures(out_dir: Path, results: dict[str, Any], splits: Splits, device: torch.device | str = "cpu"
                  ) -> list[Path]:
    """Draw the report's figures into ``out_dir``; return the PNGs written ([] without matplotlib)."""
    if not have_matplotlib():
        log.warning("report: matplotlib is not installed (pip install 'simclrv2[report]'): no figures")
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        _guard("training curves", lambda: plot_training_curves(out_dir, results, out_dir / "training_curves.png")),
        _guard("accuracy vs labels", lambda: plot_accuracy_vs_labels(results, out_dir / "accuracy_vs_labels.png")),
    ]
    paths.extend(_guard("student figures", lambda: _student_figures(out_dir, results, splits, device)) or [])
    return [p for p in paths if p is not None]


MISSING_MATPLOTLIB = ("## Figures\n\nNot drawn: matplotlib is not installed. `pip install 'simclrv2[report]'` "
                     "(or `pip install matplotlib`), then run the same command again: the finished stages are "
                     "reused and only the report and its figures are made.\n")


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def figures_markdown(paths: Sequence[Path]) -> str:
    """A ``## Figures`` section linking the PNGs (relative to report.md, which lies beside them), or
    saying how to get them when matplotlib is missing."""
    if not paths:
        return "" if have_matplotlib() else MISSING_MATPLOTLIB
    lines = ["## Figures", ""]
    for p in paths:
        p = Path(p)
        caption = CAPTIONS.get(p.stem, p.stem.replace("_", " "))
        lines += [f"![{caption}]({p.name})", "", f"*{caption}.*", ""]
    return "\n".join(lines)
