"""``train``: fit a CNFDensity (or, with ``--targets``, a ConditionalCNFDensity) to a toy
density or a table (:mod:`cnflow.cli.tables`: a CSV with or without a header, ``--columns``,
``--dropna``); write model.pt, training.png, fit.png and summary.json.

A share of a file's rows (``--test-fraction``, default 0.1) is held out: the summary and
stdout give the held-out mean log-likelihood ± its standard error beside the training rows',
and a Gaussian mixture's held-out score as a reference (:mod:`cnflow.cli.reference`), with
the flow's paired difference from it. A toy density is scored on fresh draws instead.
fit.png is the 2-D picture of data, samples and density for two columns, the pair plot of
data against as many samples otherwise (:func:`cnflow.plotting.plot_pairs`); the data drawn
are the held-out rows, or every row when fewer than 1,000 are held out. The column
names are saved with the model (``feature_names_in_``; a conditional model's
``target_names_``) and in summary.json.

A .npy file is memory-mapped: a CNFDensity reads it a minibatch at a time, never whole
(see :mod:`cnflow.estimators.mapped`); its held-out rows are its last rows.

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
from ..estimators.policy import policy_kind, resolve_fit_settings
from ..training import resolve_device
from ..training.rows import bounded_sample, gather, is_mapped
from .arguments import CLIError, check_device, check_positive, check_targets, given_options
from .distributed import start_distributed, stop_distributed
from .io import check_writable, checkpoint_path, load_table, write_summary
from .reference import mean_and_se, mixture_reference, paired_difference
from .tables import Table, select_columns

__all__ = ["planned_iterations", "resolved_settings", "run"]

#: Rows scored for the summary's log-likelihoods (each of the training and the held-out
#: rows), and samples drawn for fit.png.
SUMMARY_ROWS = 20000
#: Held-out rows enough for fit.png; with fewer it draws every row (training rows too).
PICTURE_ROWS = 1000
#: The share of a file's rows held out for the held-out score (a toy: fresh draws instead).
DEFAULT_TEST_FRACTION = 0.1


def planned_iterations(est: CNFDensity | ConditionalCNFDensity, X: np.ndarray) -> int:
    """The training iterations the fit of ``est`` to the rows X will run, by the fit policy
    (:mod:`cnflow.estimators.policy`), as announced before it starts."""
    return resolve_fit_settings(policy_kind(est), est.get_params(deep=False),
                                *X.shape).max_iter


def resolved_settings(est: CNFDensity | ConditionalCNFDensity) -> dict | None:
    """Every "auto" of a fitted estimator as resolved for its fit (``est.settings_``), as
    plain JSON values; None for an estimator that does not record them."""
    settings = getattr(est, "settings_", None)
    return None if settings is None else settings.as_dict()


def _split(X: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out rows: a seeded random share ``fraction`` of the rows held out;
    of a memory-mapped table, its last rows (slices of the file, nothing copied).

    Returns:
        ``(train, held_out)``; ``held_out`` has no rows when ``fraction`` is 0.
    """
    n_test = int(round(fraction * len(X)))
    if n_test == 0:
        return X, X[:0]
    if len(X) - n_test < 2:
        raise CLIError(f"--test-fraction {fraction} leaves {len(X) - n_test} training rows "
                       "(at least 2 are needed)")
    if is_mapped(X):
        return X[:-n_test], X[-n_test:]
    order = np.random.default_rng(seed).permutation(len(X))
    return X[np.sort(order[n_test:])], X[np.sort(order[:n_test])]


def _rows_shown(X: np.ndarray, seed: int) -> np.ndarray:
    """At most SUMMARY_ROWS rows of X (a seeded draw; all of them in order if no more)."""
    return gather(X, bounded_sample(len(X), SUMMARY_ROWS, seed))


def _scores(est, rows: np.ndarray, targets: list[int] | None) -> np.ndarray:
    """Per-row log-densities of ``rows`` (log p(y | x) with ``targets``, the y columns)."""
    if targets is None:
        return est.score_samples(rows)
    features = [j for j in range(rows.shape[1]) if j not in targets]
    return est.score_samples(rows[:, features], rows[:, targets])


