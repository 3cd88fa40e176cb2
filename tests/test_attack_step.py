"""The shared attack step must be a faithful optimizer, and differentiable for MLAC."""

from __future__ import annotations

import pytest
import torch

from harness.attack_step import (
    AttackSetting,
    adapted_parameter_names,
    init_optimizer_state,
    lr_at,
    optimizer_update,
    torch_optimizer,
)


def _run_reference(make_optimizer, steps: int):
    torch.manual_seed(0)
    w = torch.randn(5, 3, requires_grad=True)
    opt = make_optimizer([w])
    targets = torch.randn(steps, 5, 3)
    for t in range(steps):
        opt.zero_grad()
        ((w - targets[t]) ** 3).abs().sum().backward()
        opt.step()
    return w.detach(), targets


def _run_ours(setting: AttackSetting, steps: int, targets: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    w = torch.randn(5, 3, requires_grad=True)
    state = init_optimizer_state([w], setting.optimizer)
    params = [w]
    for t in range(steps):
        loss = ((params[0] - targets[t]) ** 3).abs().sum()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            params, state = optimizer_update(params, grads, state, setting, setting.lr)
        params = [params[0].requires_grad_(True)]
    return params[0].detach()


@pytest.mark.parametrize(
    "setting, opt_cls, kwargs",
    [
        (AttackSetting(lr=1e-2, steps=1, batch_size=1, optimizer="adam"), torch.optim.Adam, {}),
        (AttackSetting(lr=1e-2, steps=1, batch_size=1, optimizer="adamw", weight_decay=0.1), torch.optim.AdamW,
         {"weight_decay": 0.1}),
        (AttackSetting(lr=1e-3, steps=1, batch_size=1, optimizer="sgd", momentum=0.9), torch.optim.SGD,
         {"momentum": 0.9}),
    ],
)
def test_update_matches_torch_optimizers(setting, opt_cls, kwargs):
    expected, targets = _run_reference(lambda params: opt_cls(params, lr=setting.lr, **kwargs), 20)
    ours = _run_ours(setting, 20, targets)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    # and the torch optimizer real attacks build from the same setting applies that same update
    attack, _ = _run_reference(lambda params: torch_optimizer(params, setting), 20)
    torch.testing.assert_close(attack, expected, rtol=1e-4, atol=1e-5)


def test_update_is_differentiable_through_a_learned_lr():
    w = torch.randn(4, requires_grad=True)
    log_lr = torch.tensor(-3.0, requires_grad=True)
    setting = AttackSetting(lr=1e-3, steps=2, batch_size=1, optimizer="adam")
    state = init_optimizer_state([w], "adam")
    params = [w]
    for _ in range(2):
        (g,) = torch.autograd.grad((params[0] ** 2).sum(), params, create_graph=True)
        params, state = optimizer_update(params, [g], state, setting, log_lr.exp())
    outer = (params[0] - 1).pow(2).sum()
    d_w, d_lr = torch.autograd.grad(outer, [w, log_lr])
    assert torch.isfinite(d_w).all() and torch.isfinite(d_lr) and d_lr.abs() > 0


def test_adapted_parameters_by_kind():
    names = [f"encoder.encoder.layer.{i}.attention.self.query.weight" for i in range(4)]
    names += ["encoder.embeddings.word_embeddings.weight", "encoder.pooler.dense.weight", "head.weight", "head.bias"]
    assert adapted_parameter_names(names, "probe") == ["head.weight", "head.bias"]
    top2 = adapted_parameter_names(names, "top-k", top_k=2)
    assert top2 == [names[2], names[3], "head.weight", "head.bias"]
    full = adapted_parameter_names(names, "full")
    assert "encoder.pooler.dense.weight" not in full and len(full) == len(names) - 1


def test_schedule_warms_up_and_decays():
    s = AttackSetting(lr=1.0, steps=10, batch_size=1, warmup_frac=0.2, schedule="linear")
    assert [round(lr_at(s, i), 3) for i in (0, 1, 2, 6)] == [0.5, 1.0, 1.0, 0.5]
