"""Presets, YAML files and key=value overrides resolve to a validated, typed config."""

import pytest

from simclrv2.config import (PRESETS, ConfigError, build_config, from_dict, parse_overrides, preset, save_yaml)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip(name, tmp_path):
    cfg = preset(name).validate()
    assert from_dict(cfg.to_dict()) == cfg
    save_yaml(cfg, tmp_path / "c.yaml")
    assert build_config(config_file=str(tmp_path / "c.yaml")) == cfg


def test_published_hyperparameters():
    im = preset("imagenet")
    assert (im.pretrain.lr, im.pretrain.lr_scaling, im.pretrain.temperature) == (0.075, "sqrt", 0.1)
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