def _report(summary: dict, train_log_p: np.ndarray, test_log_p: np.ndarray | None,
            reference: tuple[np.ndarray, dict] | None, test_what: str) -> None:
    """Put the scores (mean ± SE) in ``summary`` and print them."""
    summary["train_score"] = mean_and_se(train_log_p)
    summary["train_mean_log_likelihood"] = summary["train_score"]["mean"]
    score = summary["train_score"]
    line = f"training rows: mean log-likelihood {score['mean']:.4f} ± {score['se']:.4f}"
    if test_log_p is None or len(test_log_p) == 0:
        print(line + f" ({score['rows']} rows; no rows held out)")
        return
    held = summary["held_out_score"] = mean_and_se(test_log_p)
    print(f"held-out rows ({test_what}): mean log-likelihood {held['mean']:.4f} ± "
          f"{held['se']:.4f} over {held['rows']} rows; {line}")
    if reference is not None:
        log_p, about = reference
        about = dict(about, held_out_score=mean_and_se(log_p),
                     flow_minus_reference=paired_difference(test_log_p, log_p))
        summary["reference"] = about
        ref, diff = about["held_out_score"], about["flow_minus_reference"]
        k = about["components"]
        print(f"reference, a Gaussian mixture of {k} component{'s' if k > 1 else ''} "
              f"({about['seconds']:.1f} s): {ref['mean']:.4f} ± {ref['se']:.4f}; the flow "
              f"minus the mixture, row by row: {diff['mean']:+.4f} ± {diff['se']:.4f}")


def _target_columns(args: argparse.Namespace, table: Table, source: str) -> list[int] | None:
    """The ``--targets`` as indices of the table's (selected) columns, or None."""
    if args.targets is None:
        return None
    chosen = select_columns(args.targets, table.names, table.values.shape[1], source,
                            option="--targets")
    return check_targets(chosen, table.values.shape[1])


def _name_columns(est, names: tuple[str, ...] | None, targets: list[int] | None) -> None:
    """Record the table's column names on the fitted estimator (saved with it):
    ``feature_names_in_``, and a conditional model's ``target_names_``."""
    if names is None:
        return
    if targets is None:
        est.feature_names_in_ = np.asarray(names, dtype=object)
        return
    est.feature_names_in_ = np.asarray([n for j, n in enumerate(names) if j not in targets],
                                       dtype=object)
    est.target_names_ = np.asarray([names[j] for j in targets], dtype=object)


def _draw_fit(est, shown: np.ndarray, targets: list[int] | None, names, seed: int,
              out: Path, title: str, resolution: int) -> Path:
    """fit.png: the 2-D picture of data, samples and density for 2 columns, else the pair
    plot of data against samples (a conditional model: one draw of y for each shown row's
    x, against the row's y)."""
    from ..plotting import plot_fit

    if targets is None and shown.shape[1] == 2:
        samples = est.sample(SUMMARY_ROWS, random_state=seed)
        plot_fit(shown, samples, est.score_samples, out, resolution=resolution, title=title)
        return out
    if targets is None:
        samples = est.sample(len(shown), random_state=seed)
    else:
        features = [j for j in range(shown.shape[1]) if j not in targets]
        drawn = est.sample(shown[:, features], n_samples=1, random_state=seed)
        samples = shown.copy()
        samples[:, targets] = np.asarray(drawn).reshape(len(shown), len(targets))
    from ..plotting import plot_pairs

    plot_pairs(shown, samples, out, names=names, title=title)
    return out


