"""Records of fitted state as tensors and plain values, and the reading of model files.

A model file (and a checkpoint) holds only tensors and plain Python values, so that it loads
with ``torch.load(..., weights_only=True)`` and no code from the file ever runs. The helpers
here turn fitted parts into such records and back, read a file as a given estimator's, turn
a missing or malformed part into a :class:`cnflow.ModelFileError` naming the file and the
part, and check that a file's parameters and its fit settings agree.

Example:
    >>> import torch
    >>> from cnflow.flows.base_density import GaussianMixtureBase
    >>> mixture = GaussianMixtureBase.empty(2, 3).to(torch.float64)
    >>> record = mixture_record(mixture)
    >>> mixture_from_record(record, 3).n_components
    2
"""

from __future__ import annotations

import contextlib
import hashlib
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ...files import ModelFileError, atomic_write, read_torch_file
from ...flows.base_density import GaussianMixtureBase
from ...flows.mixture import FlowMixture
from ...preprocessing import TabularPreprocessor
from ...training import resolve_device
from ...training.checkpoint import FitCheckpoint
from ..policy import FitSettings

__all__ = ["tensors_of", "arrays_of", "state_digest", "mixture_record", "mixture_from_record",
           "member_record", "component_counts", "read_estimator_file", "reading_parts_of",
           "check_settings_agree", "save_fitted", "load_fitted", "read_fitted",
           "build_fitted", "empty_member", "empty_density_flow", "plain_params",
           "open_fit_checkpoint"]

#: An estimator class, in the signature of :func:`load_fitted`.
E = TypeVar("E")


def tensors_of(state):
    """A nested dict of numpy arrays as torch tensors (for a weights_only file)."""
    if isinstance(state, dict):
        return {k: tensors_of(v) for k, v in state.items()}
    return torch.from_numpy(np.ascontiguousarray(state)) if isinstance(state, np.ndarray) else state


def arrays_of(state):
    """The inverse of :func:`tensors_of`."""
    if isinstance(state, dict):
        return {k: arrays_of(v) for k, v in state.items()}
    return state.numpy() if isinstance(state, torch.Tensor) else state


