"""Devices and data parallelism: two gloo processes on CPU take the steps of one process on the
combined batch, each reading only its share of a memory-mapped table's rows; CUDA results
equal CPU ones (skipped without CUDA)."""

import datetime
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cnflow import CNF, CNFDensity
from cnflow.training import TrainConfig, distributed_rank, train
from cnflow.training.rows import MappedRows

pytestmark = pytest.mark.slow  # runs scripts or processes; .ci/run includes it

CONFIG = {"max_iter": 4, "batch_size": 32, "lr": 1e-2}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem() -> tuple[CNF, torch.Tensor]:
    """A float64 CNF with fixed rk4 steps (every row's solve independent of the batch)."""
    torch.manual_seed(0)
    flow = CNF(2, hidden=(8, 8), method="rk4", step_size=0.25).double()
    X = torch.randn(64, 2, dtype=torch.float64) * torch.tensor([1.0, 0.5], dtype=torch.float64)
    return flow, X


def _nll(flow: CNF, batch: torch.Tensor) -> torch.Tensor:
    return -flow.log_prob(batch).mean()


def _join(rank: int, world: int, port: int) -> None:
    """Join a gloo group on this machine, one thread a process; a collective that waits
    for a process that never comes fails after 30 s instead of hanging."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))


def _combined_batch(rank: int, out_dir: str) -> None:
    """Rank 1 starts from other parameters; a batch that the processes cannot share evenly is
    refused; then CONFIG's data-parallel steps."""
    flow, X = _problem()
    if rank == 1:  # DDP must start every process from rank 0's parameters
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(1.0)
    errors = []
    try:
        train(flow, X, _nll, TrainConfig(max_iter=1, batch_size=33))
    except ValueError as err:
        errors.append(str(err))
    result = train(flow, X, _nll, TrainConfig(**CONFIG),
                   generator=torch.Generator().manual_seed(0))
    torch.save({"state": flow.state_dict(), "errors": errors, "rank": distributed_rank(),
                "losses": [h["loss"] for h in result.history]},
               Path(out_dir) / f"rank{rank}.pt")


def _late_start(rank: int, out_dir: str) -> None:
    """Rank 1 starts its clock 0.6 s after rank 0: a time limit must still stop both at the
    same step, or rank 0 would leave rank 1 waiting in DDP's gradient exchange. Then a
    CNFDensity fit with a time limit (its two phases, each stopped by its own share of it)."""
    flow, X = _problem()
    dist.barrier()
    if rank == 1:
        time.sleep(0.6)
    result = train(flow, X, _nll, TrainConfig(max_iter=10**6, batch_size=32,
                                              max_seconds=1.0))
    dist.barrier()
    est = CNFDensity(hidden=(8,), max_iter=10**6, batch_size=32, max_seconds=2.0,
                     fine_tune_iter=10**6, validation_fraction=0.0, random_state=0,
                     device="cpu")
    est.fit(X.numpy())
    torch.save({"n_iter": result.n_iter, "stop": result.stop_reason,
                "objectives": [h["objective"] for h in est.history_]},
               Path(out_dir) / f"late{rank}.pt")


