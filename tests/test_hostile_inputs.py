"""Hostile inputs: every malformed config, data file or output folder in tests/hostile/cases.yaml makes `sdm run` exit
with status 2 and one line naming the problem, without a traceback, and writes nothing (the output folder and the
defense cache stay as they were).

The catalogue runs in-process through the CLI's `main` (one interpreter, so the whole catalogue takes seconds); a few
cases also run as real `sdm` processes to check the exit status and the output seen from outside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from harness.cli import main
from tests.conftest import SMOKE, sdm_command

HOSTILE = Path(__file__).parent / "hostile"
CASES = yaml.safe_load((HOSTILE / "cases.yaml").read_text())


# -- tiny corpora ------------------------------------------------------------------------------------------------------
def _split(rows: int, tag: str = "train", **change: list) -> dict[str, list]:
    # Texts differ between splits (`tag`): a text in two splits is a row in two pools, which is refused.
    columns = {
        "hard_text": [f"they work with clients every day and write about case {tag}-{i}" for i in range(rows)],
        "profession": [i % 28 for i in range(rows)],
        "gender": [i % 2 for i in range(rows)],
    }
    columns.update(change)
    return columns


def _write(folder: Path, splits: dict[str, dict[str, list] | None]) -> None:
    folder.mkdir(parents=True)
    for split, columns in splits.items():
        if columns is not None:
            # Typed even when empty: an empty split must fail for being empty, not for a column of nulls.
            arrays = {k: pa.array(v, type=None if v else pa.string() if k == "hard_text" else pa.int64())
                      for k, v in columns.items()}
            pq.write_table(pa.table(arrays), folder / f"{split}.parquet")


def _good(folder: Path, **splits: dict[str, list] | None) -> None:
    # dev: the smoke config's 120 validation rows and an attacker's pool of 80.
    _write(folder, {"train": _split(40), "dev": _split(200, "dev"), "test": _split(20, "test"), **splits})


def _blank(rows: int, at: list[int], tag: str = "dev") -> dict[str, list]:
    texts = _split(rows, tag)["hard_text"]
    for i in at:
        texts[i] = " \t " if i % 2 else ""
    return _split(rows, tag, hard_text=texts)


def _train_is_a_directory(folder: Path) -> None:
    _good(folder, train=None)
    (folder / "train.parquet").mkdir()


def _train_not_parquet(folder: Path) -> None:
    _good(folder, train=None)
    (folder / "train.parquet").write_bytes(b"PAR1 this is not a parquet file")


def _no_test_split(folder: Path) -> None:
    _good(folder, test=None)


CORPORA: dict[str, Callable[[Path], None]] = {
    "good": _good,
    "train-is-a-directory": _train_is_a_directory,
    "train-not-parquet": _train_not_parquet,
    "no-test-split": _no_test_split,
    "empty-dev-split": lambda f: _good(f, dev=_split(0)),
    "no-gender-column": lambda f: _good(f, train={k: v for k, v in _split(40).items() if k != "gender"}),
    "text-is-integers": lambda f: _good(f, train=_split(40, hard_text=list(range(40)))),
    "null-text": lambda f: _good(f, train=_split(40, hard_text=[None] + _split(39)["hard_text"])),
    "profession-28": lambda f: _good(f, train=_split(40, profession=[28] + [0] * 39)),
    "gender-negative": lambda f: _good(f, train=_split(40, gender=[-1] + [0] * 39)),
    "gender-strings": lambda f: _good(f, train=_split(40, gender=["female", "male"] * 20)),
    "blank-dev-texts": lambda f: _good(f, dev=_blank(200, [4, 7, 9])),
    "dev-all-blank": lambda f: _good(f, dev=_blank(20, list(range(20)))),
    "dev-copies-train": lambda f: _good(f, dev=_split(40)),
}


# -- base model folders ------------------------------------------------------------------------------------------------
def _pickled_weights(folder: Path, tokenizer: bool = True) -> None:
    """A BERT folder whose weights are only a pickled `pytorch_model.bin` (what a safetensors-only loader refuses)."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from harness.models import embedded_model_path

    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    if tokenizer:
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(embedded_model_path() / name, folder / name)


