"""``train``: fit a CNFDensity (or, with ``--targets``, a ConditionalCNFDensity) to a toy
density or a file of rows; write model.pt, training.png, fit.png (2-D) and summary.json.
A .npy file is memory-mapped: a CNFDensity reads it a minibatch at a time, never whole
(see :mod:`cnflow.estimators.mapped`).

Launched by ``torchrun --nproc_per_node=N -m cnflow train ...`` it trains data-parallel
(each process a share of every batch, gradients averaged by DDP; see :mod:`cnflow.training`)
and only rank 0 prints and writes files.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..datasets import TOY_DATASETS, make_toy
from ..estimators import CNFDensity, ConditionalCNFDensity
from ..estimators.policy import resolve_fit_settings
from ..training.rows import bounded_sample, gather, is_mapped
from .arguments import check_device, check_positive, check_targets, given_options
from .distributed import start_distributed, stop_distributed
from .io import check_writable, checkpoint_path, load_rows, write_summary

__all__ = ["planned_iterations", "resolved_settings", "run"]

#: Rows scored for the summary's log-likelihoods, and samples drawn for fit.png.
SUMMARY_ROWS = 20000


def planned_iterations(est: CNFDensity | ConditionalCNFDensity, X: np.ndarray) -> int:
    """The training iterations the fit of ``est`` to the rows X will run, by the fit policy
    (:mod:`cnflow.estimators.policy`), as announced before it starts."""
    return resolve_fit_settings(type(est).__name__, est.get_params(deep=False),
                                *X.shape).max_iter


def resolved_settings(est: CNFDensity | ConditionalCNFDensity) -> dict | None:
    """Every "auto" of a fitted estimator as resolved for its fit (``est.settings_``), as
    plain JSON values; None for an estimator that does not record them."""
    settings = getattr(est, "settings_", None)
    return None if settings is None else settings.as_dict()


def run(args: argparse.Namespace) -> None:
    """Run ``train`` with the parsed options (see ``python -m cnflow train --help``)."""
    from ..plotting import plot_fit, plot_training_curves

    check_positive(args.resolution, "--resolution")
    check_device(args.device)
    rank, world, device = start_distributed(args.device)
    X = load_rows(args.data, args.n_samples, args.seed, mapped=True)
    out = Path(args.out)
    given = given_options(objective=args.objective, max_iter=args.max_iter,
                          batch_size=args.batch_size, lr=args.lr, rtol=args.tol,
                          atol=args.tol, hidden=args.hidden, max_seconds=args.max_seconds)
    if args.checkpoint is not None:
        given["checkpoint"] = checkpoint_path(args.checkpoint)
        given["checkpoint_interval"] = args.checkpoint_interval
    targets = None
    if args.targets is not None:
        targets = check_targets(args.targets, X.shape[1])
    kind = CNFDensity if targets is None else ConditionalCNFDensity
    est = kind(device=device, random_state=args.seed, verbose=not args.quiet and rank == 0,
               **given)
    if rank == 0:
        check_writable(out, folder=True)  # before the (long) fit
        if args.checkpoint is not None and Path(args.checkpoint).exists():
            print(f"continuing from the checkpoint {args.checkpoint}")
        what = "" if targets is None else f" (p(columns {targets} | the others))"
        print(f"training {kind.__name__} on {args.data}{what}: {X.shape[0]} rows × "
              f"{X.shape[1]} columns, {planned_iterations(est, X)} iterations of "
              f"{est.objective} on {device}" + (f" ({world} processes)" if world > 1 else ""))
    start = time.perf_counter()
    if targets is None:
        est.fit(X)
    else:
        features = [j for j in range(X.shape[1]) if j not in targets]
        est.fit(X[:, features], X[:, targets])
    seconds = time.perf_counter() - start
    stop_distributed(world)
    if rank != 0:
        return
    settings = resolved_settings(est)
    if args.verbose and settings is not None:
        for name, value in settings.items():
            print(f"{name}: {value}")
    est.save(out / "model.pt")
    summary = {"data": args.data, "objective": est.objective, "n_rows": int(X.shape[0]),
               "iterations": est.n_iter_, "seconds": seconds}
    plot_training_curves(est.history_, out / "training.png",
                         loss_label=("flow-matching loss" if est.objective == "flow_matching"
                                     else "negative log-likelihood + penalties"))
    written = [out / "model.pt", out / "training.png"]
    if targets is not None:
        summary["targets"] = targets
        summary["train_mean_log_likelihood"] = est.score(X[:SUMMARY_ROWS, features],
                                                         X[:SUMMARY_ROWS, targets])
    else:
        summary["train_mean_log_likelihood"] = est.score(X[:SUMMARY_ROWS])
        if args.data in TOY_DATASETS:
            X_test = make_toy(args.data, SUMMARY_ROWS, random_state=args.seed + 1)
            summary["test_nll"] = -est.score(X_test)
        if X.shape[1] == 2:
            samples = est.sample(SUMMARY_ROWS, random_state=args.seed)
            shown = gather(X, bounded_sample(len(X), SUMMARY_ROWS, args.seed)) \
                if is_mapped(X) else X
            plot_fit(shown, samples, est.score_samples, out / "fit.png",
                     resolution=args.resolution, title=f"CNFDensity on {args.data}: "
                     f"{est.n_iter_} iterations, {seconds:.0f} s")
            written.append(out / "fit.png")
    if settings is not None:
        summary["settings"] = settings
    write_summary(out, summary)
    print(f"wrote {', '.join(map(str, written))}")
