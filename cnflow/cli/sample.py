"""``sample``: draw rows from a saved model into a .npy/.csv file (a conditional model:
``--n`` draws for each row of ``--given``; ``--log-prob`` appends each draw's log-density as
a last column; ``--steps K``: cheap draws by K fixed midpoint steps); an image model's
samples go to a .npy file."""

from __future__ import annotations

import argparse

import numpy as np

from ..estimators import ImageCNFDensity
from .arguments import CLIError, check_positive
from .io import check_suffix, load_model, read_given, rows_file, write_rows

__all__ = ["run"]


def run(args: argparse.Namespace) -> None:
    """Run ``sample`` with the parsed options (see ``python -m cnflow sample --help``)."""
    check_positive(args.n, "--n")
    if args.steps is not None:
        check_positive(args.steps, "--steps")
    rows_file(args.out)  # before the (slow) sampling
    est = load_model(args.model, args.device)
    if isinstance(est, ImageCNFDensity):
        images = est.sample(args.n, random_state=args.seed, steps=args.steps)
        if check_suffix(args.out, (".npy", ".csv")).suffix != ".npy":
            raise CLIError("images are written to .npy files")
        file = write_rows(args.out, images)
        print(f"wrote {args.n} images of shape {images.shape[1:]} to {file}")
        return
    given = read_given(args.given, est, args.model, args.seed)
    if given is None:
        drawn = est.sample(args.n, random_state=args.seed, steps=args.steps,
                           return_log_prob=args.log_prob)
    else:
        drawn = est.sample(given, n_samples=args.n, random_state=args.seed, steps=args.steps,
                           return_log_prob=args.log_prob)
    rows, log_p = drawn if args.log_prob else (drawn, None)
    if given is None:
        what = f"{args.n} samples × {rows.shape[1]} features"
    else:
        rows = rows.reshape(len(given) * args.n, est.n_targets_)
        log_p = None if log_p is None else log_p.reshape(-1)
        what = (f"{args.n} draws of {est.n_targets_} targets for each of {len(given)} rows "
                f"of {args.given} (row by row)")
    names = getattr(est, "feature_names_in_" if given is None else "target_names_", None)
    names = None if names is None else [str(n) for n in names]
    if log_p is not None:
        rows = np.concatenate([rows, log_p[:, None]], axis=1)
        what += ", log-density in the last column"
        names = None if names is None else [*names, "log_density"]
    file = write_rows(args.out, rows, names)
    if names is not None and file.suffix == ".csv":
        what += ", the model's column names as the header"
    print(f"wrote {what} to {file}")
