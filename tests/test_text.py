"""Item text: templates, the real all-MiniLM-L6-v2 encoder (bundled, no hub), the embedding cache, and
training/serving with the projected ``text`` field, including executor equivalence."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import metarec.data.text as text_mod
from metarec.config import compose
from metarec.data.datamodule import ColdStartDataModule, DataConfig
from metarec.data.sources import load_dataset
from metarec.data.text import TextConfig, item_text_embeddings, item_texts
from metarec.errors import ConfigError
from metarec.learners import LearnerContext, build_learner
from metarec.learners.maml import MAMLConfig
from metarec.models import MeLU, MeLUConfig
from metarec.recommend import Recommender
from metarec.runs import finished_runs
from metarec.train import fit

pytest.importorskip("sentence_transformers", reason="the text extra is not installed (pip install 'metarec[text]')")


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", {"n_users": 200}, None)


def test_templates_render_titles_years_and_value_names(synthetic) -> None:
    texts = item_texts(synthetic, "{title} ({year}) [{id}]: {genre}")
    assert len(texts) == synthetic.n_items
    genres = synthetic.items.multihot[0, : synthetic.items.multihot_fields[0].width]
    names = [f"genre {j}" for j in np.flatnonzero(genres)]
    assert texts[0] == f"{synthetic.item_titles[0]} ({int(synthetic.item_year[0])}) [{synthetic.item_ids[0]}]: {', '.join(names)}"


@pytest.mark.parametrize("template, fragment", [
    ("{title} {nope}", "unknown field {nope} (available: {genre}, {id}, {title}, {year})"),
    ("{title", "is not a format string"),
    ("{}", "unknown field {}"),
])
def test_bad_templates_are_one_line_config_errors(synthetic, template, fragment) -> None:
    with pytest.raises(ConfigError) as e:
        item_texts(synthetic, template)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_real_encoder_and_cache(synthetic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TextConfig(enabled=True, template="{title}: {genre}", cache_dir=str(tmp_path), batch_size=128)
    emb = item_text_embeddings(synthetic, cfg)
    assert emb.shape == (synthetic.n_items, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    # the cache answers the second call: the model is not loaded again
    monkeypatch.setattr(text_mod, "encode", lambda *a, **k: pytest.fail("encoded again despite the cache"))
    np.testing.assert_array_equal(item_text_embeddings(synthetic, cfg), emb)
    # another template is another cache entry
    with pytest.raises(pytest.fail.Exception):
        item_text_embeddings(synthetic, TextConfig(enabled=True, template="{title}", cache_dir=str(tmp_path)))


def test_the_encoder_knows_what_titles_mean() -> None:
    path, local = text_mod._resolve("all-MiniLM-L6-v2")
    assert local and Path(path).is_dir()
    e = text_mod.encode(["Toy Story (1995). Genres: Animation, Children's, Comedy.",
                         "Toy Story 2 (1999). Genres: Animation, Children's, Comedy.",
                         "Schindler's List (1993). Genres: Drama, War."], TextConfig(), path, local)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.2


@pytest.fixture(scope="module")
def text_dm(tmp_path_factory) -> ColdStartDataModule:
    cache = tmp_path_factory.mktemp("text_cache")
    dm = ColdStartDataModule(DataConfig(params={"n_users": 200}, meta_batch_size=6,
                                        text=TextConfig(enabled=True, template="{title}: {genre}", cache_dir=str(cache))))
    dm.setup()
    return dm


def test_the_text_field_reaches_the_model(text_dm) -> None:
    fields = text_dm.dataset.items.multihot_fields
    assert fields[-1].name == "text" and fields[-1].dense and fields[-1].width == 384
    model = MeLU(text_dm.dataset.schema, MeLUConfig())
    assert isinstance(model.item_encoder.multihot[-1], torch.nn.Linear)
    batch = next(iter(text_dm.train_dataloader()))
    assert batch.item.multihot.shape[-1] == 8 + 384


@pytest.mark.parametrize("scope", ["head", "all"])
def test_executors_agree_with_the_text_field(text_dm, scope) -> None:
    batch = next(iter(text_dm.train_dataloader()))
    batch.ratings = batch.ratings.double()
    batch.item.multihot, batch.user.multihot = batch.item.multihot.double(), batch.user.multihot.double()
    torch.manual_seed(0)
    model = MeLU(text_dm.dataset.schema, MeLUConfig(embed_dim=8, hidden=[16])).double()
    ctx = LearnerContext((1.0, 5.0), 3.5, ["warm"], ["user_cold"])
    out = []
    for executor in ("learn2learn", "vmap"):
        learner = build_learner("maml", copy.deepcopy(model), ctx,
                                MAMLConfig(inner_lr=0.05, inner_steps=2, scope=scope, executor=executor))
        loss, _ = learner.meta_step(batch, train=True)
        loss.backward()
        out.append((loss.detach(), {n: p.grad for n, p in learner.named_parameters() if p.grad is not None}))
    (l1, g1), (l2, g2) = out
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=1e-9)
    assert any("item_encoder.multihot.1" in k for k in g1)  # the text projection is meta-trained
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-6, atol=1e-9)


def test_fit_and_serve_with_text(tmp_path: Path) -> None:
    cfg = compose(["data.params.n_users=200", "data.text.enabled=true", f"data.text.cache_dir={tmp_path / 'cache'}",
                   "data.text.template=\"{title}\"", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                   f"run.root={tmp_path}", "run.name=text"])
    run = fit(cfg)
    (record,) = finished_runs(run)
    assert np.isfinite(list(record["metrics"].values())).all()
    rec = Recommender.load(run)
    top = rec.adapt([(rec.item_ids[0].item(), 5.0), (rec.item_ids[1].item(), 1.0)]).recommend(3)
    assert len(top) == 3
