"""The shared training loop on a real tiny BERT: it learns, stops early, and the probe fast path agrees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.attack_step import AttackSetting
from harness.classifier import Classifier
from harness.config import ModelConfig
from harness.models import build_encoder
from harness.tokenized import TokenizedSplit
from harness.training import Features, NonFiniteLoss, accuracy, encode, fit

TINY = ModelConfig(source="tiny", max_length=32)


def cue_split(n: int, seed: int) -> TokenizedSplit:
    """Texts of random tokens; the label is which of two cue tokens appears."""
    rng = np.random.default_rng(seed)
    rows, labels = [], rng.integers(0, 2, n)
    for label in labels:
        body = rng.integers(1000, 1500, rng.integers(4, 12)).tolist()
        body.insert(int(rng.integers(0, len(body))), 2000 if label else 3000)
        rows.append([101, *body, 102])
    lengths = np.array([len(r) for r in rows])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return TokenizedSplit(np.concatenate(rows).astype(np.int32), offsets, {"y": labels.astype(np.int64)})


def tiny_classifier(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(build_encoder(TINY), 2)


def test_tokenized_split_pads_per_batch_and_subsets():
    split = cue_split(10, 0)
    ids, mask = split.batch([0, 1])
    assert ids.shape[1] == max(split.lengths[:2])
    assert mask.sum().item() == split.lengths[:2].sum()
    sub = split.subset([3, 1])
    assert np.array_equal(sub.batch([0])[0][0, : sub.lengths[0]].numpy(), split.batch([3])[0][0, : split.lengths[3]].numpy())
    assert list(sub.labels["y"]) == [split.labels["y"][3], split.labels["y"][1]]


def test_full_finetuning_learns_a_cue():
    train, val = cue_split(200, 1), cue_split(200, 2)
    model = tiny_classifier()
    before = accuracy(model, val, "y")
    setting = AttackSetting(lr=3e-3, steps=80, batch_size=16, adapt="full")
    result = fit(model, train, "y", setting, seed=0, val=val)
    assert result.val_accuracy == pytest.approx(accuracy(model, val, "y"))
    assert result.val_accuracy > 0.9 > before + 0.2


def test_early_stopping_restores_the_best_checkpoint():
    train, val = cue_split(200, 1), cue_split(100, 2)
    model = tiny_classifier()
    setting = AttackSetting(lr=3e-3, steps=400, batch_size=16, adapt="full")
    result = fit(model, train, "y", setting, seed=0, val=val, eval_every=10, patience=2)
    assert result.steps_run < 400
    assert result.val_accuracy == max(acc for _, acc in result.history)
    assert accuracy(model, val, "y") == pytest.approx(result.val_accuracy)


def test_probe_on_cached_features_matches_probe_through_the_encoder():
    train, val = cue_split(60, 3), cue_split(60, 4)
    setting = AttackSetting(lr=1e-2, steps=30, batch_size=12, adapt="probe")
    direct = tiny_classifier()
    slow = fit(direct, train, "y", setting, seed=5, val=val)
    cached_model = tiny_classifier()
    feats = Features(encode(cached_model, train), encode(cached_model, val), None)
    fast = fit(cached_model, train, "y", setting, seed=5, val=val, features=feats)
    torch.testing.assert_close(cached_model.head.weight, direct.head.weight, rtol=1e-4, atol=1e-5)
    assert fast.val_accuracy == pytest.approx(slow.val_accuracy)
    # the probe never touches the encoder
    fresh = tiny_classifier()
    torch.testing.assert_close(direct.encoder.embeddings.word_embeddings.weight, fresh.encoder.embeddings.word_embeddings.weight)


def test_divergence_is_reported_not_hidden():
    train = cue_split(40, 5)
    model = tiny_classifier()
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss):
        fit(model, train, "y", AttackSetting(lr=1e-3, steps=3, batch_size=8, adapt="probe"), seed=0)
