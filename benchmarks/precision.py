"""Mixed precision: per-step time at fp32 and bf16 (autocast, float32 master weights) side by side, and parity.

Measured in one run, each pair interleaved (fp32 block, bf16 block, repeated) so a neighbour's burst slows both:
(a) an attack's full fine-tuning step of the encoder (`harness.training.fit`: forward + loss under autocast, fused
    AdamW in float32), 16 x max_length tokens, at each of `--threads`;
(b) a frozen-feature encoding pass (`harness.training.encode`, as the probe feature cache runs it);
(c) one outer step of each trained defense (bert, adversarial, mlac first-order K=`--k`, repnoise, sophon, and
    second-order mlac with K=`--second-order-k`) on batches of max_length tokens;
(d) second-order MLAC sanity: the meta-loss and meta-gradient at bf16 against fp32 from the same weights and batches,
    next to first-order's (how far bf16 moves a gradient anyway), and a few training steps at each;
(e) parity: attacks at fp32 and bf16 on the stand-in corpus (the harmful task, `--seeds` seeds, budgets 20 and 100):
    a linear probe on frozen features and full fine-tuning, test accuracy mean +- 95% CI and the paired difference.

    .venv/bin/python benchmarks/precision.py                       # embedded MiniLM-L6, max_length 64
    .venv/bin/python benchmarks/precision.py --skip parity --threads 1

Per-step times are medians over the steps measured (a defense's steps draw different simulated attackers, and the
two precisions draw the same ones, so each defense's figure is the total over the same steps).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.attack_step import AttackSetting  # noqa: E402
from harness.classifier import Classifier  # noqa: E402
from harness.config import ModelConfig  # noqa: E402
from harness.defend import FileCheckpointer  # noqa: E402
from harness.models import build_encoder  # noqa: E402
from harness.plugins import DefenseContext  # noqa: E402
from harness.tokenized import TokenizedSplit  # noqa: E402
from harness.training import encode, fit, resolve_precision  # noqa: E402

PRECISIONS = ("fp32", "bf16")
CPU = torch.device("cpu")


def random_split(n: int, length: int, seed: int, classes: dict[str, int]) -> TokenizedSplit:
    """Full-length rows of common word pieces (bios are longer than max_length) with random labels."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 8000, size=(n, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    labels = {name: rng.integers(0, c, size=n).astype(np.int64) for name, c in classes.items()}
    return TokenizedSplit(ids.reshape(-1), np.arange(0, n * length + 1, length, dtype=np.int64), labels)


def classifier(cfg: ModelConfig, precision: str, labels: int = 2) -> Classifier:
    torch.manual_seed(0)
    model = Classifier(build_encoder(cfg), labels, cfg.pooling, precision)
    model.reset_head(torch.Generator().manual_seed(0))
    return model


def ci95(values: list[float]) -> float:
    from scipy import stats

    if len(values) < 2:
        return math.nan
    return float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


