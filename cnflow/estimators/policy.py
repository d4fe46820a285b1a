r"""The fit policy: what every ``"auto"`` parameter of the tabular estimators becomes.

One pure function, :func:`resolve_fit_settings`, turns an estimator's parameters and the
shape of its data into a frozen :class:`FitSettings`; ``fit`` calls it once and keeps the
result as ``settings_`` (scikit-learn's convention for resolved values). Every rule and
constant lives here, in one table per estimator (:data:`POLICIES`), and nowhere else.

The rules, in the order they are resolved:

1. **Regime.** ``regime="auto"`` is ``"small_table"`` from 10 up to
   :data:`SMALL_TABLE_MAX_ROWS` (10,000) rows, else ``"large"`` (fewer than 10 rows are too
   few to hold any out, and take the large-table rules).
2. **Held-out rows.** In the small-table regime, ``n_members="auto"`` is 5 cross-fitted flows
   up to :data:`ENSEMBLE_MAX_ROWS` (1,000) rows (each holding out its own fifth), else one;
   ``validation_fraction="auto"`` is 0.2. In the large regime: one flow, and
   :class:`~cnflow.CNFDensity` holds out :data:`LARGE_HELD_OUT_ROWS` (1,000) rows (the other
   estimators none). A ``validation_fraction`` that is set means one member.
   ``settings.validation_fraction`` is the share each member holds out (1/5 with five
   members). Choosing the map and fitting a stacked mixture see at most
   :data:`MAX_ROWS_FOR_MIXTURES` training rows; in the large regime each of the two starts
   no larger mixture that would end after ``planning_share`` (10 %) of ``max_seconds``
   from its start (the maps' mixtures grow in step), choose between
   whitening and the quantile map (per-column Gaussianisation by a piecewise-linear
   distribution function with exponential tails, fast on every row; the kernel one costs
   a sum over its centres for each value, and logarithms give rows outside the training
   range a density of 0) up to 16 modelled dimensions, between whitening and logarithms above,
   and the held-out rows are scored every 1,000 flow-matching steps, or 70 per
   modelled dimension if more (a scoring costs about 7·D steps), or 100 fine-tuning steps
   (and after the last step, as in every regime).
3. **Network and loop,** per objective (the table's rows): the field's network (dense, see
   ``_FIELD``), hidden widths, steps, batch, lr, schedule, and the steps between validations
   when rows are held out. In the large regime :class:`~cnflow.CNFDensity`'s flow-matching
   field is 128 wide above 16 modelled dimensions (64 below).
4. **Preprocessing.** ``"auto"`` is ``"choose"`` (the map best on held-out likelihood, by
   :func:`cnflow.preprocessing.choose_preprocessing`) where rows are held out (for the
   estimators whose table says ``choose_only_small``, only in the small-table regime or where
   the table holds rows out in the large one), else the table's fallback.
5. **Stacking** (``"auto"``): wherever the map is chosen.
6. **Fine-tuning** after flow matching: one maximum-likelihood step per 100 flow-matching
   steps, at a table fraction of the flow-matching lr, at the maximum-likelihood batch, with
   gradients by backpropagation up to 8 modelled dimensions (the adjoint method above); it
   gets the last quarter of a ``max_seconds`` budget. In the large regime, above 8 modelled
   dimensions it gets only the time flow matching leaves (flow matching's share is 1: a
   quarter of a short budget ended worse on held-out rows than flow matching alone), and
   above 16, none (its steps cost seconds each there).
7. **Early stopping:** 10 validations without improvement, where rows are held out.
8. **Reflow** (``reflow="auto"``): none (0); a share r moves r of flow matching's time and
   steps to a reflow stage (:class:`~cnflow.CNFDensity`'s ``reflow``), with flow matching only.

Example:
    >>> from cnflow.estimators.policy import resolve_fit_settings
    >>> s = resolve_fit_settings("CNFDensity", {"objective": "flow_matching"},
    ...                          n_samples=3000, n_features=4)
    >>> s.regime, s.n_members, s.validation_fraction, s.preprocessing, s.stacking
    ('small_table', 1, 0.2, 'choose', True)
    >>> s.hidden, s.max_iter, s.batch_size, s.lr, s.fine_tune_iter, s.fine_tune_lr
    ((64, 64, 64, 64, 64), 20000, 2048, 0.01, 200, 0.005)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FitSettings", "POLICIES", "REGIMES", "SMALL_TABLE_MAX_ROWS", "ENSEMBLE_MAX_ROWS",
           "MIN_ROWS_TO_HOLD_OUT", "LARGE_HELD_OUT_ROWS", "MAX_ROWS_FOR_MIXTURES",
           "resolve_fit_settings", "policy_kind"]

#: The regimes a tabular estimator's ``regime`` parameter names ("auto": by the row count).
REGIMES = ("small_table", "large")
#: Up to this many rows, "auto" is the small-table regime: rows held out, the map chosen on
#: them, the best parameters kept, a Gaussian mixture stacked.
SMALL_TABLE_MAX_ROWS = 10_000
#: Up to this many rows, the small-table regime averages :data:`ENSEMBLE_MEMBERS` flows.
ENSEMBLE_MAX_ROWS = 1_000
#: The cross-fitted flows averaged on the smallest tables.
ENSEMBLE_MEMBERS = 5
#: Below this many rows nothing is held out, whatever the regime.
MIN_ROWS_TO_HOLD_OUT = 10
#: The maps ``preprocessing="choose"`` chooses among (the first unless another is clearly
#: better; :func:`cnflow.preprocessing.choose_preprocessing`).
CANDIDATE_MAPS = ("whiten", "log", "gaussianize")
#: In the large regime, :class:`~cnflow.CNFDensity` holds out this many rows (enough to rank
#: maps and parameter snapshots; each validation solves the ODE for every one of them).
LARGE_HELD_OUT_ROWS = 1_000
#: The most training rows that choosing the map and fitting a stacked Gaussian mixture see
#: (a seeded random subset above it: their cost grows with the rows, their gain does not).
MAX_ROWS_FOR_MIXTURES = 8_000


def _objective(hidden, max_iter, batch_size, lr, lr_schedule, validation_interval) -> dict:
    return {"hidden": hidden, "max_iter": max_iter, "batch_size": batch_size, "lr": lr,
            "lr_schedule": lr_schedule, "validation_interval": validation_interval}


_CNF_OBJECTIVES = {
    # flow matching: 20,000 steps at batch 2048 (about 3 minutes on 2 CPU cores), five layers
    "flow_matching": _objective((64,) * 5, 20_000, 2048, 1e-2, "cosine", 100),
    # maximum likelihood: FFJORD's three layers, each step solves the ODE both ways
    "maximum_likelihood": _objective((64,) * 3, 1000, 512, 5e-3, "constant", 20),
}
_FINE_TUNING = {
    "flow_matching_steps_per_step": 100,   # fine_tune_iter="auto": max_iter // 100
    "lr_fraction": 0.5,                    # fine_tune_lr="auto": lr × this
    "batch_size": 512,                     # batch_size="auto": the maximum-likelihood batch
    "validation_interval": 20,
    "backprop_max_features": 8,            # fine_tune_adjoint="auto": backprop up to this D
    "flow_matching_share": 0.75,           # of max_seconds; fine-tuning has the rest
}
#: field="auto": the velocity field's network (cnflow.nn.FIELDS). The dense concat-squash
#: network everywhere: the hollow one scored 3-7x faster from D = 32 up but fitted worse at
#: 120 s on 8 of bench_fields.py's 11 tables (worst RandHIE, -4.65 nats a row; better only
#: on wine and digits), so no rule by D or table size keeps it level (docs/benchmarks.md,
#: "Velocity fields: dense against hollow")
_FIELD = "dense"
#: pairing="auto": how flow matching pairs rows with base draws (cnflow.flows.pairing)
_PAIRING = "independent"

#: reflow="auto": the share of flow matching's time and steps given to a reflow stage
#: (cnflow.estimators.cnf_estimator): none, since at an equal budget it has so far cost
#: likelihood (docs/benchmarks.md, "Sampling and scoring cost")
_REFLOW = 0.0

#: One table per estimator: the values behind each "auto" (see the module docstring).
#: ``objectives``: per objective, the network and loop; ``held_out``: whether the estimator
#: holds out rows by "auto" in the small-table regime; ``choose_only_small``: whether "choose"
#: needs the small-table regime as well as held-out rows; ``fallback_preprocessing``: the map
#: where none is chosen; ``stacking``: whether "auto" may stack; ``large``: what the large
#: regime changes (absent: nothing held out there); ``fine_tuning``: as above,
#: None where the estimator does not fine-tune. A None in an objective's row: the estimator
#: has no "auto" for that setting (its parameter is always given).
POLICIES: dict[str, dict[str, Any]] = {
    "CNFDensity": {
        "objectives": _CNF_OBJECTIVES,
        "held_out": True,
        # the large regime's own rules (absent: the small-table values, nothing held out)
        "large": {
            "held_out_rows": LARGE_HELD_OUT_ROWS,
            # whitening or the quantile map (cnflow.preprocessing.QuantileGaussianizer): the
            # kernel Gaussianisation costs about 0.5 ms a row and column to apply (a
            # distribution function of 1,000 centres), too slow for every row of a large
            # table; logarithms give a held-out row with a value <= 0 in a logged column a
            # density of 0. Chosen on bench_sweep.py's 20 tables at 60 s (docs/benchmarks.md,
            # "Tables chosen by a rule"): against zuko's NSF a win rate of 90 % and a median
            # paired difference of +2.06 nats a row, where whitening or logarithms had 30 % and
            # -0.26
            "candidates": ("whiten", "quantile"),
            # ... up to this many modelled dimensions; above, whitening or logarithms: on the
            # 32- and 64-D warped mixtures (bench_large.py, 120 s) the quantile map cost 0.53
            # and 3.0 nats a row (KL 0.862 -> 1.392, 2.541 -> 5.536), behind zuko's MAF,
            # where the sweep's one table that wide (RandHIE, 30 columns) gained by it but led
            # the NSF by 11 nats without it
            "quantile_max_features": 16,
            "wide_candidates": ("whiten", "log"),
            # choosing the map and fitting the stacked mixture stop trying larger mixtures once
            # this share of max_seconds has passed (EM on thousands of rows takes seconds a try)
            "planning_share": 0.1,
            # held-out rows scored every this many flow-matching (fine-tuning) steps, and after
            # the last step: few scorings, since each one solves the ODE for every held-out row
            "validation_interval": 1000,
            "fine_tune_validation_interval": 100,
            # ... and at least this many flow-matching steps a modelled dimension apart: one
            # scoring costs about as much as 7·D steps at batch 2,048 (the exact trace is D
            # vector-Jacobian products; 6 s, or 330 steps, at D = 48), so that validating
            # takes at most about a tenth of the steps' time whatever D
            "validation_steps_per_feature": 70,
            # maximum-likelihood fine-tuning up to this many modelled dimensions only: above,
            # a step solves for the exact trace at seconds a step (6 s at D = 48), and the few
            # steps of its quarter of the budget lowered no held-out loss
            "fine_tune_max_features": 16,
            # above this many (where its gradients are by the adjoint method), fine-tuning has
            # no share of the budget, only the time flow matching leaves when it ends before
            # it (its max_iter steps done, or stopped early): its quarter of 60 s ended worse
            # on held-out rows than flow matching alone on county murders (9 columns) and
            # baseball (12), while after flow matching's 20,000 steps in 600 s it gained
            "fine_tune_share_max_features": 8,
            # ... and up to that many, flow matching's share of max_seconds (fine-tuning has
            # the rest)
            "flow_matching_share": _FINE_TUNING["flow_matching_share"],
            # flow matching's field above 16 modelled dimensions on a large table: 128 wide
            # (warped mixture, D = 48, 100,000 rows, 120 s: +2.9 nats a row over 64 wide)
            "wide_above_features": 16,
            "wide_hidden": (128,) * 5,
        },
        "choose_only_small": True,
        "fallback_preprocessing": "standardize",
        "stacking": True,
        "n_iter_no_change": 10,
        "fine_tuning": _FINE_TUNING,
    },
    # p(y | x): flow matching at batch 4096, and fine-tuning at 0.03 × lr (at half of lr the
    # first fine-tuning steps undid what flow matching found; docs/benchmarks.md,
    # "Conditional densities"); targets whitened where no map is chosen; never stacked.
    "ConditionalCNFDensity": {
        "objectives": {**_CNF_OBJECTIVES, "flow_matching": {
            **_CNF_OBJECTIVES["flow_matching"], "batch_size": 4096}},
        "held_out": True,
        "choose_only_small": False,
        "fallback_preprocessing": "whiten",
        "stacking": False,
        "n_iter_no_change": 10,
        "fine_tuning": {**_FINE_TUNING, "lr_fraction": 0.03},
    },
    # planar flows: one objective (maximum likelihood, closed-form log-det)
    "PlanarFlowDensity": {
        "objectives": {"maximum_likelihood": _objective(None, 2000, 512, 1e-2, "cosine", 20)},
        "held_out": False,
        "choose_only_small": True,
        "fallback_preprocessing": "standardize",
        "stacking": False,
        "n_iter_no_change": 10,
        "fine_tuning": None,
    },
    # images: flow matching scale by scale, every setting given (the table only records them)
    "ImageCNFDensity": {
        "objectives": {"flow_matching": _objective(None, None, None, None, None, 20)},
        "held_out": False,
        "choose_only_small": True,
        "fallback_preprocessing": "dequantize_logit",
        "stacking": False,
        "n_iter_no_change": None,
        "fine_tuning": None,
    },
    # latent ODEs: the ELBO, every setting given
    "LatentODE": {
        "objectives": {"elbo": _objective(None, None, None, None, None, 20)},
        "held_out": False,
        "choose_only_small": True,
        "fallback_preprocessing": "standardize",
        "stacking": False,
        "n_iter_no_change": None,
        "fine_tuning": None,
    },
}


@dataclass(frozen=True)
class FitSettings:
    """Every setting of a fit, each "auto" resolved (an estimator's ``settings_``).

    Attributes:
        estimator: the estimator whose table resolved them.
        regime: ``"small_table"`` or ``"large"``.
        objective: the training objective.
        hidden: the dynamics network's hidden widths (None: the model has no such network).
        max_iter, batch_size, lr, lr_schedule: the training loop's.
        validation_interval: steps between scorings of the held-out rows.
        n_members: flows averaged (cross-fitted when more than one).
        validation_fraction: the share of rows each member holds out (0: none).
        n_iter_no_change: scorings without improvement before a phase stops (None: never).
        preprocessing: the map fitted before the flow, or ``"choose"`` (by held-out
            likelihood; the chosen one is ``preprocessor_.kind``).
        stacking: whether each member is stacked with a Gaussian mixture.
        fine_tune_iter: maximum-likelihood steps after flow matching (0: none).
        fine_tune_lr, fine_tune_batch_size, fine_tune_validation_interval: fine-tuning's.
        fine_tune_adjoint: fine-tuning's gradients by the adjoint method (else backprop).
        flow_matching_share: flow matching's share of a ``max_seconds`` budget when
            fine-tuning follows (1 without fine-tuning, and where fine-tuning has only the
            time flow matching leaves).
        n_samples, n_features: the data shape the settings were resolved for (n_features:
            the modelled dimensions).
        preprocessing_candidates: the maps ``"choose"`` chooses among.
        planning_share: with ``max_seconds``, the share of it after which choosing the map
            and fitting Gaussian mixtures try no larger mixture (1: the whole budget).
        device: the device the fit runs on (``device="auto"``: CUDA when available, by
            :func:`cnflow.training.resolve_device`).
        pairing: how flow matching pairs rows with base draws (``"independent"`` or
            ``"ot"``, :mod:`cnflow.flows.pairing`).
        reflow: the share of flow matching's time and steps given to its reflow stage
            (0: none; always 0 with maximum likelihood).
        field: the built-in velocity field's network, a key of :data:`cnflow.nn.FIELDS`
            (``"custom"``: a network of the user's; None: the model has no such network).
    """

    estimator: str
    regime: str
    objective: str
    hidden: tuple[int, ...] | None
    max_iter: int
    batch_size: int
    lr: float
    lr_schedule: str
    validation_interval: int
    n_members: int
    validation_fraction: float
    n_iter_no_change: int | None
    preprocessing: str
    stacking: bool
    fine_tune_iter: int
    fine_tune_lr: float
    fine_tune_batch_size: int
    fine_tune_validation_interval: int
    fine_tune_adjoint: bool
    flow_matching_share: float
    n_samples: int
    n_features: int
    device: str = "cpu"
    preprocessing_candidates: tuple[str, ...] = CANDIDATE_MAPS
    planning_share: float = 1.0
    pairing: str = "independent"
    reflow: float = 0.0
    field: str | None = None

    @property
    def holds_out(self) -> bool:
        """Whether rows are held out (to validate, choose the map and stack)."""
        return self.validation_fraction > 0

    def as_dict(self) -> dict:
        """The settings as plain JSON values (tuples as lists)."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping) -> FitSettings:
        """The inverse of :meth:`as_dict` (e.g. for a saved model)."""
        values = dict(values)
        if values.get("hidden") is not None:
            values["hidden"] = tuple(int(h) for h in values["hidden"])
            values.setdefault("field", "dense")  # saved before fields could be chosen
        if "preprocessing_candidates" in values:
            values["preprocessing_candidates"] = tuple(values["preprocessing_candidates"])
        return cls(**values)


def _is_auto(value) -> bool:
    return isinstance(value, str) and value == "auto"


def _chosen(value, auto):
    """``value``, or ``auto`` where it is "auto"."""
    return auto if _is_auto(value) else value


def policy_kind(estimator: Any) -> str:
    """The key of ``estimator``'s table in :data:`POLICIES` (an estimator or its class): the
    kind its cnflow class declares, which a subclass inherits (so that
    ``class MyCNF(CNFDensity)`` fits by ``CNFDensity``'s rules).

    Example:
        >>> from cnflow import CNFDensity
        >>> class MyCNF(CNFDensity):
        ...     pass
        >>> policy_kind(MyCNF())
        'CNFDensity'
    """
    kind = getattr(estimator, "_policy_kind", "")
    if kind not in POLICIES:
        name = estimator.__name__ if isinstance(estimator, type) else type(estimator).__name__
        raise ValueError(f"{name} has no fit policy: it must derive from a cnflow estimator "
                         f"(its _policy_kind {kind!r} is not one of {sorted(POLICIES)})")
    return kind


def _regime(params: Mapping[str, Any], n_samples: int) -> str:
    regime = params.get("regime", "auto")
    if _is_auto(regime):
        small = MIN_ROWS_TO_HOLD_OUT <= n_samples <= SMALL_TABLE_MAX_ROWS
        regime = "small_table" if small else "large"
    return regime


def _members_and_share(params: Mapping[str, Any], regime: str, held_out: bool,
                       large_rows: int | None, n_samples: int,
                       n_members: int | None) -> tuple[int, float]:
    """Rule 2: the members and the share of rows each holds out."""
    fraction_param = params.get("validation_fraction", "auto")
    if n_members is None:
        n_members = params.get("n_members", "auto")
        if _is_auto(n_members):
            ensemble = (held_out and regime == "small_table"
                        and n_samples <= ENSEMBLE_MAX_ROWS and _is_auto(fraction_param))
            n_members = ENSEMBLE_MEMBERS if ensemble else 1
    n_members = int(n_members)
    if n_members > 1:
        return n_members, 1 / n_members
    auto_fraction = (0.0 if not held_out else 0.2 if regime == "small_table"
                     else min(0.2, large_rows / n_samples))
    return n_members, float(_chosen(fraction_param, auto_fraction))


def _map_and_stacking(table: Mapping[str, Any], params: Mapping[str, Any], regime: str,
                      holds_out: bool, large_rows: int | None) -> tuple[str, bool]:
    """Rules 4 and 5: the map (or "choose") and whether a mixture is stacked."""
    preprocessing = params.get("preprocessing", "auto")
    if _is_auto(preprocessing):
        choose = holds_out and (regime == "small_table" or not table["choose_only_small"]
                                or large_rows is not None)
        preprocessing = "choose" if choose else table["fallback_preprocessing"]
    stacking = params.get("stacking", "auto")
    stacking = (table["stacking"] and preprocessing == "choose" if _is_auto(stacking)
                else bool(stacking))
    return str(preprocessing), stacking


def _network(rows: Mapping[str, Any], large: Mapping[str, Any], params: Mapping[str, Any],
             objective: str, n_features: int) -> dict[str, Any]:
    """Rule 3: the field's network and widths and the steps between validations."""
    auto_hidden = rows["hidden"]
    if objective == "flow_matching" and n_features > large.get("wide_above_features", n_features):
        auto_hidden = large["wide_hidden"]
    hidden = _chosen(params.get("hidden", "auto"), auto_hidden)
    field = _chosen(params.get("field", "auto"), rows.get("field", _FIELD))
    interval = (max(large.get("validation_interval", rows["validation_interval"]),
                    large.get("validation_steps_per_feature", 0) * n_features)
                if objective == "flow_matching" else rows["validation_interval"])
    return {"hidden": None if hidden is None else tuple(int(h) for h in hidden),
            "field": None if hidden is None else str(field),
            "validation_interval": interval}


def _fine_tuning(table: Mapping[str, Any], large: Mapping[str, Any],
                 params: Mapping[str, Any], objective: str, max_iter: int, lr: float,
                 n_features: int) -> dict[str, Any]:
    """Rule 6: maximum-likelihood fine-tuning's steps, lr, batch, validations, gradients and
    the share of the time flow matching leaves it."""
    fine = table["fine_tuning"] or {**_FINE_TUNING, "lr_fraction": 0.0}
    fine_iter = 0
    if objective == "flow_matching" and table["fine_tuning"] is not None:
        fine_tunes = n_features <= large.get("fine_tune_max_features", n_features)
        auto_fine_iter = max_iter // fine["flow_matching_steps_per_step"] if fine_tunes else 0
        fine_iter = int(_chosen(params.get("fine_tune_iter", "auto"), auto_fine_iter))
    adjoint = params.get("fine_tune_adjoint", "auto")
    shares = n_features <= large.get("fine_tune_share_max_features", n_features)
    return {
        "fine_tune_iter": fine_iter,
        "fine_tune_lr": float(_chosen(params.get("fine_tune_lr", "auto"),
                                      lr * fine["lr_fraction"])),
        "fine_tune_batch_size": int(_chosen(params.get("batch_size", "auto"),
                                            fine["batch_size"])),
        "fine_tune_validation_interval": large.get("fine_tune_validation_interval",
                                                   fine["validation_interval"]),
        "fine_tune_adjoint": (n_features > fine["backprop_max_features"] if _is_auto(adjoint)
                              else bool(adjoint)),
        "flow_matching_share": (large.get("flow_matching_share", fine["flow_matching_share"])
                                if fine_iter and shares else 1.0)}


def resolve_fit_settings(estimator: str, params: Mapping[str, Any], n_samples: int,
                         n_features: int, *, n_members: int | None = None,
                         device: str = "cpu") -> FitSettings:
    """Every "auto" of ``params`` resolved by ``estimator``'s table for data of
    ``n_samples`` rows and ``n_features`` modelled dimensions (see the module docstring).

    Arguments:
        estimator: a key of :data:`POLICIES` (the estimator's kind, :func:`policy_kind`).
        params: the estimator's parameters (``get_params()``); absent ones count as "auto".
        n_samples: the rows the fit sees.
        n_features: the dimensions the flow models (a conditional model's targets).
        n_members: the members of a fit that is continued (a warm start keeps its members).
        device: the resolved device the fit runs on (recorded).

    Returns:
        The frozen :class:`FitSettings`.
    """
    table = POLICIES[estimator]
    objective = params.get("objective") or next(iter(table["objectives"]))
    rows = table["objectives"][objective]
    regime = _regime(params, n_samples)
    large = table.get("large", {}) if regime == "large" else {}
    large_rows = large.get("held_out_rows")
    held_out = (table["held_out"] and n_samples >= MIN_ROWS_TO_HOLD_OUT
                and (regime == "small_table" or large_rows is not None))
    n_members, fraction = _members_and_share(params, regime, held_out, large_rows, n_samples,
                                             n_members)
    preprocessing, stacking = _map_and_stacking(table, params, regime, fraction > 0,
                                                large_rows)
    max_iter = int(_chosen(params.get("max_iter", "auto"), rows["max_iter"]))
    lr = float(_chosen(params.get("lr", "auto"), rows["lr"]))
    wide = n_features > large.get("quantile_max_features", n_features)
    return FitSettings(
        estimator=estimator, regime=regime, objective=objective, max_iter=max_iter,
        batch_size=int(_chosen(params.get("batch_size", "auto"), rows["batch_size"])), lr=lr,
        lr_schedule=str(_chosen(params.get("lr_schedule", "auto"), rows["lr_schedule"])),
        n_members=n_members, validation_fraction=fraction,
        n_iter_no_change=(None if fraction <= 0 else _chosen(
            params.get("n_iter_no_change", "auto"), table["n_iter_no_change"])),
        preprocessing=preprocessing, stacking=stacking,
        n_samples=int(n_samples), n_features=int(n_features), device=str(device),
        preprocessing_candidates=tuple(large.get("wide_candidates", CANDIDATE_MAPS) if wide
                                       else large.get("candidates", CANDIDATE_MAPS)),
        planning_share=float(large.get("planning_share", 1.0)),
        pairing=str(_chosen(params.get("pairing", "auto"), table.get("pairing", _PAIRING))),
        reflow=(float(_chosen(params.get("reflow", "auto"), table.get("reflow", _REFLOW)))
                if objective == "flow_matching" else 0.0),
        **_network(rows, large, params, objective, n_features),
        **_fine_tuning(table, large, params, objective, max_iter, lr, n_features))
