"""Serving a new user (``metarec.Recommender``) and ``metarec recommend``.

Tiny runs on synthetic data are trained once for the module: MAML (scope ``all``), MAML with scope
``head`` (and ``eval_inner_steps=2``), Meta-SGD (learned rates, inner gradient clipping), ANIL (scope
``output``), a LoRA-scoped Transformer, the amortised learner (attention encoder, and the TaNP preset
with its latent path), and the ``global``, ``user_mean`` and ``item_mean`` baselines.
"""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import cli_env, run_cli
from zoo_helpers import LORA_MODEL, learner_options

import metarec
from metarec.config import compose
from metarec.data.splits import Task
from metarec.errors import MetarecError
from metarec.recommend import AdaptedUser, Recommender
from metarec.train import fit

TINY = ["data.params.n_users=200", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
# every learner of the zoo, and variants that exercise other serving paths
RUNS = {
    **learner_options(),
    "head": ["learner.scope=head", "learner.eval_inner_steps=2"],
    "metasgd_clip": ["learner=metasgd", "learner.inner_grad_clip=0.5"],
    "tf_lora": [*LORA_MODEL, "learner.scope=lora"],
    # learners written for any base model, on the other two (their serving paths differ from MeLU's)
    **{f"tt_{name}": [f"learner={name}", "model=twotower"] for name in ("maml", "metasgd", "finetune", "amortised", "tanp")},
    **{f"tf_{name}": [f"learner={name}", *LORA_MODEL] for name in ("metasgd", "finetune", "amortised")},
}
ADAPTING = ("maml", "head", "metasgd_clip", "tf_lora", "amortised", "tanp", *(n for n in RUNS if n[:3] in ("tt_", "tf_")))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {name: fit(compose([*TINY, f"run.root={root}", f"run.name={name}", *extra])) for name, extra in RUNS.items()}


@pytest.fixture(scope="module")
def recs(runs) -> dict[str, Recommender]:
    return {name: Recommender.load(path) for name, path in runs.items()}


def _user_features(rec: Recommender, user_code: int) -> dict[str, int]:
    ds = rec.dataset
    return {f.name: int(ds.users.categorical[user_code, j]) for j, f in enumerate(ds.users.categorical_fields)}


def _support(rec: Recommender, task: Task) -> list[tuple[int, float]]:
    return list(zip(rec.item_ids[task.support_items].tolist(), task.support_ratings.tolist()))


def _tasks(rec: Recommender) -> list[Task]:
    eps = rec.datamodule.split.episodes
    return eps["user_cold"][:2] + eps["user_item_cold"][:1] + eps["warm"][:1]


def _state(rec: Recommender) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in rec.learner.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Loading


def test_load_restores_the_run(runs, recs) -> None:
    assert metarec.Recommender is Recommender
    rec = recs["maml"]
    assert rec.checkpoint is not None and rec.checkpoint.name.startswith("best-")
    assert not rec.learner.training
    state = torch.load(rec.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for k, v in rec.learner.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert rec.datamodule.split.manifest["content_hash"] in (runs["maml"] / "split_manifest.json").read_text()
    assert (recs["maml"].learner.eval_steps, recs["head"].learner.eval_steps) == (1, 2)
    assert recs["user_mean"].checkpoint is None  # nothing to train, nothing to load


def test_load_refuses_missing_or_unfinished_runs(runs, tmp_path) -> None:
    with pytest.raises(MetarecError, match="does not exist"):
        Recommender.load(tmp_path / "nope")
    with pytest.raises(MetarecError, match="not a metarec run folder"):
        Recommender.load(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(runs["head"], run)
    (run / "metrics.json").rename(run / "metrics.json.bak")
    with pytest.raises(MetarecError, match="not finished") as e:
        Recommender.load(run)
    assert "\n" not in str(e.value)
    (run / "metrics.json.bak").rename(run / "metrics.json")
    for ckpt in (run / "checkpoints").glob("best-*.ckpt"):
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    (run / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(MetarecError, match="truncated or corrupt"):
        Recommender.load(run)


# ---------------------------------------------------------------------------------------------
# Adaptation equals the learner's own test path


@pytest.mark.parametrize("name", list(RUNS))
def test_serving_equals_the_learner_test_path(recs, name) -> None:
    """Every learner is served through its own adapt/score: what a user gets from ``Recommender`` equals
    what the learner computes for the same user at test time (collated with other users, padded)."""
    rec = recs[name]
    learner = rec.learner
    lo, hi = rec.rating_range
    tasks = _tasks(rec)
    batch = rec.datamodule.collate(tasks)
    state, _, out = learner.evaluate(batch)
    with torch.no_grad():
        ranked = learner.rank_score(state, *batch.query())
    for t, task in enumerate(tasks):
        n = len(task.query_items)
        user = rec.adapt(_support(rec, task), _user_features(rec, task.user))
        query = rec.item_ids[task.query_items]
        np.testing.assert_allclose(rec._scores(user, task.query_items, rank=True), ranked[t, :n].numpy(),
                                   rtol=1e-5, atol=1e-5)
        if not learner.predicts_ratings:
            with pytest.raises(MetarecError, match="does not predict ratings"):
                user.predict(query)
            continue
        expected = out[t, :n].detach().numpy()
        got = user.predict(query, clip=False)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        shown = learner.to_prediction(torch.as_tensor(expected)).numpy()  # clipped; on the grid with data.rating_grid
        if learner.ctx.rating_grid is None:
            np.testing.assert_array_equal(shown, np.clip(expected, lo, hi))
        np.testing.assert_allclose(user.predict(query), shown, rtol=0, atol=1e-5)
        if name in (*ADAPTING, "anil", "user_mean"):  # the ratings matter
            flipped = [(i, lo + hi - r) for i, r in _support(rec, task)]
            assert not np.allclose(rec.adapt(flipped, _user_features(rec, task.user)).predict(query), got)


def test_recommend_has_no_learner_class_checks() -> None:
    source = (Path(metarec.__file__).parent / "recommend.py").read_text()
    assert not re.search(r"isinstance\((self\.)?learner|type\((self\.)?learner\)", source)
    assert "from metarec.learners" not in source and "hasattr(" not in source


def test_baseline_rules(recs) -> None:
    rec = recs["user_mean"]
    user = rec.adapt({1: 2.0, 2: 5.0, 3: 3.5})
    np.testing.assert_allclose(user.predict([4, 5, 1]), [3.5, 3.5, 3.5], rtol=0, atol=1e-6)
    rec = recs["global"]  # no adaptation: only the user's features matter
    a, b = rec.adapt([(1, 1.0)], {"gender": 1}), rec.adapt([(2, 5.0), (3, 4.0)], {"gender": 1})
    assert np.array_equal(a.predict(range(1, 50)), b.predict(range(1, 50)))


def test_unknown_user_features_are_code_zero(recs) -> None:
    rec = recs["maml"]
    fields = [f.name for f in rec.dataset.users.categorical_fields]
    ratings = [(10, 4.0), (20, 2.0), (30, 5.0)]
    base = rec.adapt(ratings).predict(range(1, 301), clip=False)
    assert np.array_equal(rec.adapt(ratings, {f: None for f in fields}).predict(range(1, 301), clip=False), base)
    assert np.array_equal(rec.adapt(ratings, {f: 0 for f in fields}).predict(range(1, 301), clip=False), base)
    other = rec.adapt(ratings, {fields[0]: 1}).predict(range(1, 301), clip=False)
    assert not np.array_equal(other, base)


# ---------------------------------------------------------------------------------------------
# Isolation: users never affect each other or the meta-parameters


@pytest.mark.parametrize("name", ADAPTING)
def test_users_are_isolated_sequentially_and_across_threads(recs, name) -> None:
    rec = recs[name]
    before = _state(rec)
    grads_before = [p.grad for p in rec.learner.parameters()]
    all_items = rec.item_ids.tolist()
    tasks = rec.datamodule.split.episodes["user_cold"][:2]
    args = [(_support(rec, t), _user_features(rec, t.user)) for t in tasks]

    def serve(i: int) -> tuple[np.ndarray, list]:
        user = rec.adapt(*args[i])
        return user.predict(all_items, clip=False), user.recommend(10)

    alone = [serve(0), serve(1)]
    again = [serve(0), serve(1)]  # one after another, after others were adapted
    results: dict[int, tuple] = {}
    barrier = threading.Barrier(2)

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(3):
            results[i] = serve(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not np.array_equal(alone[0][0], alone[1][0])  # two genuinely different users
    for i in range(2):
        for other in (again[i], results[i]):
            assert np.array_equal(other[0], alone[i][0])
            assert other[1] == alone[i][1]
    after = rec.learner.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v) and after[k].dtype == v.dtype, k
    assert [p.grad for p in rec.learner.parameters()] == grads_before


# ---------------------------------------------------------------------------------------------
# Ranking


def test_recommend_ranks_every_item(recs) -> None:
    rec = recs["head"]
    rated = [(5, 5.0), (17, 4.0), (42, 1.0)]
    user = rec.adapt(rated)
    assert isinstance(user, AdaptedUser)
    top = user.recommend(10)
    assert len(top) == 10
    scores = user.predict(rec.item_ids, clip=False)
    order = [rec.item_code(i) for i, _, _ in top]
    unseen = [c for c in np.argsort(-scores, kind="stable") if rec.item_ids[c] not in (5, 17, 42)]
    assert order == unseen[:10]
    lo, hi = rec.rating_range
    for item, title, score in top:
        code = rec.item_code(item)
        assert title == rec.dataset.item_titles[code]
        assert score == pytest.approx(float(np.clip(scores[code], lo, hi)))
    everything = user.recommend(10_000)
    assert len(everything) == rec.n_items - 3 and {5, 17, 42}.isdisjoint(i for i, _, _ in everything)
    assert len(user.recommend(10_000, exclude_seen=False)) == rec.n_items


def test_the_value_shown_with_a_recommended_item_is_its_prediction_for_every_learner(recs) -> None:
    """Learners ranking by ``score`` show the ranking pass's own scores, the others (``rank_score``
    overridden) score the k items again: either way the value is what ``predict`` says."""
    by_score = set()
    for name, rec in recs.items():
        if not rec.learner.predicts_ratings:
            continue
        user = rec.adapt([(5, 5.0), (17, 4.0), (42, 1.0)])
        top = user.recommend(5)
        np.testing.assert_allclose([v for _, _, v in top], user.predict([i for i, _, _ in top]), rtol=0, atol=1e-5,
                                   err_msg=name)
        by_score.add(rec.learner.ranks_by_score)
    assert by_score == {True, False}


def test_calls_run_with_their_thread_setting_and_restore_torchs(runs, recs, monkeypatch) -> None:
    rec = recs["head"]
    seen = []
    score = rec.learner.rank_score
    monkeypatch.setattr(rec.learner, "rank_score", lambda *a: seen.append(torch.get_num_threads()) or score(*a))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        user = rec.adapt([(5, 5.0)])
        assert rec.threads == 1  # the default
        top = user.recommend(3)
        rec.threads = None  # torch's own setting
        assert user.recommend(3) == top
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        rec.threads = 1
        torch.set_num_threads(before)
    assert rec.catalogue()[1] is rec.catalogue()[1]  # gathered once
    with pytest.raises(MetarecError, match="threads must be a positive integer or None, got 0"):
        Recommender.load(runs["head"], threads=0)
    with pytest.raises(MetarecError, match="k must be"):
        user.recommend(0)


@pytest.mark.parametrize(
    "ratings, fragment",
    [
        ([], "no ratings"),
        ([(1, 4.0), (99999, 3.0)], "entry 2: unknown item id 99999"),
        ([(1, 4.0), (2, 6.0)], "entry 2: rating 6.0 of item 2 is outside the rating range 1..5"),
        ([(1, 0.5)], "entry 1: rating 0.5"),
        ([(1, float("nan"))], "entry 1: rating nan"),
        ([(1, "4")], "entry 1: rating '4' of item 1 is not a number"),
        ([(1, 4.0), (2, 3.0), (1, 5.0)], "entry 3: item 1 is rated twice (also in ratings entry 1)"),
        ([(1, 4.0, 2)], "entry 1: (1, 4.0, 2) is not an (item id, rating) pair"),
    ],
)
def test_bad_ratings_name_the_entry(recs, ratings, fragment) -> None:
    with pytest.raises(MetarecError) as e:
        recs["maml"].adapt(ratings)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_bad_user_features_and_items(recs) -> None:
    rec = recs["maml"]
    with pytest.raises(MetarecError, match="unknown user feature 'shoe_size'"):
        rec.adapt([(1, 4.0)], {"shoe_size": 3})
    with pytest.raises(MetarecError, match="user feature gender: code 9 is outside 0..2"):
        rec.adapt([(1, 4.0)], {"gender": 9})
    with pytest.raises(MetarecError, match="items entry 2: unknown item id 'x'"):
        rec.adapt([(1, 4.0)]).predict([1, "x"])
    assert rec.adapt([("1", 4.0)]).predict(["2"]).shape == (1,)  # ids as strings (e.g. from a CSV)


# ---------------------------------------------------------------------------------------------
# Command line


def _cli(tmp_path: Path, *args: str):
    data = tmp_path / "no-data"  # synthetic data needs nothing on disk
    data.mkdir(exist_ok=True)
    return run_cli(*args, cwd=tmp_path, env=cli_env(data))


def _one_error_line(proc, *fragments: str) -> None:
    detail = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, detail
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("metarec: error: "), detail
    for f in fragments:
        assert f in lines[0], detail


@pytest.fixture(scope="module")
def slow_cli(runs, tmp_path_factory) -> dict[str, object]:
    """The CLI calls that load a run (seconds of imports each), run side by side."""
    from concurrent.futures import ThreadPoolExecutor

    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "good.csv").write_text("item,rating\n5,5\n17,4\n42,1\n")
    (tmp / "unknown.csv").write_text("item,rating\n5,5\n99999,3\n")
    calls = {
        "good": ("--run", str(runs["maml"]), "--ratings", str(tmp / "good.csv"), "-k", "4"),
        "unknown": ("--run", str(runs["head"]), "--ratings", str(tmp / "unknown.csv")),
    }
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {name: pool.submit(_cli, tmp, "recommend", *args) for name, args in calls.items()}
        return {name: f.result() for name, f in futures.items()}


def test_cli_recommend_prints_the_top_k(recs, slow_cli) -> None:
    proc = slow_cli["good"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["rank", "item", "title", "predicted", "rating"]
    expected = recs["maml"].adapt([(5, 5.0), (17, 4.0), (42, 1.0)]).recommend(4)
    assert len(lines) == 5
    for rank, (line, (item, title, score)) in enumerate(zip(lines[1:], expected), start=1):
        assert line.split()[:2] == [str(rank), str(item)]
        assert title in line and line.endswith(f"{score:.2f}")


def test_cli_recommend_refuses_an_unknown_item(slow_cli) -> None:
    _one_error_line(slow_cli["unknown"], "unknown.csv row 3: unknown item id '99999'")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("item,score\n5,5\n", "the header must name the columns item and rating"),
        ("item,rating\n5,5\n17\n", "row 3: expected 2 columns"),
        ("item,rating\n5,5\n17,\n", "row 3: missing rating"),
        ("item,rating\n5,5\n\n17,great\n", "row 4: rating 'great' is not a number"),
        ("item,rating\n", "has no ratings below its header"),
    ],
)
def test_cli_recommend_refuses_malformed_rows(runs, tmp_path, text, fragment) -> None:
    csv = tmp_path / "new_user.csv"
    csv.write_text(text)
    proc = _cli(tmp_path, "recommend", "--run", str(runs["head"]), "--ratings", str(csv))
    _one_error_line(proc, fragment, "new_user.csv")


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--user-feature", "gender"], "--user-feature 'gender' is not of the form FIELD=CODE"),
        (["--user-feature", "gender=male"], "'male' is not an integer code"),
        (["-k", "0"], "-k must be at least 1"),
        (["--ratings", "missing.csv"], "ratings file missing.csv does not exist"),
    ],
)
def test_cli_recommend_refuses_bad_arguments(runs, tmp_path, extra, fragment) -> None:
    (tmp_path / "ok.csv").write_text("item,rating\n5,5\n")
    proc = _cli(tmp_path, "recommend", "--run", str(runs["head"]), "--ratings", "ok.csv", *extra)
    _one_error_line(proc, fragment)
