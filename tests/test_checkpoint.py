"""The checkpoint format: safetensors + JSON, atomic writes, safe loading, readable mismatches."""

import json
import pickle

import pytest
import torch
from torch import nn

from simclrv2 import checkpoint
from simclrv2.checkpoint import CheckpointError


def small_net(width=4):
    return nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width), nn.Linear(width, 2))


def test_save_and_load_round_trip(tmp_path):
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    checkpoint.save(tmp_path / "last", net, {"stage": "test", "epoch": 3}, {"optimizer": opt.state_dict()})
    tensors, meta = checkpoint.load(tmp_path / "last")
    assert meta["epoch"] == 3 and meta["format"] == checkpoint.FORMAT
    assert json.loads((tmp_path / "last" / "meta.json").read_text())["stage"] == "test"
    other = small_net()
    checkpoint.load_weights(other, tensors)
    for a, b in zip(net.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    state = checkpoint.load_train_state(tmp_path / "last")
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(state["optimizer"])
    # every spelling of the same checkpoint resolves to it
    for spelling in (tmp_path / "last.safetensors", tmp_path, str(tmp_path / "last")):
        assert checkpoint.resolve(spelling) == tmp_path / "last"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".last.{meta['save_id']}", "last"]


def test_mismatch_names_keys_and_shapes(tmp_path):
    checkpoint.save(tmp_path / "c", small_net(4), {})
    tensors, _ = checkpoint.load(tmp_path / "c")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*checkpoint \(4, 3\) vs model \(8, 3\)"):
        checkpoint.load_weights(small_net(8), tensors)
    with pytest.raises(CheckpointError, match="missing key"):
        checkpoint.load_weights(nn.Sequential(small_net(4), nn.Linear(2, 2)), tensors)


def test_missing_foreign_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a simclrv2 checkpoint"):
        checkpoint.load(tmp_path / "foreign")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        checkpoint.load(tmp_path / "broken")


class Boom:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint.save(tmp_path / "last", small_net(), {})
    checkpoint.save(tmp_path / "last", small_net(), {}, {"step": 1})
    with open(tmp_path / "last" / "state.pt", "wb") as f:
        pickle.dump({"evil": Boom()}, f)
    with pytest.raises(CheckpointError, match="cannot read training state"):
        checkpoint.load_train_state(tmp_path / "last")
    assert not (tmp_path / "PWNED").exists()


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "results.json"
    checkpoint.write_json(target, {"ok": 1})

    def explode(path):
        path.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        checkpoint.atomic_write(target, explode)
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_parts_of_different_saves_are_refused(tmp_path):
    net = small_net()
    checkpoint.save(tmp_path / "a" / "last", net, {"epoch": 1}, {"step": torch.tensor(1)})
    checkpoint.save(tmp_path / "b" / "last", net, {"epoch": 2}, {"step": torch.tensor(2)})
    a, b = tmp_path / "a" / "last", tmp_path / "b" / "last"
    (a / "state.pt").write_bytes((b / "state.pt").read_bytes())
    with pytest.raises(CheckpointError, match="belongs to another save or run"):
        checkpoint.load_train_state(a)
    (b / "meta.json").write_text((a / "meta.json").read_text())
    with pytest.raises(CheckpointError, match="mixes two saves"):
        checkpoint.load(b)
    (a / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="incomplete: model.safetensors is missing"):
        checkpoint.load(a)


def test_every_spelling_of_a_run_resolves(tmp_path):
    checkpoint.save(tmp_path / "last", small_net(), {"epoch": 2}, {"step": torch.tensor(1)})
    assert checkpoint.resolve(tmp_path) == tmp_path / "last"
    checkpoint.save(tmp_path / "best", small_net(), {"epoch": 1})
    for spelling, stem in ((tmp_path, "best"), (tmp_path / "last", "last"), (tmp_path / "last.safetensors", "last"),
                           (tmp_path / "best.safetensors", "best")):
        assert checkpoint.resolve(spelling) == tmp_path / stem
    assert checkpoint.load_train_state(tmp_path / "best") is None  # best never has a training state


def test_the_single_file_form_of_earlier_versions_is_read_and_checked(tmp_path):
    """``last.safetensors`` + ``last.state.pt``: read; a state of another epoch, or none, is refused."""
    from safetensors.torch import save_file

    net = small_net()
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(tmp_path / "last.safetensors"),
              metadata={"simclrv2": json.dumps({"stage": "pretrain", "epoch": 3})})
    assert checkpoint.load(tmp_path / "last")[1]["epoch"] == 3
    with pytest.raises(CheckpointError, match="training state of .* is missing"):
        checkpoint.load_train_state(tmp_path / "last")
    torch.save({"epoch": 4}, tmp_path / "last.state.pt")
    with pytest.raises(CheckpointError, match="is of epoch 4 but last.safetensors of epoch 3"):
        checkpoint.load_train_state(tmp_path / "last")
    torch.save({"epoch": 3}, tmp_path / "last.state.pt")
    assert checkpoint.load_train_state(tmp_path / "last") == {"epoch": 3}
    checkpoint.save(tmp_path / "last", net, {"stage": "pretrain", "epoch": 4}, {"epoch": 4})  # the next save
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["last"]
