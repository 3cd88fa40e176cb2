"""The data loader on Parquet files laid out like the published LabHC/bias_in_bios shards, and the bundled corpus."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from harness.atomic import TMP_MARK, clean_leftovers
from harness.config import DataConfig, ExperimentConfig
from harness.configfile import validate
from harness.data import loader
from harness.data.inspect import inspect_corpus, render_inspection
from harness.data.loader import load_corpus
from harness.data.scrub import count_gendered, scrub
from harness.data.sources import HubSource, standin_dir
from harness.errors import UserError

# The file names of the published shards (hub dataset LabHC/bias_in_bios).
PUBLISHED = {
    "train": "data/train-00000-of-00001-0ab65b32c47407e8.parquet",
    "dev": "data/dev-00000-of-00001-e6551072fff26949.parquet",
    "test": "data/test-00000-of-00001-5598c840ce8de1ee.parquet",
}
ROWS = {"train": 120, "dev": 40, "test": 40}

_NAMES = (["James", "Robert", "Ahmed", "Wei"], ["Mary", "Priya", "Elena", "Aisha"])
_PRONOUNS = ({"S": "He", "s": "he", "p": "his", "o": "him"}, {"S": "She", "s": "she", "p": "her", "o": "her"})
_JOBS = ["accountant", "architect", "attorney", "chiropractor", "comedian"]
_TEMPLATES = [
    "{name} is a {job} based in Denver. {S} has worked in the field for {y} years and {s} is known for {p} care.",
    "{S} received {p} degree from the University of Leeds and now works as a {job}. {S}'s been featured widely.",
    "Clients describe {o} as patient. {S} lives in Lyon with {p} family and volunteers on weekends.",
    "{name} began {p} career as an intern; today {s} runs {p} own practice as a {job}.",
]


def bios(n: int, seed: int) -> tuple[list[str], list[int], list[int]]:
    """Deterministic biography-like rows: text with gendered pronouns, a profession (0-27), a gender (0/1)."""
    rng = np.random.default_rng(seed)
    texts, professions, genders = [], [], []
    for i in range(n):
        g = int(rng.integers(2))
        job = int(rng.integers(len(_JOBS)))
        template = _TEMPLATES[i % len(_TEMPLATES)]
        texts.append(template.format(name=_NAMES[g][i % 4], job=_JOBS[job], y=3 + i % 20, **_PRONOUNS[g]))
        professions.append(job)
        genders.append(g)
    return texts, professions, genders


def hf_metadata(text_column: str = "hard_text") -> dict[bytes, bytes]:
    """The `huggingface` schema metadata that `datasets` writes into published shards."""
    features = {
        text_column: {"dtype": "string", "_type": "Value"},
        "profession": {"dtype": "int64", "_type": "Value"},
        "gender": {"dtype": "int64", "_type": "Value"},
    }
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def write_shard(path: Path, n: int, seed: int, text_column: str = "hard_text", **override: pa.Array) -> Path:
    texts, professions, genders = bios(n, seed)
    columns = {
        text_column: pa.array(texts, pa.string()),
        "profession": pa.array(professions, pa.int64()),
        "gender": pa.array(genders, pa.int64()),
    }
    columns.update(override)
    table = pa.table(columns).replace_schema_metadata(hf_metadata(text_column))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def published(root: Path) -> Path:
    for i, (split, name) in enumerate(PUBLISHED.items()):
        write_shard(root / name, ROWS[split], seed=i)
    return root


@pytest.fixture
def bib(tmp_path: Path) -> Path:
    return published(tmp_path / "bias_in_bios")


# -- happy paths -------------------------------------------------------------------------------------------------------


def test_published_layout(bib: Path) -> None:
    corpus = load_corpus(DataConfig(source=str(bib)))
    assert list(corpus.splits) == ["train", "dev", "test"]
    for split, ds in corpus.splits.items():
        assert ds.column_names == ["text", "profession", "gender"]
        assert ds.features["profession"].dtype == "int64" and ds.features["gender"].dtype == "int64"
        assert len(ds) == ROWS[split]
        assert corpus.scrub_left[split] == 0
        assert not any(re.search(r"\b(he|she|his|her|him)\b", t, re.I) for t in ds["text"])
        assert [Path(f).name for f in corpus.files[split]] == [Path(PUBLISHED[split]).name]
    assert re.fullmatch(r"[0-9a-f]{16}", corpus.fingerprint)
    assert corpus.source == str(bib)
    # Labels come through unchanged and in order.
    _, professions, genders = bios(ROWS["train"], seed=0)
    assert corpus.splits["train"]["profession"] == professions
    assert corpus.splits["train"]["gender"] == genders
    assert corpus.splits["train"]["text"] == [scrub(t) for t in bios(ROWS["train"], seed=0)[0]]


@pytest.mark.parametrize("layout", ["flat", "folders", "glob", "files", "files-glob"])
def test_other_layouts(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "corpus"
    for i, split in enumerate(["train", "dev", "test"]):
        if layout == "flat":
            write_shard(root / f"{split}-00000-of-00001.parquet", ROWS[split], seed=i)
        else:  # two shards per split, which must be concatenated in name order
            write_shard(root / split / "part-0.parquet", 10, seed=i)
            write_shard(root / split / "part-1.parquet", 5, seed=10 + i)
    if layout in ("flat", "folders"):
        cfg = DataConfig(source=str(root))
    elif layout == "glob":
        cfg = DataConfig(source=str(root / "{split}" / "part-*.parquet"))
    elif layout == "files":
        cfg = validate(DataConfig, {"files": {s: [str(root / s / "part-0.parquet"), str(root / s / "part-1.parquet")]
                                              for s in ("train", "dev", "test")}}, "test")
    else:
        cfg = validate(DataConfig, {"files": {s: [str(root / s / "part-*.parquet")] for s in ("train", "dev", "test")}},
                       "test")
    corpus = load_corpus(cfg)
    for i, (split, ds) in enumerate(corpus.splits.items()):
        if layout == "flat":
            assert len(ds) == ROWS[split]
        else:
            assert len(ds) == 15
            assert ds["gender"] == bios(10, i)[2] + bios(5, 10 + i)[2]
        assert ds.column_names == ["text", "profession", "gender"]


def test_custom_columns_and_narrow_ints(tmp_path: Path) -> None:
    texts, _, genders = bios(30, seed=3)
    for split in ("train", "dev", "test"):
        table = pa.table({
            "id": pa.array(range(30), pa.int32()),
            "bio": pa.array(texts, pa.large_string()),
            "job": pa.array([i % 3 for i in range(30)], pa.int8()),
            "sex": pa.array(genders, pa.int32()),
        })  # fmt: skip
        (tmp_path / "data").mkdir(exist_ok=True)
        pq.write_table(table, tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    cfg = DataConfig(source=str(tmp_path), text_column="bio", labels={"job": 3, "sex": 2})
    corpus = load_corpus(cfg)
    ds = corpus.splits["train"]
    assert ds.column_names == ["text", "job", "sex"]
    assert ds.features["job"].dtype == "int64" and ds.features["sex"].dtype == "int64"
    assert ds["sex"] == genders


def test_only_the_needed_splits(tmp_path: Path) -> None:
    for i, split in enumerate(["train", "dev", "heldout"]):
        write_shard(tmp_path / "data" / f"{split}-00000-of-00001.parquet", 20, seed=i)
    corpus = load_corpus(DataConfig(source=str(tmp_path), test_split="heldout"))
    assert list(corpus.splits) == ["train", "dev", "heldout"]
    with pytest.raises(UserError, match=r"no Parquet shards for split 'test' \(tried data/test-\*\.parquet"):
        load_corpus(DataConfig(source=str(tmp_path)))


def test_fingerprint_is_content_based(bib: Path, tmp_path: Path) -> None:
    base = load_corpus(DataConfig(source=str(bib))).fingerprint
    moved = shutil.copytree(bib, tmp_path / "elsewhere")
    assert load_corpus(DataConfig(source=str(moved))).fingerprint == base
    assert load_corpus(DataConfig(source=str(bib), scrub_pronouns=False)).fingerprint != base
    assert load_corpus(DataConfig(source=str(bib), labels={"gender": 2})).fingerprint != base
    write_shard(moved / PUBLISHED["dev"], ROWS["dev"], seed=99)  # one changed file
    assert load_corpus(DataConfig(source=str(moved))).fingerprint != base


def test_scrub_off_keeps_pronouns(bib: Path) -> None:
    corpus = load_corpus(DataConfig(source=str(bib), scrub_pronouns=False))
    texts = corpus.splits["train"]["text"]
    assert texts == bios(ROWS["train"], seed=0)[0]
    assert corpus.scrub_left["train"] == sum(count_gendered(t) for t in texts) > 0


def test_repeated_loads_are_independent_copies(bib: Path) -> None:
    cfg = DataConfig(source=str(bib))
    first = load_corpus(cfg)
    first.splits["train"].set_format("numpy")  # mutates in place: must not leak into the next load
    first.splits.pop("dev")
    second = load_corpus(cfg)
    assert list(second.splits) == ["train", "dev", "test"]
    assert isinstance(second.splits["train"][0]["text"], str)
    assert second.fingerprint == first.fingerprint


def test_cache_dir(bib: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cfg = DataConfig(source=str(bib))
    corpus = load_corpus(cfg, cache_dir=cache)
    folder = cache / corpus.fingerprint
    assert sorted(p.name for p in folder.iterdir()) == ["corpus.json", "dev.parquet", "test.parquet", "train.parquet"]
    # Mark the cached copy, forget the in-process memo, and check that the next load reads the cache.
    table = pq.read_table(folder / "dev.parquet")
    marked = table.set_column(0, "text", pa.array(["cached"] * table.num_rows))
    pq.write_table(marked, folder / "dev.parquet")
    loader.clear_memo()
    again = load_corpus(cfg, cache_dir=cache)
    assert again.splits["dev"]["text"][0] == "cached"
    assert again.splits["train"]["text"] == corpus.splits["train"]["text"]
    assert again.scrub_left == corpus.scrub_left and again.files == corpus.files


# -- errors ------------------------------------------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope': directory not found"):
        load_corpus(DataConfig(source=str(tmp_path / "nope")))


def test_file_where_directory_expected(bib: Path) -> None:
    with pytest.raises(UserError, match=r"is a file, expected a directory"):
        load_corpus(DataConfig(source=str(bib / PUBLISHED["train"])))


def test_no_shards_names_patterns(bib: Path) -> None:
    (bib / PUBLISHED["test"]).unlink()
    with pytest.raises(UserError) as err:
        load_corpus(DataConfig(source=str(bib)))
    msg = str(err.value)
    assert "split 'test'" in msg and "data/test-*.parquet" in msg and "test/*.parquet" in msg
    assert "data/train-00000-of-00001-0ab65b32c47407e8.parquet" in msg  # what is there


def test_missing_column(bib: Path) -> None:
    texts, professions, _ = bios(ROWS["dev"], seed=1)
    pq.write_table(pa.table({"hard_text": texts, "profession": professions}), bib / PUBLISHED["dev"])
    with pytest.raises(UserError) as err:
        load_corpus(DataConfig(source=str(bib)))
    msg = str(err.value)
    assert PUBLISHED["dev"] in msg and "missing column 'gender'" in msg
    assert "columns present: hard_text, profession" in msg


def test_wrong_text_column_name(bib: Path) -> None:
    with pytest.raises(UserError, match=r"missing column 'bio' \(data.text_column\); columns present: hard_text"):
        load_corpus(DataConfig(source=str(bib), text_column="bio"))


@pytest.mark.parametrize(("value", "shown"), [(2, "value 2"), (-1, "value -1")])
def test_label_out_of_range(bib: Path, value: int, shown: str) -> None:
    genders = bios(ROWS["train"], seed=0)[2]
    genders[7] = value
    write_shard(bib / PUBLISHED["train"], ROWS["train"], seed=0, gender=pa.array(genders, pa.int64()))
    with pytest.raises(UserError) as err:
        load_corpus(DataConfig(source=str(bib)))
    msg = str(err.value)
    assert PUBLISHED["train"] in msg and "'gender'" in msg and shown in msg and "[0, 2)" in msg


def test_too_few_declared_classes(bib: Path) -> None:
    with pytest.raises(UserError, match=r"'profession' has value 4 outside \[0, 3\)"):
        load_corpus(DataConfig(source=str(bib), labels={"profession": 3, "gender": 2}))


def test_null_text(bib: Path) -> None:
    texts = bios(ROWS["dev"], seed=1)[0]
    texts[5] = None  # type: ignore[call-overload]
    write_shard(bib / PUBLISHED["dev"], ROWS["dev"], seed=1, hard_text=pa.array(texts, pa.string()))
    with pytest.raises(UserError, match=r"dev-.*'hard_text' has 1 null value\(s\) \(first at row 5\)"):
        load_corpus(DataConfig(source=str(bib)))


def test_non_string_text(bib: Path) -> None:
    write_shard(bib / PUBLISHED["dev"], 3, seed=1, hard_text=pa.array([1, 2, 3], pa.int64()))
    with pytest.raises(UserError, match=r"'hard_text' has type int64, expected strings"):
        load_corpus(DataConfig(source=str(bib)))


def test_float_labels(bib: Path) -> None:
    write_shard(bib / PUBLISHED["test"], 3, seed=2, gender=pa.array([0.0, 1.0, 0.5]))
    with pytest.raises(UserError, match=r"label column 'gender' has type double, expected integers"):
        load_corpus(DataConfig(source=str(bib)))


def test_empty_split(bib: Path) -> None:
    write_shard(bib / PUBLISHED["dev"], 0, seed=1)
    with pytest.raises(UserError, match=r"split 'dev' is empty"):
        load_corpus(DataConfig(source=str(bib)))


def test_not_parquet(bib: Path) -> None:
    (bib / PUBLISHED["dev"]).write_text("hard_text,profession,gender\n")
    with pytest.raises(UserError, match=r"dev-00000.*not a readable Parquet file"):
        load_corpus(DataConfig(source=str(bib)))


def test_explicit_file_errors(bib: Path) -> None:
    files = {s: [str(bib / p)] for s, p in PUBLISHED.items()}
    missing = dict(files, dev=[str(bib / "data" / "gone.parquet")])
    with pytest.raises(UserError, match=r"gone.parquet: file not found \(split 'dev'\)"):
        load_corpus(validate(DataConfig, {"files": missing}, "t"))
    folder = dict(files, test=[str(bib / "data")])
    with pytest.raises(UserError, match=r"data: is a directory, expected a Parquet file"):
        load_corpus(validate(DataConfig, {"files": folder}, "t"))
    with pytest.raises(UserError, match=r"data.files has no split 'validation'"):
        load_corpus(validate(DataConfig, {"files": files, "validation_split": "validation"}, "t"))
    with pytest.raises(UserError, match=r"no files match for split 'train'"):
        load_corpus(validate(DataConfig, {"files": dict(files, train=[str(bib / "x-*.parquet")])}, "t"))


def test_glob_without_matches(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"bib/train-\*\.parquet: no files match for split 'train'"):
        load_corpus(DataConfig(source=str(tmp_path / "bib" / "{split}-*.parquet")))


def test_label_named_like_text_column(bib: Path) -> None:
    with pytest.raises(UserError, match=r"'hard_text' is the text column"):
        load_corpus(DataConfig(source=str(bib), labels={"hard_text": 2, "gender": 2}))


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_offline_fails_at_once(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    start = time.perf_counter()
    with pytest.raises(UserError, match=rf"'LabHC/bias_in_bios': no such local directory, and {var}=1 forbids"):
        load_corpus(DataConfig(source="LabHC/bias_in_bios"))
    assert time.perf_counter() - start < 1.0


def test_hub_source_loads_through_datasets(bib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's loading code on what `datasets.load_dataset` also accepts offline: a local folder of shards."""
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    cfg = DataConfig(source=str(bib))
    corpus = loader.corpus_from_raw(HubSource(str(bib)).read(cfg, ["train", "dev", "test"]), cfg)
    assert corpus_digest(corpus) == PINNED["published"][1]  # the same rows as read from the files
    assert corpus.files == {"train": [], "dev": [], "test": []} and corpus.source == str(bib)
    with pytest.raises(UserError, match=r"no split 'heldout'; the hub lists "):
        HubSource(str(bib)).read(cfg, ["train", "heldout"])


