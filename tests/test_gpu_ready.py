"""GPU-ready without a GPU: each fix of issue 24 proven on a CPU machine, with Ray's fake GPU resources (a local
instance with `num_gpus=2`, and a two-node cluster whose GPUs are all on the worker node) and small fakes of CUDA.

Review notes, for the lines only CUDA executes (they cannot run here):
- `harness/device.py` `prepare_device`: `torch.cuda.set_per_process_memory_fraction(gpu_share, device)` caps the
  caching allocator of a worker holding a fractional share at that share of the device's memory (torch raises
  an out-of-memory error in that worker instead of letting it take its neighbours' memory); the call is exercised
  here with the function faked, for its arguments.
- `harness/device.py` `hardware`: `torch.cuda.get_device_name(device)` is the name `nvidia-smi` shows.
- `harness/training.py` `resolve_precision`: `torch.cuda.is_bf16_supported(including_emulation=False)` is true on
  compute capability 8.0 and above (native bf16), false before, where emulated bf16 would be slower than float32.
- `torch.use_deterministic_algorithms(True)` makes the index-add backwards deterministic on CUDA: the embedding
  lookup (every encoder), the compact-vocabulary row selection `table[rows]` in `defenses/_censor.py` `meta_loss`
  and the class selection `features[labels == c]` in `defenses/repnoise.py` `noise_term`, whose backwards are
  `index_put_(accumulate=True)`, which has a deterministic CUDA kernel that the setting selects.
"""

from __future__ import annotations

import copy
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from attacks.lora import Lora
from defenses.mlac import Mlac
from harness.classifier import Classifier
from harness.config import Resources
from harness.configfile import load_config
from harness.defend import defense_key
from harness.device import CUBLAS_WORKSPACE, assigned_device, attention_for, prepare_device
from harness.errors import UserError
from harness.models import build_encoder
from harness.resources import check_requests, pool_size, running_cluster, task_options
from harness.results import read_cells, read_trials
from harness.runner import run_experiment
from harness.training import fit
from harness.pool import WorkerPool
from tests.conftest import ROOT, SMOKE, sdm_command
from tests.test_attacks import TINY, cell, config, context
from tests.test_precision import KEYS_BEFORE, SETTING, split

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


# -- 1. heads: drawn on the CPU, copied to the model's device ---------------------------------------------------------
def test_heads_are_drawn_on_the_cpu_then_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Classifier(build_encoder(TINY, pretrained=False, init_seed=0), 2)
    model.reset_head(torch.Generator().manual_seed(7))
    # The same values as the draw in place on a CPU head (what every CPU run so far drew).
    bound = 1.0 / model.head.in_features ** 0.5
    expected = torch.empty_like(model.head.weight)
    generator = torch.Generator().manual_seed(7)
    expected.uniform_(-bound, bound, generator=generator)
    assert torch.equal(model.head.weight, expected)
    # A fake of CUDA's check: a tensor refuses a generator of another device ("Expected a 'cuda' device type for
    # generator"). The head on another device (meta here) is still drawn, from the CPU generator.
    real = torch.Tensor.uniform_

    def strict(self, *args, generator=None, **kwargs):
        if generator is not None and generator.device.type != self.device.type:
            raise RuntimeError(f"Expected a '{self.device.type}' device type for generator")
        return real(self, *args, generator=generator, **kwargs)

    monkeypatch.setattr(torch.Tensor, "uniform_", strict)
    model.head.to("meta")
    model.reset_head(torch.Generator().manual_seed(7))
    assert model.head.weight.device.type == "meta"


# -- 4. the device follows what Ray assigned --------------------------------------------------------------------------
def test_outside_ray_the_device_follows_the_request_and_cuda() -> None:
    assert assigned_device(0, cuda_available=True) == CPU  # visible GPUs, none asked for
    assert assigned_device(0.5, cuda_available=True) == CUDA
    assert assigned_device(1, cuda_available=False) == CPU


@ray.remote
def device_in_ray(requested: float) -> tuple[str, list]:
    return str(assigned_device(requested, cuda_available=True)), ray.get_gpu_ids()


