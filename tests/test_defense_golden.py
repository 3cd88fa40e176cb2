"""Golden weights: each built-in defense's training, on the smoke config's tiny model and the synthetic bios of
tests/test_defense_mlac.py, gives exactly the weights (and checkpoint) recorded before the defenses were
restructured. A refactor of the trainers must leave these fingerprints unchanged; a deliberate change of training
records new ones (and raises the defense's `training_revision`, so cached weights are not reused).

The values are float32 CPU results with one thread, and a CPU's vector width changes how its kernels round: they
are recorded per `torch.backends.cpu.get_cpu_capability()`. The AVX512 ones come from the code before the
restructuring; the AVX2 ones were recorded on an AVX2-only CPU by the defenses' code of commit 02b4ddb (unchanged
since), which CI had checked against every AVX512 value, so both guard later changes. On a CPU of another
capability the test is skipped, saying so. The trainings run with `precision: fp32` explicitly: `auto` picks bf16
on a CPU with AVX512-BF16 or AMX.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from harness.configfile import load_config
from harness.defend import FileCheckpointer
from harness.models import state_fingerprint
from harness.registry import DEFENSES
from tests.conftest import SMOKE
from tests.test_defense_mlac import context, one_thread, splits  # noqa: F401

MLAC = {"steps": 3, "lr": 1e-3, "batch_size": 8, "inner_steps": 2, "inner_batch_sizes": [6, 12]}
CASES: dict[str, tuple[str, dict]] = {
    "random-init": ("random-init", {}),
    "bert": ("bert", {"steps": 3, "lr": 1e-3, "batch_size": 8}),
    "bert-trainer": ("bert-trainer", {"steps": 3, "lr": 1e-3, "batch_size": 8}),
    "adversarial": ("adversarial", {"steps": 3, "lr": 1e-3, "batch_size": 8}),
    "adversarial-reset-neg-ce": ("adversarial", {"steps": 3, "lr": 1e-3, "batch_size": 8, "harmful_head": "reset",
                                                 "censor": "neg_ce"}),
    "mlac-second-order-learned": ("mlac", MLAC),
    "mlac-second-order-sampled": ("mlac", {**MLAC, "inner_lr": "sampled"}),
    "mlac-first-order-learned": ("mlac", {**MLAC, "first_order": True}),
    "mlac-first-order-sampled": ("mlac", {**MLAC, "first_order": True, "inner_lr": "sampled"}),
    "mlac-mixed-learned-head-probe": ("mlac", {**MLAC, "inner_adapt": ["full", "probe", "top-k"],
                                               "inner_optimizers": ["adam", "sgd", "adamw"], "harmful_head": "learned",
                                               "censor": "probe"}),
    "repnoise": ("repnoise", {"steps": 3, "lr": 1e-3, "batch_size": 8}),
    "sophon": ("sophon", {"steps": 2, "lr": 1e-3, "suppression_lr": 1e-3, "batch_size": 8, "inner_steps": 2,
                          "inner_batch_sizes": [6, 12], "environments": 2}),
    "sophon-probe-sgd": ("sophon", {"steps": 2, "batch_size": 8, "inner_steps": 2, "inner_adapt": ["probe"],
                                    "inner_optimizers": ["sgd"], "suppression": "inverse_ce"}),
}

# (weights, checkpoint, identity) fingerprints by CPU capability; AVX512: recorded with the code before the
# restructuring (commit f845dae).
AVX512: dict[str, tuple[str, str | None, str]] = {
    'adversarial': ('3e2b36c0ac6980e4', 'bc8e4ff4559eb1b1', '4172f31abfb91c9f'),
    'adversarial-reset-neg-ce': ('302719f86cf43c36', '773e9e923ba0815f', '6c833c5b5017f82f'),
    'bert': ('1da2af41d89431c8', 'e418c5254186a385', '070e3be0c9ccb405'),
    'bert-trainer': ('37a9271c8348dfd1', None, 'fa5b9e2df120c0ca'),
    'mlac-first-order-learned': ('1d6762b4c5b96a0d', '6a46c5429776c7ed', 'a2a14fdf766d037a'),
    'mlac-first-order-sampled': ('dd70ef04cba089de', '3e9c13a3f8db88ce', '96323682490f516a'),
    'mlac-mixed-learned-head-probe': ('2779315194707e38', '06b81f860df0ea9e', 'e57984642d176700'),
    'mlac-second-order-learned': ('37dbea62096f922a', 'e943db5c81c39416', '8942a6944af62201'),
    'mlac-second-order-sampled': ('7049b2065e164dda', 'c3272df1415ca6dc', 'ab245019a3c4a503'),
    'random-init': ('cb161d4b3fcad897', None, 'efacce4e9c656c30'),
    'repnoise': ('3ca88018b5ffde15', '36675cb0d9f941aa', '3cc1c9aa354964a5'),
    'sophon': ('b13be3bd79bb92ba', '1d64ceccd7c78589', 'e2f769a9c7b722c1'),
    'sophon-probe-sgd': ('1e4e04617cb2b1bc', 'f08444a27c3c94e4', 'd461d2e81063cfc0'),
}


def checkpoint_fingerprint(folder: Path) -> str | None:
    """Hash of the last checkpoint's tensors (names, dtypes, shapes, bytes) and metadata; None without one."""
    saved = FileCheckpointer(folder, 1).load()
    if saved is None:
        return None
    step, tensors, metadata = saved
    digest = hashlib.sha256(f"{step}:{state_fingerprint(tensors)}:".encode())
    digest.update(json.dumps(metadata, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def identity(defense) -> str:
    """Hash of what the weights cache key and the reports read from a defense: its validated params (every field,
    defaults included), training revision, variant label and step count."""
    described = [defense.params.model_dump(mode="json"), defense.training_revision(), defense.variant(),
                 defense.total_steps()]
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def train(case: str, splits, folder: Path) -> tuple[str, str | None, str]:
    name, params = CASES[case]
    defense = DEFENSES.get(name).from_params(params, "golden")
    model = load_config(SMOKE).model.model_copy(update={"precision": "fp32"})
    ctx = context(splits["defense"], folder, every=1000, model=model)
    state = defense.train(ctx)
    return state_fingerprint(state), checkpoint_fingerprint(folder), identity(defense)


# AVX2: recorded on an AVX2-only AMD EPYC (2026-12-02) with the defenses' code that gives every AVX512 value above.
AVX2: dict[str, tuple[str, str | None, str]] = {
    'adversarial': ('f5c106c68f2144b2', '67349f343e7d283e', '4172f31abfb91c9f'),
    'adversarial-reset-neg-ce': ('837d86f4ad43e163', '8aa03cdf4ad1f554', '6c833c5b5017f82f'),
    'bert': ('5f0c3ececc8f1573', 'c7afb0a87087811d', '070e3be0c9ccb405'),
    'bert-trainer': ('89b0046f88abb46e', None, 'fa5b9e2df120c0ca'),
    'mlac-first-order-learned': ('5f1cb89d1559a220', '5ca6467aa8fba165', 'a2a14fdf766d037a'),
    'mlac-first-order-sampled': ('affcc43061544274', '0359e5477b8641e8', '96323682490f516a'),
    'mlac-mixed-learned-head-probe': ('83dbcbc8424cd8ac', '5b80df2b202f262e', 'e57984642d176700'),
    'mlac-second-order-learned': ('1d485f9ba6d75461', '2fdebf87d97dbd8a', '8942a6944af62201'),
    'mlac-second-order-sampled': ('36f2b356234fdadd', '291dd635caf39d38', 'ab245019a3c4a503'),
    'random-init': ('cb161d4b3fcad897', None, 'efacce4e9c656c30'),
    'repnoise': ('a83c8c486ca7776b', 'a23167f2aacb81c3', '3cc1c9aa354964a5'),
    'sophon': ('2d61f249a93582ca', '752c3ccd6f357512', 'e2f769a9c7b722c1'),
    'sophon-probe-sgd': ('d9edeb8b1ca17307', '8bc884334cf3dd83', 'd461d2e81063cfc0'),
}

GOLDEN = {"AVX512": AVX512, "AVX2": AVX2}


@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_are_the_recorded_ones(splits, tmp_path, case):
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in GOLDEN:
        pytest.skip(f"no golden weights recorded for CPU capability {capability} (recorded: {', '.join(GOLDEN)})")
    assert train(case, splits, tmp_path) == GOLDEN[capability][case]


if __name__ == "__main__":  # print this CPU's table: python -m tests.test_defense_golden
    import tempfile

    from tests.test_defense_mlac import synthetic

    torch.set_num_threads(1)
    data = {"defense": synthetic(400, 0)}
    for case in sorted(CASES):
        with tempfile.TemporaryDirectory() as tmp:
            print(f"    {case!r}: {train(case, data, Path(tmp))!r},")
