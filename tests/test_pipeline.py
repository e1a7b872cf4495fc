"""The one-command pipeline on a tiny digits config: results.json schema, report.md, figures, rerun."""

import json

from simclrv2.cli import main

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
