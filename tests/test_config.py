"""Presets, YAML files and key=value overrides resolve to a validated, typed config."""

import pytest

from simclrv2.config import (PRESETS, ConfigError, build_config, from_dict, parse_overrides, preset, save_yaml)
from simclrv2.optim import scaled_lr


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip(name, tmp_path):
    cfg = preset(name).validate()
    assert from_dict(cfg.to_dict()) == cfg
    save_yaml(cfg, tmp_path / "c.yaml")
    assert build_config(config_file=str(tmp_path / "c.yaml")) == cfg


def test_published_hyperparameters():
    im = preset("imagenet")
    # SimCLRv2 (authors' answer in google-research/simclr#77): lr 0.1 x sqrt(B), warmup 5% of 800 epochs
    assert scaled_lr(im.pretrain.lr, im.pretrain.batch_size, im.pretrain.lr_scaling) == pytest.approx(0.1 * 64)
    assert im.pretrain.warmup_epochs == 0.05 * im.pretrain.epochs == 40 and im.pretrain.temperature == 0.1
    assert (im.pretrain.memory_size, im.pretrain.memory_momentum) == (65536, 0.999)
    assert (im.finetune.epochs_for(0.01), im.finetune.epochs_for(0.1), im.finetune.epochs_for(0.5)) == (60, 30, 60)
    assert im.model.head_layers == 3 and im.model.ft_layer == 1
    c10 = preset("cifar10")
    assert (c10.pretrain.temperature, c10.aug.color_strength, c10.model.cifar_stem) == (0.5, 0.5, True)


def test_flat_overrides_go_to_the_stage_then_shared_sections():
    cfg = build_config("digits", overrides=["model=resnet50", "width=2", "sk_ratio=0.0625", "epochs=100",
                                            "batch_size=512", "lr=0.3", "temperature=0.5", "head_layers=3",
                                            "seed=7", "finetune.epochs=9", "label_fractions=0.05,0.2"],
                       stage="pretrain")
    assert (cfg.model.model, cfg.model.width, cfg.model.sk_ratio) == ("resnet50", 2.0, 0.0625)
    assert (cfg.pretrain.epochs, cfg.pretrain.batch_size, cfg.pretrain.lr) == (100, 512, 0.3)
    assert cfg.pretrain.temperature == 0.5 and cfg.seed == 7 and cfg.finetune.epochs == 9
    assert cfg.label_fractions == [0.05, 0.2]
    ft = build_config("digits", overrides=["epochs=3"], stage="finetune")
    assert ft.finetune.epochs == 3 and ft.pretrain.epochs == preset("digits").pretrain.epochs


def test_finetune_epochs_by_labels_from_command_line_yaml_and_json(tmp_path):
    cfg = build_config("digits", overrides=["finetune.epochs_by_labels=0.01:7,0.1:3"])
    assert cfg.finetune.epochs_by_labels == {0.01: 7, 0.1: 3}
    assert (cfg.finetune.epochs_for(0.01), cfg.finetune.epochs_for(0.1), cfg.finetune.epochs_for(None)) == (7, 3, 100)
    saved = {**cfg.to_dict(), "finetune": {**cfg.to_dict()["finetune"], "epochs_by_labels": {"0.01": 7, "0.1": 3}}}
    assert from_dict(saved) == cfg  # a config read back from JSON has string keys
    (tmp_path / "c.yaml").write_text("finetune:\n  epochs_by_labels: {0.2: 4}\n")
    assert build_config("imagenet", str(tmp_path / "c.yaml")).finetune.epochs_by_labels == {0.2: 4}


def test_finetune_epochs_set_later_win_over_the_presets_table(tmp_path):
    assert build_config("imagenet", overrides=["finetune.epochs=5"]).finetune.epochs_for(0.01) == 5
    (tmp_path / "c.yaml").write_text("finetune:\n  epochs: 4\n")
    assert build_config("imagenet", str(tmp_path / "c.yaml")).finetune.epochs_for(0.1) == 4
    both = build_config("imagenet", overrides=["finetune.epochs=5", "finetune.epochs_by_labels=0.1:2"])
    assert (both.finetune.epochs_for(0.1), both.finetune.epochs_for(0.01)) == (2, 5)
    assert build_config("imagenet", overrides=["pretrain.epochs=5"]).finetune.epochs_for(0.1) == 30


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("pretrain:\n  epochs: 5\n  lr: 0.2\nmodel:\n  width: 2\n")
    cfg = build_config("cifar10", str(f), ["lr=0.4"], stage="pretrain")
    assert (cfg.pretrain.epochs, cfg.pretrain.lr, cfg.model.width) == (5, 0.4, 2.0)


@pytest.mark.parametrize("override,message", [
    ("lr=-1", "pretrain.lr must be > 0"),
    ("temperature=0", "pretrain.temperature must be > 0"),
    ("batch_size=0", "pretrain.batch_size must be >= 2"),
    ("epochs=ten", "is not a valid int"),
    ("nonsense=1", "unknown config key 'nonsense'"),
    ("pretrain.nonsense=1", "unknown key 'nonsense'"),
    ("labels=1.5", "label fraction must be in"),
    ("noequals", "not of the form key=value"),
    ("ft_layer=5", "model.ft_layer must be in"),
    ("eval.linear=slow", "eval.linear must be fast or paper"),
    ("eval.encoder_bn=moving", "eval.encoder_bn must be frozen or batch"),
    ("eval.epochs=-1", "eval.epochs must be >= 0"),
    ("finetune.epochs_by_labels=0.1", "expected key:value pairs"),
    ("finetune.epochs_by_labels=2:10", "needs a fraction in"),
    ("finetune.epochs_by_labels=0.1:ten", "is not a valid int"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config("digits", overrides=[override], stage="pretrain")


def test_bad_yaml_and_unknown_preset(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("pretrain: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(config_file=str(f))
    with pytest.raises(ConfigError, match="unknown preset 'mnist'"):
        preset("mnist")
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(config_file=str(tmp_path / "missing.yaml"))


def test_parse_overrides_dotted():
    assert parse_overrides(["distill.alpha=0.5", "seed=3"]) == {"distill": {"alpha": "0.5"}, "seed": "3"}
