"""Benchmark of cnflow.ode: adjoint memory vs backprop, and NFE / wall time vs torchdiffeq.

1. Memory of one training step (MLP dynamics, batch 1024, fixed-step rk4 with 10, 100, 1000
   steps), adjoint vs backprop-through-the-solver: bytes autograd saves for backward (exact,
   from saved-tensor hooks) and the peak rise of the process's resident memory during the step
   (sampled from /proc/self/statm in a fresh subprocess per run, --quick: one for all runs,
   with glibc's malloc told to return large blocks at once; on CUDA,
   torch.cuda.max_memory_allocated). The claim: the adjoint's stays flat, backprop's grows
   with the number of steps.
2. Forward NFE, wall time and error at the final time (max abs, against scipy's DOP853 at
   rtol = atol = 1e-12) against torchdiffeq's odeint on the same problems, tolerances and
   methods (dopri5, bosh3); backward NFE and time of an adjoint gradient with and without the
   seminorm, both libraries.

Run: .venv/bin/python benchmarks/bench_ode.py [--quick] [--out docs]
Needs the bench extra for the peer columns (bash scripts/setup.sh test,bench); without
torchdiffeq the peer columns are left out. Never run it while anything else is running.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from measure import measure_step, run_fresh
from torch import nn

from cnflow import SolverStats, odeint, odeint_adjoint

try:
    import torchdiffeq
except ImportError:  # the peer is optional
    torchdiffeq = None


class MLPDynamics(nn.Module):
    """f(t, z) = MLP([z, t]) with tanh: the dynamics of a small neural ODE."""

    def __init__(self, dim: int = 2, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        sizes = [dim + 1] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            mods += [nn.Linear(a, b), nn.Tanh()]
        mods.append(nn.Linear(sizes[-1], dim))
        self.net = nn.Sequential(*mods)
        self.calls = 0

    def forward(self, t, z):
        self.calls += 1
        return self.net(torch.cat([z, t.expand(z.shape[0], 1).to(z)], dim=1))


# ---------------------------------------------------------------- 1. memory


def memory_run(mode: str, n_steps: int, batch: int, device: str) -> dict:
    """One training step in this process; returns saved bytes and the peak memory rise."""
    torch.manual_seed(0)
    f = MLPDynamics().to(device)
    x = torch.randn(batch, 2, device=device)
    t = torch.tensor([0.0, 1.0], device=device)
    solver = odeint_adjoint if mode == "adjoint" else odeint
    # Warm up allocator and kernels with a tiny solve, then measure.
    solver(f, x, t, method="rk4", step_size=0.5)[-1].square().mean().backward()
    f.zero_grad()
    measured = measure_step(lambda: solver(f, x, t, method="rk4", step_size=1.0 / n_steps)[-1],
                            lambda z: z.square().mean(), device)
    return {"mode": mode, "steps": n_steps, **measured}


def memory_benchmark(steps: list[int], batch: int, device: str,
                     process_per_run: bool = True) -> list[dict]:
    """Every (steps, mode) run, each in a fresh process of its own, or all of them in one
    fresh process (``process_per_run=False``, as --quick does: the saved bytes are exact counts
    either way, the resident memory is not)."""
    runs = [[mode, n, batch, device] for n in steps for mode in ("adjoint", "backprop")]
    groups = [[run] for run in runs] if process_per_run else [runs]
    return [row for group in groups
            for row in run_fresh([__file__, "--memory-child", json.dumps(group)])["rows"]]


# ---------------------------------------------------------------- 2. NFE and time


def vdp(t, y):
    return torch.stack([y[..., 1], (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], dim=-1)


def lotka_volterra(t, y):
    x, z = y[..., 0], y[..., 1]
    return torch.stack([1.5 * x - x * z, -3 * z + x * z], dim=-1)


class Counted:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, t, y):
        self.calls += 1
        return self.f(t, y)


def _interleaved_ms(runs: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds of each callable, "<name>_ms"; the runs are interleaved so that
    drifts in machine speed hit them alike."""
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - start)
    return {f"{k}_ms": 1e3 * statistics.median(v) for k, v in samples.items()}


