"""`benign-first`: fine-tune on the desired task first, then on the harmful budget (the retain-data attack).

Unlearning-style defenses are known to fall when the attacker first fine-tunes on benign data: the benign phase moves
the encoder out of the defense's engineered basin, and the harmful phase starts from there. The benign rows are the
attacker's own: `CellData.benign`, which the runner builds from the attacker's pool (`PreparedData.attack_pool`,
never the defense-training pool) with the desired task's label column only. The pool includes the budget sample's
rows; that is legitimate, the attacker owns both, and as the benign split carries no harmful label the attack still
reads exactly `budget` harmful labels.

A trial draws `benign_examples` rows of that pool (a seeded sample), trains the whole encoder and a fresh
desired-task head on them for `benign_steps` steps at `benign_lr` (batch size, optimizer, weight decay, warmup and
schedule as in the harmful phase), throws that head away, then fine-tunes the whole encoder and a fresh harmful head
on the budget with the usual dimensions. Validation checks (early stopping, ASHA) run in the harmful phase only,
whose steps are the `steps` dimension ASHA counts; `steps_run` and `best_step` count harmful steps.

On a cell of the desired task (`tasks.attacked` with `desired`) the runner hands no benign rows (unlimited desired
labels would void the budget), and neither does the conformance kit: the attack then runs its harmful phase alone,
that is full fine-tuning, and logs that it did.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from attacks.finetune import FineTuning
from harness.attack_step import AttackSetting
from harness.classifier import Classifier
from harness.plugins import AttackContext, AttackOutcome, CellData
from harness.registry import register_attack
from harness.space import IntRange, LogUniform, Space
from harness.tokenized import TokenizedSplit
from harness.training import accuracy, fit
from harness.trial import derive_seed

log = logging.getLogger(__name__)


@register_attack("benign-first")
class BenignFirst(FineTuning):
    """Fine-tune on the attacker's own desired-task rows first, then on the harmful budget (retain-data attack)."""

    def adapt_space(self) -> Space:
        return {
            "benign_steps": IntRange(low=100, high=1000),
            "benign_lr": LogUniform(low=1e-5, high=1e-3),
            "benign_examples": IntRange(low=100, high=2000, log=True),
        }

    def needs_benign(self) -> bool:
        return True

    def phase_steps(self) -> tuple[str, ...]:
        return ("benign_steps",)

    def adaptation(self, config: dict[str, Any]) -> dict[str, Any]:
        examples = config["benign_examples"]
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            raise ValueError("benign_examples must be an integer of at least 1")
        return {"adapt": "full"}

    def setting(self, config: dict[str, Any]) -> AttackSetting:
        harmful = super().setting(config)
        self.benign_setting(config, harmful)  # validates the benign dimensions with the rest of the configuration
        return harmful

    def benign_setting(self, config: dict[str, Any], harmful: AttackSetting | None = None) -> AttackSetting:
        """The benign phase's setting: its own steps and learning rate, the harmful phase's other choices."""
        harmful = harmful or super().setting(config)
        return AttackSetting.model_validate(
            {**harmful.model_dump(), "lr": config["benign_lr"], "steps": config["benign_steps"], "adapt": "full"}
        )

    @staticmethod
    def benign_sample(data: CellData, examples: int, seed: int) -> TokenizedSplit:
        """`examples` rows of the attacker's desired-task rows (all of them when it has fewer), drawn from the seed."""
        assert data.benign is not None
        generator = torch.Generator().manual_seed(derive_seed("benign-rows", seed))
        rows = torch.randperm(len(data.benign), generator=generator)[:examples].sort().values.numpy()
        return data.benign.subset(rows)

    def benign_phase(self, model: Classifier, ctx: AttackContext, config: dict[str, Any], seed: int) -> bool:
        """Train `model`'s encoder, under a fresh desired-task head, on the benign sample; False without benign rows."""
        data = ctx.data
        if data.benign is None or data.benign_label is None or len(data.benign) == 0:
            log.info("benign-first: no benign rows for task '%s' (desired-task cell, or none given): harmful phase "
                     "only", data.label)
            return False
        sample = self.benign_sample(data, config["benign_examples"], seed)
        desired = Classifier(model.encoder, data.benign_num_labels, model.pooling).to(ctx.device)
        desired.reset_head(torch.Generator().manual_seed(derive_seed("benign-head", seed)))
        # No validation: selection and early stopping belong to the harmful task; the benign phase runs its steps.
        fit(desired, sample, data.benign_label, self.benign_setting(config), seed=derive_seed("benign", seed),
            on_step=ctx.on_step)
        return True

    def run(self, ctx: AttackContext, config: dict[str, Any], seed: int, score_test: bool) -> AttackOutcome:
        setting = self.setting(config)
        model = ctx.classifier(seed)  # the defended encoder (reloaded) with a fresh harmful head
        self.benign_phase(model, ctx, config, seed)
        data = ctx.data
        result = fit(
            model, data.train, data.label, setting, seed=seed, val=data.val, eval_every=ctx.eval_every,
            patience=self.params.patience, on_eval=ctx.on_eval, on_step=ctx.on_step,
        )
        test = accuracy(model, data.test, data.label) if score_test else None
        return AttackOutcome(result.val_accuracy or 0.0, test, result.steps_run, result.best_step)
