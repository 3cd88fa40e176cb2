"""MLAC and adversarial censoring: exact meta-gradients, K=0 is AC, bit-identical resume, and a censoring effect.

Everything runs on the tiny BERT (2 layers, hidden 32, the embedded MiniLM vocabulary) and synthetic bios whose
harmful label is carried by gendered first names and desired label by profession words.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from defenses._censor import CensorTrainer, meta_loss
from defenses.adversarial import Adversarial, AdversarialParams
from defenses.adversarial import as_censoring as as_ac
from defenses.bert import Bert, BertParams, BertTrainer, BertTrainerParams, as_censoring
from defenses.mlac import Mlac, MlacParams
from harness.censoring import draw_head, make_batch, ridge_probe_score
from harness.attack_step import AttackSetting
from harness.classifier import Classifier
from harness.config import ModelConfig
from harness.defend import FileCheckpointer
from harness.models import build_encoder, load_tokenizer
from harness.plugins import DefenseContext
from harness.tokenized import TokenizedSplit
from harness.training import Features, encode, fit, probe_accuracy

# fp32: these tests compare the trainers with references written in float32 (`auto` picks bf16 on a bf16 CPU).
CFG = ModelConfig(source="tiny", max_length=32, precision="fp32")
MALE = ["john", "james", "robert", "michael", "william", "david", "richard", "thomas"]
FEMALE = ["mary", "patricia", "jennifer", "linda", "elizabeth", "susan", "jessica", "sarah"]
PROFESSIONS = ["nurse", "surgeon", "teacher", "poet"]
NUM_LABELS = {"gender": 2, "profession": len(PROFESSIONS)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The tiny model's tensors are far too small for threads to pay off; one thread also keeps timings steady when
    # other processes share the cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def synthetic(n: int, seed: int) -> TokenizedSplit:
    """Bios of 3 gendered names, 2 profession words and 4-8 filler word pieces, shuffled, within [CLS] ... [SEP]."""
    tokenizer = load_tokenizer(CFG)
    male, female, professions = (tokenizer.convert_tokens_to_ids(w) for w in (MALE, FEMALE, PROFESSIONS))
    rng = np.random.default_rng(seed)
    gender = rng.integers(0, 2, n)
    profession = rng.integers(0, len(PROFESSIONS), n)
    texts = []
    for g, p in zip(gender, profession):
        words = [*rng.choice(female if g else male, 3), professions[p], professions[p]]
        words += list(rng.integers(2000, 2400, rng.integers(4, 9)))
        rng.shuffle(words)
        texts.append([tokenizer.cls_token_id, *words, tokenizer.sep_token_id])
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(t) for t in texts], out=offsets[1:])
    ids = np.concatenate(texts).astype(np.int32)
    return TokenizedSplit(ids, offsets, {"gender": gender.astype(np.int64), "profession": profession.astype(np.int64)})


@pytest.fixture(scope="module")
def splits() -> dict[str, TokenizedSplit]:
    return {"defense": synthetic(400, 0), "attack": synthetic(200, 1), "test": synthetic(400, 2)}


def context(
    train: TokenizedSplit, folder: Path, every: int = 1000, progress=None, seed: int = 0, model: ModelConfig = CFG
) -> DefenseContext:
    return DefenseContext(
        model=model, train=train, harmful="gender", desired="profession", num_labels=dict(NUM_LABELS), seed=seed,
        device=torch.device("cpu"), progress=progress or (lambda step, metrics: None),
        checkpoint=FileCheckpointer(folder, every),
    )


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ: {different[:5]}"


# -- the meta-gradient ------------------------------------------------------------------------------------------------
def _meta_problem(splits, setting: AttackSetting, p: MlacParams):
    """A float64 tiny BERT, its batches and a learned log inner lr: everything meta_loss needs."""
    torch.manual_seed(0)
    encoder = build_encoder(CFG).double().eval()
    model = Classifier(encoder, NUM_LABELS["profession"]).double().eval()
    harm = Classifier(encoder, NUM_LABELS["gender"]).double().eval()
    g = torch.Generator().manual_seed(1)
    head = {k: v.double() for k, v in draw_head(32, 2, g, torch.device("cpu")).items()}
    train, cpu = splits["defense"], torch.device("cpu")
    desired = make_batch(train, torch.arange(0, 10), "profession", cpu)
    inner = [make_batch(train, torch.arange(10 + 8 * i, 18 + 8 * i), "gender", cpu) for i in range(p.inner_steps)]
    held_out = make_batch(train, torch.arange(100, 112), "gender", cpu)
    log_lr = torch.tensor(math.log(setting.lr), dtype=torch.float64, requires_grad=True)

    def loss(compact_vocab: bool = True, part: str = "total") -> torch.Tensor:
        out = meta_loss(model, harm, head, setting, log_lr.exp(), desired, inner, held_out, p, compact_vocab)
        return getattr(out, part)  # total: the defender's loss; attack: the attacker's

    variables = [t for n, t in model.named_parameters() if not n.startswith("encoder.pooler.")] + [log_lr]
    return loss, variables


@pytest.mark.parametrize(
    "adapt, optimizer, weight_decay, censor, clip",
    [
        ("full", "adam", 0.0, "entropy", 100.0),
        # Weight decay turns the compact vocabulary off; a clip this small is active, so its derivative counts too.
        ("full", "adamw", 0.1, "probe", 0.05),
        ("top-k", "sgd", 0.0, "neg_ce", 100.0),
        ("probe", "adam", 0.0, "entropy", 100.0),
    ],
)
def test_meta_gradient_matches_finite_differences(splits, adapt, optimizer, weight_decay, censor, clip):
    lr = 0.2 if optimizer == "sgd" else 3e-2  # large enough for the inner loop to matter to the outer loss
    setting = AttackSetting(
        lr=lr, steps=3, batch_size=8, adapt=adapt, optimizer=optimizer, weight_decay=weight_decay, top_k=1
    )
    p = MlacParams(inner_steps=3, censor=censor, inner_grad_clip=clip, harmful_weight=2.0)
    loss, variables = _meta_problem(splits, setting, p)
    grads = torch.autograd.grad(loss(), variables)

    g = torch.Generator().manual_seed(2)
    direction = [torch.randn(v.shape, generator=g, dtype=v.dtype) for v in variables]
    analytic = sum(float((gr * d).sum()) for gr, d in zip(grads, direction))
    # Adam divides by sqrt(v + eps^2): entries whose gradient is (numerically) zero, such as attention key biases,
    # make the meta-objective curve on a 1e-8 scale, so the difference quotient needs a step below that.
    eps = 1e-9

    def shifted(sign: float) -> float:
        with torch.no_grad():
            for v, d in zip(variables, direction):
                v.add_(sign * eps * d)
        value = float(loss().detach())
        with torch.no_grad():
            for v, d in zip(variables, direction):
                v.sub_(sign * eps * d)
        return value

    numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-4)
    # The outer loss depends on how far the attacker moved (the defender does not train the lr, but it is real).
    assert abs(float(grads[-1])) > 1e-6


@pytest.mark.parametrize("first_order, steps", [(False, 3), (True, 1), (True, 3)])
def test_attacker_gradient_of_the_inner_lr(splits, first_order, steps):
    """d(adapted harmful CE) / d(log inner lr): exact (finite differences) second-order, and first-order at K=1 (the
    lr scales the one update, whose gradient does not depend on it). At K=3 first-order it is the derivative along
    the inner updates with their directions held fixed: nonzero, but it may even differ in sign from the exact one."""
    setting = AttackSetting(lr=3e-2, steps=steps, batch_size=8, adapt="full", optimizer="adam")
    p = MlacParams(inner_steps=steps, first_order=first_order)
    loss, variables = _meta_problem(splits, setting, p)
    log_lr = variables[-1]
    (analytic,) = torch.autograd.grad(loss(part="attack"), [log_lr])
    eps = 1e-6

    def at(shift: float) -> float:
        with torch.no_grad():
            log_lr.add_(shift)
        value = float(loss(part="attack").detach())
        with torch.no_grad():
            log_lr.sub_(shift)
        return value

    numeric = (at(eps) - at(-eps)) / (2 * eps)
    assert abs(numeric) > 1e-3  # the adapted harmful loss really depends on the lr here
    if first_order and steps > 1:
        assert torch.isfinite(analytic) and abs(float(analytic)) > 1e-3
    else:
        assert float(analytic) == pytest.approx(numeric, rel=1e-5)


def test_first_order_drops_the_second_order_terms(splits):
    setting = AttackSetting(lr=3e-2, steps=2, batch_size=8, adapt="full", optimizer="adam")
    exact_loss, exact_vars = _meta_problem(splits, setting, MlacParams(inner_steps=2))
    first_loss, first_vars = _meta_problem(splits, setting, MlacParams(inner_steps=2, first_order=True))
    assert float(exact_loss().detach()) == pytest.approx(float(first_loss().detach()), rel=1e-12)  # same forward
    exact = torch.autograd.grad(exact_loss(), exact_vars)
    first = torch.autograd.grad(first_loss(), first_vars)
    layer = 5  # an attention weight: its meta-gradient has second-order parts
    assert not torch.allclose(exact[layer], first[layer], rtol=1e-3)
    assert torch.isfinite(first[layer]).all()


def test_compact_vocabulary_changes_nothing(splits):
    setting = AttackSetting(lr=3e-2, steps=2, batch_size=8, adapt="full", optimizer="adam")
    loss, variables = _meta_problem(splits, setting, MlacParams(inner_steps=2))
    compact, full = loss(True), loss(False)
    torch.testing.assert_close(compact, full, rtol=1e-12, atol=0)
    for a, b in zip(torch.autograd.grad(compact, variables), torch.autograd.grad(full, variables)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-14)


def test_ridge_probe_score_tracks_linear_information():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(2, (24,), generator=g)
    noise = torch.randn(24, 16, generator=g)
    informative = noise.clone()
    informative[:, 0] += 4.0 * (labels * 2 - 1)
    assert float(ridge_probe_score(informative, labels, 2, 0.1)) > 0.7
    assert float(ridge_probe_score(noise, labels, 2, 0.1)) < 0.2
    # Scale-free: shrinking the features cannot hide the information.
    assert float(ridge_probe_score(informative * 1e-3, labels, 2, 0.1)) == pytest.approx(
        float(ridge_probe_score(informative, labels, 2, 0.1)), rel=1e-4
    )


# -- K=0 is adversarial censoring ------------------------------------------------------------------------------------
def test_adversarial_is_mlac_with_k0(splits, tmp_path):
    raw = {"steps": 3, "lr": 1e-3, "batch_size": 16, "harmful_weight": 2.0, "head_lr": 1e-2}
    adversarial = Adversarial(AdversarialParams(**raw)).train(context(splits["defense"], tmp_path / "a"))
    mlac = Mlac(MlacParams(**raw, inner_steps=0, harmful_head="learned")).train(
        context(splits["defense"], tmp_path / "b")
    )
    assert_same_state(adversarial, mlac)
    assert not torch.equal(adversarial["encoder.layer.0.output.dense.weight"],
                           build_encoder(CFG).state_dict()["encoder.layer.0.output.dense.weight"])


def test_adversarial_reset_head_is_the_reference_baseline(splits, tmp_path):
    """`harmful_head: reset` censors a fresh random head each step (the reference code's baseline): allowed through
    the adversarial defense only, and a different training from the learned-head adversary."""
    raw = {"steps": 3, "lr": 1e-3, "batch_size": 16, "censor": "neg_ce"}
    p = as_ac(AdversarialParams(**raw, harmful_head="reset"))
    assert (p.inner_steps, p.harmful_head, p.censor) == (0, "reset", "neg_ce")
    with pytest.raises(ValueError, match="random head"):
        MlacParams(**raw, inner_steps=0, harmful_head="reset")
    reset = Adversarial(AdversarialParams(**raw, harmful_head="reset")).train(context(splits["defense"], tmp_path / "a"))
    learned = Adversarial(AdversarialParams(**raw)).train(context(splits["defense"], tmp_path / "b"))
    name = "encoder.layer.0.output.dense.weight"
    assert not torch.equal(reset[name], build_encoder(CFG).state_dict()[name])
    assert not torch.equal(reset[name], learned[name])


def test_k0_step_is_plain_adversarial_censoring(splits, tmp_path):
    """An independent AC step written with ordinary modules gives the same weights as the MLAC step at K=0."""
    p = as_ac(AdversarialParams(steps=3, lr=1e-3, batch_size=16, harmful_weight=2.0, head_lr=1e-2))
    ours = CensorTrainer(p, context(splits["defense"], tmp_path / "a"))
    ref = CensorTrainer(p, context(splits["defense"], tmp_path / "b"))
    for _ in range(3):
        ours.step()
        desired, _, held_out, _, _ = ref.sample()
        features = ref.model.features(held_out.input_ids, held_out.attention_mask)
        log_p = F.log_softmax(F.linear(features, ref.harm.head.weight.detach(), ref.harm.head.bias.detach()), -1)
        censor = (-math.log(2) - log_p.mean(-1)).mean()
        desired_ce = F.cross_entropy(ref.model(desired.input_ids, desired.attention_mask), desired.labels)
        ref.optimizer.zero_grad()
        (desired_ce + p.harmful_weight * censor).backward()
        torch.nn.utils.clip_grad_norm_(ref.model.parameters(), p.grad_clip)
        ref.optimizer.step()
        ref.head_optimizer.zero_grad()
        F.cross_entropy(ref.harm.head(features.detach()), held_out.labels).backward()
        ref.head_optimizer.step()
    for (name, a), b in zip(ours.model.state_dict().items(), ref.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(ours.harm.head.weight, ref.harm.head.weight, rtol=1e-5, atol=1e-7)


def test_params_reject_a_degenerate_setup():
    with pytest.raises(ValueError, match="random head"):
        MlacParams(inner_steps=0, harmful_head="reset")
    with pytest.raises(ValueError, match="inner_lr_bounds"):
        MlacParams(inner_lr_bounds=(1e-2, 1e-6))
    with pytest.raises(ValueError):
        MlacParams(unknown=1)


# -- bert, the matched control ----------------------------------------------------------------------------------------
OUTER = {"steps": 4, "lr": 1e-3, "batch_size": 16, "grad_clip": 0.5}  # a clip this small is active


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_bert_is_adversarial_with_the_censoring_term_off(splits, tmp_path, pooling):
    """Same optimizer, schedule, clip, batch, steps, seed, draws and pooling: bit-identical encoder weights."""
    model = CFG.model_copy(update={"pooling": pooling})
    bert = Bert(BertParams(**OUTER)).train(context(splits["defense"], tmp_path / "bert", model=model))
    adversarial = Adversarial(AdversarialParams(**OUTER, harmful_weight=0.0)).train(
        context(splits["defense"], tmp_path / "adv", model=model)
    )
    assert_same_state(bert, adversarial)
    name = "encoder.layer.0.output.dense.weight"
    assert not torch.equal(bert[name], build_encoder(CFG).state_dict()[name])
    censored = Adversarial(AdversarialParams(**OUTER)).train(context(splits["defense"], tmp_path / "c", model=model))
    assert not torch.equal(bert[name], censored[name])  # the censoring term is what differs


def test_bert_honours_pooling(splits, tmp_path):
    mean, cls = (
        Bert(BertParams(**OUTER)).train(
            context(splits["defense"], tmp_path / pooling, model=CFG.model_copy(update={"pooling": pooling}))
        )
        for pooling in ("mean", "cls")
    )
    name = "encoder.layer.0.output.dense.weight"
    assert not torch.equal(mean[name], cls[name])


def test_bert_is_plain_desired_task_adam_with_clip(splits, tmp_path):
    """An independent loop (desired-task cross-entropy, Adam at a constant rate, global-norm clip) on the control's
    batches gives bit for bit the weights `bert` trains: the skipped censoring forward changes nothing."""
    p = as_censoring(BertParams(**OUTER))
    assert (p.harmful_weight, p.inner_steps) == (0.0, 0)
    bert = Bert(BertParams(**OUTER)).train(context(splits["defense"], tmp_path / "bert"))
    ref = CensorTrainer(p, context(splits["defense"], tmp_path / "ref"))
    assert [g["lr"] for g in ref.optimizer.param_groups] == [OUTER["lr"]]
    assert type(ref.optimizer) is torch.optim.Adam and ref.optimizer.defaults["weight_decay"] == 0
    for _ in range(OUTER["steps"]):
        desired, *_ = ref.sample()
        ref.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(ref.model(desired.input_ids, desired.attention_mask), desired.labels).backward()
        torch.nn.utils.clip_grad_norm_(ref.model.parameters(), OUTER["grad_clip"])
        ref.optimizer.step()
    assert_same_state(bert, ref.model.encoder.state_dict())


def test_bert_trainer_is_the_labelled_trainer_style_variant(splits, tmp_path):
    """`bert-trainer` keeps the Trainer-style fine-tuning (AdamW, weight decay, warmup, linear decay): registered,
    documented as not the control, and a different encoder from `bert`."""
    from harness.registry import DEFENSES

    assert DEFENSES.get("bert-trainer") is BertTrainer
    assert "NOT the matched control" in BertTrainer.__doc__
    raw = {"steps": 4, "lr": 1e-3, "batch_size": 16}
    trained = BertTrainer(BertTrainerParams(**raw)).train(context(splits["defense"], tmp_path / "t"))
    model = Classifier(build_encoder(CFG), NUM_LABELS["profession"])
    model.reset_head(torch.Generator().manual_seed(0))
    setting = AttackSetting(lr=1e-3, steps=4, batch_size=16, adapt="full", optimizer="adamw", weight_decay=0.01,
                            warmup_frac=0.1, schedule="linear")
    fit(model, splits["defense"], "profession", setting, seed=0)
    assert_same_state(trained, model.encoder.state_dict())
    bert = Bert(BertParams(**raw)).train(context(splits["defense"], tmp_path / "b"))
    name = "encoder.layer.0.output.dense.weight"
    assert not torch.equal(trained[name], bert[name])
    with pytest.raises(ValueError):
        BertParams(weight_decay=0.01)  # the control has no knobs the censoring defenses lack


def test_variant_labels_first_order_mlac():
    assert Mlac(MlacParams(first_order=True)).variant() == "first-order"
    assert Mlac(MlacParams()).variant() is None
    assert Mlac(MlacParams(first_order=True, inner_steps=0, harmful_head="learned")).variant() is None  # that is AC
    assert Adversarial(AdversarialParams()).variant() is None
    assert Bert(BertParams()).variant() is None
    assert BertTrainer(BertTrainerParams()).variant() is None


# -- the learned inner lr serves the attacker -------------------------------------------------------------------------
LEARNED = {"steps": 3, "lr": 1e-3, "batch_size": 12, "inner_steps": 2, "inner_batch_sizes": (8,),
           "inner_lr_init": 1e-3, "inner_lr_bounds": (1e-5, 1.0), "inner_lr_lr": 0.1}


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("init", [1e-4, 3e-3])  # below and above the rate the first step's attacker does best at
def test_learned_inner_lr_descends_the_attackers_loss(splits, tmp_path, first_order, init):
    """After one step the log inner lr has moved (by Adam's first step, inner_lr_lr) the way that lowers the adapted
    model's harmful loss on that step's batches: the simulated attacker got stronger."""
    p = MlacParams(**{**LEARNED, "inner_lr_init": init}, first_order=first_order)
    trainer = CensorTrainer(p, context(splits["defense"], tmp_path / "a"))
    twin = CensorTrainer(p, context(splits["defense"], tmp_path / "b"))  # the same state, before the step
    assert all(t is not trainer.log_lr for g in trainer.optimizer.param_groups for t in g["params"])
    before = trainer.log_lr.item()
    trainer.step()
    after = trainer.log_lr.item()
    assert abs(after - before) == pytest.approx(p.inner_lr_lr, rel=1e-4)

    desired, inner, held_out, setting, _ = twin.sample()
    head = twin.head_init()

    def attacker_loss(log_lr: float) -> float:
        lr = torch.tensor(log_lr).exp()
        return float(meta_loss(twin.model, twin.harm, head, setting, lr, desired, inner, held_out, p).harmful_ce)

    assert attacker_loss(after) < attacker_loss(before)
    assert attacker_loss(after) < attacker_loss(2 * before - after)  # the other way would have helped it less


def test_defender_and_attacker_steps_move_only_their_own_variables(splits, tmp_path):
    p = MlacParams(**LEARNED)
    trainer = CensorTrainer(p, context(splits["defense"], tmp_path / "a"))
    desired, inner, held_out, setting, lr = trainer.sample()
    out = meta_loss(trainer.model, trainer.harm, trainer.head_init(), setting, lr, desired, inner, held_out, p)
    grad = trainer.attacker_gradient(out)
    assert grad is not None and float(grad) != 0
    assert all(t.grad is None for t in trainer.model.parameters())  # nothing accumulated into the defender's
    log_lr = trainer.log_lr.item()
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    trainer.defender_step(out)  # the defender alone
    assert trainer.log_lr.item() == log_lr and trainer.log_lr.grad is None
    moved = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert not torch.equal(moved["encoder.encoder.layer.0.output.dense.weight"],
                           weights["encoder.encoder.layer.0.output.dense.weight"])

    trainer.attacker_step(grad)  # the attacker alone
    assert trainer.log_lr.item() != log_lr
    assert_same_state(moved, trainer.model.state_dict())


def test_sampled_inner_lr_has_nothing_to_learn(splits, tmp_path):
    trainer = CensorTrainer(MlacParams(**LEARNED, inner_lr="sampled"), context(splits["defense"], tmp_path / "a"))
    before = trainer.log_lr.item()
    trainer.step()
    assert trainer.log_lr.item() == before and not trainer.lr_optimizer.state


# -- checkpoints ------------------------------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


def test_resume_after_interruption_is_bit_identical(splits, tmp_path):
    p = MlacParams(
        steps=6, lr=1e-3, batch_size=12, inner_steps=2, harmful_head="learned", inner_batch_sizes=(8, 12),
        inner_adapt=("full", "top-k", "probe"), inner_optimizers=("adam", "sgd"), head_lr=1e-2,
    )
    seen: list[tuple[int, dict[str, float]]] = []
    straight = Mlac(p).train(context(splits["defense"], tmp_path / "straight", every=2,
                                     progress=lambda s, m: seen.append((s, m))))
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert {"desired_loss", "harmful_loss"} <= set(seen[0][1])

    def interrupt(step: int, metrics: dict[str, float]) -> None:
        if step == 5:  # after the checkpoint at 4: step 5 must be redone from it
            raise Interrupted

    folder = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        Mlac(p).train(context(splits["defense"], folder, every=2, progress=interrupt))
    resumed_steps: list[int] = []
    resumed = Mlac(p).train(context(splits["defense"], folder, every=2,
                                    progress=lambda s, m: resumed_steps.append(s)))
    assert resumed_steps == [5, 6]
    assert_same_state(straight, resumed)
    # The whole training state agrees too: optimizers, learned lr, persistent head, generator.
    step, a, metadata = FileCheckpointer(tmp_path / "straight", 2).load()
    _, b, _ = FileCheckpointer(folder, 2).load()
    assert_same_state(a, b)
    assert {"lr_opt/0/exp_avg", "lr_opt/0/exp_avg_sq", "lr_opt/0/step"} <= set(a)  # the attacker's own Adam
    # A checkpoint from before the inner lr had its own optimizer cannot continue this training.
    old = {k: v for k, v in metadata.items() if k != "inner_lr_objective"}
    with pytest.raises(ValueError, match="older mlac"):
        CensorTrainer(p, context(splits["defense"], tmp_path / "old")).load(step, a, old)


# -- the effect -------------------------------------------------------------------------------------------------------
def probe_attack(encoder_state: dict[str, torch.Tensor], splits, label: str) -> float:
    """A linear-probe attacker (fresh head, Adam) on the defended encoder's frozen features; test accuracy."""
    encoder = build_encoder(CFG, pretrained=False)
    encoder.load_state_dict(encoder_state)
    model = Classifier(encoder, NUM_LABELS[label]).eval()
    model.reset_head(torch.Generator().manual_seed(0))
    attack, test = splits["attack"], splits["test"]
    features = Features(encode(model, attack), encode(model, test), None)
    setting = AttackSetting(lr=1e-2, steps=150, batch_size=32, adapt="probe", optimizer="adam")
    fit(model, attack, label, setting, seed=0, features=features)
    return probe_accuracy(model.head, features.val, test.labels[label])


def test_mlac_censors_the_harmful_task(splits, tmp_path):
    bert = Bert(BertParams(steps=30, lr=1e-3, batch_size=20)).train(context(splits["defense"], tmp_path / "bert"))
    mlac = Mlac(MlacParams(steps=30, lr=1e-3, inner_steps=2, censor="probe")).train(
        context(splits["defense"], tmp_path / "mlac")
    )
    bert_harm, mlac_harm = probe_attack(bert, splits, "gender"), probe_attack(mlac, splits, "gender")
    assert bert_harm > 0.85, "the synthetic harmful signal should be easy to read off an undefended encoder"
    assert mlac_harm < bert_harm - 0.15, (bert_harm, mlac_harm)
    # Not a broken encoder: the desired task still reads off the censored features.
    assert probe_attack(mlac, splits, "profession") > 0.9