# -- the bundled corpus and inspection -------------------------------------------------------------------------------

needs_standin = pytest.mark.skipif(
    not standin_dir().is_dir(), reason=f"bundled stand-in corpus not generated yet ({standin_dir()})"
)


@needs_standin
def test_standin_loads_fast_through_the_same_path() -> None:
    load_corpus(DataConfig(source="standin", scrub_pronouns=False))  # warm imports and the file hash memo
    loader.clear_memo()  # time a real read and scrub, not a memo hit
    start = time.perf_counter()
    corpus = load_corpus(DataConfig())
    elapsed = time.perf_counter() - start
    assert corpus.source.startswith("standin")
    assert list(corpus.splits) == ["train", "dev", "test"]
    for split, ds in corpus.splits.items():
        assert ds.column_names == ["text", "profession", "gender"]
        assert len(ds) > 0
        assert [Path(f).name for f in corpus.files[split]] == [f"{split}-00000-of-00001.parquet"]
        assert set(ds.unique("gender")) == {0, 1}
        assert corpus.scrub_left[split] == 0, f"{split}: gendered words survived scrubbing"
    assert elapsed < 5.0, f"loading the stand-in corpus took {elapsed:.2f}s"


def _experiment(source: str, budgets: list[int], **data: object) -> ExperimentConfig:
    return validate(
        ExperimentConfig,
        {
            "experiment": "inspect-test",
            "data": {"source": source, "validation_size": 100, **data},
            "budgets": budgets,
            "defenses": [{"name": "bert"}],
            "attacks": [{"name": "finetune"}],
        },
        "test",
    )


