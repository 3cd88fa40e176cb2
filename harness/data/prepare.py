"""The four disjoint pools of an experiment, tokenised, with every seed's nested budget samples.

Protocol (docs/data-card.md, "Pools"): a defense must never have seen the attacker's rows, and selection must never
see test. So the rows of a corpus go to four pools, no row and no identical text in two of them:

- ``defense``: the whole `train` split, what every defense trains (and censors) on;
- ``attack``: the attacker's pool, from which every budget sample is drawn (nested and stratified,
  `harness.data.budgets.nested_stratified_samples`); carved from `data.attacker_pool_split` (default the
  validation split), `data.attacker_pool_size` rows (default all that validation leaves);
- ``validation``: the attacker's validation rows (trial selection, early stopping), `data.validation_size` rows of
  `data.validation_split`;
- ``test``: reported only, `data.test_split`, `data.test_size` rows.

The reference draws the attacker's examples from held-out validation data in the same way; with
``search.selection: reference`` validation *is* test (its optimistic protocol, kept for comparison), every other
pool as usual, so both protocols attack with the same examples.

Where two pools share a split they are carved from it disjointly (validation first, then the attacker's pool from
what is left). A row whose text (pronoun-scrubbed when the config scrubs, whitespace runs collapsed) already appears
in an earlier pool, in the order defense, attack, validation, test, is dropped from the later one and counted:
Bias in Bios repeats some bios across splits, and a repeated bio is a row the defense has seen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.config import ExperimentConfig
from harness.errors import UserError

log = logging.getLogger(__name__)

POOLS: tuple[str, ...] = ("defense", "attack", "validation", "test")
# Separate subsampling streams per pool (validation and test keep the seeds they always had).
_SEED_VALIDATION, _SEED_TEST, _SEED_ATTACK = 1, 2, 3


@dataclass(frozen=True)
class PoolInfo:
    """One pool as the run records and the CLI prints it."""

    name: str  # "defense", "attack", "validation" or "test"
    split: str  # the corpus split its rows come from
    rows: int  # rows in the pool (after duplicates were dropped)
    description: str
    duplicates_dropped: int = 0  # rows whose text an earlier pool already holds

    @property
    def label(self) -> str:
        """How the results tables and the run's summary name the pool: `attack: dev, 2878 rows`."""
        return f"{self.name}: {self.split}, {self.rows} rows"


@dataclass(frozen=True)
class Pools:
    """Which rows of which split each pool holds (before tokenising)."""

    rows: dict[str, np.ndarray]  # pool -> sorted int64 row indices into its split
    info: dict[str, PoolInfo]
    split_rows: dict[str, int]  # split -> rows in the loaded corpus
    carved: dict[str, int]  # pool -> rows carved for it, before duplicates were dropped


@dataclass
class PreparedData:
    corpus_source: str
    fingerprint: str  # the corpus's content fingerprint (what defense weights are cached under)
    defense_train: Any  # TokenizedSplit: what defenses train on (the whole train split)
    attack_pool: Any  # TokenizedSplit: the attacker's pool; budget samples index into it
    val: Any  # TokenizedSplit: the attacker's validation (is `test` with search.selection: reference)
    test: Any  # TokenizedSplit: reported only
    budget_rows: dict[tuple[str, int], dict[int, np.ndarray]]  # (task, seed) -> budget -> attack_pool rows
    pools: dict[str, PoolInfo]
    source_rows: dict[str, np.ndarray]  # pool -> row indices into its split (`pools[name].split`)


def largest_budget(cfg: ExperimentConfig) -> int:
    roles = cfg.tasks.attacked
    return max(max(cfg.budgets_for(role)) for role in roles)


