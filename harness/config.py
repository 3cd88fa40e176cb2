"""Experiment configuration: YAML validated by pydantic models that forbid unknown fields.

One `ExperimentConfig` describes a whole benchmark: the base encoder, the data, the defenses and attacks to compare,
the tasks, budgets and seeds that make up the cells, the search protocol and where it runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator,
)

from harness.errors import did_you_mean


# The defense every leaderboard gap is measured against: the encoder's architecture with no pretraining.
REFERENCE_DEFENSE = "random-init"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyBert(Strict):
    """A small randomly initialised BERT for tests; uses the embedded encoder's tokenizer."""

    hidden_size: int = Field(32, gt=0)
    num_hidden_layers: int = Field(2, gt=0)
    num_attention_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(64, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyBert":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        return self


class ModelConfig(Strict):
    source: str = Field("embedded", description="'embedded', 'tiny', a local directory, or a hub id")
    num_hidden_layers: int | None = Field(None, gt=0, description="keep only the first N pretrained layers")
    max_length: int = Field(128, gt=1, le=512)
    pooling: Literal["mean", "cls"] = "mean"
    tiny: TinyBert = TinyBert()
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="forward passes of attack trials, frozen features and defense training: bf16 autocast (float32 "
        "weights, gradients and optimizer) or fp32; auto: bf16 where the device computes bf16 natively (CPU with "
        "AVX512-BF16/AMX, CUDA with bf16), resolved on each worker; rows record the resolved precision",
    )

    @model_serializer(mode="wrap")
    def _omit_auto_precision(self, handler: Any) -> dict[str, Any]:
        # `auto` (the default) is left out, like the device it resolves on: configs written before the field existed
        # keep their hash (a run continues), and the weights-cache keys of float32 trainings stay as they were.
        data = handler(self)
        if data.get("precision") == "auto":
            del data["precision"]
        return data


class SplitFiles(Strict):
    train: list[str] = Field(min_length=1)
    dev: list[str] = Field(min_length=1)
    test: list[str] = Field(min_length=1)


class DataConfig(Strict):
    # The split every defense trains on; the attacker's pool, validation and test are held out from it.
    DEFENSE_SPLIT: ClassVar[str] = "train"

    source: str = Field("standin", description="'standin', a directory, a glob with {split}, or a hub id")
    files: SplitFiles | None = Field(None, description="explicit Parquet files per split (overrides source)")
    text_column: str = "hard_text"
    labels: dict[str, int] = Field(
        default_factory=lambda: {"profession": 28, "gender": 2},
        description="label column -> number of classes",
    )
    scrub_pronouns: bool = True
    blank_texts: Literal["error", "drop"] = Field(
        "error", description="rows whose text is empty or whitespace only: refuse the corpus, or drop them (counted)"
    )
    validation_split: str = "dev"
    test_split: str = "test"
    validation_size: int = Field(1000, gt=0, description="rows subsampled from the validation split")
    test_size: int = Field(2000, gt=0, description="rows subsampled from the test split")
    attacker_pool_split: str | None = Field(
        None, description="split the attacker's pool (every budget sample) is carved from; default: the validation "
        "split, disjointly from the validation rows"
    )
    attacker_pool_size: int | None = Field(
        None, gt=0, description="rows of the attacker's pool; default: every row of its split not taken by validation"
    )

    @field_validator("labels")
    @classmethod
    def _positive(cls, labels: dict[str, int]) -> dict[str, int]:
        for column, n in labels.items():
            if n < 2:
                raise ValueError(f"label column '{column}' needs at least 2 classes, got {n}")
        return labels

    @model_validator(mode="after")
    def _disjoint_splits(self) -> "DataConfig":
        # Defenses train on `train`; no other pool may read it, and the attacker's pool never reads the test split.
        for name in ("validation_split", "test_split", "attacker_pool_split"):
            if getattr(self, name) == self.DEFENSE_SPLIT:
                raise ValueError(
                    f"data.{name} is '{self.DEFENSE_SPLIT}', the split every defense trains on: the attacker's pool, "
                    "validation and test must be held out from it"
                )
        if self.pool_split == self.test_split:
            if self.attacker_pool_split is None:
                raise ValueError(
                    f"data.validation_split and data.test_split are both '{self.test_split}': the attacker's pool "
                    "(data.attacker_pool_split, default the validation split) must be apart from the test split"
                )
            raise ValueError(
                f"data.attacker_pool_split is '{self.test_split}', the test split: the attacker's pool must be "
                "apart from the test split"
            )
        return self

    @property
    def pool_split(self) -> str:
        """The split the attacker's pool is carved from (`attacker_pool_split`, default the validation split)."""
        return self.attacker_pool_split or self.validation_split


