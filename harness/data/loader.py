"""Load a Bias in Bios shaped corpus into validated `datasets.Dataset` splits.

Sources, by `DataConfig.source` (or `DataConfig.files`, which wins):
- ``"standin"``: the bundled stand-in corpus (`standin_dir()`), same layout and schema as the published shards;
- a directory holding the published layout (``data/train-00000-of-00001-<hash>.parquet``) or a similar one
  (see `SPLIT_PATTERNS`);
- a glob with ``{split}`` (``/data/bib/{split}-*.parquet``);
- explicit files per split (``data.files``, globs allowed);
- otherwise a hub id (``LabHC/bias_in_bios``, optionally ``@revision``) through `datasets.load_dataset`, refused at
  once when ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is set.

Local Parquet is read with pyarrow and wrapped as in-memory datasets rather than going through
`load_dataset("parquet")`: that avoids writing an Arrow copy into the user's cache on every new file and keeps the
bundled corpus well under a second. Every problem with the data is a `UserError` naming the file, column or value;
empty or whitespace-only texts are one (`DataConfig.blank_texts: error`) unless the config says to drop them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets.table import InMemoryTable

from harness.config import DataConfig
from harness.data.scrub import SCRUB_VERSION, count_gendered, scrub_batch
from harness.errors import UserError

log = logging.getLogger(__name__)

# Where a directory source keeps each split's shards, tried in order; the first with matches wins. The first is the
# layout published on the hub (LabHC/bias_in_bios: data/train-00000-of-00001-0ab65b32c47407e8.parquet).
SPLIT_PATTERNS: tuple[str, ...] = (
    "data/{split}-*.parquet",
    "{split}-*.parquet",
    "{split}/*.parquet",
    "data/{split}.parquet",
    "{split}.parquet",
)
TEXT = "text"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?(?:@[\w./-]+)?$")
_GLOB_CHARS = re.compile(r"[*?\[]")
_SCRUB_BATCH = 1000
_PARALLEL_ROWS = 50_000


@dataclass(frozen=True)
class Corpus:
    """A loaded corpus: one dataset per split with columns ``text`` and each label column (int64)."""

    splits: dict[str, datasets.Dataset]
    fingerprint: str
    source: str
    files: dict[str, list[str]]
    scrub_left: dict[str, int]
    blank_dropped: dict[str, int] = field(default_factory=dict)  # split -> blank texts dropped (data.blank_texts)


@dataclass(frozen=True)
class RawCorpus:
    """Validated but unscrubbed tables (``text`` + label columns), before wrapping as datasets."""

    tables: dict[str, pa.Table]
    fingerprint: str
    source: str
    files: dict[str, list[str]]
    blank_dropped: dict[str, int] = field(default_factory=dict)


def standin_dir() -> Path:
    """The bundled stand-in corpus: ``{split}-00000-of-00001.parquet`` shards."""
    return Path(__file__).resolve().parent / "standin" / "data"


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
    located = locate(cfg)
    if located is None:
        return corpus_from_raw(_read_hub(cfg, required_splits(cfg)), cfg)
    folder = Path(cache_dir).expanduser() / located.fingerprint if cache_dir is not None else None
    hit = _MEMO.get(located.fingerprint)
    if hit is None and folder is not None:
        hit = _read_cache(folder, located, cfg)
    if hit is None:
        hit = corpus_from_raw(_read_local(located, cfg), cfg)
    if write_cache and folder is not None and not folder.exists():
        _write_cache(folder, hit)
    _MEMO[located.fingerprint] = hit
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    # The memo is keyed by content, so the same bytes at another path hit it: report where they are now.
    return _fresh(hit, located)


_MEMO: OrderedDict[str, Corpus] = OrderedDict()
_MEMO_SIZE = 4


def clear_memo() -> None:
    """Forget the corpora memoised in this process (the next `load_corpus` reads the cache or the files)."""
    _MEMO.clear()


def _fresh(corpus: Corpus, located: Located) -> Corpus:
    """A copy sharing the Arrow data but not the format state: `Dataset.set_format` mutates in place, and a caller
    doing so must not change what the next caller of `load_corpus` gets."""
    splits = {
        split: datasets.Dataset(ds.data, split=ds.split, fingerprint=ds._fingerprint)
        for split, ds in corpus.splits.items()
    }
    return replace(corpus, splits=splits, source=located.source, files={s: list(f) for s, f in located.files.items()},
                   scrub_left=dict(corpus.scrub_left), blank_dropped=dict(corpus.blank_dropped))


def write_corpus_cache(corpus: Corpus, cache_dir: str | Path) -> None:
    """Keep a loaded local corpus under `cache_dir` (see `load_corpus`); a no-op for the hub or an existing entry."""
    if not any(corpus.files.values()):
        return  # the hub: `datasets` caches it
    folder = Path(cache_dir).expanduser() / corpus.fingerprint
    if not folder.exists():
        _write_cache(folder, corpus)


def _read_cache(folder: Path, located: Located, cfg: DataConfig) -> Corpus | None:
    meta_path = folder / "corpus.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        splits = {
            split: datasets.Dataset(
                InMemoryTable(pq.read_table(folder / f"{split}.parquet")), split=split,
                fingerprint=f"{located.fingerprint}-{split}",
            )
            for split in located.files
        }
    except (OSError, ValueError, pa.ArrowException) as exc:
        log.warning("ignoring unreadable corpus cache %s (%s)", folder, _first_line(exc))
        return None
    if cfg.blank_texts == "error":
        # A cache written before blank texts were checked may hold some: the check is the same on scrubbed text.
        for split, ds in splits.items():
            _blank_texts(ds.data.table, f"{folder} (cached split '{split}')", cfg)
    log.info("loaded %s from the cache %s", located.source, folder)
    return Corpus(splits=splits, fingerprint=located.fingerprint, source=located.source, files=located.files,
                  scrub_left={s: int(meta["scrub_left"][s]) for s in located.files},
                  blank_dropped={s: int(meta.get("blank_dropped", {}).get(s, 0)) for s in located.files})


def _write_cache(folder: Path, corpus: Corpus) -> None:
    # Written beside the final name and renamed, so a concurrent reader sees all of it or none of it.
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for split, ds in corpus.splits.items():
            pq.write_table(ds.data.table, tmp / f"{split}.parquet")
        (tmp / "corpus.json").write_text(json.dumps({"source": corpus.source, "scrub_left": corpus.scrub_left,
                                                     "blank_dropped": corpus.blank_dropped}))
        os.replace(tmp, folder)
    except OSError as exc:
        # Another process finished first (the target exists) or the disk refused: the cache is only an optimisation.
        log.debug("corpus cache not written to %s (%s)", folder, _first_line(exc))
        shutil.rmtree(tmp, ignore_errors=True)


def corpus_from_raw(raw: RawCorpus, cfg: DataConfig) -> Corpus:
    """Wrap validated tables as datasets, scrubbing pronouns when the config asks (see `load_corpus`)."""
    splits: dict[str, datasets.Dataset] = {}
    left: dict[str, int] = {}
    for split, table in raw.tables.items():
        ds = datasets.Dataset(InMemoryTable(table), split=split, fingerprint=f"{raw.fingerprint}-{split}")
        if cfg.scrub_pronouns:
            # Worker processes only pay off on the real corpus's size; the stand-in scrubs faster than they start.
            large = table.num_rows > _PARALLEL_ROWS
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
            left[split] = sum(count_gendered(t) for t in table.column(TEXT).to_pylist())
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
    return Corpus(splits=splits, fingerprint=raw.fingerprint, source=raw.source, files=raw.files, scrub_left=left,
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


@dataclass(frozen=True)
class Located:
    """Local files per split with their content fingerprint, found before anything is read."""

    source: str
    files: dict[str, list[str]]
    fingerprint: str


def read_raw(cfg: DataConfig) -> RawCorpus:
    """Locate and read the needed splits, validating every file; no scrubbing."""
    located = locate(cfg)
    if located is None:
        return _read_hub(cfg, required_splits(cfg))
    return _read_local(located, cfg)


def locate(cfg: DataConfig) -> Located | None:
    """The local files per split and their fingerprint; None when the source is a hub id."""
    _check_column_names(cfg)
    splits = required_splits(cfg)
    if cfg.files is not None:
        files = _explicit_files(cfg, splits)
        source = "data.files"
    elif cfg.source == "standin":
        root = standin_dir()
        if not root.is_dir():
            raise UserError(
                f"data.source 'standin': the bundled stand-in corpus is missing ({root}); reinstall sdm-bench or "
                "point data.source at a directory of Parquet shards"
            )
        files = _directory_files(root, splits)
        source = f"standin ({root})"
    elif "{split}" in cfg.source:
        files = {split: _glob_files(cfg.source.replace("{split}", split), split) for split in splits}
        source = cfg.source
    else:
        path = Path(cfg.source).expanduser()
        if path.is_dir():
            files = _directory_files(path, splits)
            source = str(path)
        elif path.exists():
            raise UserError(
                f"data.source '{cfg.source}': is a file, expected a directory of Parquet shards, a glob with "
                "{split}, or data.files per split"
            )
        elif _looks_like_path(cfg.source) or not _HUB_ID.match(cfg.source):
            raise UserError(f"data.source '{cfg.source}': directory not found")
        else:
            return None
    fingerprint = _fingerprint(cfg, {split: [_file_digest(p) for p in paths] for split, paths in files.items()})
    return Located(source=source, files=files, fingerprint=fingerprint)


def _read_local(located: Located, cfg: DataConfig) -> RawCorpus:
    tables: dict[str, pa.Table] = {}
    dropped: dict[str, int] = {}
    for split, paths in located.files.items():
        tables[split], dropped[split] = _read_split(split, paths, cfg)
    return RawCorpus(tables=tables, fingerprint=located.fingerprint, source=located.source, files=located.files,
                     blank_dropped=dropped)


# -- locating files ----------------------------------------------------------------------------------------------------


def _check_column_names(cfg: DataConfig) -> None:
    if cfg.text_column in cfg.labels:
        raise UserError(f"data.labels: '{cfg.text_column}' is the text column (data.text_column), not a label")
    if TEXT in cfg.labels:
        raise UserError(f"data.labels: '{TEXT}' is reserved for the text column; rename the label column")


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", ".", "~"))
        or "\\" in source
        or source.count("/") > 1
        or source.endswith(".parquet")
        or bool(_GLOB_CHARS.search(source))
    )


def _directory_files(root: Path, splits: list[str]) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for split in splits:
        for pattern in SPLIT_PATTERNS:
            found = sorted(glob.glob(os.path.join(glob.escape(str(root)), pattern.format(split=glob.escape(split)))))
            if found:
                files[split] = [_existing_file(p, split) for p in found]
                break
        else:
            tried = ", ".join(p.format(split=split) for p in SPLIT_PATTERNS)
            present = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))[:6]
            there = f"; Parquet files there: {', '.join(present)}" if present else "; no Parquet files there"
            raise UserError(f"{root}: no Parquet shards for split '{split}' (tried {tried}){there}")
    return files


def _glob_files(pattern: str, split: str) -> list[str]:
    found = sorted(glob.glob(os.path.expanduser(pattern)))
    if not found:
        raise UserError(f"{pattern}: no files match for split '{split}'")
    return [_existing_file(p, split) for p in found]


def _explicit_files(cfg: DataConfig, splits: list[str]) -> dict[str, list[str]]:
    assert cfg.files is not None
    listed = cfg.files.model_dump()
    files: dict[str, list[str]] = {}
    for split in splits:
        if split not in listed:
            raise UserError(
                f"data.files has no split '{split}' (named by data.validation_split/test_split); "
                f"it lists {', '.join(listed)}"
            )
        paths: list[str] = []
        for entry in listed[split]:
            if _GLOB_CHARS.search(entry):
                paths.extend(_glob_files(entry, split))
            else:
                paths.append(_existing_file(os.path.expanduser(entry), split))
        files[split] = paths
    return files


def _existing_file(path: str, split: str) -> str:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: file not found (split '{split}')")
    if p.is_dir():
        raise UserError(f"{path}: is a directory, expected a Parquet file (split '{split}')")
    return str(p.resolve())


# -- reading and validating ------------------------------------------------------------------------------------------


def _read_split(split: str, paths: list[str], cfg: DataConfig) -> tuple[pa.Table, int]:
    """The split's validated table and how many blank texts were dropped from it (`data.blank_texts: drop`)."""
    columns = [cfg.text_column, *cfg.labels]
    tables = []
    dropped = 0
    for path in paths:
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
        _check_schema(schema, path, cfg)
        table, blanks = _blank_texts(_check_table(pq.read_table(path, columns=columns), path, cfg),
                                     f"{path} (split '{split}')", cfg)
        tables.append(table)
        dropped += blanks
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if table.num_rows == 0:
        more = f" after dropping {dropped} blank text(s)" if dropped else ""
        raise UserError(f"split '{split}' is empty{more} ({', '.join(paths)})")
    if dropped:
        _report_dropped(split, dropped)
    return table, dropped


