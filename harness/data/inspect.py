"""`sdm data inspect CONFIG`: what a config's data looks like once loaded, before any compute is spent on it.

Reports the four pools (defense training, the attacker's pool, the attacker's validation, test: split, rows,
duplicates dropped; see `harness.data.prepare`), rows and label balance per split, blank texts dropped, gendered
words left after scrubbing, sample texts, the harmful-task allocation per budget (drawn from the attacker's pool),
and which label value the raw text's pronouns point to (Bias in Bios codes gender 0 as
male and 1 as female by common use; this checks it against the data instead of trusting it).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from harness.config import ExperimentConfig
from harness.data.budgets import nested_stratified_samples, subsample
from harness.data.corpus import TEXT
from harness.data.loader import corpus_from_raw, read_raw
from harness.data.prepare import POOLS, carve_pools, check_pools
from harness.data.scrub import count_by_gender
from harness.errors import UserError

log = logging.getLogger(__name__)

PROFESSIONS: tuple[str, ...] = (
    "accountant", "architect", "attorney", "chiropractor", "comedian", "composer", "dentist", "dietitian", "dj",
    "filmmaker", "interior_designer", "journalist", "model", "nurse", "painter", "paralegal", "pastor",
    "personal_trainer", "photographer", "physician", "poet", "professor", "psychologist", "rapper",
    "software_engineer", "surgeon", "teacher", "yoga_teacher",
)  # fmt: skip
# Class names for the published columns, used only for display; other corpora show class indices.
CLASS_NAMES: dict[str, tuple[str, ...]] = {"profession": PROFESSIONS, "gender": ("male", "female")}
_SAMPLES = 3
_PRONOUN_CHECK_ROWS = 2000


_ROLE = {"defense": "defense training", "attack": "attacker's pool", "validation": "validation", "test": "test"}


def class_name(column: str, k: int, num_classes: int) -> str:
    names = CLASS_NAMES.get(column)
    if names is not None and len(names) == num_classes:
        return f"{k} {names[k]}"
    return str(k)


def inspect_corpus(cfg: ExperimentConfig) -> dict[str, Any]:
    """Load the config's corpus and summarise it as a JSON-serialisable dict (see `render_inspection`)."""
    data = cfg.data
    raw = read_raw(data)
    corpus = corpus_from_raw(raw, data)
    warnings: list[str] = []
    try:
        pools = carve_pools(cfg, corpus)
    except UserError as exc:
        pools = None
        warnings.append(str(exc))
    if pools is not None:
        try:
            check_pools(cfg, pools)
        except UserError as exc:
            warnings.append(str(exc))
        asked = {"attack": data.attacker_pool_size, "validation": data.validation_size, "test": data.test_size}
        for name, info in pools.info.items():
            if asked.get(name) and pools.carved[name] < asked[name] and not (
                name == "validation" and cfg.search.selection == "reference"
            ):
                warnings.append(f"the {name} pool gets {pools.carved[name]} rows of '{info.split}', fewer than the "
                                f"{asked[name]} the config asks for; all are used")
    roles: dict[str, list[str]] = {}
    for name in POOLS:
        split = pools.info[name].split if pools is not None else None
        if split is not None and not (name == "validation" and cfg.search.selection == "reference"):
            roles.setdefault(split, []).append(_ROLE[name])
    splits: dict[str, Any] = {}
    for split, ds in corpus.splits.items():
        labels: dict[str, Any] = {}
        for column, n in data.labels.items():
            counts = np.bincount(ds.data.column(column).to_numpy(), minlength=n).tolist()
            labels[column] = {"num_classes": n, "counts": counts}
            missing = [k for k, c in enumerate(counts) if c == 0]
            if missing:
                warnings.append(f"{split}: no rows for {column} class(es) {missing}")
        rows = len(ds)
        splits[split] = {"role": " + ".join(roles.get(split, ["unused"])), "rows": rows,
                         "scrub_left": corpus.scrub_left[split], "blank_dropped": corpus.blank_dropped.get(split, 0),
                         "labels": labels}
        if corpus.blank_dropped.get(split):
            warnings.append(f"{split}: {corpus.blank_dropped[split]} empty or whitespace-only text(s) dropped "
                            "(data.blank_texts: drop)")
        if data.scrub_pronouns and corpus.scrub_left[split]:
            warnings.append(f"{split}: {corpus.scrub_left[split]} gendered pronoun(s) or title(s) left after scrubbing")

    train = corpus.splits["train"]
    picks = subsample(len(train), _SAMPLES, seed=0)
    samples = [train[int(i)][TEXT] for i in picks]

    harmful = cfg.tasks.harmful
    n_harmful = data.labels[harmful]
    budgets: dict[str, Any] = {}
    if pools is not None:
        attack = pools.info["attack"]
        pool_labels = corpus.splits[attack.split].data.column(harmful).to_numpy()[pools.rows["attack"]]
        try:
            drawn = nested_stratified_samples(pool_labels, cfg.budgets, seed=cfg.seeds[0], num_classes=n_harmful,
                                              pool="attacker's pool")
            for b, idx in drawn.items():
                budgets[str(b)] = np.bincount(pool_labels[idx], minlength=n_harmful).tolist()
        except UserError as exc:
            if str(exc) not in warnings:
                warnings.append(str(exc))

    # Which gender the raw pronouns indicate per harmful class, on a subsample of the unscrubbed train split.
    raw_train = raw.splits["train"].data.table
    rows = subsample(raw_train.num_rows, _PRONOUN_CHECK_ROWS, seed=0)
    texts = raw_train.column(TEXT).take(rows).to_pylist()
    classes = raw_train.column(harmful).take(rows).to_numpy()
    by_class: dict[str, dict[str, float]] = {}
    for k in range(n_harmful):
        chosen = [t for t, c in zip(texts, classes) if c == k]
        if not chosen:
            continue
        tallies = [count_by_gender(t) for t in chosen]
        by_class[str(k)] = {
            "rows": len(chosen),
            "mostly_male": sum(m > f for m, f in tallies) / len(chosen),
            "mostly_female": sum(f > m for m, f in tallies) / len(chosen),
            "neither": sum(m == f for m, f in tallies) / len(chosen),
        }

    return {
        "source": corpus.source,
        "fingerprint": corpus.fingerprint,
        "files": corpus.files,
        "text_column": data.text_column,
        "scrub_pronouns": data.scrub_pronouns,
        "tasks": {"harmful": harmful, "desired": cfg.tasks.desired},
        "pools": [asdict(info) for info in pools.info.values()] if pools is not None else [],
        "splits": splits,
        "samples": samples,
        "budgets": budgets,
        "pronouns_by_class": {"column": harmful, "classes": by_class},
        "warnings": warnings,
    }


