"""Loaded corpora kept for the next load: in this process (a small memo) and on disk (Parquet under the fingerprint).

Both are keyed by the corpus's fingerprint, its content: an edited file is read again, the same bytes at another
path are not. A disk entry is a folder ``<cache_dir>/<fingerprint>/`` holding ``<split>.parquet`` per split and
``corpus.json``; it is filled under a temporary name carrying `harness.atomic.TMP_MARK` and renamed whole, so a
reader sees all of it or none of it and `harness.atomic.clean_leftovers` finds what a killed writer left.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from harness.atomic import publish_dir_atomic
from harness.config import DataConfig
from harness.data.corpus import Corpus, Located, split_dataset
from harness.data.tables import blank_texts, first_line

log = logging.getLogger(__name__)

META = "corpus.json"
MEMO_SIZE = 4
_MEMO: OrderedDict[str, Corpus] = OrderedDict()


def clear_memo() -> None:
    """Forget the corpora memoised in this process (the next `load_corpus` reads the cache or the files)."""
    _MEMO.clear()


def recall(fingerprint: str) -> Corpus | None:
    """The corpus memoised under `fingerprint`, if any (share it only through `fresh`)."""
    return _MEMO.get(fingerprint)


def remember(corpus: Corpus) -> None:
    """Memoise `corpus`, forgetting the oldest beyond `MEMO_SIZE`."""
    _MEMO[corpus.fingerprint] = corpus
    while len(_MEMO) > MEMO_SIZE:
        _MEMO.popitem(last=False)


def fresh(corpus: Corpus, located: Located) -> Corpus:
    """A copy sharing the Arrow data but not the format state, reporting where the bytes are now (`located`).

    `Dataset.set_format` mutates in place, and a caller doing so must not change what the next caller of
    `load_corpus` gets; the memo is keyed by content, so the same bytes at another path hit it."""
    splits = {
        split: datasets.Dataset(ds.data, split=ds.split, fingerprint=ds._fingerprint)
        for split, ds in corpus.splits.items()
    }
    return replace(corpus, splits=splits, source=located.source, files={s: list(f) for s, f in located.files.items()},
                   scrub_left=dict(corpus.scrub_left), blank_dropped=dict(corpus.blank_dropped))


def read_entry(folder: Path, located: Located, cfg: DataConfig) -> Corpus | None:
    """The finished corpus cached in `folder`, or None when there is none or it cannot be read."""
    meta_path = folder / META
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        splits = {
            split: split_dataset(pq.read_table(folder / f"{split}.parquet"), split, located.fingerprint)
            for split in located.files
        }
    except (OSError, ValueError, pa.ArrowException) as exc:
        log.warning("ignoring unreadable corpus cache %s (%s)", folder, first_line(exc))
        return None
    if cfg.blank_texts == "error":
        # A cache written before blank texts were checked may hold some: the check is the same on scrubbed text.
        for split, ds in splits.items():
            blank_texts(ds.data.table, f"{folder} (cached split '{split}')", cfg)
    log.info("loaded %s from the cache %s", located.source, folder)
    return Corpus(source=located.source, files=located.files, fingerprint=located.fingerprint, splits=splits,
                  scrub_left={s: int(meta["scrub_left"][s]) for s in located.files},
                  blank_dropped={s: int(meta.get("blank_dropped", {}).get(s, 0)) for s in located.files})


def write_entry(folder: Path, corpus: Corpus) -> None:
    """Keep a finished corpus in `folder` (`harness.atomic.publish_dir_atomic`); failing is only logged."""

    def fill(tmp: Path) -> None:
        for split, ds in corpus.splits.items():
            pq.write_table(ds.data.table, tmp / f"{split}.parquet")
        (tmp / META).write_text(json.dumps({"source": corpus.source, "scrub_left": corpus.scrub_left,
                                            "blank_dropped": corpus.blank_dropped}))

    try:
        publish_dir_atomic(folder, fill)
    except OSError as exc:
        # Another process finished first (the target exists) or the disk refused: the cache is only an optimisation.
        log.debug("corpus cache not written to %s (%s)", folder, first_line(exc))
