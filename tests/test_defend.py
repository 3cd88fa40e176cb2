"""The defense training service: `sdm defend` trains MLAC once, a second call is a cache hit that trains nothing, and
the cached weights load back bit-identical to what training produced."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from harness.configfile import load_config
from harness.defend import META_FILE, train_defense
from harness.models import state_fingerprint
from harness.data.prepare import prepare_data
from tests.conftest import SMOKE, sdm_command

MLAC = {"name": "mlac", "params": {"steps": 4, "inner_steps": 2, "batch_size": 8, "inner_batch_sizes": [8]}}


@pytest.fixture(scope="module")
def mlac_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["defenses"] = [MLAC]
    path = tmp_path_factory.mktemp("defend") / "mlac.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def defend(config: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*sdm_command(), "defend", str(config), "--defense", "mlac"],
        capture_output=True, text=True, timeout=300, env={**_env(), "SDM_CACHE_DIR": str(cache)},
    )


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_sdm_defend_trains_once_then_hits_the_cache(mlac_config: Path, tmp_path: Path) -> None:
    first = defend(mlac_config, tmp_path)
    assert first.returncode == 0, first.stderr
    weights = Path(first.stdout.strip().splitlines()[-1])
    assert weights.is_file() and weights.parent.parent == tmp_path / "defenses"
    assert "trained" in first.stderr
    stamp = weights.stat().st_mtime_ns

    second = defend(mlac_config, tmp_path)
    assert second.returncode == 0, second.stderr
    assert Path(second.stdout.strip().splitlines()[-1]) == weights
    assert "cached" in second.stderr
    assert weights.stat().st_mtime_ns == stamp  # not rewritten

    meta = json.loads((weights.parent / META_FILE).read_text())
    assert meta["defense"] == "mlac" and meta["params"]["steps"] == 4
    assert state_fingerprint(load_file(str(weights))) == meta["weights_fingerprint"]


def test_cache_hit_skips_training_and_weights_load_back_bit_identical(
    mlac_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from defenses.mlac import Mlac

    monkeypatch.setenv("SDM_CACHE_DIR", str(tmp_path))
    cfg = load_config(mlac_config)
    prepared = prepare_data(cfg)
    trained_states = []
    original = Mlac.train

    def recording_train(self, ctx):
        state = original(self, ctx)
        trained_states.append({k: v.clone() for k, v in state.items()})
        return state

    monkeypatch.setattr(Mlac, "train", recording_train)
    first = train_defense(cfg, cfg.defenses[0], prepared.defense_train, prepared.fingerprint, 0)
    assert not first.cached and len(trained_states) == 1

    def must_not_train(self, ctx):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(Mlac, "train", must_not_train)
    second = train_defense(cfg, cfg.defenses[0], prepared.defense_train, prepared.fingerprint, 0)
    assert second.cached and second.path == first.path and second.fingerprint == first.fingerprint

    loaded = load_file(str(second.path))
    assert loaded.keys() == trained_states[0].keys()
    for name, tensor in trained_states[0].items():
        assert loaded[name].dtype == tensor.dtype
        assert loaded[name].equal(tensor), name  # bit-identical, not merely close

    # A changed ingredient (here the seed) is a different cache entry, never the stale weights.
    monkeypatch.setattr(Mlac, "train", original)
    other = train_defense(cfg, cfg.defenses[0], prepared.defense_train, prepared.fingerprint, 1)
    assert not other.cached and other.path != first.path