def _blank_mask(text: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """True where a text is empty or only (Unicode) whitespace."""
    return pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0)


def _refuse_blanks(mask: pa.ChunkedArray | pa.Array, count: int, origin: str, cfg: DataConfig) -> None:
    first = pc.index(mask, True).as_py()
    raise UserError(
        f"{origin}: column '{cfg.text_column}' has {count} empty or whitespace-only text(s) (first at row {first}); "
        "fix the data or set data.blank_texts: drop"
    )


def _blank_texts(table: pa.Table, origin: str, cfg: DataConfig) -> tuple[pa.Table, int]:
    """Refuse (`data.blank_texts: error`, with the count) or drop the rows whose text is blank."""
    mask = _blank_mask(table.column(TEXT))
    count = int(pc.sum(mask).as_py() or 0)
    if not count:
        return table, 0
    if cfg.blank_texts == "error":
        _refuse_blanks(mask, count, origin, cfg)
    return table.filter(pc.invert(mask)), count


def _report_dropped(split: str, count: int) -> None:
    # A printed count, not only a log line: dropping rows changes the data, and the user asked for it by name.
    message = f"split '{split}': dropped {count} empty or whitespace-only text(s) (data.blank_texts: drop)"
    log.warning(message)


def _check_schema(schema: pa.Schema, origin: str, cfg: DataConfig) -> None:
    for column in [cfg.text_column, *cfg.labels]:
        if column not in schema.names:
            what = "data.text_column" if column == cfg.text_column else "a key of data.labels"
            raise UserError(
                f"{origin}: missing column '{column}' ({what}); columns present: {', '.join(schema.names)}"
            )
    kind = schema.field(cfg.text_column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UserError(f"{origin}: column '{cfg.text_column}' has type {kind}, expected strings")
    for column in cfg.labels:
        kind = schema.field(column).type
        if not pa.types.is_integer(kind):
            raise UserError(f"{origin}: label column '{column}' has type {kind}, expected integers")


def _check_table(table: pa.Table, origin: str, cfg: DataConfig) -> pa.Table:
    """Check nulls and label ranges; return ``text`` (string) + int64 labels without the source's schema metadata."""
    text = table.column(cfg.text_column)
    if text.null_count:
        first = pc.index(pc.is_null(text), True).as_py()
        raise UserError(
            f"{origin}: column '{cfg.text_column}' has {text.null_count} null value(s) (first at row {first}), "
            "expected a string in every row"
        )
    columns = {TEXT: text.cast(pa.string())}
    for column, n in cfg.labels.items():
        values = table.column(column)
        if values.null_count:
            first = pc.index(pc.is_null(values), True).as_py()
            raise UserError(
                f"{origin}: label column '{column}' has {values.null_count} null value(s) (first at row {first})"
            )
        if len(values):
            bounds = pc.min_max(values)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            if low < 0 or high >= n:
                bad = low if low < 0 else high
                outside = pc.sum(pc.or_(pc.less(values, 0), pc.greater_equal(values, n))).as_py()
                raise UserError(
                    f"{origin}: label column '{column}' has value {bad} outside [0, {n}) in {outside} row(s); "
                    f"data.labels.{column} declares {n} classes"
                )
        columns[column] = values.cast(pa.int64())
    # Dropping the source's metadata matters: the hub's shards carry a `huggingface` features entry naming the
    # original columns, which `datasets` would trust over the renamed table.
    return pa.table(columns)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the hub -----------------------------------------------------------------------------------------------------------


def _offline_var() -> str | None:
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def _read_hub(cfg: DataConfig, splits: list[str]) -> RawCorpus:
    var = _offline_var()
    if var:
        raise UserError(
            f"data.source '{cfg.source}': no such local directory, and {var}={os.environ[var]} forbids fetching it "
            "from the Hugging Face hub; point data.source at a local copy of the Parquet shards (a directory or a "
            "glob with {split})"
        )
    repo, _, revision = cfg.source.partition("@")
    log.info("loading %s from the Hugging Face hub", cfg.source)
    try:
        loaded = datasets.load_dataset(repo, revision=revision or None)
    except Exception as exc:  # noqa: BLE001 - network, auth and not-found failures are all the user's to fix
        raise UserError(f"data.source '{cfg.source}': could not load from the hub ({_first_line(exc)})") from exc
    if not isinstance(loaded, datasets.DatasetDict):
        raise UserError(f"data.source '{cfg.source}': expected named splits from the hub")
    tables: dict[str, pa.Table] = {}
    dropped: dict[str, int] = {}
    for split in splits:
        if split not in loaded:
            raise UserError(f"data.source '{cfg.source}': no split '{split}'; the hub lists {', '.join(loaded)}")
        origin = f"{cfg.source} [{split}]"
        table = loaded[split].data.table
        _check_schema(table.schema, origin, cfg)
        table = _check_table(table.select([cfg.text_column, *cfg.labels]), origin, cfg)
        table, dropped[split] = _blank_texts(table, origin, cfg)
        if table.num_rows == 0:
            raise UserError(f"split '{split}' is empty ({origin})")
        if dropped[split]:
            _report_dropped(split, dropped[split])
        tables[split] = table
    # The cached datasets' own fingerprints derive from the cache files, whose paths carry the resolved commit.
    parts = {"hub": repo, "revision": revision or "default", "splits": {s: loaded[s]._fingerprint for s in splits}}
    return RawCorpus(
        tables=tables,
        fingerprint=_fingerprint(cfg, parts),
        source=cfg.source,
        files={split: [] for split in splits},
        blank_dropped=dropped,
    )


# -- fingerprints ------------------------------------------------------------------------------------------------------

_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def _file_digest(path: str) -> str:
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


def _fingerprint(cfg: DataConfig, content: object) -> str:
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