@pytest.fixture(scope="module")
def fake_gpus():
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_in_ray_the_device_is_what_ray_assigned(fake_gpus) -> None:
    # CUDA is faked as available everywhere: a 0-GPU worker on a GPU node sees the GPUs and must not take one.
    for requested, expected in ((0, "cpu"), (0.5, "cuda:0"), (1, "cuda:0")):
        task = device_in_ray.options(num_gpus=requested)
        seen, ids = ray.get(task.remote(requested))
        assert seen == expected and bool(ids) == (requested > 0), requested
    # Asked for a GPU but given none: a process that reserved no GPU never computes on one.
    assert ray.get(device_in_ray.options(num_gpus=0).remote(1))[0] == "cpu"


# -- 5. GPU training tasks are single-use -----------------------------------------------------------------------------
def test_gpu_tasks_run_each_in_a_fresh_process(fake_gpus) -> None:
    def current_pid() -> int:  # nested: pickled by value, the workers cannot import this module
        return os.getpid()

    gpu_task = ray.remote(**task_options(Resources(cpu=0, gpu=1)))(current_pid)
    assert len({ray.get(gpu_task.remote()) for _ in range(3)}) == 3
    assert task_options(Resources(cpu=1, gpu=0))["max_calls"] == 0  # CPU tasks keep their warm processes


# -- 2. requests that cannot fit are refused at once, before anything is written ---------------------------------------
@pytest.mark.parametrize(("overrides", "message"), [
    (["defense_training.resources={cpu: 1, gpu: 3}"],
     "defense_training.resources.gpu: asks for 3 but no node of the connected Ray cluster has more than 2"),
    (["search.resources_per_trial={cpu: 3, gpu: 0.5}"],
     "search.resources_per_trial.cpu: asks for 3 but no node of the connected Ray cluster has more than 2"),
])
def test_a_run_that_cannot_fit_is_refused_at_once(fake_gpus, tmp_path: Path, overrides, message) -> None:
    cfg = load_config(SMOKE, [*overrides, f"output={tmp_path / 'run'}"])
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        run_experiment(cfg, origin="smoke.yaml", console=_quiet())
    assert not (tmp_path / "run").exists()


def test_requests_are_checked_node_by_node_and_summed_into_the_pool() -> None:
    nodes = [{"CPU": 4.0}, {"CPU": 1.0, "GPU": 2.0}]
    both = load_config(SMOKE, ["search.resources_per_trial={cpu: 2, gpu: 1}"])
    with pytest.raises(UserError, match=r"search\.resources_per_trial: \{cpu: 2, gpu: 1\} fits on no single node"):
        check_requests(both, nodes, "the cluster")
    check_requests(load_config(SMOKE, ["search.resources_per_trial={cpu: 2, gpu: 1}", "cluster.autoscaling=true"]),
                   nodes, "the cluster")  # left to the autoscaler
    shares = load_config(SMOKE, ["search.resources_per_trial={cpu: 0.5, gpu: 0.5}", "search.max_concurrent=6"])
    assert pool_size(shares, nodes, cells=1) == 2  # the CPU of the GPU node limits it
    cpus = load_config(SMOKE, ["search.resources_per_trial={cpu: 1, gpu: 0}", "search.max_concurrent=6"])
    assert pool_size(cpus, nodes, cells=1) == 5 and pool_size(cpus, nodes[:1], cells=1) == 4
    # Cells searched at once share the pool: it grows to what their batches use, within what the nodes hold.
    pairs = load_config(SMOKE, ["search.resources_per_trial={cpu: 1, gpu: 0}", "search.max_concurrent=2"])
    assert pool_size(pairs, nodes, cells=1) == 2 and pool_size(pairs, nodes, cells=2) == 4
    assert pool_size(pairs, nodes, cells=8) == 5
    capped = load_config(SMOKE, ["search.resources_per_trial={cpu: 1, gpu: 0}", "search.max_concurrent=2",
                                 "cluster.cells_at_once=1"])
    assert pool_size(capped, nodes, cells=8) == 2


