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


# ----------------------------------------------------------------------------------------------
# Ranges and choices: one validate step after every merge (presets, overrides, a checkpoint's config)
# ----------------------------------------------------------------------------------------------

#: (override, what the one-line error must name). Every range and choice rule of config.validate.
OUT_OF_RANGE = [
    ("train.batch_size=0", "train.batch_size must be an integer from 1 to 1024, got 0"),
    ("train.batch_size=-3", "train.batch_size must be an integer from 1 to 1024, got -3"),
    ("train.epochs=0", "train.epochs must be an integer from 1 to 1000, got 0"),
    ("train.lr_encoder=-1e-3", "train.lr_encoder must be a number >= 0, got -0.001"),
    ("train.lr_attention=-0.01", "train.lr_attention must be a number >= 0"),
    ("train.lr_branches=.inf", "train.lr_branches must be a number >= 0, got inf"),
    ("train.lr_branches=nan", "train.lr_branches must be a number >= 0, got nan"),
    ("train.betas=[2,3]", "train.betas must be two numbers in [0, 1)"),
    ("train.betas=[0.9,1.0]", "train.betas must be two numbers in [0, 1)"),
    ("train.betas=[-0.1,0.9]", "train.betas must be two numbers in [0, 1)"),
    ("train.betas=[0.9]", "train.betas must be two numbers in [0, 1)"),
    ("train.betas=[a,b]", "got ('a', 'b')"),
    ("train.weight_decay=-1", "train.weight_decay must be a number >= 0, got -1.0"),
    ("data.workers=-1", "data.workers must be an integer from 0 to 64 (processes), got -1"),
    ("train.seed=-1", "train.seed must be an integer from 0 to 4294967295, got -1"),
    ("train.seed=4294967296", "train.seed must be an integer from 0 to 4294967295"),
    ("train.max_train_batches=0", "train.max_train_batches must be an integer >= 1 (or empty), got 0"),
    ("train.grad_clip=0", "train.grad_clip must be a number > 0 (or empty), got 0.0"),
    ("train.grad_clip=-1", "train.grad_clip must be a number > 0"),
    ("loss.alpha=-0.25", "loss.alpha must be a number >= 0"),
    ("loss.beta=-1", "loss.beta must be a number >= 0"),
    ("loss.gamma=-1", "loss.gamma must be a number >= 0"),
    ("loss.mu=-1", "loss.mu must be a number >= 0"),
    ("loss.focal_theta=-2", "loss.focal_theta must be a number >= 0"),
    ("loss.attention=-0.5", "loss.attention must be a number >= 0, got -0.5"),
    ("loss.attention=.nan", "loss.attention must be a number >= 0, got nan"),
    ("loss.eps=0", "loss.eps must be a number > 0, got 0.0"),
    ("model.steps=0", "model.steps must be an integer from 1 to 64 (gazes), got 0"),
    ("model.image_size=33", "model.image_size must be a multiple of 32 from 32 to 1024"),
    ("model.image_size=0", "model.image_size must be a multiple of 32 from 32 to 1024"),
    ("model.width=0", "model.width must be a number > 0 and at most 4, got 0.0"),
    ("model.width=-0.5", "model.width must be a number > 0"),
    # the upper ends: values that could not finish or would exhaust the memory
    ("train.epochs=1000000000000", "train.epochs must be an integer from 1 to 1000, got 1000000000000"),
    ("train.batch_size=1025", "train.batch_size must be an integer from 1 to 1024, got 1025"),
    ("data.workers=65", "data.workers must be an integer from 0 to 64 (processes), got 65"),
    ("model.steps=65", "model.steps must be an integer from 1 to 64 (gazes), got 65"),
    ("model.image_size=1056", "model.image_size must be a multiple of 32 from 32 to 1024"),
    ("model.width=4.5", "model.width must be a number > 0 and at most 4, got 4.5"),
    ("loss.attention_warmup=1001", "loss.attention_warmup must be a whole number of epochs from 0 to 1000"),
    ("train.repeat_threshold=1.5", "train.repeat_threshold must be a fraction of images in [0, 1]"),
    ("train.repeat_threshold=-0.1", "train.repeat_threshold must be a fraction of images in [0, 1]"),
    ("train.amp=fp32", "train.amp must be one of 'off', 'bf16', 'fp16', got 'fp32'"),
    ("train.device=tpu", "train.device must be one of auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("loss.balancing=sometimes", "loss.balancing must be one of"),
    ("train.lr_schedule=linear", "train.lr_schedule must be one of 'constant', 'cosine', got 'linear'"),
    ("data.augment=hair", "data.augment must be one of 'dihedral', 'dermoscopy', got 'hair'"),
    ("model.batch_norm=maybe", "model.batch_norm must be one of empty, 'on', 'off', 'frozen'"),
    ("model.name=resnet", "model.name must be one of"),
    ("train.threshold=bogus", "train.threshold is invalid"),
    ("train.epochs=true", "train.epochs must be an integer, got True"),
    ("loss.alpha=yes", "loss.alpha must be a number, got True"),
]


@pytest.mark.parametrize("override, match", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_every_option_is_range_checked(override, match):
    with pytest.raises(DermogazeError) as exc:
        load_config("tiny", [override])
    line = str(exc.value)
    assert match in line and "\n" not in line
    assert line.startswith("command line: "), line  # where the bad value was set


@pytest.mark.parametrize(
    "overrides",
    [["train.lr_encoder=0", "train.weight_decay=0", "train.betas=[0, 0.999]", "train.seed=0", "data.workers=0",
      "loss.alpha=0", "loss.focal_theta=0", "train.max_train_batches=1", "train.grad_clip=0.5", "model.image_size=32",
      "train.device=cuda:1", "model.batch_norm=off", "train.amp=off", "train.threshold=youden"],
     ["train.epochs=1000", "train.batch_size=1024", "data.workers=64", "model.steps=64", "model.image_size=1024",
      "model.width=4", "loss.attention_warmup=1000", "train.repeat_threshold=1", "train.seed=4294967295"],
     ["train.grad_clip=", "train.max_train_batches=", "model.batch_norm=", "loss.balancing=w'"]],
)
def test_the_edges_of_every_range_are_accepted(overrides):
    load_config("tiny", overrides)


def test_every_problem_is_listed_in_one_line():
    with pytest.raises(DermogazeError) as exc:
        load_config(None, ["train.batch_size=0", "train.weight_decay=-1"])
    assert "train.batch_size" in str(exc.value) and "train.weight_decay" in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("preset", ["tiny", "demo", "real", "deco_gap_3", "deco_gap_5", "deco_gap_17", "vgg", "vgg_gap",
                                    "vgg_attconvlstm", "vgg_attconvlstm_gap"])
def test_the_shipped_presets_are_valid(preset):
    load_config(preset)


def test_a_preset_file_with_a_bad_value_is_named(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  batch_size: 0\n")
    with pytest.raises(DermogazeError, match=r"mine\.yaml: train\.batch_size must be an integer from 1 to 1024, got 0"):
        load_config(path)
    # an override that repairs it wins: the value is checked after merging
    assert load_config(path, ["train.batch_size=2"]).train.batch_size == 2


def test_a_stored_checkpoint_config_is_validated():
    d = Config().to_dict()
    d["train"]["lr_attention"] = -1.0
    with pytest.raises(DermogazeError, match=r"RUN/last\.pt config: train\.lr_attention must be a number >= 0"):
        Config.from_dict(d, source="RUN/last.pt config")


@pytest.mark.parametrize("text", ["train: {epochs: 3\n", "train:\n  epochs: [1,\n", "model: a: b\n"])
def test_malformed_preset_yaml_is_one_line(tmp_path, text):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(DermogazeError, match=r"broken\.yaml: not valid YAML \(.* at line \d+, column \d+\)") as exc:
        load_config(path)
    assert "\n" not in str(exc.value)


def test_a_binary_preset_file_is_one_line(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(bytes(range(128, 256)))
    with pytest.raises(DermogazeError, match="binary.yaml: not a YAML text file"):
        load_config(path)


@pytest.mark.parametrize("override", ["train.betas=[0.9", "train.betas={a: 1", "train.epochs='3", "train.epochs=@3"])
def test_malformed_yaml_in_an_override_is_one_line(override):
    with pytest.raises(DermogazeError, match="the value is not valid YAML") as exc:
        parse_overrides([override])
    assert override in str(exc.value) and "\n" not in str(exc.value)


def test_attention_supervision_defaults_to_the_papers_loss():
    assert load_config("tiny").loss.attention == 0.0
    assert load_config("tiny", ["loss.attention=2"]).loss.attention == 2.0
