"""Learner variants of ``metarec compare``: ``maml@inner_steps=5`` in ``--learners`` is the learner option
``maml`` with ``learner.inner_steps=5``, a row of its own in every table and plot, in its own run folders
``DIR/runs/maml@inner_steps=5-s<seed>``.

Syntax: ``LEARNER@key=value[,key=value...]``. A key without a dot is a learner setting (``inner_steps``
means ``learner.inner_steps``); dotted keys may name settings of the ``learner``, ``model`` and
``trainer`` sections (``maml@model.embed_dim=16``), and the data settings that shape only the training
episodes or only the predictions (``PER_VARIANT_DATA``: ``fism@data.train_support=loguniform``,
``maml@data.rating_grid=true``, ``maml@data.rating_loss=mae``). Every other data setting and the
seeds are shared by the whole grid (one split, the same evaluation episodes) and cannot vary. Values are YAML, as in overrides; a comma inside brackets belongs to the
value (``maml@model.hidden=[64,32]``). The text of the variant names its run folders, so it may only hold
letters, digits and ``_ . - + = , @ [ ]``.
"""

from __future__ import annotations

import re

from metarec.errors import ConfigError

SECTIONS = ("learner", "model", "trainer")  # the sections a variant may set
# and these data keys: they change neither the split nor the evaluation episodes
PER_VARIANT_DATA = ("data.train_support", "data.item_id_dropout", "data.meta_batch_size", "data.rating_grid",
                    "data.rating_loss")
SYNTAX = "LEARNER@key=value[,key=value], e.g. maml@inner_steps=5 or maml@model.embed_dim=16"
_SAFE = re.compile(r"[A-Za-z0-9_.+=,@\[\]-]+")


def is_variant(text: str) -> bool:
    """Whether a command-line word is a learner variant (``name@...``) rather than an override."""
    return "@" in text.split("=", 1)[0]


def _split_top(text: str) -> list[str]:
    """``a=1,b=[2,3]`` -> ``["a=1", "b=[2,3]"]``: commas inside brackets or braces stay."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"maml@inner_steps=5,model.embed_dim=16"`` -> ``("maml", ["learner.inner_steps=5",
    "model.embed_dim=16"])``; a plain learner option gives ``(text, [])``. Bad syntax is a ``ConfigError``."""
    name, sep, rest = text.partition("@")
    if not sep:
        return text, []
    where = f"--learners {text!r}"
    if not name:
        raise ConfigError(f"{where}: no learner before '@' (a variant is {SYNTAX})")
    if not _SAFE.fullmatch(text):
        raise ConfigError(f"{where}: a variant names its run folders, so it may only hold letters, digits and "
                          "_ . - + = , @ [ ]")
    overrides: list[str] = []
    keys: list[str] = []
    for part in _split_top(rest):
        key, eq, value = part.partition("=")
        if not eq or not key or not value:
            raise ConfigError(f"{where}: {part!r} is not key=value (a variant is {SYNTAX})")
        if "." not in key:
            key = f"learner.{key}"
        section = key.split(".", 1)[0]
        if section not in SECTIONS and key not in PER_VARIANT_DATA:
            raise ConfigError(f"{where}: {key} cannot differ between the learners of one grid (a variant sets "
                              f"{', '.join(s + '.*' for s in SECTIONS)} and {', '.join(PER_VARIANT_DATA)}; "
                              "the split, evaluation and seeds are shared)")
        if key == "learner.name":
            raise ConfigError(f"{where}: learner.name is the learner option itself; put another learner in --learners")
        if key in keys:
            raise ConfigError(f"{where}: {key} is set twice")
        keys.append(key)
        overrides.append(f"{key}={value}")
    return name, overrides