def unique_corpus(root: Path, rows: dict[str, int], repeat: dict[str, list[int]] | None = None) -> Path:
    """A corpus whose texts are all distinct (the bios end in a per-split serial number), except that `repeat[split]`
    lists rows of that split whose text is copied from train's row of the same number."""
    train_texts = None
    for i, (split, n) in enumerate(rows.items()):
        texts = [f"{t} Case {split}-{j}." for j, t in enumerate(bios(n, seed=i)[0])]
        if split == "train":
            train_texts = texts
        for j in (repeat or {}).get(split, []):
            assert train_texts is not None
            texts[j] = train_texts[j]
        write_shard(root / "data" / f"{split}-00000-of-00001.parquet", n, seed=i,
                    hard_text=pa.array(texts, pa.string()))
    return root


@pytest.fixture
def distinct(tmp_path: Path) -> Path:
    return unique_corpus(tmp_path / "distinct", {"train": 120, "dev": 200, "test": 60})


def test_inspect(distinct: Path) -> None:
    report = inspect_corpus(_experiment(str(distinct), [4, 10], test_size=100))
    json.dumps(report)  # plain data, so the CLI can also print it as JSON
    assert report["splits"]["train"]["rows"] == 120
    assert report["splits"]["train"]["role"] == "defense training"
    assert report["splits"]["dev"]["role"] == "attacker's pool + validation"
    assert report["splits"]["test"]["role"] == "test"
    pools = {p["name"]: p for p in report["pools"]}
    assert [p["name"] for p in report["pools"]] == ["defense", "attack", "validation", "test"]
    assert {n: (p["split"], p["rows"], p["duplicates_dropped"]) for n, p in pools.items()} == {
        "defense": ("train", 120, 0), "attack": ("dev", 100, 0), "validation": ("dev", 100, 0), "test": ("test", 60, 0)
    }
    genders = report["splits"]["train"]["labels"]["gender"]["counts"]
    assert sum(genders) == 120 and len(genders) == 2
    assert len(report["splits"]["train"]["labels"]["profession"]["counts"]) == 28
    assert all(s["scrub_left"] == 0 for s in report["splits"].values())
    assert len(report["samples"]) == 3 and count_gendered(" ".join(report["samples"])) == 0
    assert {b: sum(c) for b, c in report["budgets"].items()} == {"4": 4, "10": 10}
    # The fixture writes he/his for gender 0 and she/her for gender 1; the check must see that.
    check = report["pronouns_by_class"]["classes"]
    assert check["0"]["mostly_male"] == 1.0 and check["1"]["mostly_female"] == 1.0
    assert any("test pool gets 60 rows of 'test', fewer than the 100" in w for w in report["warnings"])
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(render_inspection(report))
    out = console.export_text()
    assert "label balance: gender" in out and "0 male" in out and "fingerprint" in out
    assert "pools (disjoint by row and by text)" in out and "budget samples drawn from it" in out