def reference(f, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The final state by scipy's DOP853 at rtol = atol = 1e-12, in float64."""
    import scipy.integrate

    shape = y0.shape

    def fn(tt, y):
        with torch.no_grad():
            out = f(torch.tensor(tt, dtype=torch.float64), torch.from_numpy(y).view(shape))
        return out.numpy().ravel()

    sol = scipy.integrate.solve_ivp(fn, (t[0].item(), t[-1].item()), y0.double().numpy().ravel(),
                                    method="DOP853", rtol=1e-12, atol=1e-12)
    return torch.from_numpy(sol.y[:, -1]).view(shape)


def forward_benchmark(tols: list[float], repeats: int) -> list[dict]:
    torch.manual_seed(0)
    mlp = MLPDynamics()
    mlp64 = copy.deepcopy(mlp).double()
    problems = {
        # name: (f, y0, t, f in float64 for the reference)
        "van_der_pol": (vdp, torch.tensor([2.0, 0.0], dtype=torch.float64),
                        torch.tensor([0.0, 10.0], dtype=torch.float64), vdp),
        "lotka_volterra_b256": (lotka_volterra, 0.5 + torch.rand(256, 2, dtype=torch.float64),
                                torch.tensor([0.0, 10.0], dtype=torch.float64), lotka_volterra),
        "mlp_b1024": (lambda t, z: mlp(t, z), torch.randn(1024, 2), torch.tensor([0.0, 1.0]),
                      mlp64),
    }
    rows = []
    for name, (f, y0, t, f64) in problems.items():
        y_ref = reference(f64, y0, t)
        for method in ("dopri5", "bosh3"):
            for tol in tols:
                if method == "bosh3" and tol < 1e-7:
                    continue
                kw = {"method": method, "rtol": tol, "atol": tol}
                ours, stats = Counted(f), SolverStats()
                with torch.no_grad():
                    y_ours = odeint(ours, y0, t, stats=stats, **kw)
                    row = {"problem": name, "method": method, "tol": tol,
                           "cnflow_nfe": ours.calls, "cnflow_steps": stats.n_steps,
                           "cnflow_err": (y_ours[-1].double() - y_ref).abs().max().item()}
                    runs = {"cnflow": lambda f=f, y0=y0, t=t, kw=kw: odeint(f, y0, t, **kw)}
                    if torchdiffeq is not None:
                        theirs = Counted(f)
                        y_theirs = torchdiffeq.odeint(theirs, y0, t, **kw)
                        row["torchdiffeq_nfe"] = theirs.calls
                        row["torchdiffeq_err"] = (y_theirs[-1].double() - y_ref).abs().max().item()
                        runs["torchdiffeq"] = (lambda f=f, y0=y0, t=t, kw=kw:
                                               torchdiffeq.odeint(f, y0, t, **kw))
                    row.update(_interleaved_ms(runs, repeats))
                if torchdiffeq is not None:
                    row["nfe_ratio"] = row["cnflow_nfe"] / row["torchdiffeq_nfe"]
                    row["time_ratio"] = row["cnflow_ms"] / row["torchdiffeq_ms"]
                rows.append(row)
    return rows


def adjoint_benchmark(tols: list[float], repeats: int, batch: int) -> list[dict]:
    """Adjoint gradient of a neural ODE on [0, 5]: backward NFE with and without the seminorm."""
    torch.manual_seed(0)
    f = MLPDynamics()
    x = torch.randn(batch, 2)
    t = torch.tensor([0.0, 5.0])
    rows = []
    for tol in tols:
        for seminorm in (True, False):
            row = {"tol": tol, "seminorm": seminorm}

            def ours(seminorm=seminorm, tol=tol):
                fwd, bwd = SolverStats(), SolverStats()
                z = odeint_adjoint(f, x, t, rtol=tol, atol=tol, seminorm=seminorm, stats=fwd,
                                   adjoint_stats=bwd)[-1]
                z.square().mean().backward()
                return fwd.nfe, bwd.nfe

            row["cnflow_nfe_forward"], row["cnflow_nfe_backward"] = ours()
            runs = {"cnflow": ours}
            if torchdiffeq is not None:
                def theirs(seminorm=seminorm, tol=tol):
                    f.calls = 0
                    opts = {"norm": "seminorm"} if seminorm else {}
                    z = torchdiffeq.odeint_adjoint(f, x, t, rtol=tol, atol=tol,
                                                   adjoint_options=opts)[-1]
                    n_forward = f.calls
                    z.square().mean().backward()
                    return n_forward, f.calls - n_forward

                row["torchdiffeq_nfe_forward"], row["torchdiffeq_nfe_backward"] = theirs()
                runs["torchdiffeq"] = theirs
            row.update(_interleaved_ms(runs, repeats))
            if torchdiffeq is not None:
                row["time_ratio"] = row["cnflow_ms"] / row["torchdiffeq_ms"]
            rows.append(row)
    return rows


# ---------------------------------------------------------------- report


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    cols = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (for tests)")
    parser.add_argument("--out", default="docs", help="folder for bench_ode.json and .md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:  # a JSON list of [mode, steps, batch, device], measured in turn
        print(json.dumps({"rows": [memory_run(*run) for run in json.loads(args.memory_child)]}))
        return

    if args.quick:
        steps, batch, tols, adjoint_tols, repeats = [5, 20], 64, [1e-3], [1e-3], 1
    else:
        steps, batch, repeats = [10, 100, 1000], 1024, 7
        tols, adjoint_tols = [1e-3, 1e-6, 1e-9], [1e-4, 1e-6, 1e-8]
    result = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": args.device,
                    "torchdiffeq": getattr(torchdiffeq, "__version__", None)},
        "command": "python benchmarks/bench_ode.py" + (" --quick" if args.quick else ""),
    }
    print("1. Memory of one training step (MLP 2-64-64-2, rk4), adjoint vs backprop")
    result["memory_process_per_run"] = not args.quick
    result["memory"] = memory_benchmark(steps, batch, args.device,
                                        process_per_run=result["memory_process_per_run"])
    mem_cols = ["mode", "steps", "saved_MB", "peak_rss_MB", "peak_rss_rise_MB", "cuda_peak_MB",
                "seconds"]
    print(table(result["memory"], mem_cols))
    print("\n2a. Forward solve: NFE and wall time, cnflow vs torchdiffeq")
    result["forward"] = forward_benchmark(tols, repeats)
    fwd_cols = ["problem", "method", "tol", "cnflow_nfe", "torchdiffeq_nfe", "nfe_ratio",
                "cnflow_ms", "torchdiffeq_ms", "time_ratio", "cnflow_err", "torchdiffeq_err"]
    print(table(result["forward"], fwd_cols))
    print(f"\n2b. Adjoint gradient (MLP, batch {batch}, t in [0, 5]): forward/backward NFE, "
          "seminorm on/off")
    result["adjoint"] = adjoint_benchmark(adjoint_tols, repeats, batch)
    adj_cols = ["tol", "seminorm", "cnflow_nfe_forward", "cnflow_nfe_backward",
                "torchdiffeq_nfe_forward", "torchdiffeq_nfe_backward", "cnflow_ms",
                "torchdiffeq_ms", "time_ratio"]
    print(table(result["adjoint"], adj_cols))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_ode_quick" if args.quick else "bench_ode"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    md = "\n\n".join([table(result["memory"], mem_cols), table(result["forward"], fwd_cols),
                      table(result["adjoint"], adj_cols)])
    (out / f"{stem}.md").write_text(md + "\n")
    print(f"\nwrote {out / (stem + '.json')} and {out / (stem + '.md')}")


if __name__ == "__main__":
    main()
