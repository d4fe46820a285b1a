"""``plot``: a picture of a saved model against data (by default plot.png beside the model).

Two columns: data (or, without ``--data``, the model's own samples), samples and the learned
density side by side (:func:`cnflow.plotting.plot_fit`). Any other number: the pair plot of
data against as many samples (:func:`cnflow.plotting.plot_pairs`; beyond ``--max-columns``
the columns whose marginals fit worst). A conditional model p(y | x) needs ``--data`` holding
its feature and target columns (by name, or unnamed: the features then the targets): one y is
drawn for each row's x and the rows (x, y) are plotted against the data's."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..estimators import ConditionalCNFDensity, ImageCNFDensity
from ..training.rows import bounded_sample, gather
from .arguments import CLIError, check_positive
from .io import check_suffix, check_width, check_writable, load_model, load_table, model_columns

__all__ = ["run"]


def _conditional_rows(args: argparse.Namespace, est: ConditionalCNFDensity
                      ) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Data rows [x, y] of a conditional model, the same rows with y drawn given x, and
    the columns' names."""
    if not args.data:
        raise CLIError("a conditional model is plotted against data: pass --data FILE with "
                       "its feature and target columns")
    feature_names = getattr(est, "feature_names_in_", None)
    target_names = getattr(est, "target_names_", None)
    known = None
    if feature_names is not None and target_names is not None:
        known = [*map(str, feature_names), *map(str, target_names)]
    table = load_table(args.data, args.n_samples, args.seed, header=args.header,
                       columns=args.columns, dropna=args.dropna, known=known)
    names = known if table.names is not None else None
    rows = model_columns(table, est, args.data, names)
    width = est.n_features_in_ + est.n_targets_
    if rows.shape[1] != width:
        raise CLIError(f"{args.data} has {rows.shape[1]} columns; the model's features and "
                       f"targets are {width}")
    rows = gather(rows, bounded_sample(len(rows), args.n_samples, args.seed))
    k = est.n_features_in_
    drawn = est.sample(rows[:, :k], n_samples=1, random_state=args.seed)
    samples = rows.copy()
    samples[:, k:] = np.asarray(drawn).reshape(len(rows), est.n_targets_)
    return rows, samples, names


def run(args: argparse.Namespace) -> None:
    """Run ``plot`` with the parsed options (see ``python -m cnflow plot --help``)."""
    from ..plotting import plot_fit, plot_pairs

    check_positive(args.n_samples, "--n-samples")
    check_positive(args.resolution, "--resolution")
    check_positive(args.max_columns, "--max-columns")
    out = check_suffix(args.out, (".png",)) if args.out else Path(args.model).parent / "plot.png"
    check_writable(out)
    est = load_model(args.model, args.device)
    if isinstance(est, ImageCNFDensity):
        raise CLIError("plot draws tables; for an image model, sample it and view the images")
    name = f"{type(est).__name__}: {Path(args.model).name}"
    if isinstance(est, ConditionalCNFDensity):
        rows, samples, names = _conditional_rows(args, est)
        plot_pairs(rows, samples, out, names=names, max_columns=args.max_columns,
                   title=f"{name} against {args.data} (y drawn given each row's x)")
        print(f"wrote {out}")
        return
    X = None
    if args.data:  # read and checked before the (slow) sampling
        table = load_table(args.data, args.n_samples, args.seed, header=args.header,
                           columns=args.columns, dropna=args.dropna,
                           known=getattr(est, "feature_names_in_", None))
        X = model_columns(table, est, args.data)
        X = gather(X, bounded_sample(len(X), args.n_samples, args.seed))
        check_width(X, est, args.data)
    samples = est.sample(args.n_samples, random_state=args.seed)
    title = f"{name} against {args.data}" if args.data else f"{name} (no data: model samples)"
    if est.n_features_in_ == 2:
        plot_fit(samples if X is None else X, samples, est.score_samples, out, title=title,
                 resolution=args.resolution)
    else:
        names = getattr(est, "feature_names_in_", None)
        plot_pairs(samples if X is None else X, samples, out,
                   names=None if names is None else [str(n) for n in names],
                   max_columns=args.max_columns, title=title,
                   data_label="data" if X is not None else "model samples")
    print(f"wrote {out}")
