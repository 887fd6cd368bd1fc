"""Tests for metarec.config.compose: defaults, groups, experiments, typed overrides and every kind of bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from metarec.config import GROUPS, compose, config_dir, data_config, group_options, parse_overrides
from metarec.errors import ConfigError, MetarecError

CONFIGS = Path(__file__).resolve().parent.parent / "metarec" / "configs"


@pytest.fixture(autouse=True)
def _real_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    """compose() without ``root`` reads the repository's metarec/configs/ folder."""
    monkeypatch.setenv("METAREC_CONFIG_DIR", str(CONFIGS))


@pytest.fixture
def cfg_root(tmp_path: Path) -> Path:
    """A copy of metarec/configs/ with extra experiment files."""
    root = tmp_path / "configs"
    shutil.copytree(CONFIGS, root)
    (root / "experiment" / "tiny_global.yaml").write_text(
        "# picks another learner and data set and overrides keys of several sections\n"
        "defaults:\n"
        "  learner: global\n"
        "  data: movielens100k\n"
        "seed: 3\n"
        "learner:\n"
        "  lr: 0.02\n"
        "data:\n"
        "  split:\n"
        "    query_size: 5\n"
        "trainer:\n"
        "  max_epochs: 4\n"
    )
    (root / "experiment" / "bad_group.yaml").write_text("defaults:\n  optimizer: adam\n")
    (root / "experiment" / "bad_option.yaml").write_text("defaults:\n  learner: no_such_learner\n")
    (root / "experiment" / "bad_key.yaml").write_text("trainer:\n  max_epoch: 3\n")
    (root / "experiment" / "not_yaml.yaml").write_text("trainer: [1, 2\n")
    return root


