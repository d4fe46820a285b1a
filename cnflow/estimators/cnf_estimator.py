"""What :class:`~cnflow.CNFDensity` and :class:`~cnflow.ConditionalCNFDensity` share: a CNF
trained by flow matching (then maximum-likelihood fine-tuning) or by maximum likelihood,
validated, scored and sampled by the exact trace. Each of them adds what it models (a
density of the rows, or of targets given features) over this base."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .. import divergence
from ..flows.cnf import CNF
from ..flows.mixture import FlowMixture
from ..flows.pairing import PAIRINGS
from ..nn import FIELDS
from ..ode import TABLEAUX
from ..ode.inputs import check_tolerances
from ..ode.options import deprecated_solver
from ..preprocessing import PREPROCESSINGS
from ..training import TrainConfig, TrainResult, train
from ..training.rows import as_row_source, bounded_sample
from ..training.stages import Stage, StageRun
from .estimator_base import FlowDensityEstimator
from .params import Boolean, Integer, IntegerSequence, Options, Real
from .policy import REGIMES, _is_auto

__all__ = ["CNFEstimator", "OBJECTIVES", "TRACE_SOLVE_ENTRIES", "trace_solve_rows"]

#: The training objectives of :class:`CNFDensity`.
OBJECTIVES = ("flow_matching", "maximum_likelihood")

#: Reflow trains on at most this many training rows paired with their base points (one
#: solve each, without the trace, before the stage's time starts).
REFLOW_ROWS = 20_000
#: Reflow's learning rate: this fraction of flow matching's, cosine-annealed.
REFLOW_LR_FRACTION = 0.5
#: Where reflow's pairs come from: "encoded" (training rows and their base points),
#: "decoded" (base draws and the rows the flow carries them to, as Liu et al. 2023) or
#: "mixed" (half of each); the last two only for an unconditional CNF with the standard
#: normal base (see ``_reflow_pairs``).
REFLOW_PAIRS = "encoded"

#: On the CPU an exact-trace solve takes at most about this many Jacobian entries at once
#: (rows × modelled dimensions × the widest layer: 4 MB in float32), so that the forward
#: Jacobian of :meth:`cnflow.nn.ConcatSquashMLP.forward_with_divergence` stays in cache
#: (with the in-place forward pass without gradients, 7.6 s per 1,000 rows of a 64-D table
#: and a 128-wide field, against 14.5 s; the solver's steps barely change with the rows).
TRACE_SOLVE_ENTRIES = 2**20
#: ... and at least this many rows (below, each step's fixed cost dominates).
TRACE_SOLVE_MIN_ROWS = 64


def trace_solve_rows(flow: nn.Module, u: torch.Tensor) -> int:
    """The rows per exact-trace solve of ``flow`` on ``u``: all of them on an accelerator,
    else :data:`TRACE_SOLVE_ENTRIES` / (D × widest layer), at least
    :data:`TRACE_SOLVE_MIN_ROWS` (128 rows at D = 64, width 128; 8,192 at D = 2, width 64).

    Example:
        >>> from cnflow import CNF
        >>> flow = CNF(64, hidden=(128, 128))
        >>> trace_solve_rows(flow, torch.zeros(10_000, 64))
        128
    """
    if u.device.type != "cpu":
        return max(1, u.shape[0])
    per_row = getattr(getattr(flow, "net", None), "trace_entries_per_row", None)
    if per_row is None:  # the dense field's forward Jacobian: D × its widest layer
        width = max((max(p.shape) for p in flow.parameters() if p.dim() == 2), default=1)
        per_row = max(1, u.shape[1]) * width
    return max(TRACE_SOLVE_MIN_ROWS, TRACE_SOLVE_ENTRIES // int(per_row))

def _zero_last_layer(flow: nn.Module) -> None:
    """Make a CNF's built-in field zero (``zero_output_``), so that the flow starts as the
    identity (gradients still reach the zeroed layer); a field of the user's keeps its own
    initialisation."""
    if isinstance(flow.net, tuple(FIELDS.values())):
        flow.net.zero_output_()



class CNFEstimator(FlowDensityEstimator):
    """The shared base of the CNF estimators: the two objectives and their phases (flow
    matching for a share of the budget, then maximum-likelihood fine-tuning, as
    :mod:`cnflow.training.stages` sub-stages), the exact-trace validation and scoring, and
    the parameters they share. A subclass declares its own parameters and builds its flow
    (a :class:`cnflow.CNF`, or a module with the same ``log_prob``, ``flow_matching_loss``,
    ``solve_options`` and ``net``)."""

    _parameter_kinds = {
        "hidden": ["auto", IntegerSequence(1)],
        "field": [Options("auto", *FIELDS)],
        "objective": [Options(*OBJECTIVES)],
        "trace": [Options(*divergence.TRACE_ESTIMATORS)],
        "method": [Options(*TABLEAUX)],
        "rtol": [Real(0, None, closed="left")],
        "atol": [Real(0, None, closed="left")],
        "adjoint": [Boolean()],
        "kinetic_energy": [Real(0, None, closed="left")],
        "jacobian_norm": [Real(0, None, closed="left")],
        "time_exponent": [Real(0, None)],
        "pairing": [Options("auto", *PAIRINGS)],
        "reflow": [Real(0, 1, closed="left"), "auto"],
        "fine_tune_iter": [Integer(0), "auto"],
        "fine_tune_lr": [Real(0, None), "auto"],
        "fine_tune_tol": [Real(0, None)],
        "fine_tune_adjoint": [Boolean(), "auto"],
        "preprocessing": [Options("auto", *PREPROCESSINGS)],
        "n_members": [Integer(1), "auto"],
        "regime": [Options("auto", *REGIMES)],
    }

    def _check_related_parameters(self) -> None:
        steps = self.fine_tune_iter
        if self.objective == "maximum_likelihood" and not _is_auto(steps) and steps > 0:
            raise ValueError("fine_tune_iter follows flow matching; with "
                             "objective='maximum_likelihood' leave it at 'auto' or 0")
        if (self.objective == "maximum_likelihood" and not _is_auto(self.reflow)
                and self.reflow > 0):
            raise ValueError("reflow is a stage of flow matching; with "
                             "objective='maximum_likelihood' leave it at 'auto' or 0")
        members = self.n_members
        if not _is_auto(members) and members > 1 and not _is_auto(self.validation_fraction):
            raise ValueError("with n_members > 1 each member holds out its own fold of the "
                             "rows; leave validation_fraction at 'auto'")
        check_tolerances(self.rtol, self.atol)

    def _method(self) -> str:
        """``method``, or ``solver`` (its deprecated name) where that was set."""
        solver = getattr(self, "solver", "deprecated")
        solver = None if solver == "deprecated" else solver
        return deprecated_solver(solver, self.method, type(self).__name__)

    def _train(self, flow: nn.Module, U_train: torch.Tensor, U_val: torch.Tensor | None,
               config: TrainConfig, generator: torch.Generator, *, stage: StageRun,
               fresh: bool = True) -> TrainResult:
        """Flow matching, then (``fine_tune_iter`` > 0) maximum-likelihood fine-tuning at
        ``fine_tune_lr``, cosine-annealed, with solves at ``fine_tune_tol`` and
        gradients as ``fine_tune_adjoint`` says; with ``max_seconds``, flow matching has
        ``settings_.flow_matching_share`` of the time (75 %) and fine-tuning the rest (with a
        share of 1, only what flow matching leaves when it ends early).
        Each history entry says which objective its step took.

        With a validation set, the flow starts at the identity (its last layer zeroed) and
        every phase validates before its first step, so the parameters kept are the best on
        held-out likelihood, the preprocessed data's Gaussian included (a warm start,
        ``fresh=False``, keeps its fitted parameters).

        The phases are sub-stages of the member ``stage`` (:mod:`cnflow.training.stages`):
        the end of flow matching is recorded in the checkpoint (the parameters and random
        states), so that a resumed fit goes straight on to fine-tuning. A phase that stops on
        a fault or an interruption ends the fit's training there."""
        settings = self.settings_
        n_fine = settings.fine_tune_iter
        share = settings.flow_matching_share
        if U_val is not None:
            if fresh:
                _zero_last_layer(flow)
            # stacking scores the held-out rows once more after the last phase; fine-tuning
            # without a share of its own scores them at its start, in flow matching's time
            after = (int(settings.stacking) if not n_fine
                     else 1 + int(settings.stacking) if share >= 1 else 0)
            config = dataclasses.replace(config, validate_at_start=True, scorings_after=after)
        phases, configs = self._phases(config)

        def prepare(run: StageRun) -> dict | None:
            if run.stage.name != "reflow":
                return None
            return {"pairs": self._reflow_pairs(flow, U_train, generator)}

        def train_phase(run: StageRun) -> TrainResult:
            # across processes every one enters train even with no time left: train agrees
            # when to stop, and DDP's set-up is collective
            phase_config, loss = configs[run.index]
            rows = run.setup["pairs"] if run.stage.name == "reflow" else U_train
            return train(flow, rows, loss,
                         dataclasses.replace(phase_config, max_seconds=run.seconds),
                         X_val=U_val, val_loss_fn=self._validation_loss, generator=generator,
                         checkpoint=run.checkpoint)

        return stage.substages().run(phases, train_phase, prepare=prepare, module=flow,
                                     generator=generator, device=U_train.device)

    def _phases(self, config: TrainConfig) -> tuple[list[Stage], list[tuple]]:
        """A member's training phases as sub-stages, each with its loop settings and loss:
        flow matching (its share of the time less reflow's), reflow where
        ``settings_.reflow`` > 0, and maximum-likelihood fine-tuning where
        ``settings_.fine_tune_iter`` > 0 (the rest of the time)."""
        settings = self.settings_
        n_fine = settings.fine_tune_iter
        share, reflow = settings.flow_matching_share, settings.reflow
        phases = [Stage(self.objective, share=share * (1.0 - reflow),
                        tags={"objective": self.objective})]
        configs = [(dataclasses.replace(
            config, max_iter=max(1, round(config.max_iter * (1.0 - reflow)))),
            self._training_loss)]
        if reflow:
            # the reflow stage validates only its own parameters: kept on held-out
            # likelihood among themselves, not against the curved field it straightens
            phases.append(Stage("reflow", share=share * reflow, tags={"objective": "reflow"}))
            configs.append((dataclasses.replace(
                config, max_iter=max(1, round(config.max_iter * reflow)),
                lr=config.lr * REFLOW_LR_FRACTION, lr_schedule="cosine",
                validate_at_start=False), self._reflow_loss))
        if n_fine:
            phases.append(Stage("fine_tune", tags={"objective": "maximum_likelihood"}))
            configs.append((dataclasses.replace(
                config, max_iter=n_fine, lr=settings.fine_tune_lr, lr_schedule="cosine",
                batch_size=settings.fine_tune_batch_size, scorings_after=int(settings.stacking),
                validation_interval=settings.fine_tune_validation_interval),
                self._likelihood_loss))
        return phases, configs

    def _reflow_pairs(self, flow: nn.Module, U_train, generator: torch.Generator
                      ) -> torch.Tensor:
        """Reflow's training rows [u, z]: at most :data:`REFLOW_ROWS` training rows (a
        seeded draw; a memory-mapped table is read only at those rows) beside their base
        points ``flow.encode(u)``, solved at rtol = atol = ``fine_tune_tol``. With
        :data:`REFLOW_PAIRS` "decoded" (or "mixed", for the second half) the rows are
        ``flow.decode(z)`` of standard normal z instead; that applies to an unconditional
        CNF with the standard normal base only, other flows keep encoded pairs."""
        source = as_row_source(U_train)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        rows = source.batch(torch.from_numpy(bounded_sample(len(source), REFLOW_ROWS, seed)))
        tol = float(self.fine_tune_tol)
        options = flow.solve_options.replace(rtol=tol, atol=tol)
        decoded = 0
        if isinstance(flow, CNF) and flow.base is None and REFLOW_PAIRS != "encoded":
            decoded = len(rows) if REFLOW_PAIRS == "decoded" else len(rows) // 2
        was_training = flow.training
        flow.eval()
        with torch.no_grad():
            encoded, pairs = rows[decoded:], []
            if len(encoded):
                z = [flow.encode(part, solve_options=options)
                     for part in encoded.split(self._score_batch_size)]
                pairs.append(torch.cat([encoded, torch.cat(z)], dim=1))
            if decoded:
                draws = torch.randn(decoded, flow.dim, generator=generator,
                                    dtype=rows.dtype).to(rows.device)
                x = [flow.decode(part, solve_options=options)
                     for part in draws.split(self._score_batch_size)]
                pairs.append(torch.cat([torch.cat(x), draws], dim=1))
        flow.train(was_training)
        return torch.cat(pairs)

    def _reflow_loss(self, flow: nn.Module, pairs: torch.Tensor) -> torch.Tensor:
        """Flow matching on reflow's pairs [u, z] (:meth:`cnflow.CNF.flow_matching_loss`
        with ``z``): the last columns are the base points, as many as the flow models."""
        dim = getattr(flow, "flow", flow).dim  # a conditional flow's CNF is its .flow
        return flow.flow_matching_loss(pairs[:, :-dim], z=pairs[:, -dim:],
                                       time_exponent=float(self.time_exponent))

    def _likelihood_loss(self, flow: nn.Module, u: torch.Tensor) -> torch.Tensor:
        """Fine-tuning's loss: the mean negative log-likelihood without the RNODE penalties,
        solved at rtol = atol = ``fine_tune_tol`` with gradients as ``fine_tune_adjoint``
        says (this call's options; the flow's own stay as built)."""
        tol = float(self.fine_tune_tol)
        options = flow.solve_options.replace(rtol=tol, atol=tol,
                                             adjoint=self.settings_.fine_tune_adjoint)
        return -flow.log_prob(u, solve_options=options).mean()

    def _samples_with_log_prob(self, flow: nn.Module) -> bool:
        return isinstance(flow, CNF)

    def _training_loss(self, flow: nn.Module, u: torch.Tensor) -> torch.Tensor:
        """The flow-matching loss, or the mean NLL plus the RNODE penalties
        λ_K·E∫‖f‖²dt + λ_J·E∫‖∂f/∂z‖²_F dt."""
        if self.objective == "flow_matching":
            return flow.flow_matching_loss(u, time_exponent=float(self.time_exponent),
                                           pairing=self.settings_.pairing)
        if not (self.kinetic_energy or self.jacobian_norm):
            return -flow.log_prob(u).mean()
        logp, reg = flow.log_prob(u, return_regularizers=True)
        return (-logp.mean() + self.kinetic_energy * reg.kinetic.mean()
                + self.jacobian_norm * reg.jacobian.mean())

    def _validation_loss(self, flow: nn.Module, u: torch.Tensor,
                         reduce: bool = True) -> torch.Tensor:
        """The held-out rows' mean negative log-likelihood (each row's, with
        ``reduce=False``), by the exact trace with solves at ``fine_tune_tol`` (whichever
        objective trains), so that the parameters kept are the most likely on new data."""
        nll = -self._log_prob(flow, u, tolerance=float(self.fine_tune_tol))
        return nll.mean() if reduce else nll

    def _log_prob(self, flow: nn.Module, u: torch.Tensor,
                  tolerance: float | None = None) -> torch.Tensor:
        """Scoring and validation use the exact trace, so they are deterministic; with
        ``tolerance``, solves at rtol = atol = tolerance (else the flow's own).

        The rows are solved :func:`trace_solve_rows` at a time; every solve after the first
        starts at the step the first one's controller chose after its first accepted step
        (``SolverStats.suggested_first_step``), not at the cautious estimate of a first step
        (which is several times too short here: one solver step saved per solve)."""
        if isinstance(flow, FlowMixture):
            return flow.combine([self._log_prob(member, u, tolerance)
                                 for member in flow.members])
        if not hasattr(flow, "solve_options"):  # not solved: e.g. a stacked Gaussian mixture
            return flow.log_prob(u)
        options = (flow.solve_options if tolerance is None
                   else flow.solve_options.replace(rtol=tolerance, atol=tolerance))
        parts, first_step = [], None
        for part in u.split(trace_solve_rows(flow, u)):
            solve = options if first_step is None else options.replace(first_step=first_step)
            parts.append(flow.log_prob(part, trace="exact", solve_options=solve))
            stats = getattr(flow, "stats_forward", None)
            if first_step is None and stats is not None:
                first_step = stats.suggested_first_step
        return torch.cat(parts)
