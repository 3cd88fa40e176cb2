"""Mixed precision: `auto` resolves per device, bf16 autocast runs where resolved (float32 weights and optimizer), the
float32 path and the float32 weights-cache keys are as they were, and rows record the resolved precision."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from defenses._censor import SECOND_ORDER_PRECISION, CensorTrainerParams, training_precision
from harness.attack_step import AttackSetting
from harness.classifier import Classifier
from harness.config import DefenseSpec, ModelConfig
from harness.configfile import load_config
from harness.defend import FileCheckpointer, defense_key
from harness.models import build_encoder
from harness.plugins import AttackContext, CellData, DefenseContext
from harness.results import CELL_SCHEMA, TRIAL_SCHEMA
from harness.tokenized import TokenizedSplit
from harness.training import accuracy, autocast, encode, fit, resolve_precision
from tests.conftest import SMOKE

TINY = ModelConfig(source="tiny", max_length=16)
CPU = torch.device("cpu")


# -- resolving ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("requested", "device", "flags", "cuda_bf16", "expected"),
    [
        ("fp32", "cpu", {"avx512_bf16"}, None, "fp32"),  # explicit settings are taken as they are
        ("bf16", "cpu", set(), None, "bf16"),
        ("bf16", "cuda", None, True, "bf16"),
        ("bf16", "cuda", None, False, "fp32"),  # a GPU without native bf16 (before Ampere) runs fp32
        ("auto", "cpu", {"avx512f", "avx512_bf16"}, None, "bf16"),  # AVX512-BF16
        ("auto", "cpu", {"amx_tile", "amx_bf16"}, None, "bf16"),  # AMX
        ("auto", "cpu", {"avx512f", "avx2"}, None, "fp32"),  # no native bf16: oneDNN would emulate it, slower
        ("auto", "cpu", set(), None, "fp32"),  # no /proc/cpuinfo (e.g. macOS)
        ("auto", "cuda", None, True, "bf16"),
        ("auto", "cuda", None, False, "fp32"),
        ("auto", "mps", None, None, "fp32"),
    ],
)
def test_resolve_precision(requested, device, flags, cuda_bf16, expected) -> None:
    assert resolve_precision(requested, torch.device(device), flags=flags, cuda_bf16=cuda_bf16) == expected


def test_resolve_precision_refuses_unknown_settings() -> None:
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", CPU, flags=set())
    with pytest.raises(ValueError):
        ModelConfig(precision="fp16")


def test_contexts_resolve_on_their_device_and_build_classifiers_at_it(tmp_path: Path) -> None:
    for requested in ("bf16", "fp32"):
        cfg = TINY.model_copy(update={"precision": requested})
        ctx = DefenseContext(cfg, split(8), "gender", "profession", {"gender": 2, "profession": 2}, 0, CPU,
                             lambda step, metrics: None, FileCheckpointer(tmp_path, 10))
        assert ctx.precision == requested and ctx.classifier(2).precision == requested
        state = build_encoder(cfg).state_dict()
        data = CellData(split(8), split(8), split(8), "gender", 2)
        attack = AttackContext(cfg, state, data, None, 0, CPU)
        assert attack.precision == requested and attack.classifier(seed=0).precision == requested
    auto = DefenseContext(TINY, split(8), "gender", "profession", {"gender": 2, "profession": 2}, 0, CPU,
                          lambda step, metrics: None, FileCheckpointer(tmp_path, 10))
    assert auto.precision == resolve_precision("auto", CPU)


# -- bf16 runs where resolved, fp32 as before ---------------------------------------------------------------------------
def split(n: int, seed: int = 0, length: int = 12) -> TokenizedSplit:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 5000, size=(n, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    labels = rng.integers(0, 2, size=n).astype(np.int64)
    return TokenizedSplit(ids.reshape(-1), np.arange(0, n * length + 1, length, dtype=np.int64),
                          {"gender": labels, "profession": labels[::-1].copy()})


def tiny_classifier(precision: str) -> Classifier:
    torch.manual_seed(0)
    model = Classifier(build_encoder(TINY, pretrained=False, init_seed=0), 2, "mean", precision)
    model.reset_head(torch.Generator().manual_seed(0))
    return model


def logits_dtypes(model: Classifier) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    model.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    return seen


SETTING = AttackSetting(lr=1e-3, steps=3, batch_size=8, adapt="full", optimizer="adamw")


def test_bf16_attack_training_runs_under_autocast_with_float32_weights() -> None:
    model = tiny_classifier("bf16")
    seen = logits_dtypes(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, split(32), "gender", SETTING, seed=0, val=split(16, 1), eval_every=1)
    assert seen and set(seen) == {torch.bfloat16}  # training steps and validation checks
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    seen.clear()
    accuracy(model, split(16, 2), "gender")
    features = encode(model.float(), split(16, 2))
    assert set(seen) == {torch.bfloat16} and features.dtype == torch.float32


def test_fp32_path_is_unchanged() -> None:
    """fp32: no autocast anywhere (float32 logits), and a run equals the same run under no autocast at all (a
    Classifier built without a precision, as every caller did before the setting existed)."""
    assert isinstance(autocast(CPU, "fp32"), type(autocast(CPU)))
    default = Classifier(build_encoder(TINY, pretrained=False, init_seed=0), 2)
    assert default.precision == "fp32"
    runs = []
    for precision in ("fp32", "fp32", "bf16"):
        model = tiny_classifier(precision)
        seen = logits_dtypes(model)
        result = fit(model, split(32), "gender", SETTING, seed=0, val=split(16, 1), eval_every=1)
        runs.append((result.history, [p.detach().clone() for p in model.parameters()], set(seen)))
    (h32, w32, dt32), (h32b, w32b, _), (_, w16, dt16) = runs
    assert dt32 == {torch.float32} and dt16 == {torch.bfloat16}
    assert h32 == h32b and all(torch.equal(a, b) for a, b in zip(w32, w32b))
    assert not all(torch.equal(a, b) for a, b in zip(w32, w16))  # bf16 really changed the arithmetic


def test_bf16_defense_training_runs_under_autocast(tmp_path: Path) -> None:
    from defenses.repnoise import RepNoise
    from defenses.sophon import Sophon
    from harness.registry import DEFENSES

    cfg = TINY.model_copy(update={"precision": "bf16"})
    train = split(64)
    cases = {"bert": {"steps": 2, "batch_size": 8},
             "mlac": {"steps": 2, "batch_size": 8, "inner_steps": 2, "inner_batch_sizes": [6], "first_order": True},
             "repnoise": {"steps": 2, "batch_size": 8},
             "sophon": {"steps": 2, "batch_size": 8, "inner_steps": 2, "inner_batch_sizes": [6]}}
    assert {RepNoise.name, Sophon.name} <= set(cases)
    for name, params in cases.items():
        seen: list[torch.dtype] = []
        hook = torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, out: seen.append(out.dtype) if isinstance(module, torch.nn.Linear) else None)
        try:
            ctx = DefenseContext(cfg, train, "gender", "profession", {"gender": 2, "profession": 2}, 0, CPU,
                                 lambda step, metrics: None, FileCheckpointer(tmp_path / name, 10))
            state = DEFENSES.get(name).from_params(params, "test").train(ctx)
        finally:
            hook.remove()
        assert torch.bfloat16 in seen, name
        assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point()), name


def test_second_order_mlac_precision() -> None:
    second = CensorTrainerParams(inner_steps=2, first_order=False)
    first = CensorTrainerParams(inner_steps=2, first_order=True)
    assert training_precision(first, "bf16") == "bf16"
    assert training_precision(second, "bf16") == SECOND_ORDER_PRECISION
    assert training_precision(second, "fp32") == "fp32" and training_precision(first, "fp32") == "fp32"


# -- cache keys, config hash, provenance --------------------------------------------------------------------------------
# Keys and hash of the smoke config as the code before the precision setting computed them (data "data", seed 0).
KEYS_BEFORE = {"random-init": "1bc36e5dc78642be", "bert": "f0eb129d9bca94e7"}
SMOKE_HASH_BEFORE = "b0d2dcf3304d57d4"


def test_cache_key_is_unchanged_at_fp32_and_differs_at_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(SMOKE, ["model.precision=auto"])  # the smoke config itself pins fp32
    for precision in ("fp32", "bf16"):
        pinned = load_config(SMOKE, [f"model.precision={precision}"])
        keys = {spec.name: defense_key(pinned, spec, "data", 0, CPU) for spec in pinned.defenses}
        assert (keys == KEYS_BEFORE) == (precision == "fp32"), precision
    # auto: the key of what it resolves to on the training device.
    spec = DefenseSpec(name="bert", params=cfg.defenses[1].params)
    monkeypatch.setattr("harness.training.cpu_flags", lambda: frozenset())
    assert defense_key(cfg, spec, "data", 0, CPU) == KEYS_BEFORE["bert"]
    monkeypatch.setattr("harness.training.cpu_flags", lambda: frozenset({"amx_bf16"}))
    bf16 = load_config(SMOKE, ["model.precision=bf16"])
    assert defense_key(cfg, spec, "data", 0, CPU) == defense_key(bf16, spec, "data", 0, CPU) != KEYS_BEFORE["bert"]


def test_config_hash_keeps_auto_out_and_explicit_settings_in() -> None:
    # The smoke config as it was before precision existed (it now pins fp32, an explicit setting).
    assert load_config(SMOKE, ["model.precision=auto"]).content_hash() == SMOKE_HASH_BEFORE
    hashes = {p: load_config(SMOKE, [f"model.precision={p}"]).content_hash() for p in ("fp32", "bf16")}
    assert len({SMOKE_HASH_BEFORE, *hashes.values()}) == 3


def test_provenance_records_the_resolved_precision() -> None:
    from harness.runner import run_provenance

    assert "precision" in TRIAL_SCHEMA.names and "precision" in CELL_SCHEMA.names
    prepared = SimpleNamespace(corpus_source="standin", fingerprint="data")
    for requested in ("auto", "bf16", "fp32"):
        cfg = load_config(SMOKE, [f"model.precision={requested}"])
        stamp = run_provenance(cfg, prepared)
        # The driver's; rows of trials record their workers' (tests/test_gpu_ready.py).
        assert stamp.precision == resolve_precision(requested, CPU)
