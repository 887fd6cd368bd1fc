"""Data sources: named factories that build a :class:`RecDataset` from typed options.

A source is a function ``factory(cfg, root) -> RecDataset`` registered in :data:`SOURCES` with the
dataclass that types its options; :func:`load_dataset` validates user options against that dataclass.

The registry lives in :mod:`._registry`; the built-in sources are registered below, one line each, as
models and learners are in their packages. Sources of other packages come in through the
``metarec.sources`` entry points (see :mod:`metarec.registry`).
"""

from __future__ import annotations

from metarec.data.sources._registry import SOURCES, load_dataset, source_config
from metarec.data.sources.bookcrossing import BookCrossingConfig, bookcrossing
from metarec.data.sources.lastfm import LastFm2kConfig, lastfm2k
from metarec.data.sources.movielens import MovieLens100kConfig, movielens100k
from metarec.data.sources.movielens_more import (
    MovieLens1mConfig, MovieLens20mConfig, MovieLens25mConfig, movielens1m, movielens20m, movielens25m,
)
from metarec.data.sources.recbole import RecBoleConfig, recbole
from metarec.data.sources.synthetic import SyntheticConfig, synthetic
from metarec.data.sources.tabular import CsvConfig, csv_source

SOURCES.register("bookcrossing", BookCrossingConfig, help="Book-Crossing ratings")(bookcrossing)
SOURCES.register("lastfm2k", LastFm2kConfig, help="HetRec Last.fm 2K play counts")(lastfm2k)
SOURCES.register("movielens100k", MovieLens100kConfig, help="MovieLens-100K")(movielens100k)
SOURCES.register("movielens1m", MovieLens1mConfig, help="MovieLens-1M")(movielens1m)
SOURCES.register("movielens20m", MovieLens20mConfig, help="MovieLens-20M")(movielens20m)
SOURCES.register("movielens25m", MovieLens25mConfig, help="MovieLens-25M")(movielens25m)
SOURCES.register("recbole", RecBoleConfig, help="RecBole atomic files (.inter/.user/.item)")(recbole)
SOURCES.register("synthetic", SyntheticConfig, help="synthetic ratings (no files)")(synthetic)
SOURCES.register("csv", CsvConfig, help="your own CSV tables")(csv_source)

__all__ = ["SOURCES", "load_dataset", "source_config"]
