"""The peer defenses RepNoise and SOPHON: listed by `sdm plugins`, documented, conforming to the plugin contract on
the smoke config, resuming bit for bit, and censoring the harmful task on the tiny synthetic bios of
tests/test_defense_mlac.py (harmful label carried by gendered first names, desired label by profession words).
"""

from __future__ import annotations

import math
import re
import subprocess

import pytest
import torch

from defenses.bert import Bert, BertParams
from defenses.repnoise import RepNoise, RepNoiseParams, gaussian_mmd
from defenses.sophon import Sophon, SophonParams, SophonTrainer, attack_step, suppression_loss
from harness.attack_step import init_optimizer_state, sample_batch
from harness.censoring import draw_head, make_batch, sample_setting
from harness.testing import check_defense
from tests.conftest import ROOT, sdm_command
from tests.test_defense_mlac import assert_same_state, context, one_thread, probe_attack, splits  # noqa: F401

PEERS = {"repnoise": (RepNoise, RepNoiseParams), "sophon": (Sophon, SophonParams)}


def test_listed_by_sdm_plugins_and_documented():
    out = subprocess.run([*sdm_command(), "plugins"], capture_output=True, text=True, check=True).stdout
    assert re.search(r"repnoise\s+RepNoise \(Rosati et al\. 2024\)", out)
    assert re.search(r"sophon\s+SOPHON \(Deng et al\. 2024\)", out)
    doc = (ROOT / "docs" / "defenses.md").read_text()
    for name, (_, params) in PEERS.items():
        section = doc.split(f"## `{name}`")[1].split("\n## ")[0]
        missing = [field for field in params.model_fields if f"`{field}`" not in section]
        assert not missing, f"docs/defenses.md does not describe {name}'s {missing}"


@pytest.mark.parametrize(
    "name, params, invalid",
    [
        ("repnoise", {"steps": 3, "batch_size": 8}, [{"noise_weight": -1.0}, {"layers": "first"}]),
        ("sophon", {"steps": 2, "batch_size": 8, "inner_steps": 2, "inner_batch_sizes": [8]},
         [{"inner_lr_range": [1e-2, 1e-4]}, {"suppression": "entropy"}]),
    ],
)
def test_conformance_on_the_smoke_config(name, params, invalid):
    check_defense(name, params, invalid)


def test_mmd_separates_distributions():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g)
    scale = torch.tensor(8.0)  # the mean squared norm of 8-dimensional standard normal samples
    same = float(gaussian_mmd(x, y, scale))  # above 0 only by the biased estimate's finite-sample term
    assert 0 < same < 0.5 * float(gaussian_mmd(x * 2.0, y, scale))
    assert same < 0.3 * float(gaussian_mmd(x + 1.0, y, scale))


def test_inverse_ce_is_low_when_the_true_class_is_unlikely():
    labels = torch.tensor([0, 1])
    right = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])
    assert float(suppression_loss("inverse_ce", right, labels)) > 7.0  # -log(1 - p) with p close to 1
    assert float(suppression_loss("inverse_ce", -right, labels)) < 1e-3
    assert float(suppression_loss("kl_uniform", torch.zeros(2, 2), labels)) == pytest.approx(0.0, abs=1e-7)


