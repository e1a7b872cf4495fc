"""The command line: every bad input is caught before training with one clear message and exit 2,
and nothing already written is touched."""

import json

import pytest

from simclrv2 import checkpoint
from simclrv2.cli import main

TINY = ["image_size=8", "width=0.125", "head_layers=2", "knn_every=0", "device=cpu"]


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    assert main(["pretrain", "--out", str(out), *TINY, "epochs=1"]) == 0
    return out


@pytest.mark.parametrize("argv,message", [
    (["--data", "{tmp}/missing"], "data path does not exist"),
    (["--data", "{tmp}/empty"], "no images found"),
    (["model=resnet99"], "unknown model 'resnet99'"),
    (["lr=-0.1"], "pretrain.lr must be > 0"),
    (["temperature=0"], "pretrain.temperature must be > 0"),
    (["batch_size=0"], "pretrain.batch_size must be >= 2"),
    (["epochs=abc"], "'abc' is not a valid int"),
    (["no_such_key=1"], "unknown config key 'no_such_key'"),
    (["--config", "{tmp}/bad.yaml"], "not valid YAML"),
])
def test_pretrain_rejects_bad_input(capsys, tmp_path, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.yaml").write_text("pretrain: {epochs: [\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, err = run(capsys, "pretrain", "--out", str(tmp_path / "out"), *TINY, *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "last").exists()


def test_unknown_preset_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--preset", "mnist", "--out", str(tmp_path)])
    assert e.value.code == 2 and "invalid choice: 'mnist'" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--labels", "1.5"], "a label fraction must be in (0, 1]"),
    (["--labels", "0"], "a label fraction must be in (0, 1]"),
    (["--labels-per-class", "5000"], "5000 labels per class asked, but class"),
    (["--labels-file", "{tmp}/names.txt"], "9 class(es) have no labeled image"),  # 2 of 3 names only warned
])
def test_finetune_rejects_bad_label_choices(capsys, tmp_path, pretrained, argv, message):
    (tmp_path / "names.txt").write_text("digit_0000\nnope_1\nnope_2\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, err = run(capsys, "finetune", "--pretrained", str(pretrained / "last"), "--out", str(tmp_path / "ft"),
                    *argv, "epochs=1")
    assert code == 2 and message in err, err


def test_a_run_directory_of_another_config_is_kept(capsys, tmp_path, pretrained):
    before = (pretrained / "last" / "model.safetensors").read_bytes()
    code, err = run(capsys, "pretrain", "--out", str(pretrained), *TINY, "epochs=1", "seed=99")
    assert code == 2 and "holds a run with a different config (differs in: seed)" in err
    assert (pretrained / "last" / "model.safetensors").read_bytes() == before


def test_checkpoint_of_the_wrong_kind_or_architecture(capsys, tmp_path, pretrained):
    code, err = run(capsys, "distill", "--teacher", str(pretrained / "last"), "--out", str(tmp_path / "d"))
    assert code == 2 and "is a 'pretrain' checkpoint, not a classifier" in err
    code, err = run(capsys, "finetune", "--pretrained", str(tmp_path / "nothing" / "last"), "--out", str(tmp_path / "f"))
    assert code == 2 and "checkpoint not found" in err
    # weights of another width under the same metadata: a readable mismatch, not a stack trace
    tensors, meta = checkpoint.load(pretrained / "last")
    meta["arch"]["width"] = 0.25
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "wrong.safetensors"), metadata={"simclrv2": json.dumps(meta)})
    code, err = run(capsys, "finetune", "--pretrained", str(tmp_path / "wrong"), "--out", str(tmp_path / "f2"))
    assert code == 2 and "does not fit this network" in err and "shape mismatch" in err


def test_strict_refuses_corrupt_images(capsys, image_folder, tmp_path):
    (image_folder / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    code, err = run(capsys, "pretrain", "--data", str(image_folder), "--strict", "--out", str(tmp_path / "o"), *TINY)
    assert code == 2 and "1 unreadable image(s)" in err and "broken.png" in err


def test_evaluate_a_pretrained_checkpoint(capsys, pretrained, tmp_path):
    assert main(["evaluate", "--checkpoint", str(pretrained / "last"), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert 0 <= result["knn"]["top1"] <= 100 and 0 <= result["linear"]["top1"] <= 100


def test_a_stage_resumes_when_only_other_stages_settings_differ(capsys, pretrained):
    """A finished pretraining is reused when only fine-tuning settings or label choices changed."""
    before = (pretrained / "last" / "model.safetensors").stat().st_mtime_ns
    code, err = run(capsys, "pretrain", "--out", str(pretrained), *TINY, "epochs=1", "finetune.lr=0.5", "labels=0.5",
                    "eval.linear=paper")
    assert code == 0, err
    assert (pretrained / "last" / "model.safetensors").stat().st_mtime_ns == before


def test_overwrite_replaces_a_run_of_another_config(capsys, tmp_path):
    out = tmp_path / "o"
    assert main(["pretrain", "--out", str(out), *TINY, "epochs=1"]) == 0
    assert main(["pretrain", "--out", str(out), *TINY, "epochs=1", "seed=5", "--overwrite"]) == 0
    assert "seed: 5" in (out / "config.yaml").read_text()
