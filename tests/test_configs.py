"""The shipped configs: every one validates, and the paper's cluster protocol plans its full grid with `--dry-run`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from harness.config import ModelConfig

from harness.configfile import load_config
from harness.models import model_location
from harness.plan import validate_plugins
from tests.conftest import ROOT, sdm_command
from tests.test_data_loader import PUBLISHED, bios, write_shard

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    validate_plugins(cfg, str(path))  # every plugin name, parameter and search dimension


def local_bert_l2_h128(folder: Path) -> Path:
    """A local stand-in for google/bert_uncased_L-2_H-128_A-2: its architecture with random weights, and the uncased
    BERT vocabulary (the embedded MiniLM ships the same 30,522-token vocabulary)."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True)
    config = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
    BertModel(config).save_pretrained(folder)  # safetensors: the only weights format sdm-bench loads
    embedded = Path(model_location(ModelConfig()))
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (embedded / name).exists():
            shutil.copy(embedded / name, folder / name)
    return folder


def test_paper_config_dry_run_plans_the_full_protocol(tmp_path: Path) -> None:
    data = tmp_path / "bias_in_bios"
    for i, (split, name) in enumerate(PUBLISHED.items()):
        # dev holds the attacker's validation (2000 rows) and its pool; every text distinct, as the pools require.
        n = {"train": 3000, "dev": 2400, "test": 400}[split]
        texts = pa.array([f"{text} ({split} {k})" for k, text in enumerate(bios(n, seed=i)[0])], pa.string())
        write_shard(data / name, n, seed=i, hard_text=texts)
    model = local_bert_l2_h128(tmp_path / "bert_uncased_L-2_H-128_A-2")
    out = tmp_path / "run"
    result = subprocess.run(
        [*sdm_command(), "run", str(ROOT / "configs" / "paper.yaml"), "--dry-run", "--out", str(out),
         "--set", f"data.source={data}", "--set", f"model.source={model}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # 4 defenses x 2 tasks x 4 budgets x 6 seeds, each at most 50 search trials + 15 reruns.
    assert "192 cells to run, at most 12672 trials (50 search + 15 reruns + 1 replay per cell)" in result.stdout
    for defense in ("random-init", "bert", "adversarial", "mlac"):
        assert f"{defense}__finetune__gender__b200__s5" in result.stdout
    assert not out.exists()  # a dry run writes nothing

    cfg = load_config(ROOT / "configs" / "paper.yaml")
    mlac = next(d for d in cfg.defenses if d.name == "mlac").params
    assert (mlac["steps"], mlac["inner_steps"], mlac["lr"], mlac["batch_size"]) == (50000, 16, 1e-5, 20)
    assert (cfg.search.num_samples, cfg.search.plateau_patience, cfg.search.reruns) == (50, 15, 15)
    assert cfg.model.source == "google/bert_uncased_L-2_H-128_A-2" and cfg.budgets == [20, 50, 100, 200]
    assert json.loads(json.dumps(cfg.attacks[0].params)) == {"preset": "paper"}


@pytest.mark.parametrize("config, cells_file", [
    ("reproduce.yaml", "reproduce/cells.parquet"),
    ("reproduce-replication.yaml", "reproduce-replication/cells.parquet"),
    ("reproduce-strong-attacks.yaml", "reproduce-strong-attacks/cells.parquet"),
    ("reproduce-strong-attacks-s45.yaml", "reproduce-strong-attacks/cells-s45.parquet"),
    ("reproduce-mlac-k.yaml", "reproduce-mlac-k/cells.parquet"),
    ("reproduce-peers.yaml", "reproduce-peers/cells.parquet"),
    ("reproduce-400-s0.yaml", "reproduce-400/cells-s0.parquet"),
    ("reproduce-400-s1.yaml", "reproduce-400/cells-s1.parquet"),
    ("reproduce-short-attack.yaml", "reproduce-protocol1/cells.parquet"),
    ("reproduce-peers-short-attack.yaml", "reproduce-protocol1/cells-peers.parquet"),
    ("reproduce-mlac-mixed.yaml", "reproduce-diagnostics/cells-mlac-mixed.parquet"),
    ("reproduce-strong-finetune.yaml", "reproduce-diagnostics/cells-strong-finetune.parquet"),
    ("reproduce-mlac-k16.yaml", "reproduce-diagnostics/cells-mlac-k16.parquet"),
    ("reproduce-mlac-k16-240.yaml", "reproduce-diagnostics/cells-mlac-k16-240.parquet"),
    ("reproduce-strong-finetune-more.yaml", "reproduce-diagnostics/cells-strong-finetune-more.parquet"),
    ("reproduce-adversarial-reset.yaml", "reproduce-diagnostics/cells-adversarial-reset.parquet"),
    ("reproduce-bert-matched.yaml", "reproduce-diagnostics/cells-bert-matched.parquet"),
    ("reproduce-bert-matched-long.yaml", "reproduce-diagnostics/cells-bert-matched-long.parquet"),
    ("reproduce-bert-lr.yaml", "reproduce-diagnostics/cells-bert-lr.parquet"),
    ("reproduce-bert-lr-long.yaml", "reproduce-diagnostics/cells-bert-lr-long.parquet"),
    ("reproduce-adversarial-reset-bert-lr.yaml", "reproduce-diagnostics/cells-adversarial-reset-bert-lr.parquet"),
    ("reproduce-5e5.yaml", "reproduce-diagnostics/cells-reproduce-5e5.parquet"),
    ("reproduce-peers-5e5.yaml", "reproduce-diagnostics/cells-peers-5e5.parquet"),
])
def test_published_reproduction_is_a_complete_run_of_the_shipped_config(config: str, cells_file: str,
                                                                        tmp_path: Path) -> None:
    """results/reproduce*/ must come from the shipped configs as they are now, every cell, none failed: changing a
    config without republishing fails here.

    Cells measured under an older protocol (before disjoint pools, the matched bert, per-seed defenses: no
    `protocol_version`) cannot match today's config hash, which covers the new protocol settings. They are checked for
    completeness only, and the README must say that the published verdicts predate the current protocol.
    """
    import pyarrow.parquet as pq

    from harness.results import PROTOCOL_VERSION
    from harness.plan import plan_cells

    cfg = load_config(ROOT / "configs" / config)
    table = pq.read_table(ROOT / "results" / cells_file)
    cells = table.to_pylist()
    versions = {c.get("protocol_version") for c in cells}
    if versions == {PROTOCOL_VERSION}:
        assert {c["config_hash"] for c in cells} == {cfg.content_hash()}
    else:
        assert "protocol_version" not in table.column_names, f"{cells_file}: mixes protocols {versions}"
        assert "measured under protocol 1" in (ROOT / "README.md").read_text()
    assert all(c["status"] == "ok" and c["n_reruns"] == cfg.search.reruns for c in cells)
    planned = plan_cells(cfg, tmp_path / "empty").cells
    assert sorted(c["cell_id"] for c in cells) == sorted(cell.cell_id for cell in planned)
