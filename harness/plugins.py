"""The plugin interface: what a defense and an attack implement, and what the engine hands them.

A defense turns the base encoder into a defended encoder (a state dict); an attack fine-tunes a defended encoder on
one task with one sampled configuration and reports validation (and, for reruns, test) accuracy. Each plugin declares
its parameters as a pydantic model (`Params`) and, for attacks, its search space (`space`) in one place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from harness.classifier import Classifier
from harness.config import ModelConfig
from harness.configfile import validate
from harness.space import Dim, Space
from harness.tokenized import TokenizedSplit
from harness.training import Features, Resolved, autocast, resolve_precision


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- defenses ---------------------------------------------------------------------------------------------------------
@dataclass
class DefenseContext:
    """What a defense may use: the base model's description, the training split with every label, the seed."""

    model: ModelConfig
    train: TokenizedSplit  # the training split, tokenised, with all label columns
    harmful: str  # harmful task's label column
    desired: str  # desired task's label column
    num_labels: dict[str, int]
    seed: int
    device: torch.device
    progress: Callable[[int, dict[str, float]], None]  # (step, running metrics) -> None
    checkpoint: "Checkpointer"
    # The encoders' attention implementation (`harness.device.attention_for`): eager unless SDPA can serve.
    attention: str = "eager"

    @property
    def precision(self) -> Resolved:
        """The model config's precision resolved on this device: what the defense's forward passes run at."""
        return resolve_precision(self.model.precision, self.device)

    def autocast(self):
        """The autocast region of one forward pass at this training's precision (a no-op at fp32)."""
        return autocast(self.device, self.precision)

    def base_encoder(self, pretrained: bool = True) -> torch.nn.Module:
        """The base encoder; with `pretrained=False`, fresh weights drawn from this training's seed."""
        from harness.models import build_encoder

        init_seed = None if pretrained else self.seed
        encoder = build_encoder(self.model, pretrained=pretrained, init_seed=init_seed, attention=self.attention)
        return encoder.to(self.device)

    def classifier(self, num_labels: int, encoder: torch.nn.Module | None = None) -> Classifier:
        """A classifier on the base encoder (or on `encoder`, e.g. to share one between two heads), pooled as the
        model config says, on the device. Its head comes from torch's default initialisation: draw it from a seeded
        generator (`harness.censoring.init_head`, `Classifier.reset_head`) so the seed alone fixes the run."""
        encoder = self.base_encoder() if encoder is None else encoder
        return Classifier(encoder, num_labels, self.model.pooling, self.precision).to(self.device)


