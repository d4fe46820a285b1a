"""``plot``: data (or, without ``--data``, the model's own samples), samples and the
learned density of a saved 2-D model, side by side in a PNG (by default plot.png beside the
model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..estimators import ConditionalCNFDensity
from .arguments import CLIError, check_positive
from .io import check_suffix, check_width, check_writable, load_model, load_rows

__all__ = ["run"]


def run(args: argparse.Namespace) -> None:
    """Run ``plot`` with the parsed options (see ``python -m cnflow plot --help``)."""
    from ..plotting import plot_fit

    check_positive(args.n_samples, "--n-samples")
    check_positive(args.resolution, "--resolution")
    out = check_suffix(args.out, (".png",)) if args.out else Path(args.model).parent / "plot.png"
    check_writable(out)
    est = load_model(args.model, args.device)
    if isinstance(est, ConditionalCNFDensity):
        raise CLIError("plot draws unconditional 2-D densities; this model is conditional")
    if est.n_features_in_ != 2:
        raise CLIError(f"plot draws 2-D densities; the model has {est.n_features_in_} "
                       "features")
    name = f"{type(est).__name__}: {Path(args.model).name}"
    X = None
    if args.data:  # read and checked before the (slow) sampling
        X = load_rows(args.data, args.n_samples, args.seed)
        check_width(X, est, args.data)
    samples = est.sample(args.n_samples, random_state=args.seed)
    title = f"{name} against {args.data}" if args.data else f"{name} (no data: model samples)"
    plot_fit(samples if X is None else X, samples, est.score_samples, out, title=title,
             resolution=args.resolution)
    print(f"wrote {out}")