def carve_pools(cfg: ExperimentConfig, corpus) -> Pools:
    """Assign rows of a loaded `harness.data.corpus.Corpus` to the four pools (see the module notes).

    Refuses splits that overlap (the same file read as two splits, or a pool all of whose texts an earlier pool
    holds) with a one-line `UserError`; sizes against the budgets are checked by `check_pools`.
    """
    from harness.data.budgets import subsample

    data = cfg.data
    _check_files_disjoint(cfg, corpus.files)
    lengths = {split: len(ds) for split, ds in corpus.splits.items()}
    val_split, pool_split, test_split = data.validation_split, data.pool_split, data.test_split

    carved: dict[str, np.ndarray] = {"defense": np.arange(lengths[data.DEFENSE_SPLIT], dtype=np.int64)}
    if cfg.search.selection == "reference" and val_split == test_split:
        carved["validation"] = np.zeros(0, dtype=np.int64)  # validation is test: nothing to carve
    else:
        carved["validation"] = subsample(lengths[val_split], data.validation_size, _SEED_VALIDATION)
    if pool_split == val_split:
        left = np.setdiff1d(np.arange(lengths[pool_split], dtype=np.int64), carved["validation"])
    else:
        left = np.arange(lengths[pool_split], dtype=np.int64)
    if data.attacker_pool_size is not None and len(left):
        left = left[subsample(len(left), data.attacker_pool_size, _SEED_ATTACK)]
    carved["attack"] = left
    carved["test"] = subsample(lengths[test_split], data.test_size, _SEED_TEST)
    splits = {"defense": data.DEFENSE_SPLIT, "attack": pool_split, "validation": val_split, "test": test_split}

    seen: dict[str, str] = {}  # text -> the first pool holding it
    rows: dict[str, np.ndarray] = {}
    dropped: dict[str, int] = {}
    for name in POOLS:
        idx = carved[name]
        texts = [_normalise(t) for t in corpus.splits[splits[name]].data.column("text").take(idx).to_pylist()]
        keep = np.fromiter((t not in seen for t in texts), dtype=bool, count=len(texts))
        rows[name] = idx[keep]
        dropped[name] = int(len(idx) - keep.sum())
        if len(idx) and not keep.any():
            field = {"attack": "attacker_pool_split", "validation": "validation_split", "test": "test_split"}[name]
            earlier = sorted({seen[t] for t in texts}, key=POOLS.index)
            raise UserError(
                f"data.{field}: all {len(idx)} rows of the {name} pool (split '{splits[name]}') repeat texts of "
                f"earlier pools ({', '.join(earlier)}): the splits overlap"
            )
        for t in texts:
            seen.setdefault(t, name)
    if any(dropped.values()):
        log.info("rows dropped for repeating a text of an earlier pool: %s",
                    ", ".join(f"{n} {c}" for n, c in dropped.items() if c))

    if cfg.search.selection == "reference":
        rows["validation"], splits["validation"], dropped["validation"] = rows["test"], test_split, dropped["test"]
    shared = pool_split == val_split
    descriptions = {
        "defense": "defenses train on it (all rows)",
        "attack": f"budget samples drawn from it ({_pool_size_text(cfg, shared)})",
        "validation": (
            "is test (selection: reference, optimistic)"
            if cfg.search.selection == "reference"
            else f"selection, early stopping ({data.validation_size} asked)"
        ),
        "test": f"reported only ({data.test_size} asked)",
    }
    info = {
        name: PoolInfo(name, splits[name], int(len(rows[name])), descriptions[name], dropped[name]) for name in POOLS
    }
    return Pools(rows, info, lengths, {name: int(len(idx)) for name, idx in carved.items()})


def _pool_size_text(cfg: ExperimentConfig, shared: bool) -> str:
    if cfg.data.attacker_pool_size is not None:
        return f"{cfg.data.attacker_pool_size} asked"
    return "rows validation leaves" if shared else "all rows"


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _check_files_disjoint(cfg: ExperimentConfig, files: dict[str, list[str]]) -> None:
    where = "data.files" if cfg.data.files is not None else "data.source"
    names = list(files)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = sorted(set(files[a]) & set(files[b]))
            if both:
                raise UserError(
                    f"{where}: splits '{a}' and '{b}' read the same file {both[0]}: the pools must be disjoint"
                )


def check_pools(cfg: ExperimentConfig, pools: Pools) -> None:
    """One-line `UserError`s for pools too small for the experiment (the attacker's pool for the largest budget)."""
    info = pools.info
    attack = info["attack"]
    largest = largest_budget(cfg)
    if attack.rows < largest:
        data = cfg.data
        how = [f"split '{attack.split}' has {pools.split_rows[attack.split]}"]
        if data.pool_split == data.validation_split:
            how.append(f"validation takes {pools.carved['validation']}")
        if attack.duplicates_dropped:
            how.append(f"{attack.duplicates_dropped} repeat texts of train")
        raise UserError(
            f"data.attacker_pool_size: the attacker's pool has {attack.rows} rows ({', '.join(how)}), fewer than the "
            f"largest budget {largest}; lower the budgets or data.validation_size, or give the pool more rows"
        )
    for name, field in (("validation", "validation_size"), ("test", "test_size")):
        if info[name].rows == 0:
            raise UserError(f"data.{field}: the {name} pool (split '{info[name].split}') has no rows")