# -- (a) attack step, (b) encoding ------------------------------------------------------------------------------------
def attack_step_times(cfg: ModelConfig, threads: int, steps: int, rounds: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    train = random_split(256, cfg.max_length, 0, {"gender": 2})
    setting = AttackSetting(lr=2e-5, steps=steps + 1, batch_size=16, adapt="full", optimizer="adamw")
    models = {p: classifier(cfg, p) for p in PRECISIONS}
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for round_ in range(rounds):
        for p in PRECISIONS if round_ % 2 == 0 else PRECISIONS[::-1]:
            stamps = [time.perf_counter()]
            fit(models[p], train, "gender", setting, seed=round_, on_step=lambda s, loss: stamps.append(time.perf_counter()))
            times[p] += list(np.diff(stamps)[1:])  # the first step also allocates the optimizer's state
    return {p: statistics.median(t) for p, t in times.items()}


def encode_times(cfg: ModelConfig, rows: int, rounds: int) -> dict[str, float]:
    split = random_split(rows, cfg.max_length, 1, {"gender": 2})
    models = {p: classifier(cfg, p) for p in PRECISIONS}
    best = {p: math.inf for p in PRECISIONS}
    for round_ in range(rounds + 1):
        for p in PRECISIONS:
            start = time.perf_counter()
            encode(models[p], split)
            if round_:
                best[p] = min(best[p], time.perf_counter() - start)
    return best


# -- (c) defense outer steps ------------------------------------------------------------------------------------------
def defense_context(cfg: ModelConfig, precision: str, train: TokenizedSplit, folder: Path) -> DefenseContext:
    return DefenseContext(cfg.model_copy(update={"precision": precision}), train, "gender", "profession",
                          {"gender": 2, "profession": 28}, 0, CPU, lambda step, metrics: None,
                          FileCheckpointer(folder, 10**9))


def make_trainer(name: str, ctx: DefenseContext, k: int, second_order_k: int):
    from defenses._censor import CensorTrainer
    from defenses.adversarial import AdversarialParams
    from defenses.adversarial import as_censoring as adversarial
    from defenses.bert import BertParams
    from defenses.bert import as_censoring as bert
    from defenses.mlac import MlacParams
    from defenses.repnoise import RepNoiseParams, RepNoiseTrainer
    from defenses.sophon import SophonParams, SophonTrainer

    if name == "repnoise":
        return RepNoiseTrainer(RepNoiseParams(), ctx)
    if name == "sophon":
        return SophonTrainer(SophonParams(), ctx)
    params = {
        "bert": lambda: bert(BertParams()),
        "adversarial": lambda: adversarial(AdversarialParams()),
        f"mlac first-order K={k}": lambda: MlacParams(inner_steps=k, first_order=True),
        f"mlac second-order K={second_order_k}": lambda: MlacParams(inner_steps=second_order_k),
    }[name]()
    trainer = CensorTrainer(params, ctx)
    trainer.precision = ctx.precision  # measured at bf16 even where SECOND_ORDER_PRECISION keeps it at fp32
    return trainer


def defense_times(
    cfg: ModelConfig, names: list[str], k: int, second_order_k: int, steps: int, warmup: int
) -> dict[str, dict]:
    train = random_split(400, cfg.max_length, 2, {"gender": 2, "profession": 28})
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            trainers = {p: make_trainer(name, defense_context(cfg, p, train, Path(tmp)), k, second_order_k)
                        for p in PRECISIONS}
            total = {p: 0.0 for p in PRECISIONS}
            for step in range(warmup + steps):  # both precisions draw the same attackers at each step
                for p in PRECISIONS if step % 2 == 0 else PRECISIONS[::-1]:
                    start = time.perf_counter()
                    trainers[p].step()
                    if step >= warmup:
                        total[p] += time.perf_counter() - start
            out[name] = {p: total[p] / steps for p in PRECISIONS}
            print(f"  {name}: fp32 {out[name]['fp32']:.2f}s bf16 {out[name]['bf16']:.2f}s", file=sys.stderr)
            del trainers
    return out


# -- (d) second-order sanity ------------------------------------------------------------------------------------------
def meta_gradient(cfg: ModelConfig, precision: str, k: int, first_order: bool):
    """Meta-loss, attack loss and the outer gradient (encoder + desired head, and d/d log lr) of one meta-step."""
    from defenses._censor import meta_loss
    from defenses.mlac import MlacParams
    from harness.censoring import draw_head, make_batch

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    encoder = build_encoder(cfg)
    model, harm = Classifier(encoder, 28).eval(), Classifier(encoder, 2).eval()
    head = draw_head(harm.head.in_features, 2, g, CPU)
    log_lr = torch.tensor(math.log(3e-4), requires_grad=True)
    train = random_split(200, cfg.max_length, 3, {"gender": 2, "profession": 28})
    desired = make_batch(train, torch.arange(0, 20), "profession", CPU)
    inner = [make_batch(train, torch.arange(20 + 24 * i, 44 + 24 * i), "gender", CPU) for i in range(k)]
    held = make_batch(train, torch.arange(150, 170), "gender", CPU)
    p = MlacParams(inner_steps=k, first_order=first_order)
    setting = AttackSetting(lr=3e-4, steps=k, batch_size=24, adapt="full", optimizer="adam")
    out = meta_loss(model, harm, head, setting, log_lr.exp(), desired, inner, held, p, precision=precision)
    params = list(model.parameters())
    grads = torch.autograd.grad(out.total, params, allow_unused=True, materialize_grads=True, retain_graph=True)
    (lr_grad,) = torch.autograd.grad(out.attack, [log_lr])
    flat = torch.cat([g.flatten() for g in grads])
    return float(out.total.detach()), float(out.attack.detach()), flat, float(lr_grad)


def second_order_sanity(cfg: ModelConfig, k: int) -> list[dict]:
    rows = []
    for first_order in (True, False):
        ref = meta_gradient(cfg, "fp32", k, first_order)
        bf = meta_gradient(cfg, "bf16", k, first_order)
        cos = float(F.cosine_similarity(ref[2], bf[2], dim=0))
        rows.append({
            "mode": "first-order" if first_order else "second-order", "k": k,
            "loss_fp32": ref[0], "loss_bf16": bf[0], "attack_fp32": ref[1], "attack_bf16": bf[1],
            "grad_cos": cos, "grad_norm_ratio": float(bf[2].norm() / ref[2].norm()),
            "finite": bool(torch.isfinite(bf[2]).all()) and math.isfinite(bf[3]),
            "lr_grad_fp32": ref[3], "lr_grad_bf16": bf[3],
        })
    return rows


def second_order_training(cfg: ModelConfig, k: int, steps: int) -> dict[str, list[float]]:
    """Outer losses of a few second-order MLAC training steps at each precision (same draws)."""
    train = random_split(400, cfg.max_length, 2, {"gender": 2, "profession": 28})
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in PRECISIONS:
            trainer = make_trainer(f"mlac second-order K={k}", defense_context(cfg, p, train, Path(tmp)), 16, k)
            losses[p] = [round(trainer.step()["harmful_loss"], 4) for _ in range(steps)]
    return losses


# -- (e) parity -------------------------------------------------------------------------------------------------------
def parity(
    cfg: ModelConfig, seeds: list[int], budgets: list[int], full_steps: int, eval_rows: int, modes: list[str]
) -> list[dict]:
    from harness.configfile import load_config
    from harness.data.prepare import prepare_data

    overrides = [f"model.source={cfg.source}", f"model.max_length={cfg.max_length}", f"budgets={budgets}",
                 f"seeds={seeds}", f"data.validation_size={eval_rows}", f"data.test_size={eval_rows}"]
    exp = load_config(ROOT / "configs" / "smoke.yaml", overrides)
    prepared = prepare_data(exp)
    base = build_encoder(cfg).state_dict()
    used = np.unique(np.concatenate([prepared.budget_rows[("gender", s)][b] for s in seeds for b in budgets]))
    position = {int(r): i for i, r in enumerate(used)}
    features = {}
    for p in PRECISIONS:
        model = classifier(cfg, p)
        model.encoder.load_state_dict(base)
        features[p] = (encode(model, prepared.attack_pool.subset(used)), encode(model, prepared.val),
                       encode(model, prepared.test))
    label, results = "gender", []
    for budget in budgets:
        for mode in modes:
            acc: dict[str, list[float]] = {p: [] for p in PRECISIONS}
            for seed in seeds:
                rows = prepared.budget_rows[(label, seed)][budget]
                train = prepared.attack_pool.subset(rows)
                for p in PRECISIONS:
                    model = classifier(cfg, p)
                    model.encoder.load_state_dict(base)
                    model.reset_head(torch.Generator().manual_seed(seed))
                    if mode == "probe":
                        from harness.training import Features, probe_accuracy

                        pool, val, test = features[p]
                        cached = Features(pool[[position[int(r)] for r in rows]], val, test)
                        setting = AttackSetting(lr=3e-3, steps=300, batch_size=min(budget, 16), adapt="probe")
                        fit(model, train, label, setting, seed=seed, val=prepared.val, eval_every=50, features=cached)
                        acc[p].append(probe_accuracy(model.head, test, prepared.test.labels[label]))
                    else:
                        setting = AttackSetting(lr=5e-5, steps=full_steps, batch_size=16, adapt="full")
                        fit(model, train, label, setting, seed=seed, val=prepared.val,
                            eval_every=max(1, full_steps // 2))
                        from harness.training import accuracy

                        acc[p].append(accuracy(model, prepared.test, label))
            diff = [b - a for a, b in zip(acc["fp32"], acc["bf16"])]
            results.append({"budget": budget, "mode": mode, **{p: acc[p] for p in PRECISIONS}, "diff": diff})
            print(f"  parity budget {budget} {mode}: {results[-1]}", file=sys.stderr)
    return results


# -- report -----------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--layers", type=int, default=None, help="keep the first N layers (default: all)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="(a)'s thread counts")
    ap.add_argument("--attack-steps", type=int, default=5, help="(a): steps per block")
    ap.add_argument("--rounds", type=int, default=2, help="(a), (b): blocks per precision")
    ap.add_argument("--encode-rows", type=int, default=256)
    ap.add_argument("--k", type=int, default=16, help="first-order mlac's inner steps")
    ap.add_argument("--second-order-k", type=int, default=2)
    ap.add_argument("--defense-steps", type=int, default=2, help="(c): outer steps measured per defense")
    ap.add_argument("--defense-warmup", type=int, default=1, help="(c): outer steps run first, not measured")
    ap.add_argument("--parity-modes", nargs="+", default=["probe", "full"], choices=["probe", "full"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--full-steps", type=int, default=40, help="(e): full fine-tuning steps per attack")
    ap.add_argument("--eval-rows", type=int, default=300, help="(e): validation and test rows")
    ap.add_argument("--skip", nargs="*", default=[], choices=["attack", "encode", "defenses", "sanity", "parity"])
    args = ap.parse_args()

    cfg = ModelConfig(source=args.model, max_length=args.max_length, num_hidden_layers=args.layers)
    defenses = ["bert", "adversarial", f"mlac first-order K={args.k}", "repnoise", "sophon",
                f"mlac second-order K={args.second_order_k}"]
    flags = [f for f in ("avx512_bf16", "amx_bf16") if f in open("/proc/cpuinfo").read()]
    print(f"model {args.model} layers {args.layers or 'all'}, max_length {args.max_length}; torch "
          f"{torch.__version__}; CPU bf16 flags {flags or 'none'} (auto resolves to {resolve_precision('auto', CPU)})\n")
    rows: list[tuple[str, float, float]] = []
    if "attack" not in args.skip:
        for t in args.threads:
            r = attack_step_times(cfg, t, args.attack_steps, args.rounds)
            rows.append((f"attack full fine-tuning step, 16 x {args.max_length}, {t} thread(s)", r["fp32"], r["bf16"]))
            print(f"  {rows[-1]}", file=sys.stderr)
    torch.set_num_threads(max(args.threads))
    if "encode" not in args.skip:
        r = encode_times(cfg, args.encode_rows, args.rounds)
        rows.append((f"probe features: encode {args.encode_rows} rows x {args.max_length}", r["fp32"], r["bf16"]))
    if "defenses" not in args.skip:
        for name, r in defense_times(cfg, defenses, args.k, args.second_order_k, args.defense_steps,
                                       args.defense_warmup).items():
            rows.append((f"defense outer step: {name}", r["fp32"], r["bf16"]))
    print(f"| step ({max(args.threads)} threads unless said) | fp32 (s) | bf16 (s) | fp32 / bf16 |")
    print("|---|---:|---:|---:|")
    for name, a, b in rows:
        print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")
    if "sanity" not in args.skip:
        print(f"\nSecond-order sanity (one meta-step from the same weights and batches, K={args.second_order_k}):\n")
        print("| mode | meta-loss fp32 | bf16 | attack CE fp32 | bf16 | cos(grad) | norm bf16/fp32 | d/dlog lr fp32 "
              "| bf16 | finite |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in second_order_sanity(cfg, args.second_order_k):
            print(f"| {r['mode']} | {r['loss_fp32']:.4f} | {r['loss_bf16']:.4f} | {r['attack_fp32']:.4f} | "
                  f"{r['attack_bf16']:.4f} | {r['grad_cos']:.4f} | {r['grad_norm_ratio']:.3f} | "
                  f"{r['lr_grad_fp32']:.3g} | {r['lr_grad_bf16']:.3g} | {r['finite']} |")
        losses = second_order_training(cfg, args.second_order_k, 3)
        print(f"\nSecond-order training, harmful loss over 3 outer steps: {losses}")
    if "parity" not in args.skip:
        print(f"\nParity (stand-in corpus, harmful task, seeds {args.seeds}, test accuracy on {args.eval_rows} rows; "
              f"probe: 300 steps on frozen features; full: {args.full_steps} steps, lr 5e-5, batch 16):\n")
        print("| budget | attack | fp32 mean +- CI | bf16 mean +- CI | bf16 - fp32 (paired) +- CI |")
        print("|---:|---|---:|---:|---:|")
        for r in parity(cfg, args.seeds, args.budgets, args.full_steps, args.eval_rows,
                                args.parity_modes):
            cells = [f"{statistics.mean(r[p]):.3f} +- {ci95(r[p]):.3f}" for p in PRECISIONS]
            print(f"| {r['budget']} | {r['mode']} | {cells[0]} | {cells[1]} | "
                  f"{statistics.mean(r['diff']):+.3f} +- {ci95(r['diff']):.3f} |")


if __name__ == "__main__":
    main()