def test_sophon_probe_shortcut_gives_the_stepwise_gradient(splits, tmp_path):
    """A simulated probe's suppression gradient, taken through the encoder once, equals the sum of the gradients at
    every step that the plain loop (forward and backward through the encoder at each step) computes."""
    p = SophonParams(inner_steps=4, inner_adapt=("probe",), inner_lr_range=(1e-2, 1e-1), batch_size=16,
                     inner_batch_sizes=(16,))
    trainer = SophonTrainer(p, context(splits["defense"], tmp_path))
    start = trainer.generator.get_state()
    shortcut = [torch.zeros_like(t) for t in trainer.encoder_params]
    trainer.simulated_attack(shortcut)

    # The plain loop, replaying the same draws from the same generator state.
    g, ctx, attacker = trainer.generator, trainer.ctx, trainer.attacker
    g.set_state(start)
    order = torch.randperm(len(ctx.train), generator=g)
    held, pool = order[: p.batch_size], order[p.batch_size :]
    low, high = (math.log(v) for v in p.inner_lr_range)
    lr = math.exp(low + float(torch.rand((), generator=g)) * (high - low))
    setting = sample_setting(g, lr=lr, steps=p.inner_steps, batch_sizes=p.inner_batch_sizes, pool=len(pool),
                             adapts=p.inner_adapt, top_k=p.inner_top_k, optimizers=p.inner_optimizers)
    attacker.encoder.load_state_dict(trainer.model.encoder.state_dict())
    head = draw_head(attacker.head.in_features, attacker.head.out_features, g, ctx.device)
    with torch.no_grad():
        attacker.head.weight.copy_(head["head.weight"])
        attacker.head.bias.copy_(head["head.bias"])
    held_out = make_batch(ctx.train, held, ctx.harmful, ctx.device)
    head = [attacker.head.weight, attacker.head.bias]
    state = init_optimizer_state(head, setting.optimizer)
    stepwise = [torch.zeros_like(t) for t in trainer.encoder_params]
    for k in range(p.inner_steps + 1):
        loss = suppression_loss(p.suppression, attacker(held_out.input_ids, held_out.attention_mask), held_out.labels)
        grads = torch.autograd.grad(loss, list(attacker.encoder.parameters()), allow_unused=True,
                                    materialize_grads=True)
        for total, grad in zip(stepwise, grads):
            total.add_(grad)
        if k < p.inner_steps:
            batch = make_batch(ctx.train, pool[sample_batch(len(pool), setting.batch_size, g)], ctx.harmful,
                               ctx.device)
            state = attack_step(attacker, batch, head, state, setting, p.inner_grad_clip)
    assert max(float(t.abs().max()) for t in stepwise) > 1e-3  # a real gradient, not zeros on both sides
    for a, b in zip(shortcut, stepwise):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize(
    "name, params",
    [
        ("repnoise", {"steps": 4, "lr": 1e-3, "batch_size": 16}),
        ("sophon", {"steps": 4, "lr": 1e-3, "suppression_lr": 1e-3, "batch_size": 12, "inner_steps": 2,
                    "inner_batch_sizes": [8, 12], "environments": 2, "inner_optimizers": ["adam", "sgd"]}),
    ],
)
def test_resume_after_interruption_is_bit_identical(splits, tmp_path, name, params):
    cls, model = PEERS[name]
    p = model(**params)
    straight = cls(p).train(context(splits["defense"], tmp_path / "straight", every=2))

    def interrupt(step: int, metrics: dict[str, float]) -> None:
        if step == 3:  # after the checkpoint at 2: step 3 must be redone from it
            raise Interrupted

    folder = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        cls(p).train(context(splits["defense"], folder, every=2, progress=interrupt))
    steps: list[int] = []
    resumed = cls(p).train(context(splits["defense"], folder, every=2, progress=lambda s, m: steps.append(s)))
    assert steps == [3, 4]
    assert_same_state(straight, resumed)


@pytest.fixture(scope="module")
def bert_harm(splits, tmp_path_factory) -> float:
    bert = Bert(BertParams(steps=30, lr=1e-3, batch_size=20)).train(
        context(splits["defense"], tmp_path_factory.mktemp("bert"))
    )
    harm = probe_attack(bert, splits, "gender")
    assert harm > 0.85, "the synthetic harmful signal should be easy to read off an undefended encoder"
    return harm


EFFECT = {
    "repnoise": {"steps": 30, "lr": 1e-3, "batch_size": 32},
    # Simulated probes, as strong in 16 steps as the test's attacker is in 150 (lr 1e-2).
    "sophon": {"steps": 30, "lr": 1e-3, "suppression_lr": 1e-3, "inner_steps": 16, "inner_adapt": ["probe"],
               "inner_lr_range": [1e-2, 1e-1]},
}


@pytest.mark.parametrize("name", EFFECT)
def test_censors_the_harmful_task(splits, tmp_path, bert_harm, name):
    cls, model = PEERS[name]
    state = cls(model(**EFFECT[name])).train(context(splits["defense"], tmp_path))
    harm = probe_attack(state, splits, "gender")
    assert harm < bert_harm - 0.15, (name, bert_harm, harm)
    # Not a broken encoder: the desired task still reads off the defended features.
    assert probe_attack(state, splits, "profession") > 0.9
