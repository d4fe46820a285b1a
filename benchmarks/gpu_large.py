"""Large tables on a GPU: training throughput and time to quality of CNFDensity's flow, CPU
against CUDA.

Data: ``make_warped_mixture(n, D)`` (skewed, heavy-tailed, multimodal, with an exact
log-density), 10^6 training rows and 10,000 held-out rows by default, D = 8, 32, 64.

For each device (the CPU, and CUDA where ``torch.cuda.is_available()``), dimension and batch
size (2,048 to 65,536), the flow is built as ``CNFDensity()`` builds it on a large table: the
settings its fit policy resolves for n rows and D columns
(:func:`cnflow.estimators.policy.resolve_fit_settings`: hidden widths, lr, cosine schedule
over ``max_iter`` steps; only the batch size is set here), ``CNF(D, hidden=...)`` with the
estimator's default trace and tolerances, the columns standardised by
:class:`cnflow.preprocessing.TabularPreprocessor`, and Adam on ``flow.flow_matching_loss``
with the estimator's ``time_exponent``. Minibatches are drawn without replacement from a
fresh permutation of the rows each epoch, all on the training device. Measured:

- **Throughput:** steps and rows per second over the steps after ``--warmup`` warm-up steps
  (on CUDA the clock reads after ``torch.cuda.synchronize``).
- **Time to quality:** every ``--score-every`` steps the flow scores ``--score-rows``
  held-out rows by its exact log-likelihood (``flow.log_prob``, dopri5 at the default
  tolerance, in the original units through the standardisation's log-determinant), and the
  KL divergence KL(p ‖ q) ≈ mean(log p − log q) is estimated with its standard error
  sd / √m. The training seconds (scoring excluded, warm-up included) until the KL per
  dimension first falls to ``--target-kl`` are reported; a configuration stops there, after
  ``--budget`` training seconds, or after ``max_iter`` steps.

``--compile [MODE]`` (CUDA only, never a default) adds, for each CUDA configuration, a run
whose velocity field is ``torch.compile(field, mode=MODE)`` for the training steps (the
scoring solves use the plain field); ``--compile reduce-overhead`` captures CUDA graphs. The
compile time falls in the warm-up, which counts towards the time to quality.

Writes gpu_large.json (``--quick``: gpu_large_quick.json) to --out with the machine, the date
and the command, and prints a Markdown table.

Run: .venv/bin/python benchmarks/gpu_large.py [--dims 8 32 64] [--batches ...]
[--budget 300] [--target-kl 0.1] [--compile]; --quick: 20,000 rows, D = 8, batch 2,048, a
few seconds on the CPU (the tests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from cnflow import CNF, CNFDensity
from cnflow.datasets import make_warped_mixture, warped_mixture_log_density
from cnflow.estimators.policy import FitSettings, resolve_fit_settings
from cnflow.files import atomic_write
from cnflow.preprocessing import TabularPreprocessor

#: The estimator's defaults the flow and its loss are built from.
ESTIMATOR_DEFAULTS = CNFDensity().get_params()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine() -> dict:
    """The machine the numbers come from."""
    cuda = torch.cuda.is_available()
    return {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
            "cuda_version": torch.version.cuda if cuda else None}


class Table:
    """One table's rows: the training rows standardised, and the held-out rows scored for
    the KL with their exact log-density.

    Arguments:
        n_train: training rows.
        n_held_out: held-out rows drawn (from a seed of their own).
        score_rows: how many of the held-out rows each scoring uses.
        dim: D.
        preprocessing: the :class:`~cnflow.preprocessing.TabularPreprocessor` kind.
    """

    def __init__(self, n_train: int, n_held_out: int, score_rows: int, dim: int,
                 preprocessing: str) -> None:
        X = make_warped_mixture(n_train, dim, random_state=0)
        X_held_out = make_warped_mixture(n_held_out, dim, random_state=1)[:score_rows]
        self.preprocessor = TabularPreprocessor(preprocessing).fit(X)
        U, _ = self.preprocessor.transform(X)
        self.U_train = torch.as_tensor(U, dtype=torch.float32)
        U_score, self.logdet_score = self.preprocessor.transform(X_held_out)
        self.U_score = torch.as_tensor(U_score, dtype=torch.float32)
        self.log_p_score = warped_mixture_log_density(X_held_out)
        self.dim = dim

    def kl(self, flow: CNF, device: torch.device) -> tuple[float, float]:
        r"""KL(p ‖ q) ≈ (1/m) Σ_i [log p(x_i) − log q(x_i)] over the scoring rows and its
        standard error, with log q(x) = log q_U(g(x)) + log|det ∂g/∂x| (g the
        standardisation) by the flow's exact log-likelihood."""
        with torch.no_grad():
            log_q_u = flow.log_prob(self.U_score.to(device)).double().cpu().numpy()
        gap = self.log_p_score - (log_q_u + self.logdet_score)
        return float(gap.mean()), float(gap.std(ddof=1) / math.sqrt(len(gap)))


