"""metarec as an installed package: configs shipped as package data, the config search path
(``METAREC_CONFIG_PATH`` / ``--config-path``), plugins through entry points, ``python -m metarec``.

The full check (build the wheel, install it in a fresh virtual environment, run ``metarec fit`` outside
the repository) is ``scripts/check_wheel.sh``, run by CI; it takes minutes, so it is not a test here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import subprocess
import sys
import os
import textwrap
from importlib import resources
from pathlib import Path

import pytest
from cli_helpers import TIMEOUT_S, cli_env

from metarec import cli
from metarec.config import GROUPS, builtin_config_dir, compose, config_dir, group_options, search_path
from metarec.errors import ConfigError, PluginError
from metarec.registry import ENTRY_POINT_GROUPS, Registry

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_config_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the built-in configs alone."""
    monkeypatch.delenv("METAREC_CONFIG_DIR", raising=False)
    monkeypatch.delenv("METAREC_CONFIG_PATH", raising=False)


def _learner_preset(folder: Path, option: str, body: str) -> Path:
    (folder / "learner").mkdir(parents=True, exist_ok=True)
    path = folder / "learner" / f"{option}.yaml"
    path.write_text(body)
    return path


# ------------------------------------------------------------------------------------ package data
def test_builtin_configs_are_package_data() -> None:
    """The configs live inside the package and are found from it, with no setting."""
    configs = resources.files("metarec") / "configs"
    assert (configs / "defaults.yaml").is_file()
    for group in (*GROUPS, "experiment", "sweep"):
        assert any(f.name.endswith(".yaml") for f in (configs / group).iterdir()), group
    assert config_dir() == builtin_config_dir() == Path(str(configs)).resolve()
    assert search_path() == [builtin_config_dir()]
    assert not (REPO / "configs").exists()  # one copy only: the package's


def test_pyproject_ships_every_config_file() -> None:
    """Every file under metarec/configs matches a package-data glob of pyproject.toml (so it is in the wheel)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["metarec"]
    package = REPO / "metarec"
    files = [p.relative_to(package).as_posix() for p in (package / "configs").rglob("*") if p.is_file()]
    assert files
    unshipped = [f for f in files if not any(fnmatch.fnmatchcase(f, g) for g in globs)]
    assert unshipped == []


@pytest.mark.slow
def test_built_wheel_holds_the_configs(tmp_path: Path) -> None:
    """Build the wheel (a few seconds: no isolated build environment) from a copy of the package."""
    import shutil
    import zipfile

    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    src = tmp_path / "src"
    shutil.copytree(REPO / "metarec", src / "metarec", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("metarec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = REPO / "metarec"
    configs = {p.relative_to(REPO).as_posix() for p in (package / "configs").rglob("*.yaml")}
    assert configs and configs <= names
    assert "metarec/__main__.py" in names
    assert not [n for n in names if n.startswith("metarec/configs/") and not n.endswith(".yaml")]


# ------------------------------------------------------------------------------------- search path
def test_config_path_env_adds_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tmp_path / "mine"
    _learner_preset(extra, "maml3", "name: maml\ninner_steps: 3\n")
    monkeypatch.setenv("METAREC_CONFIG_PATH", str(extra))
    assert search_path() == [extra.resolve(), builtin_config_dir()]
    options = group_options("learner")
    assert "maml3" in options and {"maml", "global", "item_mean"} <= set(options)
    assert group_options("data") == group_options("data", builtin_config_dir())  # the other groups as before
    cfg = compose(["learner=maml3"])
    assert cfg.learner.name == "maml" and cfg.learner.inner_steps == 3 and cfg.choices.learner == "maml3"
    assert compose(["learner=global"]).learner.name == "global"  # built-ins still found
    assert compose(["experiment=quickstart"]).data.source == "synthetic"


def test_search_order_and_override_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config-path folders first (in order), then METAREC_CONFIG_PATH (in order), then the built-ins;
    the first folder holding a file wins, also over a built-in option of the same name."""
    a, b, env1, env2 = (tmp_path / n for n in ("a", "b", "env1", "env2"))
    _learner_preset(a, "mine", "name: maml\ninner_steps: 1\n")
    _learner_preset(b, "mine", "name: maml\ninner_steps: 2\n")
    _learner_preset(env1, "mine", "name: maml\ninner_steps: 3\n")
    _learner_preset(env2, "maml", "name: maml\ninner_steps: 4\n")  # overrides the built-in `maml`
    monkeypatch.setenv("METAREC_CONFIG_PATH", f"{env1}{os.pathsep}{env2}")
    assert search_path([a, b]) == [a.resolve(), b.resolve(), env1.resolve(), env2.resolve(), builtin_config_dir()]
    assert compose(["learner=mine"], search_path([a, b])).learner.inner_steps == 1
    assert compose(["learner=mine"], search_path([b, a])).learner.inner_steps == 2
    assert compose(["learner=mine"]).learner.inner_steps == 3
    assert compose(["learner=maml"]).learner.inner_steps == 4
    assert compose(["learner=maml"], builtin_config_dir()).learner.inner_steps != 4


