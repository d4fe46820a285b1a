"""Density estimation with a continuous normalizing flow: :class:`CNFDensity`."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..flows.base_density import GaussianMixtureBase, fit_gaussian_mixture_base
from ..flows.cnf import CNF
from ..ode import TABLEAUX
from ..training.rows import RowSource
from .cnf_estimator import OBJECTIVES, CNFEstimator
from .mapped import rows_sample
from .params import Boolean, Options
from .policy import MAX_ROWS_FOR_MIXTURES

__all__ = ["CNFDensity", "OBJECTIVES", "BASES"]

#: The base densities of :class:`CNFDensity`: N(0, I), or a Gaussian mixture fitted to the
#: preprocessed rows (:class:`cnflow.flows.base_density.GaussianMixtureBase`).
BASES = ("normal", "mixture")

class CNFDensity(CNFEstimator):
    r"""Density estimation with a continuous normalizing flow.

    The density is p(x) = N(z(T); 0, I) · exp(∫_0^T tr(∂f/∂z) dt) for z(0) = x standardised,
    with dz/dt = f(z, t; θ) a concat-squash MLP (FFJORD; Grathwohl et al. 2019); scoring and
    sampling solve that ODE, whichever objective trained f. Two objectives:

    - ``"flow_matching"`` (default): regress f on the velocity (z − x)/T of straight paths
      from each data row x to a Gaussian draw z (conditional flow matching with optimal-
      transport paths, Lipman et al. 2023; Tong et al. 2023), see
      :meth:`cnflow.CNF.flow_matching_loss`. No ODE is solved during training, so a step
      costs one network evaluation and tens of thousands of steps fit in minutes on a CPU.
      Prefer it for speed and for multimodal or sharp-edged densities. By default it ends
      with a short maximum-likelihood fine-tuning (``fine_tune_iter``), since the
      flow-matching loss weighs the field's errors, not the likelihood's.
    - ``"maximum_likelihood"``: minimise the mean negative log-likelihood through the ODE,
      gradients by the adjoint method (``adjoint=True``) or backprop, optionally with the
      RNODE penalties. Each step solves the ODE forwards and backwards (tens of network
      evaluations), but the objective is the likelihood itself; prefer it when the model is
      judged by likelihood at small budgets of iterations, or to fine-tune.

    **What "auto" means.** Every ``"auto"`` parameter is resolved once, at the start of
    ``fit``, by the fit policy, :mod:`cnflow.estimators.policy`: its module docstring states
    the rules and its table (``POLICIES["CNFDensity"]``) holds every number; the resolved
    values are kept as ``settings_``. The rules pick a **regime** by the row count (or by
    ``regime``): small tables get the held-out machinery below; large ones keep it with
    bounds on whatever grows with the rows (1,000 held-out rows, the map chosen between
    whitening and the quantile map on a sample, mixtures within a tenth of ``max_seconds``; see
    ``docs/guide/large-data.md``); fewer than 10 rows are standardised per column and
    nothing is held out.

    **Small tables** (the small-table regime). The rows are mapped by
    :class:`cnflow.preprocessing.TabularPreprocessor` and a share is held out.
    The map is chosen by :func:`cnflow.preprocessing.choose_preprocessing`: whitening by a
    shrunk covariance, unless logarithms of the positive right-skewed columns, or each column
    through its own smoothed kernel distribution function to N(0, 1), then whitening, let a
    full-covariance Gaussian mixture score the first validation fold better by more than two
    standard errors. The flow starts at the identity (the best Gaussian in that space); every
    phase scores the held-out rows by exact likelihood before its first step and at a fixed
    interval of steps, stops after some scorings without improvement, and keeps the best
    parameters. The fitted density is then stacked with a
    Gaussian mixture (1 to 16 full-covariance components, chosen on the same held-out rows):
    :math:`w\,p_\text{flow} + (1 - w)\,p_\text{mixture}` with the weight w that maximises
    the held-out likelihood, so that the fit is never worse there than either part. On
    ``make_warped_mixture`` data the flow carries the fit in 8 dimensions, the mixture in 64
    (where a short budget is too little for a flow to learn a 64-D density from a few
    thousand rows), and the stack beats both in between (``docs/benchmarks.md``, "Real
    tabular data").
    On the smallest tables several such members are fitted, each holding out a different
    fold of the rows (cross-fitting), and the density is their average
    (:class:`cnflow.flows.FlowMixture`); together they have seen every row, and averaging
    lowers the variance of a fit to so few rows. The members share ``max_seconds`` equally.

    **How the defaults were chosen**: each ``"auto"`` setting below was picked by held-out
    KL or log-likelihood on the 2-D toys and on scikit-learn's bundled data sets; the
    measurements are in ``docs/benchmarks.md`` ("How CNFDensity's defaults were chosen").

    Arguments:
        hidden: widths of the dynamics network's hidden layers; ``"auto"``: per objective
            (flow matching's network is deeper than FFJORD's, which maximum likelihood
            keeps). Depth rather than width: a deeper network takes fewer steps in the time
            but composes sharper functions of (z, t). On large tables of more than 16
            columns flow matching's layers are twice as wide (128).
        objective: ``"flow_matching"`` or ``"maximum_likelihood"`` (see above).
        trace: "exact" or "hutchinson" divergence during maximum-likelihood training
            (scoring always uses the exact trace, so ``score_samples`` is deterministic).
        method, rtol, atol: the ODE method (a method of :func:`cnflow.odeint`) and its
            tolerances.
        adjoint: gradients by the adjoint method (True) or backprop through the solver.
        max_iter: training steps; ``"auto"``: per objective (with flow matching 20,000
            steps, then a hundredth as many of fine-tuning; their time is measured in
            ``docs/benchmarks.md``).
        batch_size: rows per step; ``"auto"``: per objective, and fine-tuning's steps take
            maximum likelihood's (a batch given is used for both).
        weight_decay: Adam's L2 penalty.
        lr: Adam's learning rate; ``"auto"``: per objective.
        lr_schedule: ``"cosine"`` anneals the learning rate to 0 over max_iter (or over
            max_seconds, if that ends first),
            ``"constant"`` keeps it; ``"auto"``: cosine with flow matching, constant with
            maximum likelihood.
        regime: ``"small_table"`` (20 % of the rows held out, the map chosen on them, the
            best parameters kept, a Gaussian mixture stacked, members averaged on the
            smallest tables) or ``"large"`` (the same with 1,000 held-out rows, one flow, and
            the bounds of :mod:`cnflow.estimators.policy`): the defaults of the "auto"
            parameters below; ``"auto"``: by the row count.
        kinetic_energy, jacobian_norm: weights λ_K, λ_J of the RNODE regularisers
            E∫‖f‖²dt and E∫‖∂f/∂z‖²_F dt added to the maximum-likelihood loss (Finlay et al.
            2020; flow matching ignores them: its straight-path target already keeps the
            field simple). They keep the dynamics simple, so the solver needs fewer
            evaluations.
        time_exponent: γ > 0: flow matching draws its times as t = T·u^γ, u ~ U(0, 1) (see
            :meth:`cnflow.CNF.flow_matching_loss`; every γ has the same minimiser). γ > 1
            spends more steps near the data, where the field carries the fine structure.
        pairing: how flow matching pairs rows with base draws: ``"independent"``, or
            ``"ot"`` (minibatch optimal transport, blocks of 256 rows; straighter paths,
            so fewer solver evaluations to score and sample, at the cost of an assignment
            a step, :mod:`cnflow.flows.pairing`); ``"auto"``: ``settings_.pairing``, by
            :mod:`cnflow.estimators.policy`.
        reflow: r in [0, 1): the share of flow matching's time (and steps) given to a reflow
            stage (Liu, Gong & Liu 2023): at most 20,000 training rows are carried to
            their base points by the flow so far (``CNF.encode``) and flow matching goes on
            from there on those fixed pairs (``flow_matching_loss(x, z=z)``) at half the
            learning rate, cosine-annealed. The flow's own coupling crosses less than
            independent draws, so the paths straighten and scoring and sampling take fewer
            solver steps; it learns the first flow's density again, adding no likelihood by
            itself (measured in the guide's "Sampling and scoring cost" page).
            ``"auto"``: ``settings_.reflow`` (0: no reflow stage).
        fine_tune_iter: maximum-likelihood steps (the ``trace`` above, gradients as
            ``fine_tune_adjoint`` says, no RNODE penalties) after flow matching, at
            ``fine_tune_lr`` with a cosine schedule; ``"auto"``: a fixed fraction of the
            flow-matching steps, 0 with maximum likelihood. With ``max_seconds``, flow
            matching has the first share of the time (``settings_.flow_matching_share``) and
            fine-tuning the rest (or less, if its steps finish sooner).
        fine_tune_lr: Adam's learning rate while fine-tuning (a fresh optimiser, annealed by
            a cosine schedule); ``"auto"``: a fraction of flow matching's ``lr``.
        fine_tune_tol: rtol = atol of the solves while fine-tuning (scoring and sampling keep
            rtol and atol).
        fine_tune_adjoint: fine-tuning's gradients by the adjoint method (True) or by
            backpropagation through the solver (False); ``"auto"``: backpropagation in low
            dimension, the adjoint method above. At ``fine_tune_tol``'s few solver steps the
            tensors backpropagation keeps are small in low dimension (about 4 MB a stage at
            D = 2 and batch 512; the exact trace's Jacobians grow as D²), and it skips the
            backward solve.
        preprocessing: ``"standardize"`` (per column), ``"whiten"`` (full covariance),
            ``"log"`` (logarithms of the positive right-skewed columns, then whitening) or
            ``"gaussianize"`` (per-column Gaussianisation by a kernel distribution function,
            then whitening) or ``"quantile"`` (the same by a piecewise-linear one with
            exponential tails, fast on many rows), see :mod:`cnflow.preprocessing`;
            densities are always returned in the caller's units. ``"auto"``: chosen by
            held-out likelihood (see above) among whiten, log and gaussianize on small
            tables, between whiten and quantile on large ones, and
            ``"standardize"`` where no rows are held out.
        base: the flow's base density in the preprocessed space: ``"normal"`` (N(0, I),
            default) or ``"mixture"``, the Gaussian mixture described under ``stacking``
            (:class:`cnflow.flows.base_density.GaussianMixtureBase`; flow matching then pairs each
            row with a draw from that row's component, and the flow starts at the mixture).
        stacking: whether each member's density is :math:`w\,p_\text{flow} + (1 - w)\,
            p_\text{mixture}`, with the mixture the full-covariance Gaussian mixture (1 to 16
            components, each fitted from three k-means starts) best on the member's held-out
            rows, fitted to its training rows, and w ∈ [0, 1] the weight that maximises the
            held-out rows' likelihood after training (stacking, Smyth & Wolpert 1999);
            needs held-out rows. ``"auto"``: wherever ``preprocessing`` is chosen, off
            otherwise. Fitted weights: ``stacking_weights_``.
        n_members: the number of flows averaged, each holding out its own 1/n_members of the
            rows for validation; ``"auto"``: several on the smallest tables, else 1 (and 1
            when ``validation_fraction`` is set).
        validation_fraction: rows held out to select the parameters (0: none), scored by
            exact likelihood (solves at ``fine_tune_tol``) before the first step and every
            ``settings_.validation_interval`` steps, the flow starting at the identity; the
            best parameters are kept. ``"auto"``: 20 % on small tables, 1,000 rows on large
            ones.
        n_iter_no_change: scorings without improvement before a phase stops; used only with
            a validation set; ``"auto"``: by the policy.
        max_seconds: stop training after this many seconds (None: run max_iter steps). A
            cosine schedule follows whichever of max_iter and max_seconds runs out first, so
            ``CNFDensity(max_iter=10**7, max_seconds=240)`` trains for 240 s and anneals over
            them (in one process; across processes, over max_iter only). It bounds the whole
            fit: choosing and fitting the preprocessing and the base mixtures come first, and
            the members share the time left equally. A fit can overrun it by the last step
            and validation, and by a final scoring of the held-out rows. Once the budget is
            spent no larger Gaussian mixture is tried, but the preprocessing candidates and
            the smallest mixtures are still fitted, so a budget shorter than they take is
            overrun by them.
        solver: the deprecated name of ``method`` (warns; removed in the next release).
        dtype: "float32" or "float64".
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
        random_state: None, an int or a numpy RandomState; an int makes fits repeatable.
        verbose: show a progress bar.
        warm_start: if True and the estimator is fitted, the next ``fit`` continues from its
            flows (and keeps its preprocessing, members and stacked mixtures) instead of
            starting afresh; ``max_iter`` more steps are taken, ``n_iter_`` and ``history_``
            count both fits (scikit-learn's convention). X must have the same columns.
        checkpoint: a file path (None: no checkpoints). While fitting, the whole state of
            the fit (flows, optimiser moments, learning-rate schedule position, phase,
            iteration, held-out scores, history, random generators' states) is written
            there atomically every ``checkpoint_interval`` seconds and after each member. A
            ``fit`` that finds a checkpoint of the same fit (same parameters, except
            ``verbose``, ``device`` and the checkpoint's own, and the same data) continues
            from it, and on a CPU ends with the same parameters as a fit never interrupted;
            a checkpoint of another fit is an error (:class:`cnflow.training.checkpoint.
            CheckpointMismatchError`), never a silent restart. The file of a finished fit
            is kept: fitting again returns the same model at once. With ``max_seconds``, the
            budget counts every run of the fit.
        checkpoint_interval: seconds between checkpoints (0: after every step).
        field: the velocity field's network, a key of :data:`cnflow.nn.FIELDS`:
            ``"dense"`` (:class:`cnflow.nn.ConcatSquashMLP`; its exact trace, which every
            score and every maximum-likelihood step needs, costs about D + 1 forward passes)
            or ``"hollow"`` (:class:`cnflow.nn.HollowMLP`, Chen & Duvenaud 2019; the exact
            trace in closed form with one forward pass); ``"auto"``: by the fit policy
            (``settings_.field``).

    Attributes:
        settings_: the :class:`cnflow.estimators.policy.FitSettings` of the fit, every
            ``"auto"`` resolved (saved with the model).
        flow_: the fitted :class:`cnflow.CNF`, or with several members their
            :class:`cnflow.flows.FlowMixture`.
        history_: per iteration: loss, lr, nfe_forward, nfe_backward, seconds, objective
            (the step's: "flow_matching" or "maximum_likelihood"), val_loss when validated
            (the held-out rows' mean negative log-likelihood in the preprocessed space), and
            member (with several); a flow-matching step counts one forward evaluation and no
            backward solve.
        n_iter_: the steps taken, summed over the members.
        n_members_: the number of flows averaged.
        preprocessor_: the fitted :class:`cnflow.preprocessing.TabularPreprocessor`.
        preprocessing_scores_: with ``preprocessing="auto"`` on a small table, the held-out
            mean log-likelihood of the best Gaussian mixture under each candidate map.
        n_features_in_, mean_, scale_ (the per-column standardisation), device_.

    Example:
        >>> from cnflow import CNFDensity
        >>> from cnflow.datasets import make_toy
        >>> X = make_toy("8gaussians", 2000, random_state=0)
        >>> est = CNFDensity(hidden=(32, 32), max_iter=5, random_state=0).fit(X)
        >>> est.score_samples(X[:3]).shape, est.sample(4, random_state=0).shape
        ((3,), (4, 2))

    References:
        Grathwohl et al. (2019), "FFJORD"; Finlay et al. (2020), "How to train your neural
        ODE"; Lipman et al. (2023), "Flow matching for generative modeling"; Tong et al.
        (2024), "Improving and generalizing flow-based generative models with minibatch
        optimal transport".
    """

    _policy_kind = "CNFDensity"

    def __init__(self, hidden="auto", objective="flow_matching", trace="exact",
                 method="dopri5", rtol=1e-5, atol=1e-5, adjoint=True, max_iter="auto",
                 batch_size="auto", lr="auto", lr_schedule="auto", weight_decay=0.0,
                 kinetic_energy=0.01, jacobian_norm=0.01, time_exponent=1.5, pairing="auto",
                 reflow="auto",
                 fine_tune_iter="auto", fine_tune_lr="auto", fine_tune_tol=1e-3,
                 fine_tune_adjoint="auto",
                 preprocessing="auto", base="normal", stacking="auto", n_members="auto",
                 validation_fraction="auto", regime="auto",
                 n_iter_no_change="auto",
                 max_seconds=None,
                 dtype="float32", device="auto", random_state=None, verbose=False,
                 warm_start=False, checkpoint=None, checkpoint_interval=60.0,
                 field="auto", solver="deprecated"):
        self.hidden = hidden
        self.objective = objective
        self.trace = trace
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.adjoint = adjoint
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.weight_decay = weight_decay
        self.kinetic_energy = kinetic_energy
        self.jacobian_norm = jacobian_norm
        self.time_exponent = time_exponent
        self.pairing = pairing
        self.reflow = reflow
        self.fine_tune_iter = fine_tune_iter
        self.fine_tune_lr = fine_tune_lr
        self.fine_tune_tol = fine_tune_tol
        self.fine_tune_adjoint = fine_tune_adjoint
        self.preprocessing = preprocessing
        self.base = base
        self.stacking = stacking
        self.n_members = n_members
        self.validation_fraction = validation_fraction
        self.regime = regime
        self.n_iter_no_change = n_iter_no_change
        self.max_seconds = max_seconds
        self.dtype = dtype
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.checkpoint = checkpoint
        self.checkpoint_interval = checkpoint_interval
        self.field = field
        self.solver = solver

    _parameter_kinds = {
        "solver": ["deprecated", Options(*TABLEAUX)],
        "base": [Options(*BASES)],
        "stacking": [Boolean(), "auto"],
    }

    def _fit_mixture(self, U_train: torch.Tensor | RowSource, U_val: torch.Tensor | None,
                     seed: int, deadline: float | None = None
                     ) -> GaussianMixtureBase | None:
        """The full-covariance Gaussian mixture (1 to 16 components) best on the member's
        held-out rows (by BIC without them), fitted to its training rows, when it is the
        base or is stacked."""
        if self.base != "mixture" and not self.settings_.stacking:
            return None
        # a bounded random subset (of a memory-mapped table: a bounded draw)
        U_train = rows_sample(U_train, seed, MAX_ROWS_FOR_MIXTURES)
        val = None if U_val is None else U_val.double().cpu().numpy()
        mixture, _ = fit_gaussian_mixture_base(U_train.double().cpu().numpy(), val,
                                               random_state=seed, deadline=deadline)
        return mixture

    def _base_of(self, mixture: GaussianMixtureBase | None) -> nn.Module | None:
        return copy.deepcopy(mixture) if self.base == "mixture" else None

    def _build_flow(self, n_features: int, base: nn.Module | None = None) -> nn.Module:
        return CNF(n_features, hidden=self.settings_.hidden, trace=self.trace,
                   method=self._method(), field=self.settings_.field,
                   rtol=self.rtol, atol=self.atol, adjoint=self.adjoint, base=base)