def state_digest(modules: list[nn.Module]) -> str:
    """A SHA-256 digest of the modules' parameters and buffers (to recognise a starting
    point)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, value in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def mixture_record(mixture: GaussianMixtureBase | None) -> dict | None:
    """A Gaussian mixture as plain values and tensors (for a checkpoint)."""
    if mixture is None:
        return None
    return {"n_components": int(mixture.n_components),
            "state": {k: v.detach().cpu() for k, v in mixture.state_dict().items()}}


def mixture_from_record(record: dict | None, dim: int) -> GaussianMixtureBase | None:
    """The inverse of :func:`mixture_record` (in the record's dtype, so that the mixture
    equals the one recorded)."""
    if record is None:
        return None
    mixture = GaussianMixtureBase.empty(int(record["n_components"]), dim)
    mixture = mixture.to(record["state"]["means"].dtype)
    mixture.load_state_dict(record["state"])
    return mixture


def component_counts(flow: nn.Module, mixture: GaussianMixtureBase | None) -> tuple[int, int]:
    """How many Gaussian components a member's flow has as its base and its stacked mixture
    has (0: the flow's own base; not stacked): what :func:`empty_member` rebuilds it from."""
    base = getattr(flow, "base", None)
    return (0 if base is None else int(base.n_components),
            0 if mixture is None else int(mixture.n_components))


def member_record(member: nn.Module) -> dict:
    """A finished member as plain values and tensors: its parameters and its
    :func:`component_counts`."""
    flow, mixture = ((member.members[0], member.members[1]) if isinstance(member, FlowMixture)
                     else (member, None))
    base_components, stacked_components = component_counts(flow, mixture)
    return {"state": {k: v.detach().cpu() for k, v in member.state_dict().items()},
            "base_components": base_components, "stacked_components": stacked_components}


def read_estimator_file(path: str | Path, estimator: str, file_format: str) -> dict:
    """The contents of an estimator's ``save`` file, checked to be of ``file_format`` and
    of ``estimator`` (the class name it was saved under); a :class:`cnflow.ModelFileError`
    naming the file otherwise."""
    data = read_torch_file(path, f"a {estimator} file")
    if not isinstance(data, dict) or data.get("format") != file_format:
        raise ModelFileError(f"{path} is not a file written by {estimator}.save")
    if data.get("estimator") != estimator:
        raise ModelFileError(f"{path} holds a {data.get('estimator')}, not a {estimator}")
    return data


@contextlib.contextmanager
def reading_parts_of(path: str | Path):
    """Inside, a missing or malformed part of the estimator file at ``path`` (a KeyError,
    TypeError, AttributeError, RuntimeError or ValueError) becomes a
    :class:`cnflow.ModelFileError` naming the file and the part."""
    try:
        yield
    except ModelFileError:
        raise
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        what = f"missing {err}" if isinstance(err, KeyError) else lines[0] if lines else ""
        if what.startswith("Error(s) in loading state_dict") and len(lines) > 1:
            # the weights do not fit the architecture the parameters build: name the first
            # tensor that does not (torch lists each on a line of its own)
            what = (f"{lines[0]} {lines[1]} (its weights do not fit the model its "
                    f"parameters build)")
        raise ModelFileError(f"{path} is damaged: {what}") from None


#: Parameters that the fit policy passes through to the setting of the same name when they
#: are set (not "auto"). Others may be resolved further: a validation_fraction with several
#: members, n_iter_no_change without held-out rows, fine_tune_iter and reflow under maximum
#: likelihood, n_members of a warm start, the device on loading.
_PASSED_THROUGH = frozenset({"objective", "regime", "hidden", "field", "max_iter",
                             "batch_size", "lr", "lr_schedule", "preprocessing", "stacking",
                             "pairing", "fine_tune_lr", "fine_tune_adjoint"})


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def check_settings_agree(path: str | Path, params: Mapping[str, Any],
                         settings: Mapping[str, Any] | None) -> None:
    """A :class:`cnflow.ModelFileError` naming the file and the parameter where a model
    file's parameters and its fit settings (``settings_``, saved beside them) disagree: a
    parameter that the policy passes through (:data:`_PASSED_THROUGH`) and that was set (not
    "auto" or None) must have the value that the setting of the same name records."""
    if settings is None:
        return
    for name, value in params.items():
        if (name not in _PASSED_THROUGH or name not in settings or value is None
                or value == "auto"):
            continue
        if _plain(value) != _plain(settings[name]):
            raise ModelFileError(f"{path} is damaged: its parameters say {name}={value!r} "
                                 f"but its fit settings say {name}={settings[name]!r}")


def save_fitted(estimator: Any, path: str | Path, file_format: str,
                module: nn.Module, **fitted) -> None:
    """Write a fitted estimator that holds one torch module to a ``torch.save`` file that
    loads with ``weights_only=True``, atomically (:func:`cnflow.files.atomic_write`).

    The file is a dict of plain values and tensors: ``file_format``, the estimator's class
    name, its parameters (:meth:`EstimatorBase._plain_params`), the module's parameters and
    buffers (on the CPU), ``history_``, ``n_iter_`` and the estimator's own ``fitted``
    values; :func:`load_fitted` reads it back.
    """
    contents = {"format": file_format, "estimator": type(estimator).__name__,
                "params": estimator._plain_params(),
                "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                "history": estimator.history_, "n_iter": int(estimator.n_iter_),
                "settings": estimator.settings_.as_dict(), **fitted}
    atomic_write(path, lambda handle: torch.save(contents, handle))


def load_fitted(cls: type[E], path: str | Path, file_format: str, device: str | None,
                rebuild: Callable[[E, dict], nn.Module]) -> tuple[E, nn.Module]:
    """The estimator and its module from a file of :func:`save_fitted`: the file read
    (:func:`read_fitted`), then the estimator built from it (:func:`build_fitted`).

    Raises:
        FileNotFoundError: no file at ``path``.
        cnflow.ModelFileError: (a ValueError) the file is truncated, empty, not a file of
            ``cls``, has parts missing or malformed, or parameters that disagree with its fit
            settings; the message names the file and says which. No code from the file runs
            (``weights_only=True``).
    """
    path = Path(path)
    data = read_fitted(cls, path, file_format)
    with reading_parts_of(path):
        return build_fitted(cls, data, path, device, rebuild)


def read_fitted(cls: type, path: Path, file_format: str) -> dict:
    """The contents of a model file of ``cls`` (FileNotFoundError, or a
    :class:`cnflow.ModelFileError` for a file of another kind)."""
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    return read_estimator_file(path, cls.__name__, file_format)


def build_fitted(cls: type[E], data: dict, path: Path, device: str | None,
                 rebuild: Callable[[E, dict], nn.Module]) -> tuple[E, nn.Module]:
    """The estimator and its module that the contents ``data`` of a model file describe
    (a KeyError etc. where parts are missing or malformed: call inside
    :func:`reading_parts_of`).

    The estimator is made from the saved parameters (checked against the saved settings,
    then against their kinds), with ``device`` (when given) in place of the saved one, and
    ``device_``, ``settings_``, ``history_`` and ``n_iter_`` set; ``rebuild(estimator,
    contents)`` restores the estimator's own fitted values and returns its module, newly
    built (the global random stream is left as it was). The module is then cast to the
    estimator's device and dtype and the saved parameters are loaded into it (cast first,
    so that float64 values are never rounded through float32).
    """
    check_settings_agree(path, data["params"], data.get("settings"))
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in data["params"].items()}
    est = cls(**params)
    if device is not None:
        est.device = device
    est._validate_parameters()
    est.device_ = resolve_device(est.device)
    if data.get("settings") is not None:
        est.settings_ = FitSettings.from_dict(data["settings"])
    with est._seeded(0):
        module = rebuild(est, data)
    module = module.to(est.device_, est._torch_dtype())
    module.load_state_dict(data["state_dict"])
    est.history_ = list(data["history"])
    est.n_iter_ = int(data["n_iter"])
    return est, module