def run(args: argparse.Namespace) -> None:
    """Run ``train`` with the parsed options (see ``python -m cnflow train --help``)."""
    from ..plotting import plot_training_curves

    check_positive(args.resolution, "--resolution")
    check_device(args.device)
    toy = args.data in TOY_DATASETS
    fraction = (0.0 if toy else DEFAULT_TEST_FRACTION) if args.test_fraction is None \
        else args.test_fraction
    if not 0 <= fraction < 1:
        raise CLIError(f"--test-fraction must be at least 0 and below 1, got {fraction}")
    rank, world, device = start_distributed(args.device)
    table = load_table(args.data, args.n_samples, args.seed, mapped=True, header=args.header,
                       columns=args.columns, dropna=args.dropna)
    targets = _target_columns(args, table, args.data)
    X_all = table.values
    X, X_test = _split(X_all, fraction, args.seed)
    out = Path(args.out)
    given = given_options(objective=args.objective, max_iter=args.max_iter,
                          batch_size=args.batch_size, lr=args.lr, rtol=args.tol,
                          atol=args.tol, hidden=args.hidden, max_seconds=args.max_seconds,
                          field=args.field)
    if args.checkpoint is not None:
        given["checkpoint"] = checkpoint_path(args.checkpoint)
        given["checkpoint_interval"] = args.checkpoint_interval
    kind = CNFDensity if targets is None else ConditionalCNFDensity
    est = kind(device=device, random_state=args.seed, verbose=not args.quiet and rank == 0,
               **given)
    if rank == 0:
        check_writable(out, folder=True)  # before the (long) fit
        if args.checkpoint is not None and Path(args.checkpoint).exists():
            print(f"continuing from the checkpoint {args.checkpoint}")
        _announce(args, table, kind, est, X, X_test, targets, device, world)
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
    _name_columns(est, table.names, targets)
    settings = resolved_settings(est)
    if args.verbose and settings is not None:
        for name, value in settings.items():
            print(f"{name}: {value}")
    est.save(out / "model.pt")
    summary = {"data": args.data, "objective": est.objective, "n_rows": int(X_all.shape[0]),
               "columns": None if table.names is None else list(table.names),
               "train_rows": int(len(X)), "held_out_rows": int(len(X_test)),
               "dropped_rows": table.dropped, "iterations": est.n_iter_, "seconds": seconds}
    plot_training_curves(est.history_, out / "training.png",
                         loss_label=("flow-matching loss" if est.objective == "flow_matching"
                                     else "negative log-likelihood + penalties"))
    written = [out / "model.pt", out / "training.png"]
    if targets is not None:
        summary["targets"] = targets
    shown_train = _rows_shown(X, args.seed)
    if toy:
        X_test = make_toy(args.data, SUMMARY_ROWS, random_state=args.seed + 1)
    shown_test = _rows_shown(X_test, args.seed + 1)
    train_log_p = _scores(est, shown_train, targets)
    test_log_p = reference = None
    if len(shown_test):
        test_log_p = _scores(est, shown_test, targets)
        if toy:
            summary["test_nll"] = -float(test_log_p.mean())
        reference = mixture_reference(shown_train, shown_test, targets=targets,
                                      seed=args.seed,
                                      max_seconds=min(60.0, max(5.0, 0.1 * seconds)))
    _report(summary, train_log_p, test_log_p, reference,
            "fresh draws" if toy else f"{fraction:.0%} of the rows")
    if len(shown_test) >= PICTURE_ROWS or toy:
        shown, which = shown_test, "held-out rows" if not toy else "fresh draws"
    else:  # too few held-out rows for a picture: every row (up to SUMMARY_ROWS)
        shown, which = _rows_shown(X_all, args.seed + 2), "all rows"
    title = f"{kind.__name__} on {args.data} ({which}): {est.n_iter_} iterations, " \
        f"{seconds:.0f} s"
    written.append(_draw_fit(est, shown, targets, table.names, args.seed, out / "fit.png",
                             title, args.resolution))
    if settings is not None:
        summary["settings"] = settings
    write_summary(out, summary)
    print(f"wrote {', '.join(map(str, written))}")


def _announce(args, table: Table, kind, est, X, X_test, targets, device, world) -> None:
    """The line printed before the fit: what is fitted to which rows, for how long."""
    names = table.names
    what = ""
    if targets is not None:
        shown = [names[j] if names is not None else str(j) for j in targets]
        what = f" (p({', '.join(shown)} | the other columns))"
    held = f", {len(X_test)} held out" if len(X_test) else ""
    dropped = f", {table.dropped} rows with missing values dropped" if table.dropped else ""
    header = f"; columns {', '.join(names)}" if names is not None else ""
    budget = f" (or {args.max_seconds:g} s)" if args.max_seconds else ""
    print(f"training {kind.__name__} on {args.data}{what}: {len(X)} rows × "
          f"{X.shape[1]} columns{held}{dropped}{header}; {planned_iterations(est, X)} "
          f"iterations of {est.objective}{budget} on {resolve_device(device)}"
          + (f" ({world} processes)" if world > 1 else ""))