def test_config_path_may_override_defaults(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "defaults.yaml").write_text(
        "defaults:\n  data: synthetic\n  model: melu\n  learner: global\n  trainer: cpu\n  logger: csv\nseed: 7\n")
    cfg = compose([], search_path([extra]))
    assert cfg.learner.name == "global" and cfg.seed == 7


def test_config_dir_still_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """METAREC_CONFIG_DIR replaces the built-in folder; a folder without defaults.yaml is an error."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(builtin_config_dir(), base)
    (base / "learner" / "global.yaml").unlink()
    monkeypatch.setenv("METAREC_CONFIG_DIR", str(base))
    assert search_path() == [base]
    assert "global" not in group_options("learner")
    monkeypatch.setenv("METAREC_CONFIG_DIR", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="METAREC_CONFIG_DIR.*replaces"):
        search_path()


@pytest.mark.parametrize("how", ["env", "cli"])
def test_missing_folder_is_one_error_line(how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    if how == "env":
        monkeypatch.setenv("METAREC_CONFIG_PATH", str(missing))
        with pytest.raises(ConfigError, match="nowhere.*METAREC_CONFIG_PATH.*does not exist"):
            compose([])
        args = ["fit", "--print-config"]
    else:
        args = ["fit", "--print-config", "--config-path", str(missing)]
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("metarec: error: config folder ") and str(missing) in err and "does not exist" in err


def test_cli_config_path_on_fit_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = tmp_path / "extra"
    _learner_preset(extra, "maml3", "name: maml\ninner_steps: 3\n")
    assert cli.main(["fit", "--print-config", "--config-path", str(extra), "learner=maml3"]) == 0
    out = capsys.readouterr().out
    assert "inner_steps: 3" in out and "learner: maml3" in out
    # the option may come anywhere among the overrides, which keep their order
    assert cli.main(["fit", "--print-config", "seed=1", "learner=maml3", "--config-path", str(extra), "seed=2"]) == 0
    out = capsys.readouterr().out
    assert "inner_steps: 3" in out and "seed: 2" in out
    with pytest.raises(SystemExit, match="2"):
        cli.main(["fit", "--print-config", "--config-path", str(extra), "--bogus"])
    assert capsys.readouterr().err.startswith("metarec: error: unrecognized arguments: --bogus")
    # without the folder the option is unknown
    assert cli.main(["fit", "--print-config", "learner=maml3"]) == 2
    assert "unknown learner option 'maml3'" in capsys.readouterr().err

    from metarec.compare import make_spec, run_config

    spec = make_spec(tmp_path / "cmp", ["maml3", "global"], ["0"], None, [], config_path=[str(extra)])
    assert spec.config_path == [extra.resolve()]
    assert run_config(spec, "maml3", 0).learner.inner_steps == 3
    with pytest.raises(ConfigError, match="unknown learner 'maml3'"):
        make_spec(tmp_path / "cmp", ["maml3"], ["0"], None, [])
    parsed = cli._parser().parse_args(["compare", "--out", "x", "--config-path", str(extra), "--learners", "maml3"])
    assert parsed.config_path == [str(extra)]


# ------------------------------------------------------------------------------------------ plugins
@dataclasses.dataclass
class _PlugConfig:
    lr: float = 0.1


PLUGIN_MODULE = '''
import dataclasses

CALLS = []


@dataclasses.dataclass
class PlugConfig:
    lr: float = 0.1


def register(registry):
    CALLS.append(registry.kind)
    registry.register("plugged", PlugConfig, help="from a plugin")(lambda *args: ("plugged", args))


def register_taken(registry):
    registry.register("builtin", PlugConfig)(lambda *args: None)


def broken(registry):
    raise RuntimeError("this plugin is broken\\nsecond line")
'''


def _write_plugin(site: Path, entry_points: str, dist: str = "metarec_plug") -> Path:
    """A distribution ``dist`` 1.0 in folder ``site``: modules ``{dist}_mod`` and ``{dist}_selfreg``, and
    the given entry_points.txt (as pip would install it)."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{dist}_mod.py").write_text(PLUGIN_MODULE)
    (site / f"{dist}_selfreg.py").write_text(
        "import dataclasses\n"
        "import metarec_plug_target\n"
        "metarec_plug_target.REG.register('selfreg', dataclasses.make_dataclass('C', []))(lambda: 1)\n"
    )
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return site


