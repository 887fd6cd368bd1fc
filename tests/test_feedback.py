"""What ``metarec fit`` tells the user: the run header's counts are the split's own, and
``fit --print-config`` answers without importing torch or Lightning (while ``fit`` keeps every check)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from cli_helpers import TIMEOUT_S, cli_env

from metarec.config import compose

TINY = ["data.params.n_users=200", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
HEAVY = ("torch", "lightning", "pytorch_lightning", "lightning_fabric")

# runs the CLI's main in a fresh interpreter, then reports which heavy modules it imported
PROBE = """
import sys
from metarec.cli import main
rc = main(sys.argv[1:])
heavy = [m for m in {heavy!r} if m in sys.modules]
print("HEAVY=" + ",".join(heavy))
sys.exit(rc)
"""


def _probe(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(heavy=HEAVY))
    return subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def test_print_config_imports_neither_torch_nor_lightning(tmp_path: Path) -> None:
    proc = _probe(tmp_path, "fit", "--print-config", "data=movielens100k", "learner=maml", "learner.inner_steps=3",
                  "model=transformer", "logger=wandb", "trainer.precision=bf16-mixed")
    assert proc.returncode == 0, proc.stderr
    printed, _, probe = proc.stdout.rpartition("HEAVY=")
    assert probe.strip() == "", f"--print-config imported {probe.strip()}"
    cfg = yaml.safe_load(printed)
    assert cfg["data"]["source"] == "movielens100k" and cfg["learner"]["inner_steps"] == 3
    assert cfg["data"]["split"]["query_size"] == 10  # the data section's defaults are filled in
    # bad input is still refused on that path, with one line
    proc = _probe(tmp_path, "fit", "--print-config", "data.split.query_size=0")
    assert proc.returncode == 2 and proc.stderr.startswith("metarec: error: data.split.query_size"), proc.stderr
    assert proc.stdout.strip() == "HEAVY="


def test_print_config_differs_from_fit_only_in_the_component_sections() -> None:
    """The light config fit --print-config prints equals fit's in every section but model and learner,
    whose composed keys and values are a part of fit's (fit fills in their defaults)."""
    args = ["data=movielens100k", "learner=fomaml", "learner.inner_lr=0.05", "seed=3", "data.split.support_size=5"]
    light, full = compose(args, light=True), compose(args)
    for key in ("seed", "choices", "run", "trainer", "logger", "data"):
        assert light[key] == full[key], key
    for section in ("model", "learner"):
        assert dict(light[section]).items() <= dict(full[section]).items(), section
    assert set(full.learner) - set(light.learner)  # fit's has defaults the light one leaves out


def test_fit_still_checks_what_print_config_leaves_to_it(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for arg, fragment in (("learner.nope=1", "learner.nope"), ("trainer.precision=17-bogus", "trainer.precision"),
                          ("learner.inner_steps=many", "learner.inner_steps")):
        proc = subprocess.run([sys.executable, "-m", "metarec", "fit", arg, f"run.root={root}"], cwd=tmp_path,
                              env=cli_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
        assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not root.exists()


def _number(text: str, label: str) -> int:
    m = re.search(rf"([\d,]+) {label}", text) or re.search(rf"(1) {label.rstrip('s')}\b", text)
    assert m, f"no {label!r} in {text!r}"
    return int(m.group(1).replace(",", ""))


def test_run_header_shows_the_splits_counts(tmp_path: Path, capsys) -> None:
    from metarec.assembly import build
    from metarec.cli import main
    from metarec.run_header import trainable_parameters

    root = tmp_path / "runs"
    assert main(["fit", *TINY, f"run.root={root}", "seed=2"]) == 0
    out = capsys.readouterr().out
    head = out.split("run finished:")[0]
    rows = {}
    for line in head.splitlines()[1:]:
        label, text = line.strip().split(None, 1)
        rows[label] = text
    run_dir = next(root.rglob("metrics.json")).parent
    assert rows["run"] == str(run_dir)
    manifest = json.loads((run_dir / "split_manifest.json").read_text())
    split = rows["split"]
    assert _number(split, "train users") == len(manifest["users"]["train"])
    assert _number(split, "validation users") == len(manifest["users"]["val"])
    assert _number(split, r"new \(test\) users") == len(manifest["users"]["new"])
    assert _number(split, "new items") == len(manifest["new_items"])
    scenarios = [s for s in manifest["episodes"] if s != "val"]
    assert scenarios and all(s in rows for s in scenarios)
    for s in scenarios:
        episodes = manifest["episodes"][s]
        items = {i for e in episodes for i in (*e["support"], *e["query"])}
        assert _number(rows[s], "episodes") == len(episodes)
        assert _number(rows[s], "users") == len({e["user"] for e in episodes})
        assert _number(rows[s], "items") == len(items)
    cfg = compose([*TINY, "seed=2"])
    dm, learner = build(cfg)
    assert _number(rows["data"], "users") == dm.dataset.n_users
    assert _number(rows["data"], "interactions") == len(dm.dataset.ratings)
    assert _number(rows["model"], "trainable parameters") == trainable_parameters(learner) > 0
    assert rows["learner"].startswith("maml") and rows["seed"].startswith("2 ")
    assert rows["device"] == "cpu, precision 32-true"


def test_run_header_is_a_rich_table_on_a_terminal() -> None:
    from metarec.run_header import print_run_header, render_plain

    rows = [("run", "runs/x"), ("  warm", "3 users, 7 items, 3 episodes")]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Terminal(), io.StringIO()
    print_run_header(rows, tty)
    print_run_header(rows, pipe)
    assert pipe.getvalue() == render_plain(rows) + "\n"
    assert "\x1b[" in tty.getvalue() and "3 users, 7 items, 3 episodes" in tty.getvalue()


def test_text_encoding_is_labelled_and_the_cache_is_quiet(tmp_path: Path, monkeypatch, capsys) -> None:
    import numpy as np

    import metarec.data.text as text
    from metarec.data.sources import load_dataset

    ds = load_dataset("synthetic", {"n_users": 60, "n_items": 80, "n_genres": 3}, None)
    model = tmp_path / "encoder"  # a local model folder (its files key the cache); the encoder is faked
    model.mkdir()
    (model / "weights.bin").write_bytes(b"w")
    calls = []

    def fake_encode(texts, cfg, path, local):
        calls.append(len(texts))
        return np.ones((len(texts), 4), dtype=np.float32)

    monkeypatch.setattr(text, "encode", fake_encode)
    cfg = text.TextConfig(enabled=True, model=str(model), template="{title} ({genre})", cache_dir=str(tmp_path / "c"))
    emb = text.item_text_embeddings(ds, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert calls == [ds.n_items] and emb.shape == (ds.n_items, 4)
    assert len(err) == 1, err
    assert f"encoding {ds.n_items} item texts of {ds.name}" in err[0]
    assert "'{title} ({genre})'" in err[0] and str(model) in err[0]
    cached = next((tmp_path / "c").glob("*.npy"))
    assert str(cached) in err[0]
    assert np.array_equal(text.item_text_embeddings(ds, cfg), emb)  # from the cache: no line, no encoding
    assert capsys.readouterr().err == "" and calls == [ds.n_items]