def test_inspect_reports_an_impossible_budget(distinct: Path) -> None:
    report = inspect_corpus(_experiment(str(distinct), [10, 500]))
    assert report["budgets"] == {}
    assert any("the attacker's pool has 100 rows" in w and "fewer than the largest budget 500" in w
               for w in report["warnings"])
    assert any("budget 500 exceeds the attacker's pool of 100 examples" in w for w in report["warnings"])


def test_inspect_shows_duplicates_dropped(tmp_path: Path) -> None:
    root = unique_corpus(tmp_path / "c", {"train": 120, "dev": 200, "test": 60}, repeat={"dev": [1, 2, 3]})
    report = inspect_corpus(_experiment(str(root), [4]))
    dropped = {p["name"]: p["duplicates_dropped"] for p in report["pools"]}
    assert dropped["defense"] == 0 and dropped["attack"] + dropped["validation"] == 3 and dropped["test"] == 0
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(render_inspection(report))
    assert "duplicates dropped" in console.export_text()


# -- blank texts and the corpus cache ---------------------------------------------------------------------------------


def _with_blanks(bib: Path, split: str, rows: list[int], blank: str = "   ") -> Path:
    texts = bios(ROWS[split], seed=list(PUBLISHED).index(split))[0]
    for r in rows:
        texts[r] = blank
    return write_shard(bib / PUBLISHED[split], ROWS[split], seed=list(PUBLISHED).index(split),
                       hard_text=pa.array(texts, pa.string()))


