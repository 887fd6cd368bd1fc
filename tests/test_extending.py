"""docs/EXTENDING.md, run for real: a learner, a base model and a data source from a package outside
metarec (found through entry points, options on --config-path) are trained and served by metarec, and
serving equals the learner's own test-time predictions. Nothing under metarec/ is touched."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from cli_helpers import cli_env

DOC = Path(__file__).resolve().parent.parent / "docs" / "EXTENDING.md"

CONFIGS = {
    "data/small_world.yaml": "source: small_world\nparams:\n  n_users: 150\nsplit:\n  new_item_method: random\n",
    "model/bilinear.yaml": "name: bilinear\nembed_dim: 8\n",
    "learner/user_shift.yaml": "name: user_shift\nlr: 0.01\n",
}

ENTRY_POINTS = """\
[metarec.sources]
small_world = metarec_ext:register_source

[metarec.models]
bilinear = metarec_ext:register_model

[metarec.learners]
user_shift = metarec_ext:register_learner
"""

SCRIPT = """
import json, sys
import numpy as np, torch
from metarec.config import compose, search_path
from metarec.recommend import Recommender
from metarec.train import fit

root, extra = sys.argv[1], sys.argv[2]
cfg = compose(["data=small_world", "model=bilinear", "learner=user_shift", "trainer.max_epochs=2",
               "trainer.enable_progress_bar=false", f"run.root={root}"], search_path([extra]))
run = fit(cfg)
rec = Recommender.load(run)
learner = rec.learner
tasks = rec.datamodule.split.episodes["user_cold"][:3]
batch = rec.datamodule.collate(tasks)
_, _, out = learner.evaluate(batch)
gaps = []
for t, task in enumerate(tasks):
    feats = {f.name: int(rec.dataset.users.categorical[task.user, j])
             for j, f in enumerate(rec.dataset.users.categorical_fields)}
    user = rec.adapt(list(zip(rec.item_ids[task.support_items].tolist(), task.support_ratings.tolist())), feats)
    got = user.predict(rec.item_ids[task.query_items], clip=False)
    gaps.append(float(np.abs(got - out[t, : len(task.query_items)].numpy()).max()))
metrics = json.loads((run / "metrics.json").read_text())
print(json.dumps({"run": str(run), "type": type(learner).__module__, "gap": max(gaps),
                  "metrics": metrics["metrics"], "top": user.recommend(3)}))
"""


def _package(tmp: Path) -> Path:
    """The module of docs/EXTENDING.md (its first Python block) as an installed distribution in ``tmp``."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    site = tmp / "site"
    site.mkdir()
    (site / "metarec_ext.py").write_text(code)
    info = site / "metarec_ext-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: metarec-ext\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


def test_an_outside_learner_model_and_source_train_and_serve(tmp_path: Path) -> None:
    import metarec

    package_files = {p: p.stat().st_mtime_ns for p in Path(metarec.__file__).parent.rglob("*") if p.is_file()
                     and "__pycache__" not in p.parts}
    site = _package(tmp_path)
    extra = tmp_path / "my_configs"
    for rel, text in CONFIGS.items():
        (extra / rel).parent.mkdir(parents=True, exist_ok=True)
        (extra / rel).write_text(text)
    env = cli_env(tmp_path)
    env.pop("METAREC_CONFIG_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path / "runs"), str(extra)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["type"] == "metarec_ext"  # the learner really is the outside one
    assert result["gap"] < 1e-5  # served exactly as the learner predicts at test time
    assert "test/user_cold/mae" in result["metrics"] and len(result["top"]) == 3
    # the CLI serves it too, from the run folder alone (entry points find the classes again)
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("item,rating\n1,5\n2,4\n3,1\n")
    proc = subprocess.run([sys.executable, "-m", "metarec", "recommend", "--run", result["run"], "--ratings",
                           str(ratings), "-k", "3"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len([line for line in proc.stdout.splitlines() if line.strip()]) >= 3
    # and nothing of metarec itself changed
    assert {p: p.stat().st_mtime_ns for p in package_files} == package_files
