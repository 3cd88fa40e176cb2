"""Load a Bias in Bios shaped corpus into validated, pronoun-scrubbed `datasets.Dataset` splits.

The stages, one module each: `harness.data.sources` finds the data (`source_for(cfg)`, one class per kind of
`data.source`), `harness.data.tables` reads and validates it, this module scrubs it (`corpus_from_raw`), and
`harness.data.cache` keeps the result for the next load. Every stage passes a `harness.data.corpus.Corpus`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets
import pyarrow.compute as pc

from harness.config import DataConfig
from harness.data.cache import clear_memo, fresh, read_entry, recall, remember, write_entry
from harness.data.corpus import TEXT, Corpus, Located
from harness.data.scrub import count_gendered, scrub_batch
from harness.data.sources import source_for, standin_dir
from harness.data.tables import check_column_names, read_files

__all__ = ["TEXT", "Corpus", "Located", "clear_memo", "corpus_from_raw", "load_corpus", "locate", "read_raw",
           "required_splits", "standin_dir", "write_corpus_cache"]

log = logging.getLogger(__name__)

_SCRUB_BATCH = 1000
_PARALLEL_ROWS = 50_000


def required_splits(cfg: DataConfig) -> list[str]:
    """The splits an experiment reads: train (defense training), the validation split, the attacker's pool split and
    the test split (deduplicated, in order)."""
    return list(dict.fromkeys([cfg.DEFENSE_SPLIT, cfg.validation_split, cfg.pool_split, cfg.test_split]))


def load_corpus(cfg: DataConfig, cache_dir: str | Path | None = None, *, write_cache: bool = True) -> Corpus:
    """Read, validate and (when `cfg.scrub_pronouns`) pronoun-scrub the splits an experiment needs.

    Local sources are memoised in-process by fingerprint (the content hash, so an edited file is re-read), and,
    when `cache_dir` is given, the loaded splits are kept there as Parquet under the fingerprint: scrubbing the real
    corpus (~400k bios) takes tens of seconds, reading it back a second or two. The hub goes through `datasets`'
    own cache. Nothing is written before every file has passed validation; a caller with checks of its own (the
    pools, `harness.data.prepare`) passes ``write_cache=False`` and calls `write_corpus_cache` once they pass.
    """
    check_column_names(cfg)
    source = source_for(cfg)
    splits = required_splits(cfg)
    located = source.locate(cfg, splits)
    if located is None:
        return corpus_from_raw(source.read(cfg, splits), cfg)
    folder = Path(cache_dir).expanduser() / located.fingerprint if cache_dir is not None else None
    hit = recall(located.fingerprint)
    if hit is None and folder is not None:
        hit = read_entry(folder, located, cfg)
    if hit is None:
        hit = corpus_from_raw(read_files(located, cfg), cfg)
    if write_cache and folder is not None and not folder.exists():
        write_entry(folder, hit)
    remember(hit)
    return fresh(hit, located)


def write_corpus_cache(corpus: Corpus, cache_dir: str | Path) -> None:
    """Keep a loaded local corpus under `cache_dir` (see `load_corpus`); a no-op for the hub or an existing entry."""
    if not any(corpus.files.values()):
        return  # the hub: `datasets` caches it
    folder = Path(cache_dir).expanduser() / corpus.fingerprint
    if not folder.exists():
        write_entry(folder, corpus)


def read_raw(cfg: DataConfig) -> Corpus:
    """Locate and read the needed splits, validating every file; no scrubbing."""
    check_column_names(cfg)
    return source_for(cfg).read(cfg, required_splits(cfg))


def locate(cfg: DataConfig) -> Located | None:
    """The local files per split and their fingerprint; None when the source is a hub id."""
    check_column_names(cfg)
    return source_for(cfg).locate(cfg, required_splits(cfg))


def corpus_from_raw(raw: Corpus, cfg: DataConfig) -> Corpus:
    """Finish a corpus as its source read it: scrub pronouns when the config asks and count what is left (see
    `load_corpus`)."""
    splits: dict[str, datasets.Dataset] = {}
    left: dict[str, int] = {}
    for split, ds in raw.splits.items():
        if cfg.scrub_pronouns:
            # Worker processes only pay off on the real corpus's size; the stand-in scrubs faster than they start.
            large = ds.num_rows > _PARALLEL_ROWS
            workers = min(os.cpu_count() or 1, 8) if large else 1
            with _progress_bars(large):  # a bar for a sub-second step is noise in the CLI's output
                ds = ds.map(
                    _scrub_columns,
                    num_proc=workers if workers > 1 else None,
                    batched=True,
                    batch_size=_SCRUB_BATCH,
                    input_columns=[TEXT],
                    new_fingerprint=f"{raw.fingerprint}-{split}-scrubbed",
                    load_from_cache_file=False,
                    desc=f"scrub pronouns ({split})",
                )
            left[split] = int(pc.sum(ds.data.column("_left")).as_py() or 0)
            ds = ds.remove_columns("_left", new_fingerprint=f"{raw.fingerprint}-{split}")
        else:
            left[split] = sum(count_gendered(t) for t in ds.data.column(TEXT).to_pylist())
        splits[split] = ds
    if cfg.scrub_pronouns and any(left.values()):
        # A non-zero count after scrubbing means text the rules did not recognise; worth a look, not an error.
        log.warning("gendered pronouns or titles left after scrubbing: %s", left)
    log.info(
        "loaded %s: %s (fingerprint %s)",
        raw.source,
        ", ".join(f"{s} {len(d)}" for s, d in splits.items()),
        raw.fingerprint,
    )
    return Corpus(source=raw.source, files=raw.files, fingerprint=raw.fingerprint, splits=splits, scrub_left=left,
                  blank_dropped=dict(raw.blank_dropped))


@contextmanager
def _progress_bars(show: bool) -> Iterator[None]:
    was_enabled = datasets.is_progress_bar_enabled()
    if was_enabled and not show:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled and not show:
            datasets.enable_progress_bars()


def _scrub_columns(texts: list[str]) -> dict[str, list]:
    out, left = scrub_batch(texts)
    return {TEXT: out, "_left": left}
