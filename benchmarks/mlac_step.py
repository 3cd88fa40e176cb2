"""MLAC meta-step: our functional implementation (defenses._censor.meta_loss) vs the same step built on `higher`.

One meta-step = K differentiable inner Adam steps of a full fine-tuning attack on harmful batches (learned inner lr,
inner clip 100 by global norm), the outer loss (desired CE + entropy censoring of the adapted model), the backward
pass through the inner loop, the outer clip and the outer Adam update. Both implementations get the same model,
batches, head and learned lr; the script reports how closely their first outer losses agree.

Peak memory comes from a fresh subprocess per implementation: its resident-set high-water mark (reset right before
the first meta-step, see `reset_peak_rss`) minus the resident set at that moment, over two meta-steps (on CUDA:
torch.cuda.max_memory_allocated minus the memory allocated before). Times come from one more subprocess that steps
the implementations in turn, each on its own copy of the setup, and keeps each one's best step.

    .venv/bin/python benchmarks/mlac_step.py --model tiny --k 1 4 16
    .venv/bin/python benchmarks/mlac_step.py --model embedded --layers 2 --k 1 4 16

`higher` (0.2.1) is a benchmark-only dependency: `.venv/bin/pip install higher==0.2.1`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from defenses._censor import meta_loss  # noqa: E402
from defenses.mlac import MlacParams  # noqa: E402
from harness.censoring import Batch, clip_by_global_norm, draw_head  # noqa: E402
from harness.attack_step import EPS, AttackSetting  # noqa: E402
from harness.classifier import Classifier  # noqa: E402
from harness.config import ModelConfig  # noqa: E402
from harness.models import build_encoder  # noqa: E402

log = logging.getLogger(__name__)

IMPLS = ("ours", "ours-full-vocab", "higher")
BATCH = 24  # the middle of the reference's {12, 24, 48}
DESIRED_BATCH = 20


def model_config(model: str, max_length: int, layers: int | None) -> ModelConfig:
    return ModelConfig(source=model, max_length=max_length, num_hidden_layers=layers if model != "tiny" else None)


def random_batch(generator: torch.Generator, size: int, length: int, classes: int, device: torch.device) -> Batch:
    # Word-piece ids from the common part of the vocabulary, full-length rows (bios are longer than max_length).
    ids = torch.randint(1000, 8000, (size, length), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102
    labels = torch.randint(classes, (size,), generator=generator)
    return Batch(ids.to(device), torch.ones_like(ids).to(device), labels.to(device))


class Setup:
    """Model, outer optimizer, batches and attacker shared by both implementations."""

    def __init__(self, cfg: ModelConfig, k: int, device: torch.device):
        torch.manual_seed(0)  # the heads nn.Linear draws
        g = torch.Generator().manual_seed(0)
        encoder = build_encoder(cfg).to(device)
        self.model = Classifier(encoder, 28).to(device).eval()
        self.harm = Classifier(encoder, 2).to(device).eval()
        self.head = draw_head(self.harm.head.in_features, 2, g, device)
        self.log_lr = torch.nn.Parameter(torch.tensor(3e-4, device=device).log())
        self.outer = [*self.model.parameters(), self.log_lr]
        self.optimizer = torch.optim.Adam(self.outer, lr=1e-5)
        length = cfg.max_length
        self.desired = random_batch(g, DESIRED_BATCH, length, 28, device)
        self.inner = [random_batch(g, BATCH, length, 2, device) for _ in range(k)]
        self.held_out = random_batch(g, DESIRED_BATCH, length, 2, device)
        self.params = MlacParams(inner_steps=k, censor="entropy", harmful_weight=1.0)
        self.setting = AttackSetting(lr=3e-4, steps=max(k, 1), batch_size=BATCH, adapt="full", optimizer="adam")

    def outer_update(self, total: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.outer, self.params.grad_clip)
        self.optimizer.step()


def ours_loss(s: Setup, compact_vocab: bool) -> torch.Tensor:
    out = meta_loss(
        s.model, s.harm, s.head, s.setting, s.log_lr.exp(), s.desired, s.inner, s.held_out, s.params, compact_vocab
    )
    return out.total


def higher_loss(s: Setup) -> torch.Tensor:
    import higher

    desired = F.cross_entropy(s.model(s.desired.input_ids, s.desired.attention_mask), s.desired.labels)
    with torch.no_grad():
        s.harm.head.weight.copy_(s.head["head.weight"])
        s.harm.head.bias.copy_(s.head["head.bias"])
    # The same parameters adapt as in ours (all but the unused pooler); the lr is overridden by the learned tensor.
    adapted = [p for n, p in s.harm.named_parameters() if not n.startswith("encoder.pooler.")]
    inner_opt = torch.optim.Adam(adapted, lr=3e-4, eps=EPS)
    clip = s.params.inner_grad_clip

    def clip_grads(grads):
        present = [g for g in grads if g is not None]
        clipped = iter(clip_by_global_norm(present, clip))
        return [None if g is None else next(clipped) for g in grads]

    with higher.innerloop_ctx(
        s.harm, inner_opt, copy_initial_weights=False, override={"lr": [s.log_lr.exp()]}
    ) as (fmodel, diffopt):
        for b in s.inner:
            diffopt.step(F.cross_entropy(fmodel(b.input_ids, b.attention_mask), b.labels), grad_callback=clip_grads)
        logits = fmodel(s.held_out.input_ids, s.held_out.attention_mask)
    censor = (-torch.log(torch.tensor(2.0)) - F.log_softmax(logits, -1).mean(-1)).mean()
    return desired + s.params.harmful_weight * censor


def loss_fn(impl: str):
    return {
        "ours": lambda s: ours_loss(s, True),
        "ours-full-vocab": lambda s: ours_loss(s, False),
        "higher": higher_loss,
    }[impl]


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def reset_peak_rss() -> int:
    """Bytes resident now, with the high-water mark reset to it where Linux allows (else the maxrss so far).

    Building the model and importing transformers leave a high-water mark above what one meta-step adds, so a plain
    ru_maxrss delta would read 0; /proc/self/clear_refs "5" resets the mark (Linux >= 4.0).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_memory(cfg: ModelConfig, impl: str, k: int, device: torch.device) -> dict:
    """Peak memory a meta-step adds (over a first and a second step), and the first step's outer loss."""
    s = Setup(cfg, k, device)
    fn = loss_fn(impl)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak_rss()
    losses = []
    for _ in range(2):  # the second step also holds the outer optimizer's state
        total = fn(s)
        s.outer_update(total)
        losses.append(float(total.detach()))
    _sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base  # ru_maxrss follows the reset
    return {"impl": impl, "k": k, "peak_mib": peak / 2**20, "loss": losses[0]}