class Checkpointer(ABC):
    """Periodic, resumable training state for long defense trainings (safetensors tensors + JSON metadata)."""

    every: int

    @abstractmethod
    def load(self) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
        """(step, tensors, metadata) of the last checkpoint, or None."""

    @abstractmethod
    def save(self, step: int, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None: ...


class Defense(ABC):
    """Base class of defense plugins."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel):
        self.params = params

    @classmethod
    def from_params(cls, raw: dict[str, Any], origin: str) -> "Defense":
        return cls(validate(cls.Params, raw, f"{origin}: defense '{cls.name}' params"))

    def total_steps(self) -> int:
        """Training steps, for the progress bar: the params' integer `steps` when they have one, else 0 (unknown)."""
        steps = getattr(self.params, "steps", None)
        return steps if isinstance(steps, int) and not isinstance(steps, bool) else 0

    def variant(self) -> str | None:
        """A short label the reports show next to the defense's name wherever its rows appear (`mlac [first-order]`),
        when these parameters make it a different method from the one its name promises; None otherwise."""
        return None

    def training_revision(self) -> int:
        """Raised when the training these parameters select changed, so weights cached by the old code are not
        reused (the cache key holds it when non-zero; 0 keeps the keys of weights cached before it existed)."""
        return 0

    def needs_double_backward(self) -> bool:
        """Whether the training differentiates through gradients of the encoder (second-order meta-learning): its
        encoders then keep eager attention, which SDPA cannot replace (`harness.device.attention_for`)."""
        return False

    @abstractmethod
    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        """The defended encoder's state dict (same architecture as the base encoder)."""


# -- attacks ----------------------------------------------------------------------------------------------------------
@dataclass
class CellData:
    """One cell's data: the attacker's budget sample, the validation and test splits, the task; and, for attacks whose
    `needs_benign()` is true, the attacker's own desired-task rows (`benign`)."""

    train: TokenizedSplit
    val: TokenizedSplit
    test: TokenizedSplit
    label: str
    num_labels: int
    # The attacker's pool (every row of it, the budget sample's rows included: the attacker owns both) with its
    # desired-task label column only, so an attack cannot read more harmful labels than its budget. None unless the
    # attack asked for it, and on cells of the desired task (there, unlimited desired labels would void the budget).
    benign: TokenizedSplit | None = None
    benign_label: str | None = None  # the desired task's label column (the only column `benign` carries)
    benign_num_labels: int = 0


def desired_rows(pool: TokenizedSplit, label: str) -> TokenizedSplit:
    """The attacker's pool as `CellData.benign`: the same rows, with the desired task's label column only."""
    if label not in pool.labels:
        raise KeyError(f"the attacker's pool has no label column '{label}' (it has {', '.join(pool.labels)})")
    return TokenizedSplit(pool.ids, pool.offsets, {label: pool.labels[label]})


@dataclass
class AttackContext:
    model: ModelConfig
    encoder_state: dict[str, torch.Tensor]  # defended weights, shipped once per cell
    data: CellData
    features: Features | None  # frozen-encoder features, when the attack asked for them
    eval_every: int
    device: torch.device
    # The search's hooks, for `harness.training.fit`'s on_eval / on_step: on_eval(step, val_accuracy) publishes a
    # validation check (a scheduler such as ASHA may stop the trial on it), on_step(step, loss) raises
    # `TrialStopped` once the search has stopped the trial, so its worker stops computing. No-ops outside a search.
    on_eval: Callable[[int, float], None] = lambda step, accuracy: None
    on_step: Callable[[int, float], None] = lambda step, loss: None

    @property
    def precision(self) -> Resolved:
        """The model config's precision resolved on the worker's device: what the attack's forward passes run at
        (`harness.training.fit`, `accuracy` and `encode` read it from the classifier)."""
        return resolve_precision(self.model.precision, self.device)

    def classifier(self, seed: int, load_encoder: bool = True) -> "Classifier":
        """The defended encoder with a freshly drawn head (the attacker never sees a defense's head).

        The module is built once per worker process and reused by later trials of the same cell, which only
        reload the defended weights (skipped when a probe trains on cached features and never runs the encoder).
        """
        key = (self.model.model_dump_json(), self.data.num_labels, id(self.encoder_state))
        model = _WORKER_MODEL.get(key)
        if model is None:
            from harness.device import attention_for
            from harness.models import build_encoder

            _WORKER_MODEL.clear()
            encoder = build_encoder(self.model, pretrained=False, attention=attention_for(self.device, False))
            model = Classifier(encoder, self.data.num_labels, self.model.pooling)
            model.encoder.load_state_dict(self.encoder_state)
            model.to(self.device)
            _WORKER_MODEL[key] = model
        elif load_encoder:
            model.encoder.load_state_dict(self.encoder_state)
        model.precision = self.precision
        model.reset_head(torch.Generator().manual_seed(seed))
        # Dropout draws from the global generator: restarted from the trial's seed here, whether the module was
        # built just now (drawing its initial weights) or reused, so a trial's result does not depend on which
        # trials, of which cells, its worker ran before.
        torch.manual_seed(seed)
        return model


_WORKER_MODEL: dict[tuple, "Classifier"] = {}


@dataclass(frozen=True)
class AttackOutcome:
    val_accuracy: float
    test_accuracy: float | None
    steps_run: int
    best_step: int
    # (step, accuracy) at each validation check (`FitResult.history`), and for reruns (score_test) the test accuracy
    # at the same checks (`FitResult.test_history`): the curves tables. Empty: the attack reports no curve.
    val_curve: tuple[tuple[int, float], ...] = ()
    test_curve: tuple[tuple[int, float], ...] = ()


class Attack(ABC):
    """Base class of attack plugins.

    An attack declares its parameters (`Params`, a pydantic model that forbids extra fields) and its search space
    (`default_space`); `run` trains one sampled configuration and reports its accuracies in [0, 1], the same for the
    same seed. The training length must be an integer search dimension named `steps` (an `IntRange` or a fixed or
    chosen int): the searches' ASHA scheduler uses it as the trial's time budget, and `run` should publish a
    validation check every `ctx.eval_every` steps through `ctx.on_eval` so ASHA can stop the trial early.
    `harness.testing.check_attack` checks all of this on the smoke config.
    """

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel, space_overrides: dict[str, Any] | None = None, origin: str = "config"):
        self.params = params
        # Kept on the instance, so it travels when the attack is pickled to a worker: an entry-point plugin's class
        # gets its name from the registry lookup, which only the looking-up process has made.
        self.name = type(self).name
        self.space = self._merge_space(space_overrides or {}, origin)

    @classmethod
    def from_spec(cls, params: dict[str, Any], space: dict[str, Any], origin: str) -> "Attack":
        return cls(validate(cls.Params, params, f"{origin}: attack '{cls.name}' params"), space, origin)

    @abstractmethod
    def default_space(self) -> Space:
        """The search space, declared once; configs override individual dimensions."""

    def needs_features(self) -> bool:
        """Whether some configuration of the space trains a linear probe on frozen features."""
        return False

    def phase_steps(self) -> tuple[str, ...]:
        """The integer space dimensions that count training steps a trial runs besides `steps` (before them, in full,
        whatever ASHA does): the dry run's cost estimate prices them as full fine-tuning steps of the trial's batch."""
        return ()

    def needs_benign(self) -> bool:
        """Whether the attack uses the attacker's desired-task rows (`CellData.benign`) besides its budget sample."""
        return False

    @abstractmethod
    def run(self, ctx: AttackContext, config: dict[str, Any], seed: int, score_test: bool) -> AttackOutcome:
        """Attack the defended encoder with one sampled configuration."""

    def _merge_space(self, overrides: dict[str, Any], origin: str) -> Space:
        from pydantic import TypeAdapter, ValidationError

        from harness.errors import UserError, did_you_mean

        space = dict(self.default_space())
        adapter = TypeAdapter(Dim)
        for key, raw in overrides.items():
            if key not in space:
                raise UserError(f"{origin}: attack '{self.name}' has no search dimension '{key}'{did_you_mean(key, space)}")
            value = raw if isinstance(raw, dict) else {"type": "fixed", "value": raw}
            try:
                space[key] = adapter.validate_python(value)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise UserError(
                    f"{origin}: attack '{self.name}' space.{key}{'.' + where if where else ''}: "
                    f"{err['msg']} (expected e.g. {{type: loguniform, low: 1e-5, high: 1e-2}}, "
                    f"{{type: int, low: 10, high: 100}}, {{type: choice, values: [...]}} or a fixed value)"
                ) from None
        return space
