"""Depth against width: planar flows with K layers vs planar CNFs with M hidden units.

Chen et al. (2018, section 4.1) argue that a continuous normalizing flow can gain capacity by
width where a discrete planar flow only can by depth: K planar layers
z ← z + u_k tanh(w_kᵀz + b_k) move points along one direction each, while the planar CNF
dz/dt = Σ_{m=1..M} u_m(t) tanh(w_m(t)ᵀz + b_m(t)) moves them along M directions at once, with
parameters that change along t. The claim to test: a CNF with M units is at least as
expressive as a planar flow with K = M layers.

Both families are fitted to 2-D targets two ways:

- density matching: minimise the reverse KL E_q[log q − log p̃] from the target's
  unnormalised log-density p̃ (the experiment of Chen et al.); reported as KL(q‖p) in nats,
  E_q[log q − log p̃] + log Z with log Z by quadrature;
- maximum likelihood on target samples; reported as KL(p‖q) = E_p[log p − log q] in nats on
  fresh samples.

Targets: "ring" (the energy U1 of Rezende & Mohamed 2015: a ring of radius 2 with two lobes)
and "8gaussians" (eight Gaussians on a circle, as in FFJORD's toy data). Every model gets the
same number of Adam steps (lr 1e-2, cosine) and batch; the planar CNF is solved by dopri5 at
rtol = atol = 1e-5 with backprop through the solver (these problems are small, and backprop
is the faster choice when memory is no concern).

Writes density_examples/figures/depth_vs_width.png (the fitted densities, each final KL in
its title) and depth_vs_width.json (all losses), or *_quick.* with --quick.

Run: .venv/bin/python density_examples/depth_vs_width.py [--quick] [--out FOLDER]
(about 12 minutes on 2 CPU cores; --quick: seconds, for the tests).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from cnflow import CNF, PlanarFlow
from cnflow.datasets import make_toy
from cnflow.nn import PlanarCNFField
from cnflow.training import TrainConfig, fit_density_matching, reverse_kl_loss, train

TARGETS = ("ring", "8gaussians")
OBJECTIVES = ("density_matching", "maximum_likelihood")
BOX = 4.0  # the plotted square [−BOX, BOX]²


def log_target(name: str, x: torch.Tensor) -> torch.Tensor:
    """The unnormalised log-density log p̃ of a target, rows (n, 2) to (n,)."""
    if name == "ring":
        radius = x.norm(dim=-1)
        lobes = torch.logsumexp(torch.stack([-0.5 * ((x[:, 0] - 2) / 0.6) ** 2,
                                             -0.5 * ((x[:, 0] + 2) / 0.6) ** 2]), dim=0)
        return -0.5 * ((radius - 2) / 0.4) ** 2 + lobes
    if name == "8gaussians":
        s = 1 / math.sqrt(2)
        centers = x.new_tensor([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s),
                                (-s, -s)]) * 4 / 1.414
        std = 0.5 / 1.414
        d2 = (x[:, None, :] - centers[None]).square().sum(-1)
        return torch.logsumexp(-d2 / (2 * std ** 2), dim=1)
    raise ValueError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")


def log_normaliser(name: str) -> float:
    """log Z = log ∫ p̃ by the midpoint rule on [−8, 8]² (1000² cells), in float64."""
    xs = torch.linspace(-8, 8, 1001, dtype=torch.float64)
    mid = (xs[1:] + xs[:-1]) / 2
    grid = torch.stack(torch.meshgrid(mid, mid, indexing="xy"), -1).reshape(-1, 2)
    cell = float(xs[1] - xs[0]) ** 2
    return float(torch.logsumexp(log_target(name, grid), 0)) + math.log(cell)


def sample_target(name: str, n: int, seed: int) -> torch.Tensor:
    """n exact draws: the mixture directly, the ring by rejection from the uniform on [−5, 5]²
    (p̃ ≤ 1.001 there, so accepting with probability p̃/1.001 is exact)."""
    if name == "8gaussians":
        return torch.as_tensor(make_toy(name, n, random_state=seed), dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    out, count = [], 0
    while count < n:
        x = (torch.rand(200_000, 2, generator=generator, dtype=torch.float64) * 2 - 1) * 5
        keep = torch.rand(len(x), generator=generator, dtype=torch.float64) * 1.001 \
            < log_target(name, x).exp()
        out.append(x[keep])
        count += int(keep.sum())
    return torch.cat(out)[:n]


def build(family: str, size: int, objective: str) -> torch.nn.Module:
    if family == "planar NF":
        closed_form = "sample" if objective == "density_matching" else "log_prob"
        return PlanarFlow(2, n_layers=size, closed_form=closed_form)
    return CNF(2, net=PlanarCNFField(2, n_units=size), rtol=1e-5, atol=1e-5, adjoint=False)


def fit_one(target: str, family: str, size: int, objective: str, config: TrainConfig,
            data: torch.Tensor, log_z: float, test: torch.Tensor, seed: int) -> dict:
    torch.manual_seed(seed)
    flow = build(family, size, objective)
    start = time.perf_counter()
    if objective == "density_matching":
        result = fit_density_matching(flow, lambda x: log_target(target, x), config)
    else:
        result = train(flow, data, lambda m, x: -m.log_prob(x).mean(), config,
                       generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    flow.eval()
    with torch.no_grad():
        torch.manual_seed(seed + 1)
        if objective == "density_matching":  # KL(q‖p) on fresh draws of q
            kl = float(reverse_kl_loss(flow, lambda x: log_target(target, x), len(test))) \
                + log_z
        else:  # KL(p‖q) on fresh draws of p
            kl = float((log_target(target, test) - log_z - flow.log_prob(test)).mean())
        xs = torch.linspace(-BOX, BOX, 120)
        grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
        density = flow.log_prob(grid).exp().reshape(120, 120).numpy()
    return {"target": target, "family": family, "size": size, "objective": objective,
            "kl": kl, "final_loss": float(np.mean([h["loss"] for h in result.history[-50:]])),
            "iterations": result.n_iter, "seconds": seconds, "density": density}


def plot(rows: list[dict], targets: list[str], sizes: list[int], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    families = ("planar NF", "planar CNF")
    n_cols = 1 + len(families) * len(sizes)
    panels = [(t, o) for t in targets for o in OBJECTIVES]
    fig = Figure(figsize=(1.9 * n_cols, 2.05 * len(panels)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), n_cols, squeeze=False)
    xs = torch.linspace(-BOX, BOX, 120)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    extent = (-BOX, BOX, -BOX, BOX)
    for r, (target, objective) in enumerate(panels):
        truth = log_target(target, grid).exp().reshape(120, 120).numpy()
        axes[r, 0].imshow(truth, origin="lower", extent=extent, cmap="magma")
        label = "reverse KL" if objective == "density_matching" else "max. likelihood"
        axes[r, 0].set_title(f"{target}\n(target; {label})", fontsize=8)
        for c, (family, size) in enumerate((f, s) for f in families for s in sizes):
            row = next(x for x in rows if (x["target"], x["objective"], x["family"],
                                           x["size"]) == (target, objective, family, size))
            ax = axes[r, c + 1]
            ax.imshow(row["density"], origin="lower", extent=extent, cmap="magma")
            letter = "K" if family == "planar NF" else "M"
            ax.set_title(f"{family} {letter}={size}\nKL {row['kl']:.3f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the tests")
    parser.add_argument("--iterations", type=int, default=None,
                        help="Adam steps per model (default 1000; 5 with --quick)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64 if args.quick else torch.float32)
    sizes = [1, 2] if args.quick else [1, 2, 8, 32]
    targets = list(TARGETS)
    iterations = args.iterations or (5 if args.quick else 1000)
    batch = 32 if args.quick else 256
    n_test = 500 if args.quick else 10_000
    config = TrainConfig(max_iter=iterations, batch_size=batch, lr=1e-2, lr_schedule="cosine")
    rows = []
    for target in targets:
        log_z = log_normaliser(target)
        dtype = torch.get_default_dtype()
        data = sample_target(target, 20_000 if not args.quick else 500, seed=0).to(dtype)
        test = sample_target(target, n_test, seed=1).to(dtype)
        for objective in OBJECTIVES:
            for family in ("planar NF", "planar CNF"):
                for size in sizes:
                    row = fit_one(target, family, size, objective, config, data, log_z, test,
                                  seed=0)
                    rows.append(row)
                    print(f"{target:10s} {objective:18s} {family:10s} {size:3d}: "
                          f"KL {row['kl']:.4f}  ({row['seconds']:.1f} s)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "depth_vs_width_quick" if args.quick else "depth_vs_width"
    plot(rows, targets, sizes, out / f"{stem}.png")
    # The claim, pair by pair: KL of the CNF with M units ≤ KL of the NF with K = M layers.
    comparisons = []
    for target in targets:
        for objective in OBJECTIVES:
            for size in sizes:
                kl = {r["family"]: r["kl"] for r in rows if (r["target"], r["objective"],
                                                              r["size"]) == (target, objective,
                                                                             size)}
                comparisons.append({"target": target, "objective": objective, "size": size,
                                    "kl_planar_nf": kl["planar NF"],
                                    "kl_planar_cnf": kl["planar CNF"],
                                    "cnf_at_least_as_good": kl["planar CNF"] <= kl["planar NF"]})
    lines = ["| target | objective | K = M | KL planar NF | KL planar CNF |",
             "|---|---|---|---|---|"]
    lines += [f"| {c['target']} | {c['objective']} | {c['size']} | {c['kl_planar_nf']:.3f} | "
              f"{c['kl_planar_cnf']:.3f} |" for c in comparisons]
    table = "\n".join(lines)
    print(table)
    result = {"config": {"iterations": iterations, "batch": batch, "lr": 1e-2,
                         "lr_schedule": "cosine", "sizes": sizes, "targets": targets,
                         "n_test": n_test, "torch": torch.__version__,
                         "threads": torch.get_num_threads()},
              "rows": [{k: v for k, v in r.items() if k != "density"} for r in rows],
              "comparisons": comparisons}
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(table + "\n")
    print(f"wrote {out / stem}.png, .json, .md")
    return result


if __name__ == "__main__":
    main()