class Tasks(Strict):
    harmful: str = "gender"
    desired: str = "profession"
    attacked: list[Literal["harmful", "desired"]] = Field(
        default_factory=lambda: ["harmful", "desired"], min_length=1,
        description="which tasks the attacker's search runs on (desired = utility)",
    )


class PluginSpec(Strict):
    name: str
    # Letters and digits joined by single '-' or '.': a label goes into cell ids ('__'-joined) and folder names.
    label: str | None = Field(
        None, pattern=r"^[A-Za-z0-9]+([.-][A-Za-z0-9]+)*$",
        description="what this entry's cells and leaderboard rows are called (default: its name), so one plugin can "
        "appear twice with other params, e.g. an ablation, or merge onto a run that already holds it",
    )
    params: dict[str, Any] = Field(default_factory=dict)

    # Fields added after configs were published: left out of the dump when unset, so those configs keep their hash (and
    # their runs resume).
    OMIT_WHEN_UNSET: ClassVar[tuple[str, ...]] = ("label",)

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for name in self.OMIT_WHEN_UNSET:
            if data.get(name, "") is None:
                del data[name]
        return data

    @property
    def cell_name(self) -> str:
        """The name this entry's cells carry: its label, or the plugin's name."""
        return self.label or self.name


class DefenseSpec(PluginSpec):
    """A defense entry: the plugin's name, an optional label, its params."""


class AttackSpec(PluginSpec):
    space: dict[str, Any] = Field(default_factory=dict, description="search-space overrides, by dimension")
    budgets: list[int] | None = Field(
        None, min_length=1, description="run this attack only at these budgets (an expensive attack's subset)"
    )
    tasks: list[Literal["harmful", "desired"]] | None = Field(
        None, min_length=1, description="run this attack only on these tasks' cells (default: every attacked task)"
    )
    OMIT_WHEN_UNSET: ClassVar[tuple[str, ...]] = ("label", "tasks")


class Resources(Strict):
    cpu: float = Field(1, ge=0)
    gpu: float = Field(0, ge=0)


FaultKind = Literal["exception", "nan", "crash"]


class FaultInjection(Strict):
    """Deliberate trial failures, to test failure handling (never in a real benchmark).

    A trial is picked by its seed, so the same trials fail on every attempt and every run with this setting. Kinds:
    `exception` (the attack raises), `nan` (the attack reports a non-finite accuracy, as a diverged trial would),
    `crash` (the worker process dies, as when the kernel kills it for memory). Not part of the config hash: a run
    interrupted by faults continues, and retries its failed cells, with the faults switched off.
    """

    fraction: float = Field(gt=0, le=1, description="share of trials that fail (search trials and reruns)")
    kind: FaultKind | list[FaultKind] = Field("exception", description="a kind, or a list to mix per trial")

    @field_validator("kind")
    @classmethod
    def _some_kind(cls, kind: str | list[str]) -> str | list[str]:
        if isinstance(kind, list) and not kind:
            raise ValueError("names no kind; expected exception, nan or crash")
        return kind

    @property
    def kinds(self) -> list[str]:
        return [self.kind] if isinstance(self.kind, str) else list(self.kind)