class _RecordingRows(MappedRows):
    """The rows of a memory map, recording the row indices of every batch read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read: list[list[int]] = []

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        self.read.append(indices.tolist())
        return super().batch(indices)


def _train_from_a_memory_map(out_dir: str) -> tuple[list[list[int]], dict]:
    """CONFIG's steps of _problem's flow on a memory map of its rows (out_dir/rows.npy):
    the rows each batch read, and the parameters."""
    flow, _ = _problem()
    rows = _RecordingRows(np.load(Path(out_dir) / "rows.npy", mmap_mode="r"),
                          dtype=torch.float64)
    train(flow, rows, _nll, TrainConfig(**CONFIG), generator=torch.Generator().manual_seed(0))
    return rows.read, flow.state_dict()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Every run in one gloo group (one process start serves the tests)."""
    _join(rank, world, port)
    try:
        _combined_batch(rank, out_dir)
        _late_start(rank, out_dir)
        if rank == 0:
            np.save(Path(out_dir) / "rows.npy", _problem()[1].numpy())
        dist.barrier()
        read, state = _train_from_a_memory_map(out_dir)
        torch.save({"read": read, "state": state}, Path(out_dir) / f"mapped{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gloo_runs(tmp_path_factory) -> Path:
    """The folder where two gloo processes saved what :func:`_worker` ran."""
    out = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


def test_two_gloo_processes_take_the_steps_of_one_process_on_the_combined_batch(gloo_runs):
    flow, X = _problem()
    start = {k: v.clone() for k, v in flow.state_dict().items()}
    result = train(flow, X, _nll, TrainConfig(**CONFIG),
                   generator=torch.Generator().manual_seed(0))
    assert distributed_rank() is None
    moved = max(float((flow.state_dict()[k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-3  # the steps changed the parameters
    for rank in (0, 1):
        saved = torch.load(gloo_runs / f"rank{rank}.pt", weights_only=True)
        assert tuple(saved["rank"]) == (rank, 2)
        assert "multiple of the number of processes" in saved["errors"][0]
        for key, value in flow.state_dict().items():
            torch.testing.assert_close(saved["state"][key], value, rtol=1e-8, atol=1e-10)
        # the reported loss is the mean over the processes: the loss of the whole batch
        np.testing.assert_allclose(saved["losses"], [h["loss"] for h in result.history],
                                   rtol=1e-10)


def test_a_time_limit_stops_every_process_at_the_same_step(gloo_runs):
    late = [torch.load(gloo_runs / f"late{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert late[0] == late[1]
    assert late[0]["stop"] == "time_limit" and late[0]["n_iter"] > 0
    assert "maximum_likelihood" in late[0]["objectives"]  # both phases ran, in step


def test_each_process_reads_only_its_share_of_a_memory_mapped_batch(gloo_runs):
    """Each process reads the rows of its half of every minibatch, and together they take
    the steps of one process that reads the whole batch."""
    whole, state = _train_from_a_memory_map(str(gloo_runs))
    for rank in (0, 1):
        saved = torch.load(gloo_runs / f"mapped{rank}.pt", weights_only=True)
        assert saved["read"] == [batch[16 * rank:16 * rank + 16] for batch in whole]
        for key, value in state.items():
            torch.testing.assert_close(saved["state"][key], value, rtol=1e-8, atol=1e-10)


def test_torchrun_entry_point_trains_and_only_rank_0_writes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_port", str(_free_port()), "-m", "cnflow", "train", "8gaussians",
         "--n-samples", "1500", "--max-iter", "3", "--batch-size", "64", "--device", "cpu",
         "--resolution", "16", "--quiet", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.count("training CNFDensity on 8gaussians") == 1  # rank 0 only
    assert "(2 processes)" in completed.stdout
    est = CNFDensity.load(out / "model.pt")
    # 1,500 rows: one flow (held-out rows, a chosen preprocessing), three data-parallel steps
    assert est.n_members_ == 1 and est.n_iter_ == 3
    assert np.isfinite(est.score_samples(np.zeros((4, 2)))).all()


@CUDA
def test_cuda_log_prob_equals_cpu_and_models_move_between_devices(tmp_path):
    torch.manual_seed(0)
    flow = CNF(2, hidden=(16, 16))
    x = torch.randn(256, 2)
    cpu = flow.log_prob(x).detach()
    gpu = flow.to("cuda").log_prob(x.to("cuda")).detach().cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
    X = np.random.default_rng(0).normal(size=(500, 2))
    est = CNFDensity(max_iter=5, device="cuda", random_state=0).fit(X)
    est.save(tmp_path / "gpu.pt")
    on_cpu = CNFDensity.load(tmp_path / "gpu.pt", device="cpu")
    np.testing.assert_allclose(on_cpu.score_samples(X[:50]), est.score_samples(X[:50]),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:.*meta parameter:UserWarning")  # meta holds no values
def test_a_model_saved_from_cuda_loads_on_cpu_and_on_the_meta_device(tmp_path):
    """The CPU suite's cover of device moves: a file that names CUDA (as a GPU fit writes it)
    loads with device="cpu" and scores identically; device="meta" puts every tensor there."""
    X = np.random.default_rng(0).normal(size=(300, 2))
    est = CNFDensity(max_iter=3, device="cpu", random_state=0).fit(X)
    est.device = "cuda"  # what a fit on a GPU stores
    est.save(tmp_path / "model.pt")
    on_cpu = CNFDensity.load(tmp_path / "model.pt", device="cpu")
    assert on_cpu.device_ == torch.device("cpu")
    np.testing.assert_array_equal(on_cpu.score_samples(X[:20]), est.score_samples(X[:20]))
    on_meta = CNFDensity.load(tmp_path / "model.pt", device="meta")
    assert {t.device.type for t in on_meta.flow_.state_dict().values()} == {"meta"}


def test_gpu_check_script_runs(tmp_path):
    """A smoke run of benchmarks/gpu_check.py with the CPU standing in for the GPU (its CUDA run
    needs a GPU); the agreement of a device with itself is exact."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    result = gpu_check.main(["--device", "cpu", "--batches", "64", "--repeats", "1", "--quick",
                             "--out", str(tmp_path)])
    assert result["agreement"]["log_prob_max_abs_diff"] == 0.0
    assert result["agreement"]["saved_on_cuda_scored_on_cpu_max_abs_diff"] == 0.0
    assert [r["batch"] for r in result["steps"]] == [64, 64]
    assert all(r["gpu_seconds"] > 0 and r["speedup"] > 0 for r in result["steps"])
    assert (tmp_path / "gpu_check.json").exists()
