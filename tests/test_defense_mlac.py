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

from defenses.adversarial import Adversarial, AdversarialParams, as_mlac
from defenses.bert import Bert, BertParams
from defenses.mlac import (
    CensorTrainer,
    Mlac,
    MlacParams,
    draw_head,
    make_batch,
    meta_loss,
    ridge_probe_score,
)
from harness.attack_step import AttackSetting
from harness.classifier import Classifier
from harness.config import ModelConfig
from harness.defend import FileCheckpointer
from harness.models import build_encoder, load_tokenizer
from harness.plugins import DefenseContext
from harness.tokenized import TokenizedSplit
from harness.training import Features, encode, fit, probe_accuracy

CFG = ModelConfig(source="tiny", max_length=32)
MALE = ["john", "james", "robert", "michael", "william", "david", "richard", "thomas"]
FEMALE = ["mary", "patricia", "jennifer", "linda", "elizabeth", "susan", "jessica", "sarah"]
PROFESSIONS = ["nurse", "surgeon", "teacher", "poet"]
NUM_LABELS = {"gender": 2, "profession": len(PROFESSIONS)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
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


def context(train: TokenizedSplit, folder: Path, every: int = 1000, progress=None, seed: int = 0) -> DefenseContext:
    return DefenseContext(
        model=CFG, train=train, harmful="gender", desired="profession", num_labels=dict(NUM_LABELS), seed=seed,
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

    def loss(compact_vocab: bool = True) -> torch.Tensor:
        return meta_loss(model, harm, head, setting, log_lr.exp(), desired, inner, held_out, p, compact_vocab).total

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
    # The learned inner lr gets a real gradient: the outer loss depends on how far the attacker moved.
    assert abs(float(grads[-1])) > 1e-6


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
    p = as_mlac(AdversarialParams(**raw, harmful_head="reset"))
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
    p = as_mlac(AdversarialParams(steps=3, lr=1e-3, batch_size=16, harmful_weight=2.0, head_lr=1e-2))
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
    _, a, _ = FileCheckpointer(tmp_path / "straight", 2).load()
    _, b, _ = FileCheckpointer(folder, 2).load()
    assert_same_state(a, b)


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
