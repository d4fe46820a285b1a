"""Claims about neural ODEs and CNFs from the literature, measured on this package.

Four sub-commands, one per claim; each writes OUT/claims_<name>.json and .png (OUT: docs by
default; *_quick.* with --quick, a smoke run of a few seconds for the tests).

memory        Adjoint training needs memory independent of the number of solver steps;
              backpropagation through the solver needs memory growing linearly with it (Chen et
              al. 2018, section 2). Measured: one training step of a CNF (log_prob of a batch,
              then backward) with a model fitted to checkerboard, fixed-step rk4 with 10, 100
              and 1000 steps and adaptive dopri5 at rtol = atol = 1e-3, 1e-5, 1e-7, adjoint vs
              backprop, each configuration in a fresh process (--quick: all in one): the bytes
              autograd saves for backward (saved-tensor hooks, exact) and the peak rise of the
              process's resident memory over the level before the step (a thread reads
              /proc/self/statm every 0.5 ms; glibc is told to return large blocks to the system
              at once). The helpers are benchmarks/measure.py's measure_step and run_fresh.
reverse_cost  The backward (adjoint) solve takes roughly half the evaluations of the forward
              solve (Chen et al. 2018, figure 3c; a torchdiffeq maintainer later said the
              paper's numbers came from scipy's odeint, torchdiffeq issue 97). Measured: backward
              over forward NFE at every iteration of real maximum-likelihood training runs
              (checkerboard, RNODE penalties as CNFDensity's defaults) with dopri5 and bosh3,
              each with the seminorm on and off (Kidger, Chen & Lyons 2021).
tolerance     Wall time is about linear in NFE, and the tolerance sets the accuracy (Chen et al.
              2018, figure 3a-b). Measured: one model fitted by flow matching, its test set
              scored in one solve at rtol = atol from 1e-2 to 1e-8 (median of 3 timings); error
              of the test NLL against a float64 solve at 1e-9, and a least-squares line of
              seconds against NFE.
depth         The number of evaluations grows during training (Chen et al. 2018, figure 3d), and
              the RNODE penalties keep it down (Finlay et al. 2020). Measured: forward NFE per
              iteration of maximum-likelihood training on checkerboard without penalties
              (plain FFJORD, Grathwohl et al. 2019) and with λ_K = λ_J = 0.01.

Run: .venv/bin/python benchmarks/claims.py {memory,reverse_cost,tolerance,depth,all} [--quick]
     [--out docs] [--threads N] [--plot-only]
Measured with --threads 1 on a 2-core machine shared with other jobs: memory 2.2 minutes,
reverse_cost 1.4, tolerance 1.6, depth 6.6; "all" their sum. --plot-only redraws a figure from
its JSON without measuring again.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from measure import measure_step, run_fresh

from cnflow import CNF, CNFDensity
from cnflow.datasets import empirical_entropy, make_toy
from cnflow.training import TrainConfig, train

CLAIMS = ("memory", "reverse_cost", "tolerance", "depth")
DATASET = "checkerboard"
SEED = 0


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is: the full runs, or the smoke runs of --quick."""

    hidden: tuple[int, ...] = (64, 64, 64)
    n_train: int = 20_000
    n_test: int = 20_000            # test rows that score the trained models
    tolerance_rows: int = 5_000     # test rows scored at every tolerance
    fm_steps: int = 10_000          # flow-matching steps of the model that memory/tolerance use
    ml_steps_reverse: int = 150     # maximum-likelihood iterations per run, reverse_cost
    ml_steps_depth: int = 1000      # ... and depth (CNFDensity's default max_iter)
    batch: int = 256                # training batch (maximum likelihood)
    memory_batch: int = 128         # rows in the measured training step
    rk4_steps: tuple[int, ...] = (10, 100, 1000)
    memory_tols: tuple[float, ...] = (1e-3, 1e-5, 1e-7)
    tols: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
    reference_tol: float = 1e-9
    repeats: int = 3
    # memory: each configuration in a fresh process of its own (False: all of them in one fresh
    # process; the saved bytes are exact counts either way, the resident memory is not)
    process_per_config: bool = True