MODELS: dict[str, Callable[[Path], None]] = {
    "pickled-weights": _pickled_weights,
    "no-tokenizer": lambda folder: _pickled_weights(folder, tokenizer=False),
    "damaged-tokenizer": lambda folder: (_pickled_weights(folder, tokenizer=False),
                                         (folder / "tokenizer.json").write_text("{oops")),
}


# -- prepared output folders -----------------------------------------------------------------------------------------
def _another_experiment(out: Path) -> None:
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"experiment": "other", "config_hash": "0123456789abcdef"}))


OUTPUTS: dict[str, Callable[[Path], Path]] = {
    "a-file": lambda tmp: _touch(tmp / "out"),
    "under-a-file": lambda tmp: _touch(tmp / "afile").parent / "afile" / "run",
    "another-experiment": lambda tmp: _made(tmp / "out", _another_experiment),
    "foreign-files": lambda tmp: _made(tmp / "out", lambda o: (o.mkdir(), (o / "notes.txt").write_text("mine"))),
    "damaged-run-json": lambda tmp: _made(tmp / "out", lambda o: (o.mkdir(), (o / "run.json").write_text("{oops"))),
    # Permission bits do not stop root; sysfs refuses new files to everyone.
    "not-writable": lambda tmp: Path("/sys/sdm-bench-out"),
}


def _touch(path: Path) -> Path:
    path.write_text("a file")
    return path


def _made(path: Path, make: Callable[[Path], object]) -> Path:
    make(path)
    return path


# -- running a case ----------------------------------------------------------------------------------------------------
def prepare(case: dict, tmp: Path) -> list[str]:
    """Write the case's files under `tmp`; the `sdm run` arguments."""
    config = HOSTILE / case["file"] if "file" in case else SMOKE
    out = OUTPUTS[case["out"]](tmp) if "out" in case else tmp / "out"
    sets = list(case.get("set", []))
    if "data" in case:
        CORPORA[case["data"]](tmp / "data")
        sets = ["data.source={data}", "budgets=[30]", *sets]
    if "model" in case:
        MODELS[case["model"]](tmp / "model")
        sets = [f"model.source={tmp / 'model'}", *sets]
    sets = [s.replace("{data}", str(tmp / "data")).replace("{tmp}", str(tmp)) for s in sets]
    return ["run", str(config), "--out", str(out), *(a for s in sets for a in ("--set", s))]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` with its size and modification time; the corpus cache is left out (it only
    ever holds data that passed validation, never results)."""
    data_cache = root / "cache" / "data"
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p not in (data_cache, data_cache.parent) and data_cache not in p.parents
    }


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SDM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_hostile_input_exits_2_with_one_line_and_writes_nothing(
    case: dict, isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    args = prepare(case, isolated)
    before = snapshot(isolated)
    monkeypatch.setattr(sys, "argv", ["sdm", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and case["expect"] in lines[0], err
    assert snapshot(isolated) == before
    assert not (isolated / "cache" / "defenses").exists()
    if "data" in case or case["id"].startswith(("data-", "budget-larger", "pool-")):
        # Refused data is never cached: nothing is written before the corpus, its pools and budgets pass.
        assert not (isolated / "cache" / "data").exists()


def test_catalogue_is_large_and_unique() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) >= 25 and len(set(ids)) == len(ids)
    assert all(set(c) <= {"id", "file", "set", "data", "model", "out", "expect"} for c in CASES)


@pytest.mark.parametrize("case_id", ["config-not-yaml", "data-label-out-of-range", "output-holds-another-experiment"])
def test_real_process_exits_2_without_traceback(case_id: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c["id"] == case_id)
    args = prepare(case, tmp_path)
    before = snapshot(tmp_path)
    result = subprocess.run([*sdm_command(), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "SDM_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and case["expect"] in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert snapshot(tmp_path) == before


def test_a_trial_larger_than_the_machine_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Found only once the local Ray instance is up (it knows the machine's CPUs); still exit 2, nothing left."""
    out = tmp_path / "nested" / "out"
    result = subprocess.run(
        [*sdm_command(), "run", str(SMOKE), "--out", str(out), "--set", "search.resources_per_trial.cpu=512"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "SDM_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode == 2, result.stderr
    assert "search.resources_per_trial.cpu: asks for 512 but no node of this machine's Ray instance has more than" \
        in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "nested").exists()
    assert not (tmp_path / "cache" / "defenses").exists()
