import pytest

from dermogaze.config import Config, load_config, parse_overrides, save_config
from dermogaze.errors import DermogazeError


def test_defaults_are_the_paper_recipe():
    cfg = Config()
    assert (cfg.loss.alpha, cfg.loss.beta, cfg.loss.gamma, cfg.loss.mu) == (0.25, 0.75, 0.75, 0.25)
    assert cfg.train.betas == (0.92, 0.96) and cfg.train.weight_decay == 1e-6
    assert (cfg.train.batch_size, cfg.train.epochs) == (8, 20)
    assert (cfg.train.lr_encoder, cfg.train.lr_attention, cfg.train.lr_branches) == (0.0, 1e-2, 1e-4)
    assert (cfg.model.steps, cfg.model.image_size) == (5, 224)


def test_overrides_parse_yaml_values():
    assert parse_overrides(["train.epochs=3", "model.skip=false", "train.betas=[0.9, 0.99]"]) == {
        "train": {"epochs": 3, "betas": [0.9, 0.99]},
        "model": {"skip": False},
    }
    cfg = load_config(None, ["train.epochs=3", "train.betas=[0.9, 0.99]", "loss.alpha=1"])
    assert cfg.train.epochs == 3 and cfg.train.betas == (0.9, 0.99)
    assert cfg.loss.alpha == 1.0 and isinstance(cfg.loss.alpha, float)


@pytest.mark.parametrize(
    "bad, match",
    [(["train.epoch=3"], "unknown key train.epoch"), (["trian.epochs=3"], "unknown section"),
     (["epochs=3"], "section.key=value"), (["model.skip=3"], "true or false")],
)
def test_bad_overrides_are_clear_errors(bad, match):
    with pytest.raises(DermogazeError, match=match):
        load_config(None, bad)


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["model.name=vgg", "train.seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


def test_unknown_preset_lists_available():
    with pytest.raises(DermogazeError, match="unknown preset 'nope'"):
        load_config("nope")