class AshaConfig(Strict):
    """Asynchronous successive halving: at each rung (grace_period * reduction_factor^k training steps) a trial
    whose best validation check so far is not in the top 1/reduction_factor of the trials seen there is stopped."""

    grace_period: int = Field(gt=0, description="training steps every trial runs before it can be stopped")
    reduction_factor: float = Field(3.0, gt=1, description="keep the best 1/reduction_factor at each rung")


class SearchConfig(Strict):
    num_samples: int = Field(20, gt=0, description="trials per cell (upper bound with the plateau stop)")
    max_concurrent: int = Field(2, gt=0)
    plateau_patience: int = Field(15, gt=0, description="stop after this many trials without improvement")
    reruns: int = Field(3, ge=1, description="fresh-seed reruns of the best configuration, scored on test")
    selection: Literal["heldout", "reference"] = Field(
        "heldout", description="'reference' selects and reports on one split, as the reference code (optimistic)"
    )
    resources_per_trial: Resources = Resources()
    max_failures: int = Field(1, ge=0, description="retries of a failing trial")
    eval_every: int = Field(0, ge=0, description="validation checks during a trial for early stopping (0 = end only)")
    asha: AshaConfig | None = Field(None, description="stop poor trials early on their validation checks")
    fault_injection: FaultInjection | None = Field(None, description="deliberate trial failures, for tests")

    @model_validator(mode="after")
    def _asha_needs_checks(self) -> "SearchConfig":
        if self.asha is not None and self.eval_every == 0:
            raise ValueError("asha stops trials on their validation checks: set eval_every > 0")
        return self


DefenseSeeding = Literal["per-seed", "shared"]
SHARED_DEFENSE_SEED = 0  # the one training seed of `seeding: shared`
# TPE learns from finished trials: with more than this share of a cell's trials proposed before any result is back,
# the search is close to random search.
TPE_CONCURRENCY_SHARE = 0.25


class DefenseTraining(Strict):
    resources: Resources = Resources(cpu=1)
    checkpoint_every: int = Field(200, gt=0)
    seeding: DefenseSeeding = Field(
        "per-seed",
        description="per-seed: each cell seed attacks a defense trained with that seed, so intervals include the "
        "training's variance; shared: one model, trained with seed 0, serves every seed (the leaderboard says so)",
    )

    def seed_for(self, cell_seed: int) -> int:
        """The seed the defense a cell attacks was trained with."""
        return cell_seed if self.seeding == "per-seed" else SHARED_DEFENSE_SEED


class ClusterConfig(Strict):
    address: str | None = None
    storage_path: str | None = Field(None, description="shared filesystem path or URI for Ray Tune state")
    autoscaling: bool = Field(
        False, description="the cluster adds nodes on demand: requests no node has now are left to its autoscaler "
        "instead of refused, and the trial workers are not limited to the nodes there are now",
    )
    cells_at_once: int | None = Field(
        None, gt=0, description="cells searched at once (default: one more than the trial workers fill at "
        "search.max_concurrent a cell); a cell's results do not depend on it",
    )


class MlflowTracking(Strict):
    tracking_uri: str = Field(description="an MLflow tracking URI: a server (http://...) or a local store (file:...)")
    experiment_name: str | None = Field(None, description="default: the config's experiment")


class TrackingConfig(Strict):
    mlflow: MlflowTracking | None = None


