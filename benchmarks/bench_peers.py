"""Time-to-quality against the peers: the same wall-clock budget per model, side by side.

On each toy density (checkerboard, 8gaussians, pinwheel; 50,000 training rows, 20,000 fresh
test rows) every model trains for the same budget (default 240 s) on the same data, then is
scored; KL = test NLL + mean log p(x) over the test rows, with p's exact log-density
(cnflow.datasets.empirical_entropy: the paired estimate, free of the test set's own noise):

- ``cnflow ML``: CNFDensity(objective="maximum_likelihood") — adjoint, exact trace, RNODE
  penalties, its defaults, stopped by ``max_seconds``;
- ``cnflow FM``: CNFDensity() — its defaults, stopped by ``max_seconds``: flow matching
  (batch 2048) for the first 75 % of the budget, over which its cosine learning-rate schedule
  anneals, then maximum-likelihood fine-tuning (batch 512, solves at 1e-3) for the rest;
- ``FFJORD-style``: written here on torchdiffeq's ``odeint_adjoint``: concat-squash MLP
  64-64-64 with tanh, dopri5 at rtol = atol = 1e-5, exact divergence by D autograd calls,
  learnable end time, Adam lr 1e-3, batch 512 (Grathwohl et al. 2019's toy settings);
- ``zuko CNF``: zuko.flows.CNF(2, hidden_features=(64, 64, 64)), exact trace, rtol = atol =
  1e-5, Adam lr 1e-3, batch 512;
- ``torchflows FFJORD``/``RNODE``: torchflows' ContinuousFlow with its FFJORD and RNODE
  bijections (3 hidden layers of 64, dopri5, 1e-5) through ``Flow.fit`` (lr 1e-3, batch 512;
  fitted one step at a time so that the budget is kept to within one step; their
  log-densities use Hutchinson's trace, so their test NLL is an unbiased estimate, on the
  first 2,000 test rows only, as their solves are slow);
- ``GMM-64``: scikit-learn's GaussianMixture with 64 full-covariance components.

The data are standardised for every neural model (as CNFDensity does inside) and the
log-Jacobian of the scaling is added back. Reported per model: iterations, seconds per
iteration, forward/backward NFE of the last step (where the library exposes them), test NLL
and KL. Prints a Markdown table; writes JSON and the table to --out.

Run: .venv/bin/python benchmarks/bench_peers.py [--budget 240] [--datasets ...] [--models ...]
(budget × 3 datasets × 6 neural models: 72 minutes at the default on 2 CPU cores).
--quick: 1.5 s budgets on one dataset of 12,000 rows (more than 10,000: CNFDensity's large-table
regime, as in the full run, which plans its fit in a moment), for the tests. Never run it while
anything else runs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnflow import CNFDensity
from cnflow.datasets import empirical_entropy, make_toy

DATASETS = ("checkerboard", "8gaussians", "pinwheel")
MODELS = ("cnflow ML", "cnflow FM", "FFJORD-style", "zuko CNF", "torchflows FFJORD",
          "torchflows RNODE", "GMM-64")


# ---------------------------------------------------------------- FFJORD-style on torchdiffeq
class ConcatSquash(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.gate = nn.Linear(1, n_out)
        self.bias = nn.Linear(1, n_out, bias=False)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.reshape(1, 1).to(x)
        return self.linear(x) * torch.sigmoid(self.gate(t)) + self.bias(t)


class BruteForceDynamics(nn.Module):
    """[f(z, t), tr(∂f/∂z)] with the trace from D autograd calls, as FFJORD's exact mode."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 64, 64)) -> None:
        super().__init__()
        sizes = (dim, *hidden, dim)
        self.layers = nn.ModuleList(ConcatSquash(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.nfe = 0

    def velocity(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            z = layer(t, z)
            if i < len(self.layers) - 1:
                z = torch.tanh(z)
        return z

    def forward(self, t, state):
        self.nfe += 1
        z = state[0]
        if not (torch.is_grad_enabled() and z.requires_grad):
            z = z.detach().requires_grad_(True)  # nothing upstream is tracked: a fresh leaf
        with torch.enable_grad():
            f = self.velocity(t, z)
            div = sum(torch.autograd.grad(f[:, i].sum(), z, create_graph=True)[0][:, i]
                      for i in range(z.shape[1]))
        return f, div


class FFJORDStyle(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.func = BruteForceDynamics(dim)
        self.sqrt_end_time = nn.Parameter(torch.tensor(1.0))  # T = sqrt_end_time², as FFJORD

    def log_prob(self, x: torch.Tensor, adjoint: bool = True) -> torch.Tensor:
        from torchdiffeq import odeint, odeint_adjoint

        times = torch.stack([torch.zeros_like(self.sqrt_end_time), self.sqrt_end_time ** 2])
        solve = odeint_adjoint if adjoint else odeint
        kwargs = {"adjoint_params": tuple(self.func.parameters())} if adjoint else {}
        z, div = solve(self.func, (x, torch.zeros(len(x), dtype=x.dtype)), times,
                       method="dopri5", rtol=1e-5, atol=1e-5, **kwargs)
        z, div = z[-1], div[-1]
        return -0.5 * z.square().sum(-1) - math.log(2 * math.pi) * x.shape[1] / 2 + div


# ---------------------------------------------------------------- the runs
def adam_until(model: nn.Module, loss_fn, U: torch.Tensor, budget: float, nfe=None) -> dict:
    """Adam (lr 1e-3), batch 512, until the budget is spent; iterations and last NFE."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    start, iterations, last = time.perf_counter(), 0, {}
    while time.perf_counter() - start < budget:
        batch = U[torch.randint(len(U), (512,), generator=generator)]
        before = nfe() if nfe else 0
        optimizer.zero_grad()
        loss = loss_fn(batch)
        middle = nfe() if nfe else 0
        loss.backward()
        optimizer.step()
        iterations += 1
        if nfe:
            last = {"nfe_forward": middle - before, "nfe_backward": nfe() - middle}
    return {"iterations": iterations, "seconds": time.perf_counter() - start, **last}


def score_in_batches(log_prob, U: torch.Tensor, batch: int = 2000) -> float:
    return float(torch.cat([log_prob(U[i:i + batch]).detach()
                            for i in range(0, len(U), batch)]).mean())


def run_model(name: str, X: np.ndarray, X_test: np.ndarray, budget: float) -> dict:
    mean, scale = X.mean(0), X.std(0)
    log_jacobian = -float(np.log(scale).sum())
    U = torch.as_tensor((X - mean) / scale, dtype=torch.float32)
    U_test = torch.as_tensor((X_test - mean) / scale, dtype=torch.float32)
    torch.manual_seed(0)
    if name == "GMM-64":
        from sklearn.mixture import GaussianMixture

        start = time.perf_counter()
        gmm = GaussianMixture(64, random_state=0).fit(X)
        return {"iterations": int(gmm.n_iter_), "seconds": time.perf_counter() - start,
                "test_nll": float(-gmm.score(X_test))}
    if name.startswith("cnflow"):
        if name == "cnflow FM":  # its cosine schedule anneals over the time budget
            est = CNFDensity(max_iter=10**7, random_state=0, device="cpu", max_seconds=budget)
        else:
            est = CNFDensity(objective="maximum_likelihood", max_iter=10**6, random_state=0,
                             device="cpu", max_seconds=budget)
        start = time.perf_counter()
        est.fit(X)
        seconds = time.perf_counter() - start
        last = est.history_[-1] if est.history_ else {}  # none when the budget ends first
        return {"iterations": est.n_iter_, "seconds": seconds, "test_nll": -est.score(X_test),
                "nfe_forward": last.get("nfe_forward"), "nfe_backward": last.get("nfe_backward")}
    if name == "FFJORD-style":
        model = FFJORDStyle(2)
        run = adam_until(model, lambda b: -model.log_prob(b).mean(), U, budget,
                         nfe=lambda: model.func.nfe)
        nll = -score_in_batches(lambda b: model.log_prob(b, adjoint=False), U_test)
        return {**run, "test_nll": nll - log_jacobian}
    if name == "zuko CNF":
        import zuko

        flow = zuko.flows.CNF(2, hidden_features=(64, 64, 64), atol=1e-5, rtol=1e-5)
        run = adam_until(flow, lambda b: -flow().log_prob(b).mean(), U, budget)
        with torch.no_grad():
            nll = -score_in_batches(lambda b: flow().log_prob(b), U_test)
        return {**run, "test_nll": nll - log_jacobian}
    if name.startswith("torchflows"):
        from torchflows.bijections.continuous.ffjord import FFJORD
        from torchflows.bijections.continuous.rnode import RNODE
        from torchflows.flows import ContinuousFlow

        cls = FFJORD if name.endswith("FFJORD") else RNODE
        flow = ContinuousFlow(cls(event_shape=(2,), solver="dopri5", atol=1e-5, rtol=1e-5,
                                  nn_kwargs={"hidden_size": 64, "n_hidden_layers": 3}))
        generator = torch.Generator().manual_seed(0)
        start, iterations, first = time.perf_counter(), 0, True
        while time.perf_counter() - start < budget:
            rows = U[torch.randint(len(U), (512,), generator=generator)]
            flow.fit(rows, n_epochs=1, lr=1e-3, batch_size=512, reset_optimizer=first)
            first = False
            iterations += 1
        seconds = time.perf_counter() - start
        flow.eval()
        with torch.no_grad():
            # ContinuousFlow.log_prob returns a tuple (log-density, *aux) in torchflows 1.2
            # (on the first 2,000 test rows: their solver takes seconds per 512 rows)
            nll = -score_in_batches(lambda b: flow.log_prob(b)[0], U_test[:2000])
        return {"iterations": iterations, "seconds": seconds, "test_nll": nll - log_jacobian}
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def _copy_weights(source: nn.Module, target: nn.Module) -> None:
    """The same network and end time T between an FFJORDStyle model and a cnflow CNF."""
    def parts(model):
        if isinstance(model, FFJORDStyle):
            layers = [(la.linear, la.gate, la.bias) for la in model.func.layers]
            return layers, model.sqrt_end_time ** 2
        return [(la.linear, la.gate, la.hyper_bias) for la in model.net.layers], model.T

    (source_layers, source_T), (target_layers, _) = parts(source), parts(target)
    for ours, theirs in zip(target_layers, source_layers, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            a.load_state_dict(b.state_dict())
    with torch.no_grad():
        if isinstance(target, FFJORDStyle):
            target.sqrt_end_time.copy_(source_T.sqrt())
        else:  # T = softplus(T_raw)
            target.T_raw.copy_(torch.log(torch.expm1(source_T.detach())))


def step_cost(X: np.ndarray, iterations: int = 40, pretrain: int = 0) -> list[dict]:
    """One maximum-likelihood step, cnflow against the FFJORD-style model, in lockstep.

    Both models get the same architecture (concat-squash 64-64-64, tanh), the same initial
    weights, learnable T = 1, dopri5 at rtol = atol = 1e-5, the exact trace, the adjoint, no
    regularisers, Adam lr 1e-3 and the same batches of 512 rows; they solve the same ODE, so
    their NFE differ only by the solvers' step-size control. cnflow runs with its default
    seminorm (Kidger et al. 2021) and without it (as torchdiffeq's default). The models take
    their steps in turn, iteration by iteration, so that a slow spell of the machine falls on
    all of them. Reported: median seconds per step, mean forward/backward NFE.

    With ``pretrain`` > 0 the shared initial weights are those of a cnflow model after that
    many maximum-likelihood steps (same settings), so that the comparison is also made where
    the dynamics have become harder to solve than at initialisation.
    """
    from cnflow import CNF

    U = torch.as_tensor((X - X.mean(0)) / X.std(0), dtype=torch.float32)
    torch.manual_seed(0)
    reference = FFJORDStyle(2)
    if pretrain:
        trainer = CNF(2, hidden=(64, 64, 64), train_T=True, rtol=1e-5, atol=1e-5)
        _copy_weights(reference, trainer)
        optimizer = torch.optim.Adam(trainer.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(1)
        for _ in range(pretrain):
            optimizer.zero_grad()
            (-trainer.log_prob(U[torch.randint(len(U), (512,), generator=generator)]).mean()
             ).backward()
            optimizer.step()
        _copy_weights(trainer, reference)
    names = ("FFJORD-style", "cnflow ML", "cnflow ML (no seminorm)")
    models: list[nn.Module] = []
    for name in names:
        if name == "FFJORD-style":
            model = FFJORDStyle(2)
            model.load_state_dict(reference.state_dict())
        else:
            model = CNF(2, hidden=(64, 64, 64), train_T=True, rtol=1e-5, atol=1e-5,
                        seminorm=name == "cnflow ML")
            _copy_weights(reference, model)
        models.append(model)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    record = {name: {"seconds": [], "forward": [], "backward": []} for name in names}
    generator = torch.Generator().manual_seed(0)
    for _ in range(iterations):
        batch = U[torch.randint(len(U), (512,), generator=generator)]
        for name, model, optimizer in zip(names, models, optimizers, strict=True):
            torchdiffeq_model = isinstance(model, FFJORDStyle)
            before = model.func.nfe if torchdiffeq_model else 0
            start = time.perf_counter()
            optimizer.zero_grad()
            loss = -model.log_prob(batch).mean()
            middle = model.func.nfe if torchdiffeq_model else 0
            loss.backward()
            optimizer.step()
            record[name]["seconds"].append(time.perf_counter() - start)
            if torchdiffeq_model:
                record[name]["forward"].append(middle - before)
                record[name]["backward"].append(model.func.nfe - middle)
            else:
                record[name]["forward"].append(model.nfe_forward)
                record[name]["backward"].append(model.nfe_backward)
    rows = [{"model": name, "iterations": iterations,
             "seconds_per_iteration": float(np.median(r["seconds"])),
             "nfe_forward": float(np.mean(r["forward"])),
             "nfe_backward": float(np.mean(r["backward"]))} for name, r in record.items()]
    base = rows[0]["seconds_per_iteration"]
    for row in rows:
        row["speedup_vs_ffjord_style"] = base / row["seconds_per_iteration"]
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=240.0, help="seconds per model")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--quick", action="store_true", help="1.5 s budgets, small data")
    parser.add_argument("--step-cost-only", action="store_true",
                        help="only the lockstep per-step comparison with the FFJORD-style model")
    parser.add_argument("--pretrain", type=int, default=300,
                        help="the step-cost comparison is repeated from the weights after this "
                             "many maximum-likelihood steps")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    n_train, n_test = (12_000, 1000) if args.quick else (50_000, 20_000)
    budget = 1.5 if args.quick else args.budget
    datasets = args.datasets[:1] if args.quick else args.datasets
    step_rows = []
    pretrain_steps = [0, 3] if args.quick else [0, args.pretrain]
    for dataset in datasets:
        for pretrain in pretrain_steps:
            for row in step_cost(make_toy(dataset, n_train, random_state=0),
                                 iterations=3 if args.quick else 40, pretrain=pretrain):
                step_rows.append({"dataset": dataset, "pretrain_steps": pretrain, **row})
                print(f"{dataset:12s} {pretrain:4d} {row['model']:24s} "
                      f"{row['seconds_per_iteration']:.3f} s/step "
                      f"NFE {row['nfe_forward']:.1f} / {row['nfe_backward']:.1f}  "
                      f"{row['speedup_vs_ffjord_style']:.2f}x", flush=True)
    rows = []
    for dataset in [] if args.step_cost_only else datasets:
        X = make_toy(dataset, n_train, random_state=0)
        X_test = make_toy(dataset, n_test, random_state=1)
        entropy = empirical_entropy(dataset, X_test)
        for model in args.models:
            result = run_model(model, X, X_test, budget)
            row = {"dataset": dataset, "model": model, **result,
                   "seconds_per_iteration": result["seconds"] / max(result["iterations"], 1),
                   "kl": result["test_nll"] - entropy}
            rows.append(row)
            print(f"{dataset:12s} {model:18s} {row['iterations']:6d} it "
                  f"{row['seconds']:6.0f} s  NLL {row['test_nll']:.3f}  KL {row['kl']:.3f}",
                  flush=True)
    lines = ["| dataset | after steps | model | s/step (median) | NFE fwd / bwd (mean) | "
             "speed-up |", "|---|---|---|---|---|---|"]
    for r in step_rows:
        lines.append(f"| {r['dataset']} | {r['pretrain_steps']} | {r['model']} | "
                     f"{r['seconds_per_iteration']:.3f} | "
                     f"{r['nfe_forward']:.1f} / {r['nfe_backward']:.1f} | "
                     f"{r['speedup_vs_ffjord_style']:.2f}× |")
    step_table = "\n".join(lines)
    lines = ["| dataset | model | iterations | s/iteration | NFE fwd / bwd (last) | "
             "test NLL | KL (nats) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        nfe = (f"{r['nfe_forward']} / {r['nfe_backward']}" if r.get("nfe_forward") is not None
               else "–")
        lines.append(f"| {r['dataset']} | {r['model']} | {r['iterations']} | "
                     f"{r['seconds_per_iteration']:.3g} | {nfe} | {r['test_nll']:.3f} | "
                     f"{r['kl']:.3f} |")
    table = "\n".join(lines)
    print(step_table)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_peers_quick" if args.quick else "bench_peers"
    if args.step_cost_only:
        stem += "_step_cost"
    result = {"config": {"budget_seconds": budget, "n_train": n_train, "n_test": n_test,
                         "torch": torch.__version__, "threads": torch.get_num_threads(),
                         "machine": platform.platform()},
              "step_cost": step_rows, "rows": rows}
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(step_table + "\n\n" + (table + "\n" if rows else ""))
    print(f"wrote {out / stem}.json and .md")
    return result

if __name__ == "__main__":
    main()
