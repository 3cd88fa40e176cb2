"""Golden weights: each built-in defense's training, on the smoke config's tiny model and the synthetic bios of
tests/test_defense_mlac.py, gives the weights (and checkpoint) recorded in tests/golden/defense-weights.json. A
refactor of the trainers must leave them unchanged; a deliberate change of training records new ones
(`python -m tests.test_defense_golden --record`) and raises the defense's `training_revision`, so cached weights are
not reused.

Why a summary within a tolerance and not a hash of the bytes: a CPU's kernels round differently, and not only by
vector width (two AVX512 CPUs gave different float32 bytes for the same code), and the attention key bias has no true
gradient (softmax ignores it), so Adam turns rounding noise there into steps the size of the learning rate. The
trainings therefore run in float64 (noise near 1e-15, far below Adam's eps) with `precision: fp32` (`auto` picks bf16
on a CPU with AVX512-BF16 or AMX), and each tensor is summarised by two numbers, compared to 1e-5 of its root mean
square. Measured (2026-12-02): a 1% change of a trainer's learning rate moves them by up to 1.6e-2 of it
(`test_a_one_percent_change_of_the_learning_rate_is_caught`); ATen's AVX2 and scalar kernels, against AVX512, by under
4e-8 (`test_other_kernels_give_the_recorded_summaries`). Names, dtypes, shapes, integer tensors (random generator
states), checkpoint steps and metadata are compared exactly.

The record was made with the defenses' code CI last checked against the float32 byte hashes recorded before the
defenses were restructured (commit 100e4d2; the defenses are unchanged since).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.configfile import load_config
from harness.defend import FileCheckpointer
from harness.registry import DEFENSES
from tests.conftest import ROOT, SMOKE
from tests.test_defense_mlac import context, one_thread, splits  # noqa: F401

RECORD = ROOT / "tests" / "golden" / "defense-weights.json"
RTOL = 1e-5  # of a tensor's root mean square
ATOL = 1e-10  # tensors of pure rounding noise (the key biases sit near 1e-15)

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


def tensor_summary(name: str, tensor: torch.Tensor) -> list:
    """For a float tensor: its projection on a fixed random sign vector (seeded by the name, numpy's generator: the
    same on every CPU) over sqrt(size), and its root mean square; for an integer tensor, a hash of its bytes."""
    flat = tensor.detach().cpu().contiguous().view(-1)
    if not flat.is_floating_point():
        return [hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:16]]
    values = flat.double().numpy()
    signs = np.random.default_rng(zlib.crc32(name.encode())).integers(0, 2, values.size) * 2.0 - 1.0
    size = max(values.size, 1)
    # Eight significant digits: far finer than the tolerance, and the record stays small.
    return [float(f"{x:.8g}") for x in (values @ signs / math.sqrt(size), math.sqrt(values @ values / size))]


def state_summary(state: dict[str, torch.Tensor]) -> dict:
    """The hash of the tensors' names, dtypes and shapes, and each tensor's summary in the order of their names."""
    names = sorted(state)
    layout = [[name, str(state[name].dtype), list(state[name].shape)] for name in names]
    return {"layout": hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16],
            "values": [tensor_summary(name, state[name]) for name in names]}


def identity(defense) -> str:
    """Hash of what the weights cache key and the reports read from a defense: its validated params (every field,
    defaults included), training revision, variant label and step count."""
    described = [defense.params.model_dump(mode="json"), defense.training_revision(), defense.variant(),
                 defense.total_steps()]
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def train(case: str, splits, folder: Path, **changed) -> dict:
    """The case's training in float64: its weights' and last checkpoint's summaries, the defense's identity, and
    (for messages, not recorded) the tensors' names."""
    name, params = CASES[case]
    defense = DEFENSES.get(name).from_params({**params, **changed}, "golden")
    model = load_config(SMOKE).model.model_copy(update={"precision": "fp32"})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        state = defense.train(context(splits["defense"], folder, every=1000, model=model))
    finally:
        torch.set_default_dtype(previous)
    saved = FileCheckpointer(folder, 1).load()
    checkpoint, names = None, {"weights": sorted(state)}
    if saved is not None:
        step, tensors, metadata = saved
        checkpoint = {"step": step, "metadata": json.loads(json.dumps(metadata, sort_keys=True)),
                      "tensors": state_summary(tensors)}
        names["checkpoint"] = sorted(tensors)
    return {"weights": state_summary(state), "checkpoint": checkpoint, "identity": identity(defense), "names": names}