@pytest.mark.parametrize("blank", ["", " ", "\t\n", "\u3000\u00a0"])
def test_blank_texts_refused_with_file_and_count(bib: Path, tmp_path: Path, blank: str) -> None:
    path = _with_blanks(bib, "dev", [3, 9], blank)
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as err:
        load_corpus(DataConfig(source=str(bib)), cache_dir=cache)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path.resolve()) in msg and "split 'dev'" in msg
    assert "'hard_text' has 2 empty or whitespace-only text(s) (first at row 3)" in msg
    assert "data.blank_texts: drop" in msg
    assert not cache.exists()  # nothing cached for a refused corpus


def test_blank_texts_dropped_when_asked(bib: Path, caplog: pytest.LogCaptureFixture) -> None:
    _with_blanks(bib, "train", [0, 5, 6])
    strict = DataConfig(source=str(bib))
    lenient = DataConfig(source=str(bib), blank_texts="drop")
    with caplog.at_level("WARNING", logger="harness.data"):
        corpus = load_corpus(lenient)
    assert len(corpus.splits["train"]) == ROWS["train"] - 3 and len(corpus.splits["dev"]) == ROWS["dev"]
    assert corpus.blank_dropped == {"train": 3, "dev": 0, "test": 0}
    assert all(t.strip() for t in corpus.splits["train"]["text"])
    assert "split 'train': dropped 3 empty or whitespace-only text(s)" in caplog.text
    # The labels stay aligned with their texts.
    _, professions, genders = bios(ROWS["train"], seed=0)
    kept = [i for i in range(ROWS["train"]) if i not in (0, 5, 6)]
    assert corpus.splits["train"]["gender"] == [genders[i] for i in kept]
    # A corpus loaded by dropping is never what a strict config gets (nor its memo or cache entry).
    with pytest.raises(UserError, match=r"3 empty or whitespace-only"):
        load_corpus(strict)


def test_blank_texts_fingerprint(bib: Path) -> None:
    strict = load_corpus(DataConfig(source=str(bib))).fingerprint
    assert load_corpus(DataConfig(source=str(bib), blank_texts="drop")).fingerprint != strict


def test_split_of_only_blank_texts_is_empty(bib: Path) -> None:
    _with_blanks(bib, "dev", list(range(ROWS["dev"])))
    with pytest.raises(UserError, match=r"split 'dev' is empty after dropping 40 blank text\(s\)"):
        load_corpus(DataConfig(source=str(bib), blank_texts="drop"))


