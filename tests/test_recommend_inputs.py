"""Bad input to serving (``metarec.Recommender``): items that are not a list of ids, ratings files of any
bytes, a run's ``metrics.json`` of any content (hypothesis), and a run whose config holds ``${...}`` text.

One tiny run (MAML on synthetic data) is trained for the module.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_fuzz import FUZZ

from metarec.config import compose
from metarec.errors import MetarecError
from metarec.ratings_file import read_ratings_csv
from metarec.recommend import Recommender
from metarec.train import fit

TINY = ["data.params.n_users=200", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
LITERAL = "lit-${oc.env:HOME}"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    return fit(compose([*TINY, f"run.root={root}", f"run.name={LITERAL}"]))


@pytest.fixture(scope="module")
def rec(run) -> Recommender:
    return Recommender.load(run)


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg.strip() and len(msg.splitlines()) == 1 and "\n" not in msg, repr(msg)
    return msg


def test_a_run_config_holding_interpolation_text_is_served_as_text(run, rec) -> None:
    assert run.name == LITERAL
    assert rec.config.run.name == LITERAL


@pytest.mark.parametrize("items", ["12", b"12", None, 12, 4.5, {1: 2}])
def test_predict_refuses_anything_but_a_list_of_ids(rec, items) -> None:
    user = rec.adapt([(1, 4.0), (2, 3.0)])
    with pytest.raises(MetarecError, match="items must be a list of item ids") as err:
        user.predict(items)
    _one_line(err.value)


def test_predict_still_takes_any_iterable_of_ids(rec) -> None:
    user = rec.adapt([(1, 4.0), (2, 3.0)])
    expected = user.predict([1, 2])
    assert np.array_equal(user.predict((1, 2)), expected)
    assert np.array_equal(user.predict(np.array([1, 2])), expected)
    assert np.array_equal(user.predict(iter(["1", "2"])), expected)


@settings(max_examples=60, **FUZZ)
@given(st.lists(st.sampled_from([b"item", b"rating", b",", b'"', b"\n", b"\r\n", b"1", b"2", b"17", b"4.5", b"5",
                                 b"0", b"-1", b"nan", b"\x00", b"\xff", b"\x0b", b" ", b"9" * 5000]),
                max_size=25).map(lambda parts: b"item,rating\n" + b"".join(parts)))
@example(b"item,rating\n1,4\n1,5\n")  # rated twice
@example(b"item,rating\n1,4\n\x0b2,3\n")
def test_any_ratings_file_adapts_or_gives_one_error_line(rec, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "new_user.csv"
        path.write_bytes(data)
        try:
            pairs, names = read_ratings_csv(path)
            user = rec.adapt(pairs, entry_names=names)
        except MetarecError as e:
            _one_line(e)
            return
    assert len(user.recommend(3)) == 3


METRICS_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def run_copy(run, tmp_path_factory) -> Path:
    """A copy of the run whose metrics.json the fuzz test rewrites."""
    dest = tmp_path_factory.mktemp("copy") / "run"
    shutil.copytree(run, dest)
    return dest


@settings(max_examples=40, **FUZZ)
@given(st.one_of(
    st.binary(max_size=60),
    METRICS_VALUES.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"best_checkpoint": METRICS_VALUES}).map(lambda v: json.dumps(v).encode()),
))
@example(b'{"best_checkpoint": 5}')
@example(b'{"best_checkpoint": "a\\u0000b"}')
@example(b'{"best_checkpoint": "../../etc/passwd"}')
@example(b'{"best_checkpoint": ["x"]}')
def test_any_metrics_json_loads_or_gives_one_error_line(run, run_copy, data: bytes) -> None:
    (run_copy / "metrics.json").write_bytes(data)
    try:
        loaded = Recommender.load(run_copy)
    except MetarecError as e:
        _one_line(e)
        return
    assert loaded.learner is not None


# ---------------------------------------------------------------------------------------------
# User features: raw values through the run's value codebook (codebook.json), or integer codes


def test_a_run_without_value_names_takes_codes_and_says_why_not_raw_values(run, rec) -> None:
    book = json.loads((run / "codebook.json").read_text())
    field = rec._user_cat_fields[0]
    assert book["user"][field.name]["cardinality"] == field.cardinality and "values" not in book["user"][field.name]
    user = rec.adapt([(1, 4.0)], {field.name: "1"})  # an integer written as text is a code
    assert int(user.user.categorical[0]) == 1
    with pytest.raises(MetarecError) as e:
        rec.adapt([(1, 4.0)], {field.name: "tall"})
    assert _one_line(e.value) == (f"user feature {field.name}: 'tall' is not an integer code (0..{field.cardinality - 1} "
                                  "(0 = unknown)); the data source names no values of this field")


def test_an_old_run_without_a_codebook_takes_integer_codes_only(run, tmp_path) -> None:
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "codebook.json").unlink()  # as runs made before codebooks were saved
    rec = Recommender.load(old)
    field = rec._user_cat_fields[0].name
    assert int(rec.adapt([(1, 4.0)], {field: 1}).user.categorical[0]) == 1
    with pytest.raises(MetarecError) as e:
        rec.adapt([(1, 4.0)], {field: "F"})
    assert "raw values need a run made by this metarec version (this run has no codebook.json)" in _one_line(e.value)


@pytest.fixture(scope="module")
def ml_run(ml100k_root, tmp_path_factory) -> Path:
    """A tiny ml-100k run (a few meta-steps): user fields with named values."""
    root = tmp_path_factory.mktemp("ml")
    return fit(compose(["data=movielens100k", f"data.root={ml100k_root}", "data.params.download=false",
                        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
                        f"run.root={root}"]))


def test_raw_user_values_give_the_codes_the_data_set_gave(ml_run, ml100k_root) -> None:
    import pandas as pd

    rec = Recommender.load(ml_run)
    users = pd.read_csv(ml100k_root / "ml-100k" / "u.user", sep="|", header=None,
                        names=["id", "age", "gender", "occupation", "zip"], dtype=str)
    code_of = {str(u): c for c, u in enumerate(rec.dataset.user_ids.tolist())}
    names = [f.name for f in rec._user_cat_fields]
    assert names == ["age", "gender", "occupation", "zip_prefix"]
    for row in users.sample(25, random_state=0).itertuples():
        raw = {"age": row.age, "gender": row.gender.lower(), "occupation": row.occupation, "zip_prefix": row.zip[:1]}
        if not row.zip[:1].isdigit():
            raw["zip_prefix"] = "other"
        got = rec.adapt([(1, 4.0)], raw).user.categorical.tolist()
        assert got == rec.dataset.users.categorical[code_of[row.id]].tolist(), raw
    # a bucket's name is a raw value too, and a code still is a code
    by_name = rec.adapt([(1, 4.0)], {"age": "35-44", "gender": "F"}).user.categorical.tolist()
    by_number = rec.adapt([(1, 4.0)], {"age": "37", "gender": "F"}).user.categorical.tolist()
    assert by_name == by_number == rec.adapt([(1, 4.0)], {"age": 4, "gender": 2}).user.categorical.tolist()
    with pytest.raises(MetarecError) as e:
        rec.adapt([(1, 4.0)], {"occupation": "astronaut"})
    assert _one_line(e.value).startswith("user feature occupation: unknown value 'astronaut' (known: administrator, "
                                         "artist, doctor,")
    with pytest.raises(MetarecError, match="unknown user feature 'sex' \\(known: age, gender, occupation, zip_prefix\\)"):
        rec.adapt([(1, 4.0)], {"sex": "F"})


def test_cli_recommend_takes_raw_user_values(ml_run, tmp_path) -> None:
    from cli_helpers import cli_env, run_cli

    (tmp_path / "me.csv").write_text("item,rating\n50,5\n172,4\n133,1\n")
    args = ["recommend", "--run", str(ml_run), "--ratings", "me.csv", "-k", "3"]
    env = cli_env(tmp_path)
    ok = run_cli(*args, "--user-feature", "age=35-44", "--user-feature", "gender=F", "--user-feature",
                 "occupation=writer", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.strip().splitlines()) == 4  # header + 3 items
    bad = run_cli(*args, "--user-feature", "gender=X", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "metarec: error: user feature gender: unknown value 'X' (known: M, F; or an integer code 0..2 (0 = unknown))")