def differences(got: dict, want: dict, names: list[str]) -> list[str]:
    """What differs between two states' summaries beyond the tolerance, one line per tensor."""
    if got["layout"] != want["layout"]:
        return [f"tensor names, dtypes or shapes differ (layout {got['layout']}, recorded {want['layout']})"]
    found = []
    for name, summary, recorded_summary in zip(names, got["values"], want["values"]):
        if len(summary) == 1:
            if summary != recorded_summary:
                found.append(f"{name}: integer content differs")
            continue
        tolerance = RTOL * recorded_summary[1] + ATOL
        if any(abs(x - y) > tolerance for x, y in zip(summary, recorded_summary)):
            found.append(f"{name}: {summary}, recorded {recorded_summary}, tolerance {tolerance:.1e}")
    return found


def mismatches(got: dict, want: dict) -> list[str]:
    found = [f"identity {got['identity']}, recorded {want['identity']}"] if got["identity"] != want["identity"] else []
    found += [f"weights {line}" for line in differences(got["weights"], want["weights"], got["names"]["weights"])]
    if (got["checkpoint"] is None) != (want["checkpoint"] is None):
        return [*found, f"checkpoint: {got['checkpoint'] is not None}, recorded {want['checkpoint'] is not None}"]
    if got["checkpoint"] is not None:
        for field in ("step", "metadata"):
            if got["checkpoint"][field] != want["checkpoint"][field]:
                found.append(f"checkpoint {field}: {got['checkpoint'][field]}, recorded {want['checkpoint'][field]}")
        found += [f"checkpoint {line}" for line in differences(got["checkpoint"]["tensors"],
                                                                want["checkpoint"]["tensors"],
                                                                got["names"]["checkpoint"])]
    return found


def recorded() -> dict:
    return json.loads(RECORD.read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_are_the_recorded_ones(splits, tmp_path, case):
    found = mismatches(train(case, splits, tmp_path), recorded()[case])
    assert not found, "\n".join(found[:10])


def test_a_one_percent_change_of_the_learning_rate_is_caught(splits, tmp_path):
    """The tolerance is far tighter than any change of training: the comparison can fail."""
    found = mismatches(train("bert", splits, tmp_path, lr=1.01e-3), recorded()["bert"])
    assert len(found) > 10, found


def test_other_kernels_give_the_recorded_summaries():
    """The check itself, in processes forced onto ATen's AVX2 and scalar kernels (and oneDNN's and MKL's SSE4 code):
    the tolerance covers how kernels round."""
    for capability in ("avx2", "default"):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        if capability == "default":
            env |= {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
        done = subprocess.run([sys.executable, "-m", "tests.test_defense_golden", "--check"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{capability}: {done.stdout[-3000:]}{done.stderr[-3000:]}"


if __name__ == "__main__":  # python -m tests.test_defense_golden --record | --check
    import tempfile

    from tests.test_defense_mlac import synthetic

    torch.set_num_threads(1)
    data = {"defense": synthetic(400, 0)}
    results = {}
    for case in sorted(CASES):
        with tempfile.TemporaryDirectory() as tmp:
            results[case] = train(case, data, Path(tmp))
    if sys.argv[1:] == ["--record"]:  # the layout hashes stand for the names
        unnamed = {case: {k: v for k, v in result.items() if k != "names"} for case, result in results.items()}
        lines = [f"{json.dumps(case)}:{json.dumps(result, separators=(',', ':'))}" for case, result in unnamed.items()]
        RECORD.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # a line a case: reviewable diffs
    else:
        want = recorded()
        failed = {case: found for case in results if (found := mismatches(results[case], want[case]))}
        print("\n".join(f"{case}: {lines[:3]}" for case, lines in failed.items()) or "all recorded")
        sys.exit(1 if failed else 0)
