"""The corpus record every stage of `harness.data` passes on, and its content fingerprint.

A corpus is named by its fingerprint: the content of its files (never their paths) plus every setting that changes
the loaded columns (`fingerprint`). `Located` is that identity before anything is read; `Corpus` adds the data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import datasets
import pyarrow as pa
from datasets.table import InMemoryTable

from harness.config import DataConfig
from harness.data.scrub import SCRUB_VERSION

TEXT = "text"  # the text column of every loaded split, whatever the source calls it (`data.text_column`)


@dataclass(frozen=True)
class Located:
    """Where a corpus comes from and what it holds, known before any row is read: its source as the user named it,
    the files per split (resolved paths; empty lists for the hub) and the content fingerprint.

    A type of its own because it holds no data: the in-process memo and the corpus cache are looked up with it, so
    a corpus seen before is never read or validated again."""

    source: str
    files: dict[str, list[str]]
    fingerprint: str


@dataclass(frozen=True)
class Corpus(Located):
    """A validated corpus: one dataset per split with columns ``text`` (string) and each label column (int64).

    One record for both stages of loading: as a source reads it (`harness.data.sources`: texts as in the files,
    `scrub_left` empty) and as `harness.data.loader.corpus_from_raw` finishes it (pronoun-scrubbed when the config
    says so, `scrub_left` counted per split)."""

    splits: dict[str, datasets.Dataset]
    blank_dropped: dict[str, int] = field(default_factory=dict)  # split -> blank texts dropped (data.blank_texts)
    scrub_left: dict[str, int] = field(default_factory=dict)  # split -> gendered words left (see harness.data.scrub)


def split_dataset(table: pa.Table, split: str, fingerprint: str) -> datasets.Dataset:
    """A split's table as an in-memory dataset, with the datasets fingerprint every stage gives it."""
    return datasets.Dataset(InMemoryTable(table), split=split, fingerprint=f"{fingerprint}-{split}")


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def file_digest(path: str) -> str:
    """The SHA-256 of a file's bytes."""
    # Memoised on the file's identity and times so that several loads in one process hash the real corpus's shards
    # once, while a file rewritten in place gets a new key.
    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def fingerprint(cfg: DataConfig, content: object) -> str:
    """Content of the sources (never their paths) plus everything that changes the loaded columns."""
    payload = {
        "content": content,
        "text_column": cfg.text_column,
        "labels": sorted(cfg.labels.items()),
        "scrub": SCRUB_VERSION if cfg.scrub_pronouns else False,
    }
    if cfg.blank_texts == "drop":
        # Only then can the loaded rows differ from the files' (with "error" a corpus with blanks never loads), so
        # existing fingerprints stay as they were; a cache made by dropping is never read back by a strict config.
        payload["blank_texts"] = "drop"
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