def _share(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "-"


def render_inspection(report: dict[str, Any]) -> Group:
    """Rich renderables for the CLI: overview, splits, label balance, budgets, pronoun check, samples, warnings."""
    parts: list[Any] = []
    head = Text()
    head.append("source ", style="bold").append(f"{report['source']}\n")
    head.append("fingerprint ", style="bold").append(f"{report['fingerprint']}\n")
    head.append("text column ", style="bold").append(f"{report['text_column']}\n")
    head.append("pronoun scrubbing ", style="bold").append("on" if report["scrub_pronouns"] else "off")
    parts.append(head)

    if report["pools"]:
        pools = Table(title="pools (disjoint by row and by text)", title_justify="left")
        for col in ("pool", "split", "rows", "duplicates dropped", "what it is for"):
            pools.add_column(col, justify="right" if col in ("rows", "duplicates dropped") else "left")
        for p in report["pools"]:
            pools.add_row(p["name"], p["split"], f"{p['rows']:,}", f"{p['duplicates_dropped']:,}", p["description"])
        parts.append(pools)

    splits = Table(title="splits", title_justify="left")
    for col in ("split", "role", "rows", "blank texts dropped", "gendered words left"):
        splits.add_column(col, justify="left" if col in ("split", "role") else "right")
    for name, s in report["splits"].items():
        splits.add_row(name, s["role"], f"{s['rows']:,}", str(s["blank_dropped"]), str(s["scrub_left"]))
    parts.append(splits)

    columns = next(iter(report["splits"].values()))["labels"]
    for column, meta in columns.items():
        n = meta["num_classes"]
        table = Table(title=f"label balance: {column} ({n} classes)", title_justify="left")
        table.add_column("split")
        if n <= 4:
            for k in range(n):
                table.add_column(class_name(column, k, n), justify="right")
        else:
            table.add_column("classes present", justify="right")
            table.add_column("smallest", justify="right")
            table.add_column("largest", justify="right")
        for name, s in report["splits"].items():
            counts = s["labels"][column]["counts"]
            total = sum(counts)
            if n <= 4:
                table.add_row(name, *(f"{c:,} ({_share(c, total)})" for c in counts))
            else:
                lo, hi = int(np.argmin(counts)), int(np.argmax(counts))
                table.add_row(
                    name,
                    f"{sum(c > 0 for c in counts)}/{n}",
                    f"{class_name(column, lo, n)} {_share(counts[lo], total)}",
                    f"{class_name(column, hi, n)} {_share(counts[hi], total)}",
                )
        parts.append(table)

    harmful = report["tasks"]["harmful"]
    if report["budgets"]:
        n = len(next(iter(report["budgets"].values())))
        table = Table(title=f"harmful-task sample per budget ({harmful}, first seed, from the attacker's pool)",
                      title_justify="left")
        table.add_column("budget", justify="right")
        table.add_column("examples per class")
        for b, counts in report["budgets"].items():
            shown = ", ".join(f"{class_name(harmful, k, n)}: {c}" for k, c in enumerate(counts) if c or n <= 4)
            table.add_row(b, shown)
        parts.append(table)

    check = report["pronouns_by_class"]
    if check["classes"]:
        n = report["splits"]["train"]["labels"][check["column"]]["num_classes"]
        table = Table(title=f"raw pronouns by {check['column']} class (train sample, before scrubbing)",
                      title_justify="left")
        for col in ("class", "rows", "mostly he/him/his", "mostly she/her", "neither"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for k, c in check["classes"].items():
            table.add_row(
                class_name(check["column"], int(k), n),
                str(c["rows"]),
                f"{100 * c['mostly_male']:.1f}%",
                f"{100 * c['mostly_female']:.1f}%",
                f"{100 * c['neither']:.1f}%",
            )
        parts.append(table)

    samples = Text()
    samples.append("sample texts (train, as the models see them)\n", style="bold")
    for i, text in enumerate(report["samples"], 1):
        short = text if len(text) <= 300 else text[:297] + "..."
        samples.append(f"{i}. {short}\n")
    parts.append(samples)

    for warning in report["warnings"]:
        parts.append(Text(f"warning: {warning}", style="yellow"))
    return Group(*parts)
