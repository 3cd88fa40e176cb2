"""Where a corpus comes from: one class per kind of `data.source`, chosen by `source_for`.

Kinds, in the order `source_for` tries them:
- `FilesSource`: explicit files per split (``data.files``, globs allowed), which wins over ``data.source``;
- `StandinSource`: ``"standin"``, the bundled stand-in corpus (`standin_dir()`), laid out like the published shards;
- `GlobSource`: a glob with ``{split}`` (``/data/bib/{split}-*.parquet``);
- `DirectorySource`: a directory holding the published layout (``data/train-00000-of-00001-<hash>.parquet``) or a
  similar one (see `SPLIT_PATTERNS`);
- `HubSource`: otherwise a hub id (``LabHC/bias_in_bios``, optionally ``@revision``) through
  `datasets.load_dataset`, refused at once when ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is set.

To add a kind: write one class here that satisfies `Source` (a source of local Parquet files subclasses
`LocalSource` and only says which files hold each split: reading, validation, fingerprint and cache come with it),
and give it a branch in `source_for`. A `Located` lets the loader find a corpus it has seen in its memo or cache
without reading it, so a source that can name its content before reading it should return one from `locate`.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import datasets

from harness.config import DataConfig
from harness.data.corpus import Corpus, Located, file_digest, fingerprint, split_dataset
from harness.data.tables import check_schema, first_line, read_files, report_dropped, valid_rows
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
OFFLINE_VARS: tuple[str, ...] = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?(?:@[\w./-]+)?$")
_GLOB_CHARS = re.compile(r"[*?\[]")


class Source(Protocol):
    """One kind of `data.source`: where the splits an experiment needs come from."""

    @property
    def label(self) -> str:
        """How the corpus records where it came from (`Corpus.source`)."""
        ...

    def locate(self, cfg: DataConfig, splits: list[str]) -> Located | None:
        """The corpus's files and fingerprint, found without reading a row; None when they are only known once it
        is read (the hub)."""
        ...

    def read(self, cfg: DataConfig, splits: list[str]) -> Corpus:
        """Read and validate `splits` (no scrubbing: `harness.data.loader.corpus_from_raw` does that)."""
        ...


def source_for(cfg: DataConfig) -> Source:
    """The source `cfg` names (see the module notes for the order)."""
    if cfg.files is not None:
        return FilesSource(cfg.files.model_dump())
    if cfg.source == "standin":
        return StandinSource(standin_dir())
    if "{split}" in cfg.source:
        return GlobSource(cfg.source)
    path = Path(cfg.source).expanduser()
    if path.is_dir():
        return DirectorySource(path)
    if path.exists():
        raise UserError(
            f"data.source '{cfg.source}': is a file, expected a directory of Parquet shards, a glob with "
            "{split}, or data.files per split"
        )
    if _looks_like_path(cfg.source) or not _HUB_ID.match(cfg.source):
        raise UserError(f"data.source '{cfg.source}': directory not found")
    return HubSource(cfg.source)


def standin_dir() -> Path:
    """The bundled stand-in corpus: ``{split}-00000-of-00001.parquet`` shards."""
    return Path(__file__).resolve().parent / "standin" / "data"


class LocalSource:
    """A source of local Parquet files; a subclass says which files hold each split (`files`) and how to name it."""

    @property
    def label(self) -> str:
        """How the corpus records where it came from (`Corpus.source`)."""
        raise NotImplementedError

    def files(self, splits: list[str]) -> dict[str, list[str]]:
        """Resolved paths of each split's files, in reading order; a `UserError` for a split with none."""
        raise NotImplementedError

    def locate(self, cfg: DataConfig, splits: list[str]) -> Located:
        files = self.files(splits)
        content = {split: [file_digest(p) for p in paths] for split, paths in files.items()}
        return Located(source=self.label, files=files, fingerprint=fingerprint(cfg, content))

    def read(self, cfg: DataConfig, splits: list[str]) -> Corpus:
        return read_files(self.locate(cfg, splits), cfg)


@dataclass(frozen=True)
class DirectorySource(LocalSource):
    """A directory in the published layout or a similar one: the first of `SPLIT_PATTERNS` with matches, per split."""

    root: Path

    @property
    def label(self) -> str:
        return str(self.root)

    def files(self, splits: list[str]) -> dict[str, list[str]]:
        root = self.root
        files: dict[str, list[str]] = {}
        for split in splits:
            for pattern in SPLIT_PATTERNS:
                where = os.path.join(glob.escape(str(root)), pattern.format(split=glob.escape(split)))
                found = sorted(glob.glob(where))
                if found:
                    files[split] = [existing_file(p, split) for p in found]
                    break
            else:
                tried = ", ".join(p.format(split=split) for p in SPLIT_PATTERNS)
                present = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))[:6]
                there = f"; Parquet files there: {', '.join(present)}" if present else "; no Parquet files there"
                raise UserError(f"{root}: no Parquet shards for split '{split}' (tried {tried}){there}")
        return files