def test_a_cluster_running_on_this_machine_is_found(tmp_path: Path) -> None:
    assert running_cluster(tmp_path) is None
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        (tmp_path / "ray_current_cluster").write_text(address)
        assert running_cluster(tmp_path) == address
    assert running_cluster(tmp_path) is None  # stale: nothing answers there any more


# -- 8. CUDA determinism, and the weights-cache key ------------------------------------------------------------------
def test_cuda_processes_get_determinism_and_a_memory_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda *a, **k: calls.append(("det", a, k)))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda *a: calls.append(("memory", *a)))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    prepare_device(CPU, 0.5)
    assert calls == [] and "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # CPU processes are left as they were
    prepare_device(CUDA, 0.25)
    assert calls == [("det", (True,), {"warn_only": True}), ("memory", 0.25, CUDA)]
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    calls.clear()
    prepare_device(CUDA, 1)
    assert calls == [("det", (True,), {"warn_only": True})]  # a whole GPU: no cap


def test_the_cache_key_holds_the_device_kind_and_keeps_cpu_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # a GPU with bf16
    cfg = load_config(SMOKE, ["model.precision=fp32"])
    for spec in cfg.defenses:
        assert defense_key(cfg, spec, "data", 0, CPU) == KEYS_BEFORE[spec.name]  # cached CPU weights stay valid
        assert defense_key(cfg, spec, "data", 0, CUDA) != KEYS_BEFORE[spec.name]
    bf16 = load_config(SMOKE, ["model.precision=bf16"])
    spec = bf16.defenses[1]
    assert defense_key(bf16, spec, "data", 0, CUDA) not in (defense_key(bf16, spec, "data", 0, CPU),
                                                            defense_key(cfg, spec, "data", 0, CUDA))


# -- 9. memory hygiene ------------------------------------------------------------------------------------------------
def test_fit_leaves_no_gradient_buffers_on_the_model() -> None:
    model = Classifier(build_encoder(TINY, pretrained=False, init_seed=0), 2)
    fit(model, split(32), "gender", SETTING, seed=0)
    assert all(p.grad is None for p in model.parameters())


def test_lora_trains_on_the_cached_model_without_copying_it(cell, monkeypatch: pytest.MonkeyPatch) -> None:
    data = cell
    attack = Lora.from_spec({}, {}, "test")
    trial = config(attack, lr=1e-3, steps=5, batch_size=12, rank=4, alpha=16.0)
    first = attack.run(context(data), trial, 0, True)
    ctx = context(data)
    model = ctx.classifier(0)
    names = sorted(model.encoder.state_dict())
    copies: list[type] = []
    real = copy.deepcopy
    monkeypatch.setattr(copy, "deepcopy", lambda obj, *a: copies.append(type(obj)) or real(obj, *a))
    again = attack.run(ctx, trial, 0, True)
    assert Classifier not in copies
    assert ctx.classifier(0) is model and sorted(model.encoder.state_dict()) == names  # adapters taken out
    assert again == first  # the same trial as on a model of its own


# -- 10. attention: eager only where second-order gradients need it ---------------------------------------------------
def test_eager_attention_only_for_second_order_mlac() -> None:
    second = Mlac.from_params({"inner_steps": 2, "first_order": False}, "test")
    first = Mlac.from_params({"inner_steps": 2, "first_order": True}, "test")
    assert second.needs_double_backward() and not first.needs_double_backward()
    assert attention_for(CUDA, False) == "sdpa"
    assert attention_for(CUDA, True) == attention_for(CPU, False) == "eager"
    assert build_encoder(TINY, pretrained=False, attention="sdpa").config._attn_implementation == "sdpa"


# -- the GPU check: says so on a machine without CUDA ----------------------------------------------------------------
def test_gpu_check_says_there_is_no_cuda_and_exits_0() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: benchmarks/gpu_check.py runs for real here")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "gpu_check: no CUDA device on this machine; nothing to check"