def _install_plugin(site: Path, entry_points: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """:func:`_write_plugin`, with ``site`` on sys.path for this test."""
    monkeypatch.syspath_prepend(str(_write_plugin(site, entry_points)))
    for mod in ("metarec_plug_mod", "metarec_plug_selfreg"):
        monkeypatch.delitem(sys.modules, mod, raising=False)


def _registry() -> Registry:
    reg: Registry = Registry("learner")
    reg.register("builtin", _PlugConfig)(lambda *args: None)
    return reg


def test_registries_use_the_entry_point_groups() -> None:
    from metarec.data.sources import SOURCES
    from metarec.learners import LEARNERS
    from metarec.models import MODELS

    assert (LEARNERS.group, MODELS.group, SOURCES.group) == ("metarec.learners", "metarec.models", "metarec.sources")
    assert set(ENTRY_POINT_GROUPS.values()) == {"metarec.learners", "metarec.models", "metarec.sources"}
    assert not hasattr(Registry, "build")


def test_entry_point_plugin_is_found_lazily_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_plugin(tmp_path / "site", """
        [metarec.learners]
        plugged = metarec_plug_mod:register
        [metarec.models]
        other = metarec_plug_mod:broken
    """, monkeypatch)
    reg = _registry()
    assert "metarec_plug_mod" not in sys.modules  # nothing loaded before the first lookup
    assert reg.names() == ["builtin", "plugged"]
    mod = sys.modules["metarec_plug_mod"]
    entry = reg.get("plugged")
    assert entry.help == "from a plugin" and entry.config_cls.__name__ == "PlugConfig"
    assert "plugged" in reg and reg.get("builtin").config_cls is _PlugConfig
    assert mod.CALLS == ["learner"]  # once, and only for its own group


def test_entry_point_module_registers_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry point may name a module whose import registers through the public decorator."""
    reg = _registry()
    target = type(sys)("metarec_plug_target")
    target.REG = reg
    monkeypatch.setitem(sys.modules, "metarec_plug_target", target)
    _install_plugin(tmp_path / "site", """
        [metarec.learners]
        selfreg = metarec_plug_selfreg
    """, monkeypatch)
    assert reg.names() == ["builtin", "selfreg"]


@pytest.mark.parametrize("value, expect", [
    ("metarec_plug_mod:broken", "RuntimeError: this plugin is broken"),
    ("metarec_plug_missing:register", "ModuleNotFoundError: No module named 'metarec_plug_missing'"),
    ("metarec_plug_mod:register_taken", "ValueError: learner 'builtin' registered twice"),
    ("metarec_plug_mod:CALLS", "neither a module nor a callable"),
])
def test_broken_plugin_is_one_line_naming_it(value: str, expect: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _install_plugin(tmp_path / "site", f"""
        [metarec.learners]
        badplug = {value}
    """, monkeypatch)
    reg = _registry()
    with pytest.raises(PluginError) as info:
        reg.get("builtin")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("learner plugin 'badplug' (metarec.learners entry point ") and "metarec_plug 1.0" in msg
    assert expect in msg
    with pytest.raises(PluginError):  # every later lookup too: a half-loaded registry never passes silently
        reg.names()


def test_plugin_end_to_end_through_the_cli(tmp_path: Path) -> None:
    """An installed plugin learner + its YAML option on --config-path, in a fresh `python -m metarec`."""
    site = _write_plugin(tmp_path / "site", """
        [metarec.learners]
        plugged = metarec_plug_mod:register
    """)  # on the subprocess's PYTHONPATH only
    extra = tmp_path / "extra"
    _learner_preset(extra, "plugged", "name: plugged\nlr: 0.5\n")
    env = cli_env(tmp_path)
    env.pop("METAREC_CONFIG_DIR")
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    proc = subprocess.run([sys.executable, "-m", "metarec", "fit", "--print-config", "--config-path", str(extra),
                           "learner=plugged"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert "name: plugged" in proc.stdout and "lr: 0.5" in proc.stdout


# -------------------------------------------------------------------------------- python -m metarec
def test_python_m_metarec_help(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    env.pop("METAREC_CONFIG_DIR")  # the built-in configs, found from the package
    proc = subprocess.run([sys.executable, "-m", "metarec", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: metarec") and "fit" in proc.stdout and "compare" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "metarec", "fit", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert "--config-path DIR" in proc.stdout and "quickstart" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "metarec", "fit", "--config-path", str(tmp_path / "nope")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
