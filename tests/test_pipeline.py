"""The one-command pipeline on a tiny digits config: results.json schema, report.md, figures, rerun."""

import json

from simclrv2.cli import main
from simclrv2.pipeline import Progress

TINY = ["image_size=8", "width=0.125", "head_layers=2", "device=cpu", "pretrain.epochs=2", "knn_every=1",
        "finetune.epochs=2", "supervised.epochs=2", "distill.epochs=1", "label_fractions=0.05,0.2"]


def test_pipeline_writes_results_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pipeline", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert {(r["stage"], r["labels"]) for r in rows} == {
        (s, f) for s in ("supervised", "finetune", "distill", "knn", "linear") for f in (0.05, 0.2)}
    for r in rows:
        assert 0 <= r["top1"] <= r["top5"] <= 100 and r["params"] > 0 and r["seconds"] >= 0
    assert [r["stage"] for r in rows[:5]] == ["supervised", "knn", "linear", "finetune", "distill"]
    # progress: a summary, "[k/n] title" headers with elapsed / left, each row as soon as its step is done
    assert printed.startswith("== simclrv2 pipeline") and "steps       9: pretrain, then for 5%, 20%" in printed
    headers = [line for line in printed.splitlines() if line.startswith("[") and "(elapsed" in line]
    assert [h.split(" (")[0] for h in headers] == [
        "[1/9] pretrain", "[2/9] 5% labels: supervised baseline", "[3/9] 5% labels: fine-tune",
        "[4/9] 5% labels: kNN and linear probes", "[5/9] 5% labels: distill", "[6/9] 20% labels: supervised baseline",
        "[7/9] 20% labels: fine-tune", "[8/9] 20% labels: kNN and linear probes", "[9/9] 20% labels: distill"]
    assert "left)" not in headers[0] and all("left)" in h for h in headers[1:])
    sup = next(r for r in rows if r["stage"] == "supervised" and r["labels"] == 0.05)
    row_line = f"  | 0.05 | {sup['labeled_images']} | supervised | {sup['top1']:.2f} |"
    assert printed.index(row_line) < printed.index("[3/9]")
    assert printed.count("== simclrv2 ") == 1 + 1 + 3 * 2  # pipeline, pretrain, 3 trained stages per fraction
    report = (out / "report.md").read_text()
    assert "| labels | labeled images | stage |" in report and "| distill |" in printed
    assert "| linear (fast) |" in printed and results["linear_protocol"].startswith("fast probe")
    assert f"`linear` is the {results['linear_protocol']}" in report
    for png in ("training_curves.png", "accuracy_vs_labels.png", "tsne.png", "confusion_matrix.png"):
        assert (out / png).is_file() and png in report
    # the same command again resumes every finished stage instead of retraining
    stamp = (out / "pretrain" / "last" / "model.safetensors").stat().st_mtime_ns
    assert main(["pipeline", "--out", str(out), *TINY]) == 0
    assert (out / "pretrain" / "last" / "model.safetensors").stat().st_mtime_ns == stamp
    again = json.loads((out / "results.json").read_text())["rows"]
    keys = ("stage", "labels", "top1", "top5", "params")
    assert [{k: r[k] for k in keys} for r in again] == [{k: r[k] for k in keys} for r in rows]
    trained = [r for r in rows if r["stage"] in ("supervised", "finetune", "distill")]
    resumed = [r["seconds"] for r in again if r["stage"] in ("supervised", "finetune", "distill")]
    for first, second in zip([r["seconds"] for r in trained], resumed):  # time counts all attempts of a stage
        assert first - 0.5 < second < first + 0.5


def test_progress_estimate(capsys):
    """Time left = elapsed / finished cost x remaining cost; each finished row is printed at once."""
    now = [100.0]
    progress = Progress([("pretrain", 1.0), ("1% labels: fine-tune", 3.0)], clock=lambda: now[0])
    progress.begin()
    now[0] = 110.0
    progress.end()
    progress.begin()
    now[0] = 135.0
    progress.end([{"stage": "finetune", "labels": 0.01, "labeled_images": 10, "top1": 70.0, "top5": 95.0,
                   "params": 700_000, "seconds": 25.0}])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "[1/2] pretrain (elapsed 0:00)" and lines[2] == "[1/2] pretrain: done in 0:10"
    assert lines[4] == "[2/2] 1% labels: fine-tune (elapsed 0:10, about 0:30 left)"
    assert lines[5] == "[2/2] 1% labels: fine-tune: done in 0:25"
    assert lines[6] == "  | 0.01 | 10 | finetune | 70.00 | 95.00 | 0.70M | 25.0 |"