def fit_settings(n_train: int, dim: int, batch: int, max_iter: int | None) -> FitSettings:
    """The settings ``CNFDensity()`` resolves for this table, at the batch size given (and
    ``max_iter`` where given)."""
    params = {**ESTIMATOR_DEFAULTS, "batch_size": batch}
    if max_iter is not None:
        params["max_iter"] = max_iter
    return resolve_fit_settings("CNFDensity", params, n_samples=n_train, n_features=dim)


@contextmanager
def training_field(flow: CNF, field: torch.nn.Module | None):
    """Within the block the flow's velocity field is ``field`` (a compiled copy sharing the
    parameters), when one is given; the plain field is back afterwards."""
    if field is None:
        yield
        return
    plain = flow.net
    flow.net = field
    try:
        yield
    finally:
        flow.net = plain


def run_configuration(table: Table, device: torch.device, batch: int, settings: FitSettings,
                      args: argparse.Namespace, compile_mode: str | None = None) -> dict:
    """Train one flow on ``device`` at batch ``batch`` and measure it (see the module
    docstring). Returns the row of the results."""
    torch.manual_seed(args.seed)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    flow = CNF(table.dim, hidden=settings.hidden, trace=ESTIMATOR_DEFAULTS["trace"],
               method=ESTIMATOR_DEFAULTS["method"], rtol=ESTIMATOR_DEFAULTS["rtol"],
               atol=ESTIMATOR_DEFAULTS["atol"], adjoint=ESTIMATOR_DEFAULTS["adjoint"]).to(device)
    time_exponent = float(ESTIMATOR_DEFAULTS["time_exponent"])
    compiled = None if compile_mode is None else torch.compile(flow.net, mode=compile_mode)
    optimizer = torch.optim.Adam(flow.parameters(), lr=settings.lr)
    cosine = settings.lr_schedule == "cosine"
    schedule = torch.optim.lr_scheduler.LambdaLR(   # lr·(1 + cos(π k / max_iter)) / 2
        optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * min(k / settings.max_iter, 1.0)))
        if cosine else 1.0)
    U = table.U_train.to(device)
    n = len(U)
    order, cursor = torch.randperm(n, generator=generator, device=device), 0
    target = args.target_kl * table.dim
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    scorings: list[dict] = []

    def score(step: int, train_seconds: float) -> float:
        """Score the held-out rows (a failed solve is recorded as a NaN KL, and training
        goes on)."""
        started = time.perf_counter()
        error = None
        try:
            kl, se = table.kl(flow, device)
        except RuntimeError as failure:   # the solver's errors and CUDA's derive from it
            kl, se, error = math.nan, math.nan, f"{type(failure).__name__}: {failure}"
        scorings.append({"step": step, "train_seconds": train_seconds, "kl": kl, "kl_se": se,
                         "kl_per_dim": kl / table.dim, "error": error,
                         "score_seconds": time.perf_counter() - started})
        print(f"  step {step:6d}  {train_seconds:8.2f} s  KL {kl:.4f} ± {se:.4f}", flush=True)
        return kl

    wall_started = time.perf_counter()
    score(0, 0.0)
    step, train_seconds, stopped = 0, 0.0, "max_iter"
    warmup_seconds = 0.0 if args.warmup == 0 else None
    while (step < settings.max_iter and train_seconds < args.budget
           and not scorings[-1]["kl"] <= target):
        # one stretch of steps between scorings (the warm-up steps are a stretch of their own)
        end = min(settings.max_iter, args.warmup if step < args.warmup
                  else (step // args.score_every + 1) * args.score_every)
        loss = None
        _sync(device)
        started = time.perf_counter()
        with training_field(flow, compiled):
            while step < end and train_seconds + time.perf_counter() - started < args.budget:
                if cursor + batch > n:
                    order, cursor = torch.randperm(n, generator=generator, device=device), 0
                rows = U[order[cursor:cursor + batch]]
                cursor += batch
                loss = flow.flow_matching_loss(rows, generator=generator,
                                               time_exponent=time_exponent)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
        _sync(device)
        train_seconds += time.perf_counter() - started
        if warmup_seconds is None and step >= args.warmup:
            warmup_seconds = train_seconds
        if loss is not None and not math.isfinite(float(loss.detach())):
            stopped = "non-finite loss"
            break
        if step % args.score_every == 0 and score(step, train_seconds) <= target:
            stopped = "target"
            break
    else:
        if scorings[-1]["step"] != step:
            score(step, train_seconds)
        stopped = ("target" if scorings[-1]["kl"] <= target
                   else "budget" if step < settings.max_iter else "max_iter")
    first = next((s for s in scorings if s["kl"] <= target), None)
    seconds_to_target = None if first is None else first["train_seconds"]
    steps_to_target = None if first is None else first["step"]
    if warmup_seconds is None:   # the budget ran out within the warm-up
        warmup_seconds = train_seconds
    timed_steps = step - min(step, args.warmup)
    timed_seconds = train_seconds - warmup_seconds
    steps_per_second = timed_steps / timed_seconds if timed_steps and timed_seconds > 0 else None
    last = scorings[-1]
    return {
        "device": str(device), "D": table.dim, "batch": batch, "compile": compile_mode,
        "n_train": n, "score_rows": len(table.U_score), "hidden": list(settings.hidden),
        "lr": settings.lr, "lr_schedule": settings.lr_schedule, "max_iter": settings.max_iter,
        "time_exponent": time_exponent, "preprocessing": table.preprocessor.kind,
        "steps": step, "warmup_steps": min(step, args.warmup), "warmup_seconds": warmup_seconds,
        "train_seconds": train_seconds, "steps_per_second": steps_per_second,
        "rows_per_second": None if steps_per_second is None else steps_per_second * batch,
        "final_kl": last["kl"], "final_kl_se": last["kl_se"],
        "target_kl": target, "target_kl_per_dim": args.target_kl,
        "seconds_to_target": seconds_to_target, "steps_to_target": steps_to_target,
        "stopped": stopped, "wall_seconds": time.perf_counter() - wall_started,
        "cuda_peak_MB": (torch.cuda.max_memory_allocated(device) / 2**20
                         if device.type == "cuda" else None),
        "scorings": scorings,
    }


def markdown(rows: list[dict]) -> str:
    """The results as a Markdown table; CUDA rows give their rows/s over the CPU's at the same
    D and batch."""
    cpu = {(r["D"], r["batch"]): r["rows_per_second"] for r in rows if r["device"] == "cpu"}

    def number(value, spec):
        return "–" if value is None else format(value, spec)

    lines = ["| device | D | batch | compile | steps/s | rows/s | speed-up | steps | "
             "final KL ± SE | target KL | s to target |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = cpu.get((r["D"], r["batch"]))
        speedup = (r["rows_per_second"] / base if r["device"] != "cpu" and base
                   and r["rows_per_second"] else None)
        lines.append(
            f"| {r['device']} | {r['D']} | {r['batch']} | {r['compile'] or '–'} | "
            f"{number(r['steps_per_second'], '.1f')} | {number(r['rows_per_second'], ',.0f')} | "
            f"{'–' if speedup is None else f'{speedup:.1f}×'} | {r['steps']} | "
            f"{r['final_kl']:.3f} ± {r['final_kl_se']:.3f} | {r['target_kl']:.2f} | "
            f"{number(r['seconds_to_target'], '.1f')} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=1_000_000)
    parser.add_argument("--n-held-out", type=int, default=10_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--batches", type=int, nargs="+", default=[2048, 8192, 32768, 65536])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"],
                        help="cuda is left out where torch.cuda.is_available() is false")
    parser.add_argument("--budget", type=float, default=None,
                        help="training seconds per configuration, scoring excluded (default "
                             "300; 1 with --quick)")
    parser.add_argument("--target-kl", type=float, default=0.1,
                        help="the target held-out KL in nats per dimension (KL / D)")
    parser.add_argument("--score-every", type=int, default=500, help="steps between scorings")
    parser.add_argument("--score-rows", type=int, default=2000,
                        help="held-out rows each scoring uses")
    parser.add_argument("--warmup", type=int, default=10,
                        help="steps before the throughput clock starts")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="the cosine schedule's steps (default: the fit policy's)")
    parser.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        help="CUDA only: also run each CUDA configuration with "
                             "torch.compile(field, mode=MODE) (reduce-overhead: CUDA graphs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="20,000 rows, D = 8, batch 2,048, the CPU only, a few seconds")
    parser.add_argument("--out", default="docs")
    return parser


def _checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The quick settings applied and every setting checked (parser.error names what is
    wrong)."""
    if args.quick:
        args.n_train, args.n_held_out, args.score_rows = 20_000, 1000, 300
        args.dims, args.batches, args.devices = [8], [2048], ["cpu"]
        args.score_every, args.warmup = 25, 3
    if args.budget is None:
        args.budget = 1.0 if args.quick else 300.0
    for name in ("n_train", "n_held_out", "score_rows", "score_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if args.max_iter is not None and args.max_iter < 1:
        parser.error("--max-iter must be a positive integer")
    if min(args.dims) < 1:
        parser.error(f"--dims must be positive integers, got {args.dims}")
    if min(args.batches) < 1 or max(args.batches) > args.n_train:
        parser.error(f"--batches must be between 1 and --n-train ({args.n_train}), got "
                     f"{args.batches}")
    if args.score_rows > args.n_held_out:
        parser.error(f"--score-rows ({args.score_rows}) must be at most --n-held-out "
                     f"({args.n_held_out})")
    if not (args.budget > 0 and args.target_kl > 0):
        parser.error("--budget and --target-kl must be positive")
    unknown = [d for d in args.devices if d not in ("cpu", "cuda")]
    if unknown:
        parser.error(f"--devices: cpu or cuda, got {unknown}")
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = _checked(parser, parser.parse_args(argv))
    devices = [torch.device(d) for d in args.devices
               if d == "cpu" or torch.cuda.is_available()]
    if "cuda" in args.devices and not torch.cuda.is_available():
        print("no CUDA device: the CPU only")
    info = machine()
    print(json.dumps(info), flush=True)
    rows = []
    for dim in args.dims:
        first = fit_settings(args.n_train, dim, args.batches[0], args.max_iter)
        kind = "standardize" if first.preprocessing == "choose" else first.preprocessing
        table = Table(args.n_train, args.n_held_out, args.score_rows, dim, kind)
        for device in devices:
            modes = [None] + ([args.compile] if args.compile and device.type == "cuda" else [])
            for batch in args.batches:
                settings = fit_settings(args.n_train, dim, batch, args.max_iter)
                for mode in modes:
                    print(f"{device} D={dim} batch={batch} compile={mode}", flush=True)
                    rows.append(run_configuration(table, device, batch, settings, args, mode))
    table_md = markdown(rows)
    print(table_md)
    result = {"command": shlex.join(["python", "benchmarks/gpu_large.py", *argv]),
              "date": time.strftime("%Y-%m-%d"), "machine": info,
              "config": {k: v for k, v in vars(args).items() if k != "out"},
              "rows": rows, "markdown": table_md}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu_large_quick.json" if args.quick else "gpu_large.json"
    text = json.dumps(result, indent=1).encode()
    atomic_write(out / name, lambda handle: handle.write(text))
    return result


if __name__ == "__main__":
    main()