def budget_samples(
    cfg: ExperimentConfig, labels: dict[str, np.ndarray]
) -> dict[tuple[str, int], dict[int, np.ndarray]]:
    """Per (task, seed) of the attacked tasks: budget -> sorted row indices into the attacker's pool."""
    from harness.data.budgets import nested_stratified_samples

    roles = {"harmful": cfg.tasks.harmful, "desired": cfg.tasks.desired}
    out: dict[tuple[str, int], dict[int, np.ndarray]] = {}
    for role in cfg.tasks.attacked:
        task = roles[role]
        for seed in cfg.seeds:
            out[(task, seed)] = nested_stratified_samples(
                labels[task], cfg.budgets_for(role), seed, cfg.data.labels[task], pool="attacker's pool"
            )
    return out


@dataclass(frozen=True)
class CheckedData:
    """A corpus that passed every data check: its pools, their labels and the budget samples."""

    corpus: Any  # harness.data.tables.Corpus
    pools: Pools
    labels: dict[str, dict[str, np.ndarray]]  # pool -> label column -> labels of its rows
    budget_rows: dict[tuple[str, int], dict[int, np.ndarray]]


def check_data(cfg: ExperimentConfig) -> CheckedData:
    """Load and validate the config's corpus, carve its pools and draw the budget samples: every data check, with no
    model and nothing written (`sdm run --dry-run` stops here)."""
    from harness.data.loader import load_corpus
    from harness.defend import cache_root

    corpus = load_corpus(cfg.data, cache_dir=cache_root(cfg) / "data", write_cache=False)
    pools = carve_pools(cfg, corpus)
    check_pools(cfg, pools)
    columns = list(cfg.data.labels)
    labels = {
        name: {c: corpus.splits[pools.info[name].split].data.column(c).to_numpy()[pools.rows[name]] for c in columns}
        for name in POOLS
    }
    budget_rows = budget_samples(cfg, labels["attack"])  # refuses a budget the pool's classes cannot fill
    return CheckedData(corpus, pools, labels, budget_rows)


def prepare_data(cfg: ExperimentConfig) -> PreparedData:
    """Load, validate and pool the config's corpus, tokenise the pools and draw the budget samples.

    Every check runs before anything is written: the corpus cache (`harness.data.cache`) is filled only once the
    pools and budgets are known to be valid.
    """
    from harness.data.loader import write_corpus_cache
    from harness.defend import cache_root
    from harness.models import load_tokenizer
    from harness.tokenized import tokenize

    checked = check_data(cfg)
    corpus, pools, labels, budget_rows = checked.corpus, checked.pools, checked.labels, checked.budget_rows
    write_corpus_cache(corpus, cache_root(cfg) / "data")

    tokenizer = load_tokenizer(cfg.model)

    def tokenized(name: str):
        ds = corpus.splits[pools.info[name].split]
        texts = ds.data.column("text").take(pools.rows[name]).to_pylist()
        return tokenize(texts, labels[name], tokenizer, cfg.model.max_length)

    test = tokenized("test")
    val = test if cfg.search.selection == "reference" else tokenized("validation")
    return PreparedData(
        corpus_source=corpus.source,
        fingerprint=corpus.fingerprint,
        defense_train=tokenized("defense"),
        attack_pool=tokenized("attack"),
        val=val,
        test=test,
        budget_rows=budget_rows,
        pools=dict(pools.info),
        source_rows=dict(pools.rows),
    )


def describe_pools(pools: Iterable[PoolInfo]) -> list[str]:
    """One line per pool, for logs and the CLI."""
    return [
        f"{p.name}: {p.rows} rows of '{p.split}'"
        + (f" ({p.duplicates_dropped} duplicates dropped)" if p.duplicates_dropped else "")
        + f" - {p.description}"
        for p in pools
    ]