def empty_member(build_flow: Callable[..., nn.Module], dim: int, base_components: int,
                 stacked_components: int) -> nn.Module:
    """A member of the given structure to load saved parameters into: the flow that
    ``build_flow(dim, base)`` builds, with a Gaussian mixture of ``base_components`` as its
    base (0: its own), stacked with a mixture of ``stacked_components`` (0: not stacked;
    the weights are placeholders that loading replaces)."""
    flow = build_flow(dim, GaussianMixtureBase.empty(base_components, dim)
                      if base_components else None)
    if stacked_components:
        flow = FlowMixture([flow, GaussianMixtureBase.empty(stacked_components, dim)],
                           weights=[0.5, 0.5])
    return flow


def empty_density_flow(est: Any, data: dict, path: Path) -> nn.Module:
    """What a flow density estimator's model file holds besides the flow's parameters,
    restored on ``est`` (scaling, preprocessing, columns, the subclass's extras, members),
    and its flow built empty to receive them (a :class:`cnflow.ModelFileError` where the
    counts of members, bases and stacked mixtures disagree)."""
    est.mean_ = data["mean"].numpy()
    est.scale_ = data["scale"].numpy()
    if data.get("preprocessor") is not None:
        est.preprocessor_ = est._preprocessor_from_state(arrays_of(data["preprocessor"]))
    else:  # files of the first format standardised only
        est.preprocessor_ = TabularPreprocessor.from_state(
            {"kind": "standardize", "mean": est.mean_, "scale": est.scale_})
    est.n_features_in_ = data["n_features_in"]
    if data.get("feature_names_in") is not None:
        est.feature_names_in_ = np.asarray(data["feature_names_in"], dtype=object)
    est._restore_extras(data)
    if data.get("settings") is None:  # a file from before settings were saved
        est.settings_ = est._resolve_settings(0, int(data["n_features_in"]))
    est.n_members_ = int(data.get("n_members", 1))
    D = est._flow_width()
    components = data.get("base_components") or [0] * est.n_members_
    stacked = data.get("stacked_components") or [0] * est.n_members_
    if len(components) != est.n_members_ or len(stacked) != est.n_members_:
        raise ModelFileError(f"{path} is damaged: {len(components)} base densities and "
                             f"{len(stacked)} stacked mixtures for {est.n_members_} flows")
    members = [est._empty_member(D, int(k_base), int(k_stack))
               for k_base, k_stack in zip(components, stacked)]
    return members[0] if est.n_members_ == 1 else FlowMixture(members)


def plain_params(params: Mapping[str, Any]) -> dict:
    """An estimator's parameters (``get_params(deep=False)``) as plain values for a file:
    tuples as lists, paths as strings, and a random_state that is not an int as None."""
    plain = {}
    for name, value in params.items():
        if name == "random_state":
            value = int(value) if isinstance(value, numbers.Integral) else None
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Path):
            value = str(value)
        plain[name] = value
    return plain


def open_fit_checkpoint(estimator: Any, data: dict) -> FitCheckpoint | None:
    """The fit's checkpoint (None without a ``checkpoint`` parameter), identified by the
    estimator's class, its parameters (except verbose, device and the checkpoint's own, which
    do not change the result) and ``data`` (what identifies the data)."""
    if getattr(estimator, "checkpoint", None) is None:
        return None
    params = estimator._plain_params()
    for name in ("checkpoint", "checkpoint_interval", "verbose", "device"):
        params.pop(name, None)
    identity = {"estimator": type(estimator).__name__,
                **{f"parameter {k}": v for k, v in params.items()}, **data}
    return FitCheckpoint.open_in_every_process(estimator.checkpoint,
                                               float(estimator.checkpoint_interval), identity)
