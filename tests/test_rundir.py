"""Run directories: a finished run is extended on the schedule of its new length or found complete;
--overwrite deletes nothing before the new run is known to start; a diverging run keeps its last good
checkpoint; files follow the umask; the global batch must divide over torchrun's processes."""

import json
import os

import pytest
import torch
from torch import nn

from simclrv2 import checkpoint, distributed
from simclrv2.cli import main
from simclrv2.config import ConfigError
from simclrv2.errors import NonFiniteError
from simclrv2.config import from_dict
from simclrv2.data.datasets import load
from simclrv2.optim import lr_at, schedule_steps
from simclrv2.core.runtime import Runtime
from simclrv2.train.stepper import Stepper
from simclrv2.train.loop import Stage, fit
from test_bad_input import tree_hash

TINY = ["image_size=8", "width=0.125", "head_layers=2", "knn_every=0", "device=cpu", "warmup_epochs=0"]


@pytest.fixture
def finished(tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *TINY, "epochs=1"]) == 0
    return out


def test_more_epochs_continue_on_the_schedule_of_the_new_length(finished, capsys):
    capsys.readouterr()
    assert main(["pretrain", "--out", str(finished), *TINY, "epochs=2"]) == 0
    assert f"resumed from {finished / 'last'} at epoch 2, batch 0" in capsys.readouterr().out
    _, meta = checkpoint.load(finished / "last")
    records = [json.loads(line) for line in (finished / "metrics.jsonl").read_text().splitlines()]
    assert meta["epoch"] == 2 and [r["epoch"] for r in records] == [1, 2]
    steps = records[0]["step"]  # per epoch; digits: lr 1.0 x 256/256, no warmup
    cfg = from_dict(meta["config"])
    n = len(load(cfg.data).pretrain_images())  # the schedule's length: N x epochs // B + 1 (official)
    batch = min(cfg.pretrain.batch_size, n)
    assert records[1]["lr"] == pytest.approx(lr_at(2 * steps - 1, 1.0, 0, schedule_steps(n, batch, 2, 0)[1]))
    assert records[0]["lr"] == pytest.approx(lr_at(steps - 1, 1.0, 0, schedule_steps(n, batch, 1, 0)[1]))


def test_a_complete_run_trains_nothing_and_changes_nothing(finished, capsys):
    before = tree_hash(finished)
    capsys.readouterr()
    assert main(["pretrain", "--out", str(finished), *TINY, "epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "is already complete (1 epochs); nothing to train" in out and "resumed" not in out
    assert tree_hash(finished) == before


@pytest.mark.parametrize("bad", [["--data", "/nonexistent/images"], ["batch_size=1"], ["epochs=1e400"]])
def test_overwrite_deletes_nothing_before_the_new_run_is_valid(finished, capsys, bad):
    before = tree_hash(finished)
    assert main(["pretrain", "--overwrite", "--out", str(finished), *TINY, "epochs=1", "seed=5", *bad]) == 2
    assert tree_hash(finished) == before


def test_overwrite_of_another_stage_replaces_it(finished):
    assert main(["supervised", "--out", str(finished), *TINY, "epochs=1", "--overwrite"]) == 0
    assert json.loads((finished / "run.json").read_text())["stage"] == "supervised"
    assert checkpoint.load(finished / "last")[1]["stage"] == "supervised"


def _bn_net():
    return nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def test_a_statistic_that_becomes_inf_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    """The loss stays finite; a BatchNorm running variance overflows in epoch 2."""
    net = _bn_net()
    stepper = Stepper(torch.optim.SGD(net.parameters(), lr=0.01), 0.01, 0, 100)
    stage = Stage("test", tmp_path, net, stepper, {"stage": "test"}, num_items=8, batch_size=4, epochs=4,
                  drop_last=True, order=torch.Generator().manual_seed(0))
    x = torch.randn(8, 2)
    calls = []

    def loss_of(idx):
        return net(x[idx]).pow(2).mean()

    def after_step():
        calls.append(1)
        if len(calls) == 3:
            net[1].running_var.fill_(float("inf"))

    with pytest.raises(NonFiniteError, match=r"1 weight/statistic tensor\(s\) hold NaN or inf after epoch 2 "
                                             r"\(1.running_var\)"):
        fit(stage, loss_of, show_progress=False, after_step=after_step)
    tensors, meta = checkpoint.load(tmp_path / "last")
    assert meta["epoch"] == 1 and all(torch.isfinite(t).all() for t in tensors.values())


def test_save_refuses_non_finite_weights_and_keeps_the_previous_save(tmp_path):
    net = _bn_net()
    checkpoint.save(tmp_path / "last", net, {"epoch": 1}, {"step": torch.tensor(1)})
    net[0].weight.data[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"not saving .*: 1 tensor\(s\) hold NaN or inf \(0.weight\)"):
        checkpoint.save(tmp_path / "last", net, {"epoch": 2}, {"step": torch.tensor(2)})
    assert checkpoint.load(tmp_path / "last")[1]["epoch"] == 1
    assert len([p for p in tmp_path.iterdir()]) == 2  # the link and its directory, nothing half-written


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        checkpoint.save(tmp_path / "ck" / "last", _bn_net(), {"epoch": 1}, {"step": torch.tensor(1)})
        checkpoint.write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    target = (tmp_path / "ck" / "last").resolve()
    assert (target.stat().st_mode & 0o777) == dir_mode
    for p in [*target.iterdir(), tmp_path / "x.json"]:
        assert (p.stat().st_mode & 0o777) == file_mode, p


def test_a_global_batch_that_does_not_divide_over_the_processes_is_refused():
    rt = Runtime(distributed.World(rank=0, size=2), torch.device("cpu"), torch.Generator(), 0)
    assert rt.global_batch(256, 1000) == 256
    assert rt.global_batch(256, 101) == 100  # capped by the data, then made to divide
    with pytest.raises(ConfigError, match="batch_size=255 is the global batch and must be divisible by the 2"):
        rt.global_batch(255, 1000)
