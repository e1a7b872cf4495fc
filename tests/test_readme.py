"""The README's results are the JSON under benchmarks/results/: re-rendered in memory, nothing changes.

When this fails, run ``python benchmarks/render_readme.py`` (after new measurements) and commit README.md.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def render_readme():
    spec = importlib.util.spec_from_file_location("render_readme", ROOT / "benchmarks" / "render_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_matches_the_benchmark_json(render_readme):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rendered, stale = render_readme.render(text)
    assert stale == [], f"README blocks {stale} disagree with benchmarks/results/*.json: run " \
                        f"python benchmarks/render_readme.py"
    assert rendered == text


def test_every_results_number_sits_in_a_generated_block(render_readme):
    """The seed-0 line and each table of the Results section are generated, not typed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    results = text[text.index("## Results"):text.index("\n## ", text.index("## Results") + 1)]
    outside = render_readme.BLOCK.sub("", results)
    assert "What the Quickstart prints" not in outside
    assert not [line for line in outside.splitlines() if line.startswith("|")]  # no table typed by hand


@pytest.mark.parametrize("name,key", [("quickstart-seeds.json", "seed0"), ("cifar10-cpu.json", "cifar"),
                                      ("throughput-cpu.json", "throughput")])
def test_a_changed_measurement_makes_the_readme_stale(render_readme, tmp_path, monkeypatch, name, key):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    data = json.loads((results / name).read_text())
    if key == "seed0":
        data["runs"][0]["rows"][0]["top1"] += 1.0  # seed 0, 1%, supervised: what the Quickstart prints
    elif key == "cifar":
        data["rows"][0]["top1"] += 1.0
    else:
        data["aug_ours"] *= 2
    (results / name).write_text(json.dumps(data))
    monkeypatch.setattr(render_readme, "RESULTS", results)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rendered, stale = render_readme.render(text)
    assert stale and rendered != text
    readme = tmp_path / "README.md"
    readme.write_text(text, encoding="utf-8")
    assert render_readme.main(["--check", "--readme", str(readme)]) == 1
    assert render_readme.main(["--readme", str(readme)]) == 0  # rewrites it ...
    assert render_readme.main(["--check", "--readme", str(readme)]) == 0  # ... and then it is up to date