def test_refused_corpus_leaves_the_cache_untouched(bib: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    genders = bios(ROWS["test"], seed=2)[2]
    genders[0] = 5
    write_shard(bib / PUBLISHED["test"], ROWS["test"], seed=2, gender=pa.array(genders, pa.int64()))
    with pytest.raises(UserError, match="outside"):
        load_corpus(DataConfig(source=str(bib)), cache_dir=cache)
    assert not cache.exists()


def test_cache_is_filled_under_a_marked_temporary_name(bib: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache entry is filled beside its final name under `TMP_MARK`; a refused write leaves nothing behind."""
    folders: list[str] = []
    write_table = pq.write_table

    def full_disk(table: pa.Table, where: Path, *args: object, **kwargs: object) -> None:
        folders.append(Path(where).parent.name)
        if len(folders) == 2:
            raise OSError(28, "No space left on device")
        write_table(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", full_disk)
    cache = tmp_path / "cache"
    corpus = load_corpus(DataConfig(source=str(bib)), cache_dir=cache)  # the cache is an optimisation: loads anyway
    assert folders[0].startswith(f"{TMP_MARK}{corpus.fingerprint}.")
    assert list(cache.iterdir()) == []


def test_killed_cache_writer_leaves_only_what_clean_leftovers_removes(bib: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    killed = (  # dies (no exception handler runs) after writing the first split of the cache entry
        "import os, sys, pyarrow.parquet as pq\n"
        "from harness.config import DataConfig\nfrom harness.data.loader import load_corpus\n"
        "real = pq.write_table\n"
        "def write_then_die(*args, **kwargs):\n    real(*args, **kwargs)\n    os._exit(9)\n"
        "pq.write_table = write_then_die\n"
        "load_corpus(DataConfig(source=sys.argv[1]), cache_dir=sys.argv[2])\n"
    )
    done = subprocess.run([sys.executable, "-c", killed, str(bib), str(cache)], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    left = [p.name for p in cache.iterdir()]
    assert len(left) == 1 and left[0].startswith(TMP_MARK)
    assert clean_leftovers(cache) == 1 and list(cache.iterdir()) == []
    corpus = load_corpus(DataConfig(source=str(bib)), cache_dir=cache)
    assert [p.name for p in cache.iterdir()] == [corpus.fingerprint]


def test_stale_cache_with_blank_texts_is_refused(bib: Path, tmp_path: Path) -> None:
    """A cache entry written before blank texts were checked must not let them through."""
    cache = tmp_path / "cache"
    cfg = DataConfig(source=str(bib))
    corpus = load_corpus(cfg, cache_dir=cache)
    cached = cache / corpus.fingerprint / "dev.parquet"
    table = pq.read_table(cached)
    pq.write_table(table.set_column(0, "text", pa.array([" "] + table.column("text").to_pylist()[1:])), cached)
    loader.clear_memo()
    with pytest.raises(UserError, match=r"cached split 'dev'.*1 empty or whitespace-only"):
        load_corpus(cfg, cache_dir=cache)


# -- the four pools ----------------------------------------------------------------------------------------------------


def _run_config(source: str, budgets: list[int], data: dict | None = None, **top: object) -> ExperimentConfig:
    return validate(
        ExperimentConfig,
        {
            "experiment": "pools-test",
            "model": {"source": "tiny", "max_length": 32},
            "data": {"source": source, "validation_size": 50, "test_size": 40, **(data or {})},
            "budgets": budgets,
            "defenses": [{"name": "bert"}],
            "attacks": [{"name": "finetune"}],
            **top,
        },
        "test",
    )


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SDM_CACHE_DIR", str(tmp_path / "sdm-cache"))
    loader.clear_memo()
    return tmp_path / "sdm-cache"


def _pool_texts(cfg: ExperimentConfig, prepared) -> dict[str, list[str]]:
    corpus = load_corpus(cfg.data)
    return {
        name: corpus.splits[info.split].select(prepared.source_rows[name].tolist())["text"]
        for name, info in prepared.pools.items()
    }


def _assert_disjoint(cfg: ExperimentConfig, prepared) -> None:
    texts = _pool_texts(cfg, prepared)
    names = list(prepared.pools)
    assert names == ["defense", "attack", "validation", "test"]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if prepared.pools[a].split == prepared.pools[b].split:
                assert not set(prepared.source_rows[a].tolist()) & set(prepared.source_rows[b].tolist()), (a, b)
            assert not {" ".join(t.split()) for t in texts[a]} & {" ".join(t.split()) for t in texts[b]}, (a, b)


def test_pools_are_disjoint_by_row_and_by_text(tmp_path: Path, cache: Path) -> None:
    from harness.data.prepare import prepare_data

    # dev rows 1-6 and test rows 0-3 repeat train's texts (whitespace aside for one); dev repeats itself too.
    root = unique_corpus(tmp_path / "c", {"train": 120, "dev": 200, "test": 60},
                         repeat={"dev": [1, 2, 3, 4, 5, 6], "test": [0, 1, 2, 3]})
    cfg = _run_config(str(root), [10, 20], {"test_size": 60})
    prepared = prepare_data(cfg)
    _assert_disjoint(cfg, prepared)
    pools = prepared.pools
    assert {n: p.split for n, p in pools.items()} == {"defense": "train", "attack": "dev", "validation": "dev",
                                                     "test": "test"}
    assert pools["defense"].rows == 120 and pools["defense"].duplicates_dropped == 0
    assert pools["attack"].duplicates_dropped + pools["validation"].duplicates_dropped == 6
    assert pools["attack"].rows + pools["validation"].rows == 200 - 6
    assert pools["test"].rows == 56 and pools["test"].duplicates_dropped == 4
    assert len(prepared.defense_train) == 120 and len(prepared.attack_pool) == pools["attack"].rows
    assert len(prepared.val) == pools["validation"].rows and len(prepared.test) == 56
    # Each tokenised pool holds its rows' labels, in order.
    corpus = load_corpus(cfg.data)
    for name, split in (("attack", prepared.attack_pool), ("validation", prepared.val), ("test", prepared.test)):
        rows = prepared.source_rows[name]
        np.testing.assert_array_equal(split.labels["gender"],
                                      np.asarray(corpus.splits[pools[name].split]["gender"])[rows])


def test_standin_pools_are_disjoint(cache: Path) -> None:
    from harness.data.prepare import prepare_data

    cfg = _run_config("standin", [20, 50, 200], {"validation_size": 300, "test_size": 600})
    prepared = prepare_data(cfg)
    _assert_disjoint(cfg, prepared)
    info = prepared.pools
    assert (info["attack"].split, info["validation"].split, info["test"].split) == ("dev", "dev", "test")
    assert info["attack"].rows == 3000 - 300 - info["attack"].duplicates_dropped
    assert info["validation"].rows == 300 - info["validation"].duplicates_dropped and info["test"].rows == 600


def test_budget_samples_come_from_the_attack_pool_nested_and_stratified(tmp_path: Path, cache: Path) -> None:
    from harness.data.budgets import monotone_allocations
    from harness.data.prepare import prepare_data

    root = unique_corpus(tmp_path / "c", {"train": 120, "dev": 300, "test": 60})
    budgets = [10, 30, 80]
    cfg = _run_config(str(root), budgets, seeds=[0, 1])
    prepared = prepare_data(cfg)
    texts = _pool_texts(cfg, prepared)
    train = set(texts["defense"])
    others = set(texts["validation"]) | set(texts["test"])
    assert set(prepared.budget_rows) == {("gender", 0), ("gender", 1), ("profession", 0), ("profession", 1)}
    for (task, seed), samples in prepared.budget_rows.items():
        labels = prepared.attack_pool.labels[task]
        counts = np.bincount(labels, minlength=cfg.data.labels[task])
        for small, large in zip(budgets, budgets[1:]):
            assert set(samples[small].tolist()) <= set(samples[large].tolist())
        for b, idx in samples.items():
            assert len(idx) == b and idx.max() < len(prepared.attack_pool)
            drawn = [texts["attack"][i] for i in idx]
            assert not set(drawn) & train and not set(drawn) & others  # never a defense's, validation's or test row
            np.testing.assert_array_equal(np.bincount(labels[idx], minlength=len(counts)),
                                          monotone_allocations(counts, [b])[b])
    assert not np.array_equal(prepared.budget_rows[("gender", 0)][80], prepared.budget_rows[("gender", 1)][80])


def test_pool_sizes_and_splits_are_configurable(tmp_path: Path, cache: Path) -> None:
    from harness.data.prepare import prepare_data

    root = unique_corpus(tmp_path / "c", {"train": 120, "dev": 300, "test": 100, "heldout": 90})
    sized = _run_config(str(root), [10], {"validation_size": 70, "test_size": 30, "attacker_pool_size": 150})
    prepared = prepare_data(sized)
    assert {n: p.rows for n, p in prepared.pools.items()} == {"defense": 120, "attack": 150, "validation": 70,
                                                             "test": 30}
    _assert_disjoint(sized, prepared)
    # The pool from a split of its own: validation keeps all of dev's rows it asks for, the pool all of heldout's.
    apart = _run_config(str(root), [10], {"validation_size": 300, "attacker_pool_split": "heldout"})
    prepared = prepare_data(apart)
    assert {n: (p.split, p.rows) for n, p in prepared.pools.items()} == {
        "defense": ("train", 120), "attack": ("heldout", 90), "validation": ("dev", 300), "test": ("test", 40)
    }
    _assert_disjoint(apart, prepared)


def test_selection_reference_validates_on_test(tmp_path: Path, cache: Path) -> None:
    from harness.data.prepare import prepare_data

    root = unique_corpus(tmp_path / "c", {"train": 120, "dev": 200, "test": 60})
    heldout = prepare_data(_run_config(str(root), [10]))
    reference = prepare_data(_run_config(str(root), [10], search={"selection": "reference"}))
    assert reference.val is reference.test
    assert reference.pools["validation"].split == "test" and "reference" in reference.pools["validation"].description
    # Same attacker examples and test rows under both protocols: only selection differs.
    np.testing.assert_array_equal(reference.source_rows["attack"], heldout.source_rows["attack"])
    np.testing.assert_array_equal(reference.source_rows["test"], heldout.source_rows["test"])
    assert reference.budget_rows[("gender", 0)][10].tolist() == heldout.budget_rows[("gender", 0)][10].tolist()


@pytest.mark.parametrize(("data", "message"), [
    ({"attacker_pool_split": "test"}, "data.attacker_pool_split is 'test', the test split"),
    ({"attacker_pool_split": "train"}, "data.attacker_pool_split is 'train', the split every defense trains on"),
    ({"validation_split": "train"}, "data.validation_split is 'train', the split every defense trains on"),
    ({"test_split": "train"}, "data.test_split is 'train', the split every defense trains on"),
    ({"validation_split": "test"}, "data.validation_split and data.test_split are both 'test'"),
    ({"attacker_pool_size": 0}, "data.attacker_pool_size"),
    ({"blank_texts": "skip"}, "data.blank_texts"),
])  # fmt: skip
def test_config_refuses_pools_that_would_overlap(data: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        _run_config("standin", [10], data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_reference_selection_may_validate_on_the_test_split_with_a_pool_elsewhere(cache: Path) -> None:
    from harness.data.prepare import prepare_data

    cfg = _run_config("standin", [10], {"validation_split": "test", "attacker_pool_split": "dev"},
                      search={"selection": "reference"})
    prepared = prepare_data(cfg)
    assert prepared.val is prepared.test and prepared.pools["test"].rows == 40
    assert prepared.pools["attack"].rows == 3000 - prepared.pools["attack"].duplicates_dropped


def test_too_small_pool_is_refused_in_one_line_and_caches_nothing(tmp_path: Path, cache: Path) -> None:
    from harness.data.prepare import prepare_data

    root = unique_corpus(tmp_path / "c", {"train": 120, "dev": 80, "test": 60})
    with pytest.raises(UserError) as err:
        prepare_data(_run_config(str(root), [10, 40]))  # validation takes 50 of dev's 80: 30 left
    msg = str(err.value)
    assert msg.startswith("data.attacker_pool_size: the attacker's pool has 30 rows") and "\n" not in msg
    assert "split 'dev' has 80, validation takes 50" in msg and "largest budget 40" in msg
    with pytest.raises(UserError, match=r"data.attacker_pool_size: the attacker's pool has 20 rows"):
        prepare_data(_run_config(str(root), [25], {"attacker_pool_size": 20}))
    # The desired task's budgets count too.
    with pytest.raises(UserError, match=r"largest budget 35"):
        prepare_data(_run_config(str(root), [10], desired_budgets=[35]))
    assert not (cache / "data").exists()
    prepare_data(_run_config(str(root), [10, 30]))
    assert len(list((cache / "data").iterdir())) == 1  # written once the pools passed


def test_overlapping_splits_are_refused(bib: Path, tmp_path: Path, cache: Path) -> None:
    from harness.data.prepare import prepare_data

    same = {"train": [str(bib / PUBLISHED["train"])], "dev": [str(bib / PUBLISHED["dev"])],
            "test": [str(bib / PUBLISHED["dev"])]}
    with pytest.raises(UserError, match=r"data.files: splits 'dev' and 'test' read the same file .*dev-"):
        prepare_data(_run_config("standin", [4], {"files": same}))
    # A validation split that is a copy of train's rows: every row repeats a defense's text.
    root = tmp_path / "copy"
    shutil.copytree(bib, root)
    shutil.copy(bib / PUBLISHED["train"], root / PUBLISHED["dev"])
    with pytest.raises(UserError, match=r"data.attacker_pool_split: all \d+ rows of the attack pool \(split 'dev'\) "
                                        r"repeat texts of earlier pools \(defense\): the splits overlap"):
        prepare_data(_run_config(str(root), [4], {"validation_size": 20}))
    assert not (cache / "data").exists()


# -- invariance: fingerprints and loaded corpora, pinned before the loader was split into sources -----------------------

# Recorded with the single-module loader (commit f845dae); a restructure of harness/data must leave them as they are.
# The fingerprint hashes the files' bytes, so the fixture's depends on the Parquet writer (pyarrow 26); the digest of the
# loaded rows does not.
PINNED = {
    "standin": ("2db0ac44787f8ccf", "ff383d6f665a208b"),
    "standin-unscrubbed": ("6c50e7cf323b40aa", "651296e3a80f961d"),
    "published": ("e0c872b1399ef197", "1bdaf9635728baf7"),
    "published-unscrubbed": ("fd10b5aa194cc16a", "471ac8fbb6657c7a"),
}
PINNED_WRITER = "26."


def corpus_digest(corpus) -> str:
    """The loaded rows, their order and their Arrow schema, split by split."""
    h = hashlib.sha256()
    for split, ds in corpus.splits.items():
        h.update(split.encode())
        h.update(json.dumps(ds.data.table.to_pydict(), sort_keys=True).encode())
        h.update(str(ds.data.table.schema).encode())
    return h.hexdigest()[:16]


@needs_standin
@pytest.mark.parametrize("name", list(PINNED))
def test_fingerprints_and_corpora_are_pinned(bib: Path, tmp_path: Path, name: str) -> None:
    source = "standin" if name.startswith("standin") else str(bib)
    cfg = DataConfig(source=source, scrub_pronouns=not name.endswith("unscrubbed"))
    fingerprint, digest = PINNED[name]
    corpus = load_corpus(cfg, cache_dir=tmp_path / "cache")
    assert corpus_digest(corpus) == digest
    if source == "standin" or pa.__version__.startswith(PINNED_WRITER):
        assert corpus.fingerprint == fingerprint
    loader.clear_memo()  # the same corpus read back from the cache
    again = load_corpus(cfg, cache_dir=tmp_path / "cache")
    assert (again.fingerprint, corpus_digest(again)) == (corpus.fingerprint, digest)
    assert again.scrub_left == corpus.scrub_left and again.blank_dropped == corpus.blank_dropped