# -- a two-node cluster whose GPUs are all on the worker node ---------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_worker_node(tmp_path_factory: pytest.TempPathFactory, fake_gpus):
    ray.shutdown()  # the local instance of the tests above
    node_cache = tmp_path_factory.mktemp("node-cache")  # the worker node's own cache, which the driver cannot see
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=2, num_gpus=2, env_vars={"SDM_CACHE_DIR": str(node_cache)})
        cluster.wait_for_nodes()
        yield cluster, worker.node_id, node_cache
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_workers_are_placed_by_capacity(gpu_worker_node) -> None:
    cluster, gpu_node, _ = gpu_worker_node
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        cfg = load_config(SMOKE, ["search.resources_per_trial={cpu: 0.5, gpu: 0.5}", "search.max_concurrent=6"])
        size = pool_size(cfg, [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]], cells=1)
        assert size == 4  # 2 GPUs / 0.5; the head has none
        pool = WorkerPool(size, cfg.search.resources_per_trial)
        try:
            workers = [pool.borrow()[1] for _ in range(size)]
            # Every worker starts (none waits for room that is not there), all of them on the GPU node.
            where = ray.get([w.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
                             for w in workers], timeout=180)
            assert where == [gpu_node] * size
        finally:
            pool.shutdown()
    finally:
        ray.shutdown()


@pytest.mark.timeout(900)
def test_a_gpu_run_on_the_cluster_completes_with_weights_from_the_worker_node(gpu_worker_node, tmp_path: Path):
    """The trial workers take every GPU (4 x 0.5), and the defense training asks for a whole one: it runs first, on
    the worker node, caches there, and the driver gets the weights through the object store."""
    cluster, gpu_node, node_cache = gpu_worker_node
    out, driver_cache = tmp_path / "run", tmp_path / "driver-cache"
    overrides = [
        "defenses=[{name: random-init}, {name: bert, params: {steps: 5, lr: 1.0e-3, batch_size: 16}}]",
        "budgets=[30]", "tasks.attacked=[harmful]", "search.num_samples=2", "search.reruns=1",
        "search.max_concurrent=4", "search.resources_per_trial={cpu: 0.5, gpu: 0.5}",
        "defense_training.resources={cpu: 1, gpu: 1}", "attacks=[{name: finetune, space: {steps: 5, mode: probe}}]",
    ]
    args = [arg for o in overrides for arg in ("--set", o)]
    result = subprocess.run([*sdm_command(), "run", str(SMOKE), "--out", str(out), "--address", cluster.address,
                             *args], cwd=tmp_path, capture_output=True, text=True, timeout=800,
                            env={**os.environ, "SDM_CACHE_DIR": str(driver_cache)})
    assert result.returncode == 0, result.stderr[-3000:]
    cells = read_cells(out).to_pylist()
    assert [c["status"] for c in cells] == ["ok", "ok"]
    trials = read_trials(out).to_pylist()
    assert {t["node_id"] for t in trials} == {gpu_node}
    # No CUDA behind the fake GPUs: the workers computed on the CPU, and the rows say so.
    assert all(t["hardware"].startswith("cpu ") and t["precision"] == "fp32" for t in trials)
    assert len(list(node_cache.glob("defenses/bert-*/encoder.safetensors"))) == 1
    assert not list(driver_cache.glob("defenses/*/encoder.safetensors"))


def test_without_address_on_a_cluster_head_it_suggests_address_auto(gpu_worker_node, tmp_path: Path) -> None:
    # The cluster's head runs on this machine (Ray wrote its address where `--address auto` looks).
    result = subprocess.run([*sdm_command(), "run", str(SMOKE), "--out", str(tmp_path / "run"), "--set",
                             "search.resources_per_trial={cpu: 1, gpu: 0.5}"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "search.resources_per_trial.gpu: asks for 0.5 but no node of this machine's Ray instance" in result.stderr
    assert "to run on it, add --address auto" in result.stderr
    assert not (tmp_path / "run").exists()


def _quiet():
    from rich.console import Console

    return Console(file=io.StringIO())