@dataclass(frozen=True)
class StandinSource(DirectorySource):
    """The bundled stand-in corpus (docs/data-card.md), read like any directory of shards."""

    @property
    def label(self) -> str:
        return f"standin ({self.root})"

    def files(self, splits: list[str]) -> dict[str, list[str]]:
        if not self.root.is_dir():
            raise UserError(
                f"data.source 'standin': the bundled stand-in corpus is missing ({self.root}); reinstall sdm-bench or "
                "point data.source at a directory of Parquet shards"
            )
        return super().files(splits)


@dataclass(frozen=True)
class GlobSource(LocalSource):
    """A glob with ``{split}``: each split's files are the pattern's matches for it, in name order."""

    pattern: str

    @property
    def label(self) -> str:
        return self.pattern

    def files(self, splits: list[str]) -> dict[str, list[str]]:
        return {split: glob_files(self.pattern.replace("{split}", split), split) for split in splits}


@dataclass(frozen=True)
class FilesSource(LocalSource):
    """``data.files``: a list of paths (or globs) per split."""

    listed: dict[str, list[str]]

    @property
    def label(self) -> str:
        return "data.files"

    def files(self, splits: list[str]) -> dict[str, list[str]]:
        files: dict[str, list[str]] = {}
        for split in splits:
            if split not in self.listed:
                raise UserError(
                    f"data.files has no split '{split}' (named by data.validation_split/test_split); "
                    f"it lists {', '.join(self.listed)}"
                )
            paths: list[str] = []
            for entry in self.listed[split]:
                if _GLOB_CHARS.search(entry):
                    paths.extend(glob_files(entry, split))
                else:
                    paths.append(existing_file(os.path.expanduser(entry), split))
            files[split] = paths
        return files


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub, ``owner/name`` with an optional ``@revision``, through `datasets`' own
    loading and cache (so the loader keeps no cache of its own for it)."""

    label: str

    def locate(self, cfg: DataConfig, splits: list[str]) -> Located | None:
        return None  # the fingerprint comes from the resolved revision, known once `datasets` has loaded it

    def read(self, cfg: DataConfig, splits: list[str]) -> Corpus:
        var = offline_var()
        if var:
            raise UserError(
                f"data.source '{self.label}': no such local directory, and {var}={os.environ[var]} forbids fetching "
                "it from the Hugging Face hub; point data.source at a local copy of the Parquet shards (a directory "
                "or a glob with {split})"
            )
        repo, _, revision = self.label.partition("@")
        log.info("loading %s from the Hugging Face hub", self.label)
        try:
            loaded = datasets.load_dataset(repo, revision=revision or None)
        except Exception as exc:  # noqa: BLE001 - network, auth and not-found failures are all the user's to fix
            raise UserError(f"data.source '{self.label}': could not load from the hub ({first_line(exc)})") from exc
        if not isinstance(loaded, datasets.DatasetDict):
            raise UserError(f"data.source '{self.label}': expected named splits from the hub")
        tables = {}
        dropped: dict[str, int] = {}
        for split in splits:
            if split not in loaded:
                raise UserError(f"data.source '{self.label}': no split '{split}'; the hub lists {', '.join(loaded)}")
            origin = f"{self.label} [{split}]"
            table = loaded[split].data.table
            check_schema(table.schema, origin, cfg)
            tables[split], dropped[split] = valid_rows(table.select([cfg.text_column, *cfg.labels]), origin, origin,
                                                       cfg)
            if tables[split].num_rows == 0:
                raise UserError(f"split '{split}' is empty ({origin})")
            if dropped[split]:
                report_dropped(split, dropped[split])
        # The cached datasets' own fingerprints derive from the cache files, whose paths carry the resolved commit.
        parts = {"hub": repo, "revision": revision or "default", "splits": {s: loaded[s]._fingerprint for s in splits}}
        fp = fingerprint(cfg, parts)
        return Corpus(source=self.label, files={split: [] for split in splits}, fingerprint=fp,
                      splits={split: split_dataset(t, split, fp) for split, t in tables.items()}, blank_dropped=dropped)


def offline_var() -> str | None:
    """The first of `OFFLINE_VARS` set to a true value, if any."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def glob_files(pattern: str, split: str) -> list[str]:
    """The pattern's matches in name order, resolved; a `UserError` when there are none."""
    found = sorted(glob.glob(os.path.expanduser(pattern)))
    if not found:
        raise UserError(f"{pattern}: no files match for split '{split}'")
    return [existing_file(p, split) for p in found]


def existing_file(path: str, split: str) -> str:
    """`path` resolved, refusing a missing file or a directory."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: file not found (split '{split}')")
    if p.is_dir():
        raise UserError(f"{path}: is a directory, expected a Parquet file (split '{split}')")
    return str(p.resolve())


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", ".", "~"))
        or "\\" in source
        or source.count("/") > 1
        or source.endswith(".parquet")
        or bool(_GLOB_CHARS.search(source))
    )