def _error(args: list[str], root: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        compose(args, root)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------
# Defaults, groups, experiments


def _assert_contains(actual: dict, expected: dict, path: str) -> None:
    """Every leaf of ``expected`` is in ``actual`` with the same value (``actual`` may hold more)."""
    for key, value in expected.items():
        assert key in actual, f"{path}.{key}"
        if isinstance(value, dict):
            _assert_contains(actual[key], value, f"{path}.{key}")
        else:
            assert actual[key] == value, f"{path}.{key}"


def test_defaults() -> None:
    defaults = OmegaConf.load(CONFIGS / "defaults.yaml")
    cfg = compose([])
    assert dict(cfg.choices) == dict(defaults.defaults)
    assert set(cfg.keys()) == {"seed", "choices", "run", *GROUPS}
    assert cfg.seed == 0
    assert cfg.run.root == "runs" and cfg.run.experiment == "default" and cfg.run.name is None
    assert cfg.data.source == defaults.defaults.data == "synthetic"
    assert cfg.learner.name == "maml" and cfg.model.name == "melu" and cfg.logger.name == "csv"
    # every value of the chosen option files is there ...
    for group in GROUPS:
        option = OmegaConf.load(CONFIGS / group / f"{defaults.defaults[group]}.yaml")
        _assert_contains(OmegaConf.to_container(cfg[group]), OmegaConf.to_container(option), group)
    # ... and the dataclass defaults fill in everything the YAML leaves out
    assert cfg.trainer.gradient_clip_val is None and cfg.trainer.fast_dev_run is False
    assert cfg.learner.eval_inner_steps is None and cfg.learner.weight_decay == 0.0
    assert cfg.data.split.query_size == 10 and cfg.data.split.support_size is None
    assert cfg.data.params.n_users == 800  # SyntheticConfig default, synthetic.yaml says `params: {}`
    assert cfg.data.meta_batch_size == 32 and cfg.data.eval_batch_size == 64
    # the composed config converts to the typed objects the trainer uses
    dc = data_config(cfg.data)
    assert dc.split.query_size == 10 and dc.source == "synthetic"


def test_group_choice() -> None:
    cfg = compose(["learner=global", "data=movielens100k", "logger=wandb"])
    assert cfg.choices.learner == "global" and cfg.choices.data == "movielens100k"
    assert cfg.learner.name == "global" and cfg.learner.lr == OmegaConf.load(CONFIGS / "learner" / "global.yaml").lr
    assert "inner_lr" not in cfg.learner  # nothing left over from the default learner
    assert cfg.data.source == "movielens100k" and cfg.data.split.min_ratings == 13
    assert cfg.data.params.download is True  # MovieLens100kConfig default
    assert cfg.logger.name == "wandb" and cfg.logger.mode == "offline"
    assert compose(["learner=item_mean"]).learner == OmegaConf.create({"name": "item_mean"})


def test_group_choice_applies_before_dotted_overrides_whatever_the_order() -> None:
    cfg = compose(["learner.lr=0.5", "learner=global"])
    assert cfg.learner.name == "global" and cfg.learner.lr == 0.5


def test_later_override_wins() -> None:
    cfg = compose(["learner.inner_lr=0.05", "learner.inner_lr=0.1", "data.split.scenarios=[warm]",
                   "data.split.scenarios=[warm,item_cold]"])
    assert cfg.learner.inner_lr == 0.1
    assert list(cfg.data.split.scenarios) == ["warm", "item_cold"]


def test_real_quickstart_experiment() -> None:
    cfg = compose(["experiment=quickstart"])
    assert cfg.run.experiment == "quickstart"
    assert cfg.trainer.max_epochs == 15 and cfg.trainer.patience == 3
    assert cfg.trainer.enable_progress_bar is False
    assert cfg.data.source == "synthetic"
    assert "experiment" not in cfg.choices
    # command-line overrides come after the experiment
    cfg = compose(["experiment=quickstart", "trainer.max_epochs=2"])
    assert cfg.trainer.max_epochs == 2 and cfg.trainer.patience == 3


def test_experiment_file_changes_picks_and_keys(cfg_root: Path) -> None:
    cfg = compose(["experiment=tiny_global"], cfg_root)
    assert cfg.run.experiment == "tiny_global"
    assert cfg.choices.learner == "global" and cfg.choices.data == "movielens100k"
    assert cfg.learner.name == "global" and cfg.learner.lr == 0.02
    assert cfg.data.source == "movielens100k"
    assert cfg.data.split.query_size == 5 and cfg.data.split.min_ratings == 13  # merged, not replaced
    assert cfg.trainer.max_epochs == 4 and cfg.trainer.accelerator == "cpu"
    assert cfg.seed == 3
    # a command-line group choice beats the experiment's pick; dotted overrides beat its values
    cfg = compose(["data=synthetic", "experiment=tiny_global", "seed=9", "learner.lr=0.3"], cfg_root)
    assert cfg.data.source == "synthetic" and cfg.data.split.query_size == 5
    assert cfg.seed == 9 and cfg.learner.lr == 0.3 and cfg.learner.name == "global"


def test_config_dir_from_environment(cfg_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAREC_CONFIG_DIR", str(cfg_root))
    assert config_dir() == cfg_root
    assert "tiny_global" in group_options("experiment")
    assert compose(["experiment=tiny_global"]).learner.name == "global"


def test_missing_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAREC_CONFIG_DIR", str(tmp_path / "nowhere"))
    msg = _error([])
    assert "nowhere" in msg and "METAREC_CONFIG_DIR" in msg


def test_group_options_lists_every_yaml() -> None:
    for g in (*GROUPS, "experiment"):
        assert group_options(g) == sorted(p.stem for p in (CONFIGS / g).glob("*.yaml"))
    assert {"global", "item_mean", "maml"} <= set(group_options("learner"))


# ---------------------------------------------------------------------------------------------
# Dotted overrides are typed


@pytest.mark.parametrize(
    ("arg", "key", "expected", "typ"),
    [
        ("learner.inner_lr=0.05", "learner.inner_lr", 0.05, float),
        ("learner.inner_lr=1e-3", "learner.inner_lr", 0.001, float),
        ("learner.inner_lr=1", "learner.inner_lr", 1.0, float),  # int onto a float field becomes a float
        ("learner.inner_steps=3", "learner.inner_steps", 3, int),
        ("learner.eval_inner_steps=5", "learner.eval_inner_steps", 5, int),
        ("learner.first_order=true", "learner.first_order", True, bool),
        ("learner.scope=all", "learner.scope", "all", str),
        ("data.split.support_size=null", "data.split.support_size", None, type(None)),
        ("data.split.support_size=5", "data.split.support_size", 5, int),
        ("data.split.new_item_fraction=0.3", "data.split.new_item_fraction", 0.3, float),
        ("data.params.n_users=200", "data.params.n_users", 200, int),
        ("data.params.noise=0", "data.params.noise", 0.0, float),
        ("data.root=5", "data.root", "5", str),  # a str field keeps a number-looking value as text
        ("trainer.max_epochs=2", "trainer.max_epochs", 2, int),
        ("trainer.gradient_clip_val=1", "trainer.gradient_clip_val", 1.0, float),
        ("trainer.enable_progress_bar=false", "trainer.enable_progress_bar", False, bool),
        ("trainer.limit_train_batches=0.5", "trainer.limit_train_batches", 0.5, float),
        ("seed=7", "seed", 7, int),
        ("run.name=my-run", "run.name", "my-run", str),
        ("run.root=/tmp/x y", "run.root", "/tmp/x y", str),
        ("logger.entity=null", "logger.entity", None, type(None)),
    ],
)
def test_override_types(arg: str, key: str, expected, typ: type) -> None:
    cfg = compose([arg])
    value = OmegaConf.select(cfg, key)
    assert value == expected and type(value) is typ, (arg, value)


def test_override_lists() -> None:
    cfg = compose(["model.hidden=[16,8]", "data.split.scenarios=[warm,user_cold]"])
    assert isinstance(cfg.model.hidden, ListConfig) and list(cfg.model.hidden) == [16, 8]
    assert list(cfg.data.split.scenarios) == ["warm", "user_cold"]
    assert data_config(cfg.data).split.scenarios == ["warm", "user_cold"]


def test_override_value_may_contain_equals_sign() -> None:
    assert compose(["run.name=a=b"]).run.name == "a=b"


def test_interpolation_is_never_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``${...}`` is text, in overrides and in user config files: no environment variable is read."""
    monkeypatch.setenv("METAREC_TEST_SECRET", "leaked")
    cfg = compose(["run.name=${oc.env:METAREC_TEST_SECRET}", "run.root=a\\${x}"])
    assert cfg.run.name == "${oc.env:METAREC_TEST_SECRET}" and cfg.run.root == "a\\${x}"
    assert OmegaConf.to_container(cfg, resolve=True)["run"]["name"] == "${oc.env:METAREC_TEST_SECRET}"
    assert "leaked" not in OmegaConf.to_yaml(cfg, resolve=True)
    assert compose(["resume=${oc.env:METAREC_TEST_SECRET}"]).run.resume == "${oc.env:METAREC_TEST_SECRET}"
    msg = _error(["learner.inner_lr=${learner.lr}"])  # text where a number is expected
    assert "learner.inner_lr" in msg and "${learner.lr}" in msg
    msg = _error(["seed=${oc.env:METAREC_TEST_SECRET}"])
    assert "seed must be an integer" in msg and "leaked" not in msg
    extra = tmp_path / "extra"
    (extra / "experiment").mkdir(parents=True)
    (extra / "experiment" / "env.yaml").write_text("run:\n  name: ${oc.env:METAREC_TEST_SECRET}\n")
    cfg = compose(["experiment=env"], [extra, CONFIGS])
    assert cfg.run.name == "${oc.env:METAREC_TEST_SECRET}"


# ---------------------------------------------------------------------------------------------
# Ranges of numeric options and choices (metarec.config_checks): one line naming the option and what
# it allows, before anything is created


@pytest.mark.parametrize(
    ("arg", "fragment"),
    [
        ("learner.inner_lr=.nan", "learner.inner_lr must be a finite number >= 0, got nan"),
        ("learner.lr=.inf", "learner.lr must be a finite number > 0, got inf"),
        ("learner.lr=-1", "learner.lr must be a finite number > 0, got -1.0"),
        ("learner.lr=0", "learner.lr must be a finite number > 0"),
        ("learner.weight_decay=-1", "learner.weight_decay must be a finite number >= 0"),
        ("learner.inner_steps=-1", "learner.inner_steps must be an integer >= 0"),
        ("learner.chunk_size=0", "learner.chunk_size must be null or an integer >= 1, got 0"),
        ("learner.inner_grad_clip=0", "learner.inner_grad_clip must be null or a finite number > 0"),
        ("data.relevance_threshold=.nan", "data.relevance_threshold must be a finite number, got nan"),
        ("data.eval_support_sizes=[3,0]", "data.eval_support_sizes must be a list of integers >= 1, got [3, 0]"),
        ("data.ranking_ks=[0]", "data.ranking_ks must be a list of integers >= 1"),
        ("data.meta_batch_size=0", "data.meta_batch_size must be an integer >= 1, got 0"),
        ("data.eval_batch_size=0", "data.eval_batch_size must be an integer >= 1, got 0"),
        ("data.num_workers=-1", "data.num_workers must be an integer >= 0, got -1"),
        ("data.item_id_dropout=.nan", "data.item_id_dropout must be a finite number in [0, 1)"),
        ("data.train_support=sometimes", "data.train_support must be one of full, loguniform, mixed, got 'sometimes'"),
        ("data.split.new_user_fraction=.nan", "data.split.new_user_fraction must be a finite number in [0, 1)"),
        ("data.params.noise=-.inf", "data.params.noise must be a finite number >= 0, got -inf"),
        ("data.params.n_users=0", "data.params.n_users must be an integer >= 1"),
        ("model.embed_dim=0", "model.embed_dim must be an integer >= 1, got 0"),
        ("model.hidden=[0]", "model.hidden must be a list of integers >= 1, got [0]"),
        ("trainer.precision=bogus", "trainer.precision must be one of"),
        ("trainer.max_steps=0", "trainer.max_steps must be -1 or an integer >= 1"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be an integer >= 1"),
        ("trainer.gradient_clip_val=.nan", "trainer.gradient_clip_val must be null or a finite number > 0"),
        ("trainer.limit_val_batches=-1", "trainer.limit_val_batches must be null or a finite number >= 0"),
        ("seed=-1", "seed must be an integer in [0, 4294967295], got -1"),
    ],
)
def test_out_of_range_options_name_the_option_and_what_is_allowed(arg: str, fragment: str) -> None:
    assert fragment in _error(["experiment=quickstart", arg])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["learner=reptile", "learner.inner_steps=0"], "learner.inner_steps must be an integer >= 1, got 0"),
        (["learner=amortised", "learner.kl_weight=.nan"], "learner.kl_weight must be a finite number >= 0"),
        (["learner=fism", "model=twotower", "learner.alpha=2"], "learner.alpha must be a finite number in [0, 1]"),
        (["learner=itemknn", "learner.neighbours=0"], "learner.neighbours must be an integer >= 1"),
        (["learner=ease", "learner.l2_grid=[1,-3]"], "learner.l2_grid must be a list of finite numbers > 0"),
        (["learner=finetune", "learner.finetune_lr=.nan"], "learner.finetune_lr must be a finite number >= 0"),
        (["model=transformer", "model.lora_alpha=.inf"], "model.lora_alpha must be a finite number > 0"),
        (["model=twotower", "model.user_hidden=[8,0]"], "model.user_hidden must be a list of integers >= 1"),
        (["data=movielens100k", "data.params.timeout_s=0"], "data.params.timeout_s must be a finite number > 0"),
        (["data=csv", "data.params.rating_range=[1,.inf]"], "data.params.rating_range must be null or a list of finite numbers, got [1.0, inf]"),
    ],
)
def test_component_options_are_checked_where_the_component_has_them(args: list[str], fragment: str) -> None:
    assert fragment in _error(args)


def test_zero_inner_steps_is_allowed_where_it_means_something() -> None:
    assert compose(["learner.inner_steps=0", "learner.inner_lr=0"]).learner.inner_steps == 0  # MAML: no adaptation
    assert compose(["learner=reptile", "learner.eval_inner_steps=0"]).learner.eval_inner_steps == 0


def test_every_shipped_option_satisfies_the_rules() -> None:
    for group in ("experiment", *GROUPS):
        for option in group_options(group, CONFIGS):
            compose([f"{group}={option}"])


def test_out_of_range_option_on_the_command_line_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    from cli_helpers import run_cli, cli_env

    proc = run_cli("fit", "experiment=quickstart", "data.meta_batch_size=0", f"run.root={tmp_path / 'runs'}",
                   cwd=tmp_path, env=cli_env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("metarec: error: data.meta_batch_size must be an integer >= 1, got 0")
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# Unknown keys, groups and options


@pytest.mark.parametrize(
    ("arg", "named"),
    [
        ("foo=1", "foo"),
        ("foo.bar=1", "foo"),
        ("learner.x=1", "learner.x"),
        ("learner.x.y=1", "learner.x"),
        ("model.x=1", "model.x"),
        ("data.x=1", "data.x"),
        ("data.split.x=1", "data.split.x"),
        ("data.params.x=1", "data.params.x"),
        ("trainer.x=1", "trainer.x"),
        ("trainer.max_epoch=1", "trainer.max_epoch"),
        ("logger.x=1", "logger.x"),
        ("run.x=1", "run.x"),
    ],
)
def test_unknown_key(arg: str, named: str) -> None:
    msg = _error([arg])
    assert "unknown" in msg and named in msg, msg


def test_known_keys_are_listed() -> None:
    msg = _error(["learner.x=1"])
    assert "inner_lr" in msg and "inner_steps" in msg
    msg = _error(["data.params.x=1"])
    assert "n_users" in msg
    msg = _error(["trainer.x=1"])
    assert "max_epochs" in msg


def test_key_of_another_learner_is_unknown() -> None:
    msg = _error(["learner=global", "learner.inner_lr=0.1"])
    assert "learner.inner_lr" in msg


def test_key_of_another_source_is_unknown() -> None:
    msg = _error(["data=synthetic", "data.params.download=false"])
    assert "data.params.download" in msg


def test_unknown_group_on_the_command_line_is_an_unknown_key() -> None:
    msg = _error(["optimizer=adam"])
    assert "optimizer" in msg


def test_unknown_group_in_experiment(cfg_root: Path) -> None:
    msg = _error(["experiment=bad_group"], cfg_root)
    assert "unknown config group 'optimizer'" in msg
    for g in GROUPS:
        assert g in msg


@pytest.mark.parametrize("group", [*GROUPS, "experiment"])
def test_unknown_option(group: str) -> None:
    msg = _error([f"{group}=no_such_option"])
    available = sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))
    assert available
    assert f"unknown {group} option 'no_such_option'" in msg
    assert f"available: {', '.join(available)}" in msg


def test_unknown_option_picked_by_experiment(cfg_root: Path) -> None:
    msg = _error(["experiment=bad_option"], cfg_root)
    assert "unknown learner option 'no_such_learner'" in msg and "maml" in msg


def test_unknown_key_in_experiment(cfg_root: Path) -> None:
    assert "trainer.max_epoch" in _error(["experiment=bad_key"], cfg_root)


def test_invalid_yaml_file(cfg_root: Path) -> None:
    msg = _error(["experiment=not_yaml"], cfg_root)
    assert "not_yaml.yaml" in msg


def test_unknown_registry_names() -> None:
    assert "nope" in _error(["learner.name=nope"])
    assert "nope" in _error(["data.source=nope"])
    assert "tb" in _error(["logger.name=tb"])


# ---------------------------------------------------------------------------------------------
# Wrong types, malformed arguments


@pytest.mark.parametrize(
    ("arg", "named"),
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs"),
        ("trainer.max_epochs=1.5", "trainer.max_epochs"),
        ("trainer.max_epochs=null", "trainer.max_epochs"),
        ("trainer.enable_progress_bar=maybe", "trainer.enable_progress_bar"),
        ("learner.inner_lr=fast", "learner.inner_lr"),
        ("learner.inner_steps=[1,2]", "learner.inner_steps"),
        ("data.split.query_size=ten", "data.split.query_size"),
        ("data.params.n_users=abc", "data.params.n_users"),
        ("seed=abc", "seed"),
        ("seed=1.5", "seed"),
        ("seed=true", "seed"),
    ],
)
def test_wrong_type(arg: str, named: str) -> None:
    msg = _error([arg])
    assert named in msg, msg


@pytest.mark.parametrize("arg", ["trainer=5x", "data.split=5", "data.params=5", "run=5"])
def test_section_replaced_by_a_scalar(arg: str) -> None:
    _error([arg])


@pytest.mark.parametrize("arg", ["noequals", "learner", "--max-epochs", ""])
def test_malformed_argument_without_equals(arg: str) -> None:
    msg = _error([arg])
    assert repr(arg) in msg and "key=value" in msg


def test_empty_key() -> None:
    assert "empty key" in _error(["=5"])


def test_parse_overrides_splits_choices_from_keys() -> None:
    choices, keys = parse_overrides(["learner=maml", "experiment=quickstart", "learner.lr=0.1", "seed=1"])
    assert choices == {"learner": "maml", "experiment": "quickstart"}
    assert keys == ["learner.lr=0.1", "seed=1"]


@pytest.mark.parametrize("arg", ["learner.inner_lr=[1,2", "run.name={a: [}", "learner.lr=*undefined_alias"])
def test_unparsable_yaml_value(arg: str) -> None:
    msg = _error([arg])
    assert arg.split("=", 1)[0] in msg


# ---------------------------------------------------------------------------------------------
# Values are never evaluated


@pytest.mark.parametrize(
    "value",
    [
        "__import__('pathlib').Path('{marker}').touch()",
        "eval(\"__import__('pathlib').Path('{marker}').touch()\")",
        "!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]",
        "!!python/object/apply:os.system ['touch {marker}']",
    ],
)
@pytest.mark.parametrize("key", ["run.name", "learner.inner_lr", "data.params.n_users"])
def test_values_are_never_evaluated(tmp_path: Path, key: str, value: str) -> None:
    marker = tmp_path / "evaluated"
    value = value.format(marker=marker)
    try:
        cfg = compose([f"{key}={value}"])
    except ConfigError:
        pass  # rejected (wrong type or a YAML tag): fine, as long as nothing ran
    else:
        got = OmegaConf.select(cfg, key)
        assert isinstance(got, str) and got == value  # kept verbatim as text
    assert not marker.exists()


def test_config_error_is_a_metarec_error() -> None:
    assert issubclass(ConfigError, MetarecError)
    assert isinstance(compose([]), DictConfig)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_shipped_experiment_composes_and_trains(experiment: str, tmp_path: Path) -> None:
    """Each experiment file is valid, and its model/learner/trainer picks train (on small synthetic data:
    a command-line data choice beats the experiment's)."""
    from metarec.runs import finished_runs
    from metarec.train import fit

    cfg = compose([f"experiment={experiment}"])
    assert cfg.run.experiment == experiment
    small = ["data=synthetic", "data.params.n_users=120", "trainer.fast_dev_run=true", f"run.root={tmp_path}"]
    if cfg.model.name == "transformer":
        small += ["model.d_model=16", "model.heads=2", "model.ffn=32"]
    cfg = compose([f"experiment={experiment}", *small])
    (record,) = finished_runs(fit(cfg))
    assert record["learner"] == cfg.choices.learner


def test_the_light_train_support_rule_lists_what_the_data_section_accepts() -> None:
    """config_checks keeps its own copy of data.train_support's choices (importing the data package there would
    load numpy and pandas on every CLI start): it must equal data_config.TRAIN_SUPPORT."""
    from metarec.config_checks import RULES
    from metarec.data.data_config import TRAIN_SUPPORT

    assert tuple(RULES["data.train_support"].choices) == TRAIN_SUPPORT


def test_the_light_rating_loss_rule_lists_what_the_data_section_accepts() -> None:
    """As for data.train_support: config_checks' copy of data.rating_loss's choices equals data_config.RATING_LOSSES."""
    from metarec.config_checks import RULES
    from metarec.data.data_config import RATING_LOSSES

    assert tuple(RULES["data.rating_loss"].choices) == RATING_LOSSES
