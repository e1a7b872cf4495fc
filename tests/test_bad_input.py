"""A table of bad inputs, one of each class a user runs into: every one ends with exit code 2 and one
line ``simclrv2 COMMAND: error: ...`` naming the problem, no traceback, and no file of an existing run
changed."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from simclrv2 import checkpoint
from simclrv2.cli import main
from simclrv2.train import rundir

TINY = ["image_size=8", "width=0.125", "head_layers=2", "knn_every=0", "device=cpu", "epochs=1"]


def tree_hash(root: Path) -> str:
    """Names, link targets and contents of everything under ``root`` (the lock record aside)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.name == ".lock":
            continue
        h.update(str(p.relative_to(root)).encode())
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished pretrain run, a finished supervised run, and the files the cases need."""
    root = tmp_path_factory.mktemp("bad")
    assert main(["pretrain", "--out", str(root / "pre"), *TINY]) == 0
    assert main(["supervised", "--out", str(root / "sup"), *TINY]) == 0
    for out in ("pre", "sup"):
        rundir.release(root / out)  # as if another process had made them
    (root / "latin1.yaml").write_bytes(b"# r\xe9glages\nseed: 1\n")
    (root / "latin1.txt").write_bytes(b"digit_0001\nd\xe9j\xe0\n")
    (root / "a_file").write_text("x")
    (root / "a_dir").mkdir()
    (root / "header.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(root / "foreign.safetensors"))
    # copies of the pretrain run: one with the training state of another run, one without its state,
    # one whose checkpoint lost a part
    for name in ("other_state", "no_state", "no_meta", "dangling"):
        shutil.copytree(root / "pre", root / name, symlinks=True)
    other = root / "other"
    assert main(["pretrain", "--out", str(other), *TINY, "seed=7"]) == 0
    rundir.release(other)
    shutil.copy(other / "last" / "state.pt", root / "other_state" / "last" / "state.pt")
    (root / "no_state" / "last" / "state.pt").unlink()
    (root / "no_meta" / "last" / "meta.json").unlink()
    shutil.rmtree((root / "dangling" / "last").resolve())
    (root / "images" / "cat").mkdir(parents=True)
    (root / "images" / "dog").mkdir(parents=True)
    from PIL import Image

    for c in ("cat", "dog"):
        for i in range(6):
            name = f"{i}\nnew.png" if c == "cat" else f"{i}.png"
            Image.new("RGB", (8, 8), (40 * i, 100 if c == "cat" else 200, 0)).save(root / "images" / c / name)
    return root


PRE, SUP = "{root}/pre", "{root}/sup"
CASES = [
    # config and values
    (["pretrain", "--out", "{root}/n1", "--config", "{root}/latin1.yaml"], "is not UTF-8 text"),
    (["pretrain", "--out", "{root}/n2", "epochs=1e400"], "'1e400' is not a valid int"),
    (["pretrain", "--out", "{root}/n2", "warmup_epochs=inf"], "'inf' is not a finite number"),
    (["pretrain", "--out", "{root}/n2", "lr=nan"], "'nan' is not a finite number"),
    (["pretrain", "--out", "{root}/n2", "seed=-1"], "seed must be in [0, 2**63)"),
    (["pretrain", "--out", "{root}/n2", "batch_size=1"], "pretrain.batch_size must be >= 2"),
    (["supervised", "--out", "{root}/n2", "batch_size=1"], "supervised.batch_size must be >= 2"),
    (["pretrain", "--out", "{root}/n2", "proj_dim=0"], "model.proj_dim must be >= 1"),
    (["pretrain", "--out", "{root}/n2", "knn_k=0"], "pretrain.knn_k must be >= 1"),
    (["pretrain", "--out", "{root}/n2", "momentum=1.5"], "pretrain.momentum must be in [0, 1)"),
    (["pretrain", "--out", "{root}/n2", "--device", "tpu"], "'tpu' is not a device name"),
    (["pretrain", "--out", "{root}/n2", "--config", "{root}/a_dir"], "config file not found"),
    # devices
    (["pretrain", "--out", "{root}/n2", "--device", "cuda"], "CUDA is not available"),
    # data and labels
    (["pretrain", "--out", "{root}/n3", "--data", "{root}/missing"], "data path does not exist"),
    (["finetune", "--pretrained", PRE + "/last", "--out", "{root}/n4", "--labels-file", "{root}/latin1.txt"],
     "is not UTF-8 text"),
    (["finetune", "--pretrained", PRE + "/last", "--out", "{root}/n4", "--labels-file", "{root}/none.txt"],
     "label file not found"),
    (["supervised", "--out", "{root}/n5", "--data", "{root}/images", "labels=1.0", "image_size=8"],
     "contain a line break"),
    # output directories
    (["pretrain", "--out", "{root}/a_file"], "is a file, not a directory"),
    (["pretrain", "--out", "{root}/a_file/run"], "is a file, not a directory"),
    (["pretrain", "--out", "{root}"], "holds no simclrv2 run"),
    (["supervised", "--out", PRE], "holds a pretrain run, not a supervised run"),
    (["pretrain", "--out", PRE, "seed=9"], "different config (differs in: seed)"),
    (["pretrain", "--out", PRE, "epochs=0"], "already trained 1 epoch(s), more than epochs=0"),
    (["pretrain", "--out", "{root}/n6", "--resume"], "holds no checkpoint of this run to resume"),
    # checkpoints and training states
    (["finetune", "--pretrained", "{root}/header.safetensors", "--out", "{root}/n7"], "cannot read checkpoint"),
    (["finetune", "--pretrained", "{root}/foreign", "--out", "{root}/n7"], "not a simclrv2 checkpoint"),
    (["finetune", "--pretrained", "{root}/nothing/last", "--out", "{root}/n7"], "checkpoint not found"),
    (["finetune", "--pretrained", "{root}/no_meta/last", "--out", "{root}/n7"], "incomplete: meta.json missing"),
    (["finetune", "--pretrained", SUP + "/best", "--out", "{root}/n7"], "fine-tuning starts from a pretrain"),
    (["pretrain", "--out", "{root}/other_state"], "belongs to another save or run"),
    (["pretrain", "--out", "{root}/no_state"], "checkpoint {root}/no_state/last is incomplete: state.pt missing"),
    (["evaluate", "--checkpoint", "{root}/foreign"], "not a simclrv2 checkpoint"),
    (["evaluate", "--checkpoint", "{root}/a_dir"], "no checkpoint (best or last) in"),
    (["pretrain", "--out", "{root}/dangling"], "which is missing"),
    (["distill", "--teacher", PRE + "/last", "--out", "{root}/n8"], "is a 'pretrain' checkpoint, not a classifier"),
    (["supervised", "--out", "{root}/n8", "labels_per_class=0"], "labels_per_class must be >= 1"),
    (["supervised", "--out", "{root}/n8", "--labels", "0"], "a label fraction must be in (0, 1]"),
    (["pretrain", "--out", "{root}/n8", "image_size=0"], "data.image_size must be > 0"),
    (["pretrain", "--out", "{root}/n8", "workers=-1"], "workers must be >= 0"),
    (["pretrain", "--out", "{root}/n8", "val_fraction=1"], "data.val_fraction must be in (0, 1)"),
    # inference outputs
    (["predict", "--checkpoint", SUP + "/best", "{root}/images/dog", "--csv", "{root}/a_dir"], "is a directory"),
    (["embed", "--checkpoint", PRE + "/last", "--out", "{root}/a_dir"], "is a directory"),
    (["export", "--checkpoint", SUP + "/best", "--format", "onnx", "--out", "{root}/a_dir"], "is a directory"),
    (["export", "--checkpoint", SUP + "/best", "--format", "onnx", "--out", "{root}/m.onnx", "--opset", "1"],
     "--opset 1 cannot be exported"),
    (["export", "--checkpoint", SUP + "/best", "--format", "onnx", "--out", "{root}/a_file/m.onnx"],
     "is a file, not a directory"),
    (["predict", "--checkpoint", PRE + "/last", "{root}/images/dog"], "not a classifier"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[f"{i}:{c[1][:30]}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(runs, capsys, argv, message):
    if "CUDA is not available" in message and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = [a.replace("{root}", str(runs)) for a in argv]
    message = message.replace("{root}", str(runs))
    training = argv[0] in ("pretrain", "finetune", "distill", "supervised")
    if training and argv[0] != "finetune" and not any(a.startswith("--data") for a in argv):
        given = {x.split("=")[0] for x in argv} | ({"device"} if "--device" in argv else set())
        argv += [a for a in TINY if a.split("=")[0] not in given]
    protected = [runs / name for name in ("pre", "sup", "other_state", "no_state", "no_meta", "dangling")]
    before = [tree_hash(p) for p in protected]
    existed = {p.name for p in runs.iterdir()}
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("INFO:", "WARNING:"))]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"simclrv2 {argv[0]}: error: "), err
    assert message in lines[0] and "Traceback" not in err, err
    assert [tree_hash(p) for p in protected] == before, "a file of an existing run changed"
    assert {p.name for p in runs.iterdir()} == existed, "an output was created"
    for out in protected:
        rundir.release(out)


def test_debug_shows_the_traceback(runs):
    with pytest.raises(Exception, match="pretrain.batch_size must be >= 2"):
        main(["--debug", "pretrain", "--out", str(runs / "n9"), *TINY, "batch_size=1"])


@pytest.mark.parametrize("number,message", [
    (28, "No space left on device: {out}/.last.xxx/model.safetensors; free some space or choose another --out"),
    (30, "Read-only file system: {out}/.last.xxx/model.safetensors; the file system is read-only"),
])
def test_a_full_or_read_only_disk_is_one_line(tmp_path, capsys, monkeypatch, number, message):
    """Simulated (the tests run as root on one disk): the weights cannot be written."""
    out = tmp_path / "run"

    def fail(tensors, path, metadata=None):
        raise OSError(number, os.strerror(number), str(out / ".last.xxx" / "model.safetensors"))

    monkeypatch.setattr(checkpoint, "save_file", fail)
    code = main(["pretrain", "--out", str(out), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1] == f"simclrv2 pretrain: error: {message.format(out=out)}"
    assert "Traceback" not in err