QUICK = Sizes(hidden=(16,), n_train=500, n_test=200, tolerance_rows=200, fm_steps=30,
              ml_steps_reverse=4, ml_steps_depth=6, batch=64, memory_batch=32, rk4_steps=(5, 20),
              memory_tols=(1e-3,), tols=(1e-2, 1e-4), reference_tol=1e-6, repeats=1,
              process_per_config=False)


# ---------------------------------------------------------------- shared pieces


def machine() -> dict:
    return {"platform": platform.platform(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_average_1min_at_end": os.getloadavg()[0]}


def fit_flow_matching(sizes: Sizes) -> CNFDensity:
    """The model that memory and tolerance measure: CNFDensity's default objective (flow
    matching) on checkerboard, a CNF with non-trivial dynamics at a small training cost."""
    X = make_toy(DATASET, sizes.n_train, random_state=0)
    start = time.perf_counter()
    # one CNF on per-column standardised rows, at every size (the small-table defaults
    # would whiten and average several flows on the smoke mode's few rows)
    est = CNFDensity(hidden=sizes.hidden, max_iter=sizes.fm_steps, random_state=SEED,
                     preprocessing="standardize", validation_fraction=0.0,
                     device="cpu").fit(X)
    print(f"fitted {DATASET} by {sizes.fm_steps} flow-matching steps in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return est


def standardised(est: CNFDensity, X: np.ndarray, dtype: torch.dtype = torch.float32
                 ) -> torch.Tensor:
    """Rows in the model's own (standardised) units, as the estimator scores them."""
    return torch.as_tensor((X - est.mean_) / est.scale_, dtype=dtype)


def linear_fit(x: list[float], y: list[float]) -> dict:
    """Least-squares y ≈ intercept + slope·x, with R²."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(xa, ya, 1)
    residual = ya - (intercept + slope * xa)
    total = ((ya - ya.mean()) ** 2).sum()
    r2 = 1.0 - (residual ** 2).sum() / total if total > 0 else 1.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": float(r2)}


def new_figure(n_panels: int, width: float = 4.6, height: float = 3.8) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * n_panels, height))
    FigureCanvasAgg(fig)
    return fig, list(np.atleast_1d(fig.subplots(1, n_panels)))


def stem(out: Path, name: str, quick: bool) -> Path:
    return out / (f"claims_{name}" + ("_quick" if quick else ""))


def draw(name: str, result: dict, path: Path) -> None:
    """The claim's figure, drawn from its JSON result alone (so --plot-only can redraw it)."""
    fig = PLOTS[name](result)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def write(out: Path, name: str, quick: bool, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = stem(out, name, quick)
    result["command"] = f"python benchmarks/claims.py {name}" + (" --quick" if quick else "")
    result["machine"] = machine()
    path.with_suffix(".json").write_text(json.dumps(result, indent=1))
    draw(name, result, path.with_suffix(".png"))
    print(f"wrote {path}.json and .png", flush=True)


# ---------------------------------------------------------------- 1. memory


def memory_child(spec: dict) -> dict:
    """One configuration, in this (fresh) process: warm up, then measure one training step."""
    torch.manual_seed(SEED)
    est = CNFDensity.load(spec["model"])
    flow = est.flow_
    flow.adjoint = spec["mode"] == "adjoint"
    x = standardised(est, make_toy(DATASET, spec["batch"], random_state=2))
    # Warm-up (kernels, allocator, the first autograd graph) with a one-step rk4 solve.
    flow.method, flow.step_size = "rk4", None
    (-flow.log_prob(x).mean()).backward()
    flow.zero_grad(set_to_none=True)
    flow.method = spec["solver"]
    if spec["solver"] == "rk4":
        flow.step_size = float(flow.T) / spec["steps"]
    else:
        flow.step_size, flow.rtol, flow.atol = None, spec["tol"], spec["tol"]
    measured = measure_step(lambda: -flow.log_prob(x).mean(), lambda loss: loss, "cpu")
    row = {k: v for k, v in spec.items() if k != "model"}
    return {**row, "nfe_forward": flow.nfe_forward, "nfe_backward": flow.nfe_backward,
            **measured}


def measure_memory(sizes: Sizes) -> dict:
    est = fit_flow_matching(sizes)
    configs = ([{"solver": "rk4", "steps": n} for n in sizes.rk4_steps]
               + [{"solver": "dopri5", "tol": tol} for tol in sizes.memory_tols])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = str(Path(tmp) / "model.pt")
        est.save(model)
        specs = [{"model": model, "mode": mode, "batch": sizes.memory_batch, **config}
                 for config in configs for mode in ("adjoint", "backprop")]
        groups = [[spec] for spec in specs] if sizes.process_per_config else [specs]
        for group in groups:
            measured = run_fresh([__file__, "--memory-child", json.dumps(group)])["rows"]
            rows += measured
            for row in measured:
                what = f"{row['steps']} steps" if "steps" in row else f"tol {row['tol']:.0e}"
                print(f"{row['solver']:6s} {what:11s} {row['mode']:8s}: NFE "
                      f"{row['nfe_forward']:5d} + {row['nfe_backward']:5d}, saved "
                      f"{row['saved_MB']:9.3f} MB, peak RSS "
                      f"{row['peak_rss_MB']:7.0f} MB (rise {row['peak_rss_rise_MB']:8.1f}), "
                      f"{row['seconds']:6.2f} s", flush=True)
    summary = {}
    for mode in ("adjoint", "backprop"):
        mine = [r for r in rows if r["mode"] == mode]
        nfe = [r["nfe_forward"] for r in mine]
        summary[mode] = {
            "saved_MB_range": [min(r["saved_MB"] for r in mine), max(r["saved_MB"] for r in mine)],
            "peak_rss_rise_MB_range": [min(r["peak_rss_rise_MB"] for r in mine),
                                       max(r["peak_rss_rise_MB"] for r in mine)],
            "saved_MB_per_evaluation": linear_fit(nfe, [r["saved_MB"] for r in mine]),
            "rss_rise_MB_per_evaluation": linear_fit(nfe, [r["peak_rss_rise_MB"] for r in mine]),
        }
    result = {"claim": "adjoint: memory independent of the number of solver steps; backprop: "
                       "grows linearly (Chen et al. 2018)",
              "config": {"dataset": DATASET, "hidden": list(sizes.hidden),
                         "fm_steps": sizes.fm_steps, "batch": sizes.memory_batch,
                         "trace": "exact", "loss": "-log_prob(x).mean()",
                         "process_per_config": sizes.process_per_config,
                         "malloc": "MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=131072"},
              "rows": rows, "summary": summary}
    return result


def plot_memory(result: dict) -> Figure:
    rows = result["rows"]
    fig, axes = new_figure(2)
    for key, ax, label in (("saved_MB", axes[0], "saved for backward (MB)"),
                           ("peak_rss_rise_MB", axes[1], "peak resident memory rise (MB)")):
        for mode, colour in (("adjoint", "C0"), ("backprop", "C3")):
            for solver, marker in (("rk4", "o-"), ("dopri5", "s--")):
                pts = sorted((r["nfe_forward"], max(r[key], 1e-3)) for r in rows
                             if r["mode"] == mode and r["solver"] == solver)
                if pts:
                    ax.loglog(*zip(*pts), marker, color=colour, label=f"{mode}, {solver}")
        ax.set_xlabel("forward evaluations of one step (NFE)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"One CNF training step, batch {result['config']['batch']}: adjoint vs "
                 "backprop")
    return fig


# ---------------------------------------------------------------- 2 and 4. training runs


@dataclass(frozen=True)
class Run:
    """One maximum-likelihood training run of a CNF (the estimator's defaults otherwise)."""

    label: str
    solver: str = "dopri5"
    seminorm: bool = True
    kinetic_energy: float = 0.01
    jacobian_norm: float = 0.01
    tol: float = 1e-5
    lr: float = 5e-3


def training_run(run: Run, sizes: Sizes, n_iter: int) -> dict:
    """Train a CNF by maximum likelihood with cnflow.training and keep, per iteration, the forward
    and backward NFE, the loss and the seconds of the forward pass and of the whole step."""
    X = make_toy(DATASET, sizes.n_train, random_state=0)
    X_test = make_toy(DATASET, sizes.n_test, random_state=1)
    mean, scale = X.mean(0), X.std(0)
    U = torch.as_tensor((X - mean) / scale, dtype=torch.float32)
    U_test = torch.as_tensor((X_test - mean) / scale, dtype=torch.float32)
    torch.manual_seed(SEED)
    flow = CNF(2, hidden=sizes.hidden, method=run.solver, rtol=run.tol, atol=run.tol,
               seminorm=run.seminorm)
    forward_seconds: list[float] = []

    def loss_fn(model: CNF, batch: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        if run.kinetic_energy or run.jacobian_norm:
            logp, reg = model.log_prob(batch, return_regularizers=True)
            loss = (-logp.mean() + run.kinetic_energy * reg.kinetic.mean()
                    + run.jacobian_norm * reg.jacobian.mean())
        else:
            loss = -model.log_prob(batch).mean()
        forward_seconds.append(time.perf_counter() - start)
        return loss

    config = TrainConfig(max_iter=n_iter, batch_size=sizes.batch, lr=run.lr)
    start = time.perf_counter()
    history = train(flow, U, loss_fn, config,
                    generator=torch.Generator().manual_seed(SEED)).history
    seconds = time.perf_counter() - start
    with torch.no_grad():
        test_nll = float(-flow.log_prob(U_test).mean()) + float(np.log(scale).sum())
    fwd = [h["nfe_forward"] for h in history]
    bwd = [h["nfe_backward"] for h in history]
    step = [h["seconds"] for h in history]
    ratios = [b / f for f, b in zip(fwd, bwd)]
    tenth = max(1, len(fwd) // 10)
    summary = {
        "seconds": seconds, "test_nll": test_nll,
        "test_kl": test_nll - empirical_entropy(DATASET, X_test),
        "ratio_mean": statistics.fmean(ratios), "ratio_median": statistics.median(ratios),
        "ratio_total": sum(bwd) / sum(fwd),
        "ratio_range": [min(ratios), max(ratios)],
        "nfe_forward_first_tenth": statistics.fmean(fwd[:tenth]),
        "nfe_forward_last_tenth": statistics.fmean(fwd[-tenth:]),
        "nfe_backward_last_tenth": statistics.fmean(bwd[-tenth:]),
        "nfe_forward_max": max(fwd),
        # Time of the backward pass (the adjoint solve, plus the optimiser's step) over that of
        # the forward solve, median over iterations (the first ones pay one-off costs): each
        # backward evaluation is a vector-Jacobian product, dearer than a forward one.
        "time_ratio_median": statistics.median((s - f) / f
                                               for s, f in zip(step, forward_seconds)),
    }
    print(f"{run.label:32s} {seconds:5.0f} s: NFE forward {summary['nfe_forward_first_tenth']:.0f}"
          f" -> {summary['nfe_forward_last_tenth']:.0f}, backward/forward mean "
          f"{summary['ratio_mean']:.2f} (total {summary['ratio_total']:.2f}), time ratio "
          f"{summary['time_ratio_median']:.2f}, test NLL {test_nll:.3f}", flush=True)
    return {"run": asdict(run), **summary, "nfe_forward": fwd, "nfe_backward": bwd,
            "loss": [h["loss"] for h in history], "step_seconds": step,
            "forward_seconds": forward_seconds}


def _training_config(sizes: Sizes, n_iter: int) -> dict:
    return {"dataset": DATASET, "n_train": sizes.n_train, "n_test": sizes.n_test,
            "hidden": list(sizes.hidden), "batch": sizes.batch, "iterations": n_iter,
            "optimizer": "Adam, constant lr", "trace": "exact", "seed": SEED}


def measure_reverse_cost(sizes: Sizes) -> dict:
    runs = [Run(f"{solver}, seminorm {'on' if semi else 'off'}", solver=solver, seminorm=semi)
            for solver in ("dopri5", "bosh3") for semi in (True, False)]
    n_iter = sizes.ml_steps_reverse
    results = [training_run(run, sizes, n_iter) for run in runs]
    result = {"claim": "backward NFE is roughly half the forward NFE (Chen et al. 2018, fig. 3c)",
              "config": _training_config(sizes, n_iter), "runs": results}
    return result


def plot_reverse_cost(result: dict) -> Figure:
    results, n_iter = result["runs"], result["config"]["iterations"]
    fig, axes = new_figure(2)
    ax = axes[0]
    top = max(max(r["nfe_forward"] + r["nfe_backward"]) for r in results)
    for i, r in enumerate(results):
        # Points of equal NFE overlap; a small horizontal offset per run keeps each visible.
        ax.scatter(np.asarray(r["nfe_forward"]) + 0.6 * (i - 1.5), r["nfe_backward"], s=10,
                   alpha=0.35, color=f"C{i}", label=r["run"]["label"])
    line = np.array([0, top])
    ax.plot(line, line, "k-", lw=0.8, label="backward = forward")
    ax.plot(line, line / 2, "k--", lw=0.8, label="backward = forward / 2 (claim)")
    ax.set_xlabel("forward NFE (per iteration)")
    ax.set_ylabel("backward NFE (same iteration)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, alpha=0.3)
    ax = axes[1]
    x = np.arange(len(results))
    ax.bar(x - 0.2, [r["ratio_mean"] for r in results], 0.4, label="NFE backward / forward")
    ax.bar(x + 0.2, [r["time_ratio_median"] for r in results], 0.4,
           label="seconds backward / forward")
    ax.axhline(0.5, color="k", ls="--", lw=0.8, label="claim (0.5)")
    ax.set_xticks(x, [r["run"]["label"].replace(", ", "\n") for r in results], fontsize=8)
    ax.set_ylabel("backward / forward")
    ax.set_ylim(0, 1.45 * max(max(r["ratio_mean"], r["time_ratio_median"]) for r in results))
    ax.set_title(f"NFE: mean, seconds: median over {n_iter} iterations", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"Maximum-likelihood training on {result['config']['dataset']}: backward vs "
                 "forward solve")
    return fig


def measure_depth(sizes: Sizes) -> dict:
    runs = [Run("no penalties (FFJORD)", kinetic_energy=0.0, jacobian_norm=0.0),
            Run("RNODE λK = λJ = 0.01 (default)")]
    n_iter = sizes.ml_steps_depth
    results = [training_run(run, sizes, n_iter) for run in runs]
    result = {"claim": "forward NFE grows during training (Chen et al. 2018, fig. 3d); the RNODE "
                       "penalties keep it lower (Finlay et al. 2020)",
              "config": _training_config(sizes, n_iter), "runs": results}
    return result


def plot_depth(result: dict) -> Figure:
    results, n_iter = result["runs"], result["config"]["iterations"]
    fig, axes = new_figure(2)
    window = max(1, n_iter // 20)
    for i, r in enumerate(results):
        it = np.arange(1, len(r["nfe_forward"]) + 1)
        for ax, key in ((axes[0], "nfe_forward"), (axes[1], "loss")):
            values = np.asarray(r[key], float)
            ax.plot(it, values, color=f"C{i}", lw=0.6, alpha=0.35)
            if len(values) >= window > 1:
                smooth = np.convolve(values, np.ones(window) / window, mode="valid")
                ax.plot(it[window - 1:], smooth, color=f"C{i}", lw=1.6)
            ax.plot([], [], color=f"C{i}", label=f"{r['run']['label']}: test NLL "
                                                 f"{r['test_nll']:.3f}, {r['seconds']:.0f} s")
    axes[0].set_ylabel("forward NFE")
    axes[1].set_ylabel("training loss (NLL + penalties)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Maximum-likelihood training on {result['config']['dataset']}, dopri5 at "
                 f"1e-5 (running mean of {window})")
    return fig


# ---------------------------------------------------------------- 3. tolerance


def timed_log_prob(flow: CNF, U: torch.Tensor, tol: float, repeats: int) -> tuple[torch.Tensor,
                                                                                   int, float]:
    """log p of every row in one solve at rtol = atol = tol: values, NFE, median seconds."""
    flow.rtol = flow.atol = tol
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            logp = flow.log_prob(U)
            times.append(time.perf_counter() - start)
    return logp, flow.nfe_forward, statistics.median(times)


def measure_tolerance(sizes: Sizes) -> dict:
    est = fit_flow_matching(sizes)
    X_test = make_toy(DATASET, sizes.tolerance_rows, random_state=1)
    log_scale = float(np.log(est.scale_).sum())
    flow = est.flow_.eval()
    reference = copy.deepcopy(flow).to(torch.float64)
    ref_logp, ref_nfe, ref_seconds = timed_log_prob(
        reference, standardised(est, X_test, torch.float64), sizes.reference_tol, 1)
    ref_nll = float(-ref_logp.mean()) + log_scale
    print(f"reference (float64, tol {sizes.reference_tol:.0e}): NFE {ref_nfe}, "
          f"{ref_seconds:.1f} s, test NLL {ref_nll:.8f}", flush=True)
    U = standardised(est, X_test)
    rows = []
    for tol in sizes.tols:
        logp, nfe, seconds = timed_log_prob(flow, U, tol, sizes.repeats)
        nll = float(-logp.mean()) + log_scale
        row = {"tol": tol, "nfe": nfe, "seconds": seconds, "test_nll": nll,
               "nll_error": abs(nll - ref_nll),
               "max_row_error": float((logp.double() - ref_logp).abs().max())}
        rows.append(row)
        print(f"tol {tol:.0e}: NFE {nfe:4d}, {seconds:6.2f} s, test NLL {nll:.6f}, error "
              f"{row['nll_error']:.1e} (worst row {row['max_row_error']:.1e})", flush=True)
    fit = linear_fit([r["nfe"] for r in rows], [r["seconds"] for r in rows])
    loglog = linear_fit([math.log(r["nfe"]) for r in rows], [math.log(r["seconds"]) for r in rows])
    # The test NLL is itself a Monte Carlo estimate; its standard error bounds what a tighter
    # tolerance can usefully buy.
    standard_error = float(ref_logp.std() / math.sqrt(len(ref_logp)))
    result = {"claim": "time ~ linear in NFE; the tolerance buys accuracy (Chen et al. 2018, "
                       "fig. 3a-b)",
              "config": {"dataset": DATASET, "hidden": list(sizes.hidden),
                         "fm_steps": sizes.fm_steps, "n_test": sizes.tolerance_rows,
                         "solver": "dopri5",
                         "dtype": "float32", "repeats": sizes.repeats, "one_solve": True},
              "reference": {"tol": sizes.reference_tol, "dtype": "float64", "nfe": ref_nfe,
                            "seconds": ref_seconds, "test_nll": ref_nll},
              "rows": rows, "time_vs_nfe": {**fit, "ms_per_evaluation": 1e3 * fit["slope"],
                                            "loglog_slope": loglog["slope"]},
              "test_nll_standard_error": standard_error}
    return result


def plot_tolerance(result: dict) -> Figure:
    rows, fit = result["rows"], result["time_vs_nfe"]
    standard_error = result["test_nll_standard_error"]
    fig, axes = new_figure(3, width=4.2)
    tols, nfes = [r["tol"] for r in rows], [r["nfe"] for r in rows]
    axes[0].loglog(tols, nfes, "o-")
    axes[0].set_xlabel("rtol = atol")
    axes[0].set_ylabel("forward NFE (one solve of the test set)")
    axes[0].invert_xaxis()
    axes[1].plot(nfes, [r["seconds"] for r in rows], "o", label="measured")
    grid = np.linspace(0, max(nfes) * 1.05, 50)
    axes[1].plot(grid, fit["intercept"] + fit["slope"] * grid, "k--", lw=0.8,
                 label=f"{1e3 * fit['slope']:.1f} ms per evaluation, R² {fit['r2']:.3f}")
    axes[1].set_xlabel("forward NFE")
    axes[1].set_ylabel(f"seconds to score {result['config']['n_test']:,} rows")
    axes[1].legend(fontsize=7)
    axes[2].loglog(tols, [max(r["nll_error"], 1e-12) for r in rows], "o-",
                   label="|test NLL − reference|")
    axes[2].loglog(tols, [max(r["max_row_error"], 1e-12) for r in rows], "s-",
                   label="worst row |log p − reference|")
    axes[2].loglog(tols, tols, "k--", lw=0.8, label="error = tolerance")
    axes[2].axhline(standard_error, color="C3", lw=0.8,
                    label=f"Monte Carlo s.e. of the test NLL ({standard_error:.1e})")
    axes[2].set_xlabel("rtol = atol")
    axes[2].set_ylabel("error (nats)")
    axes[2].invert_xaxis()
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"A CNF fitted to {result['config']['dataset']}, scored at each tolerance "
                 "(dopri5, float32)")
    return fig


# ---------------------------------------------------------------- command line

MEASURES: dict[str, Callable[[Sizes], dict]] = {
    "memory": measure_memory, "reverse_cost": measure_reverse_cost,
    "tolerance": measure_tolerance, "depth": measure_depth}
PLOTS: dict[str, Callable[[dict], Figure]] = {
    "memory": plot_memory, "reverse_cost": plot_reverse_cost, "tolerance": plot_tolerance,
    "depth": plot_depth}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("claim", nargs="?", choices=[*CLAIMS, "all"],
                        help="which claim to measure ('all': each in turn)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds (tests)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"),
                        help="folder for claims_<name>.json and .png")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's CPU threads (default: torch's own choice, one per core); "
                             "1 keeps timings sane when other jobs share the cores")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw the PNG from the JSON already in --out; measure nothing")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the memory children's too
    if args.memory_child:  # a JSON list of configurations, measured in turn
        print(json.dumps({"rows": [memory_child(spec)
                                   for spec in json.loads(args.memory_child)]}))
        return
    if args.claim is None:
        parser.error("choose a claim: " + ", ".join([*CLAIMS, "all"]))
    sizes = QUICK if args.quick else Sizes()
    out = Path(args.out)
    for name in CLAIMS if args.claim == "all" else [args.claim]:
        if args.plot_only:
            path = stem(out, name, args.quick)
            draw(name, json.loads(path.with_suffix(".json").read_text()), path.with_suffix(".png"))
            print(f"redrew {path}.png", flush=True)
            continue
        print(f"== {name}", flush=True)
        write(out, name, args.quick, MEASURES[name](sizes))


if __name__ == "__main__":
    sys.exit(main())