def measure_time(cfg: ModelConfig, impls: list[str], k: int, rounds: int, device: torch.device) -> dict[str, dict]:
    """Best wall-clock and CPU time per meta-step, the implementations interleaved step by step.

    On a shared machine a neighbour's burst then slows every implementation alike, and the best of several rounds
    measures the code rather than the neighbours. CPU time (process_time) is the steadier figure with one thread.
    """
    setups = {impl: Setup(cfg, k, device) for impl in impls}
    best = {impl: {"wall": math.inf, "cpu": math.inf} for impl in impls}
    for round_ in range(rounds + 1):
        order = impls[round_ % len(impls) :] + impls[: round_ % len(impls)]
        for impl in order:
            s = setups[impl]
            wall, cpu = time.perf_counter(), time.process_time()
            s.outer_update(loss_fn(impl)(s))
            _sync(device)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if round_:  # round 0 warms caches and allocators
                best[impl] = {"wall": min(best[impl]["wall"], wall), "cpu": min(best[impl]["cpu"], cpu)}
    return best


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' or 'embedded'")
    parser.add_argument("--layers", type=int, default=None, help="keep the first N layers of the embedded encoder")
    parser.add_argument("--max-length", type=int, default=None, help="default 32 (tiny) / 64 (embedded)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--impl", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per implementation (after a warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["memory", "time"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    max_length = args.max_length or (32 if args.model == "tiny" else 64)
    cfg = model_config(args.model, max_length, args.layers)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.child == "memory":
        print(json.dumps(measure_memory(cfg, args.impl[0], args.k[0], device)))
        return
    if args.child == "time":
        print(json.dumps(measure_time(cfg, args.impl, args.k[0], args.rounds, device)))
        return

    common = ["--model", args.model, "--max-length", str(max_length), "--threads", str(args.threads)]
    common += ["--rounds", str(args.rounds)] + (["--layers", str(args.layers)] if args.layers else [])
    rows = []
    for k in args.k:
        # Fresh processes: one per implementation for its memory peak, one for the interleaved timings.
        memory = {impl: _child(["--child", "memory", "--k", str(k), "--impl", impl, *common]) for impl in args.impl}
        times = _child(["--child", "time", "--k", str(k), "--impl", *args.impl, *common])
        for impl in args.impl:
            rows.append({**memory[impl], **times[impl]})
            log.info("%s", rows[-1])
        # Same model, batches and attacker: the first outer losses differ only in where Adam's eps enters.
        losses = [memory[impl]["loss"] for impl in args.impl]
        log.info("K=%d: outer losses agree to %.1e (relative)", k, (max(losses) - min(losses)) / abs(losses[0]))

    name = f"{args.model}" + (f"[:{args.layers}]" if args.layers else "") + f", max_length {max_length}"
    print(f"\n| model | K | impl | wall s / step | CPU s / step | peak MiB | wall vs higher | CPU vs higher "
          f"| memory vs higher |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ref = next((r for r in rows if r["k"] == row["k"] and r["impl"] == "higher"), row)
        print(
            f"| {name} | {row['k']} | {row['impl']} | {row['wall']:.3f} | {row['cpu']:.3f} | {row['peak_mib']:.0f} "
            f"| {row['wall'] / ref['wall']:.2f}x | {row['cpu'] / ref['cpu']:.2f}x "
            f"| {row['peak_mib'] / max(ref['peak_mib'], 1e-9):.2f}x |"
        )


if __name__ == "__main__":
    main()