class ExperimentConfig(Strict):
    experiment: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    tasks: Tasks = Tasks()
    budgets: list[int] = Field(min_length=1, description="attacker's training examples per cell")
    desired_budgets: list[int] | None = Field(
        None, min_length=1, description="budgets for the desired (utility) task; default: the same as `budgets`"
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    defenses: list[DefenseSpec] = Field(min_length=1)
    attacks: list[AttackSpec] = Field(min_length=1)
    search: SearchConfig = SearchConfig()
    defense_training: DefenseTraining = DefenseTraining()
    cluster: ClusterConfig = ClusterConfig()
    tracking: TrackingConfig = Field(TrackingConfig(), description="optional: Tune's MLflow logger callback")
    output: str | None = Field(None, description="run directory (default results/runs/<experiment>)")

    @field_validator("budgets", "desired_budgets")
    @classmethod
    def _budgets(cls, budgets: list[int] | None) -> list[int] | None:
        if budgets is None:
            return None
        for b in budgets:
            if b <= 0:
                raise ValueError(f"budget {b} must be a positive number of examples")
        if len(set(budgets)) != len(budgets):
            raise ValueError(f"budgets {budgets} repeat a value")
        return sorted(budgets)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {seeds} repeat a value")
        return seeds

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentConfig":
        for role in ("harmful", "desired"):
            task = getattr(self.tasks, role)
            if task not in self.data.labels:
                raise ValueError(
                    f"tasks.{role}: '{task}' is not a label column{did_you_mean(task, self.data.labels)}"
                )
        if self.tasks.harmful == self.tasks.desired:
            raise ValueError("tasks.harmful and tasks.desired name the same label column")
        if self.search.selection == "heldout" and self.data.validation_split == self.data.test_split:
            raise ValueError(
                f"data.validation_split and data.test_split are both '{self.data.test_split}': held-out selection "
                "needs a validation split apart from the test split (search.selection: reference selects on test)"
            )
        for spec in self.defenses:
            if spec.cell_name == REFERENCE_DEFENSE and spec.name != REFERENCE_DEFENSE:
                raise ValueError(f"defenses: label '{REFERENCE_DEFENSE}' is kept for the random-init defense, the "
                                 f"leaderboard's reference (defense '{spec.name}' has it)")
        for kind, specs in (("defenses", self.defenses), ("attacks", self.attacks)):
            names = [spec.cell_name for spec in specs]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{kind}: '{twice[0]}' appears twice; give one of them another label")
        known = set(self.budgets) | set(self.desired_budgets or [])
        for attack in self.attacks:
            unknown = sorted(set(attack.budgets or []) - known)
            if unknown:
                raise ValueError(f"attacks: '{attack.name}' budgets {unknown} are not among the experiment's budgets")
            idle = sorted(set(attack.tasks or []) - set(self.tasks.attacked))
            if idle:
                raise ValueError(f"attacks: '{attack.name}' tasks {idle} are not in tasks.attacked "
                                 f"{self.tasks.attacked}")
        return self

    def warnings(self) -> list[str]:
        """Settings that are valid but weaken the benchmark: the CLI prints them before it runs anything."""
        found = []
        search = self.search
        limit = max(2, int(search.num_samples * TPE_CONCURRENCY_SHARE))
        if search.max_concurrent > limit:
            found.append(
                f"search.max_concurrent {search.max_concurrent} against num_samples {search.num_samples}: most trials "
                f"are proposed before any result is back, so TPE is close to random search (at most {limit} keeps it "
                "learning)"
            )
        if self.defense_training.seeding == "shared" and len(self.seeds) > 1:
            found.append(
                "defense_training.seeding: shared: one trained defense serves every seed, so the intervals leave out "
                "the training's variance"
            )
        return found

    def budgets_for(self, role: str) -> list[int]:
        """The budgets of the harmful or desired task's cells."""
        return self.desired_budgets if role == "desired" and self.desired_budgets else self.budgets

    def runs_at(self, attack: AttackSpec, role: str, budget: int) -> bool:
        """Whether `attack` has a cell on the `role` task at `budget`."""
        return (attack.budgets is None or budget in attack.budgets) and (attack.tasks is None or role in attack.tasks)

    def run_dir(self) -> Path:
        return Path(self.output) if self.output else Path("results") / "runs" / self.experiment

    def content_hash(self) -> str:
        """Hash of everything that defines the results (not where they are written, which cluster runs them, or
        faults injected on purpose)."""
        payload = self.model_dump(mode="json", exclude={"output": True, "cluster": True, "tracking": True,
                                                     "search": {"fault_injection"}})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
