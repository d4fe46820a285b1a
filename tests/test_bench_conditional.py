"""benchmarks/bench_conditional.py runs end to end in its quick mode (zuko, an optional extra,
is left out where it is not installed), and its exact conditioning of a joint Gaussian
mixture is right."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from script_runner import run_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_conditional.py"


@pytest.mark.slow  # runs the script in a process; .ci/run includes it
def test_bench_conditional_quick(tmp_path):
    try:
        import zuko  # noqa: F401
        models = ["cnflow", "zuko NSF"]
    except ImportError:
        models = ["cnflow", "GMM joint"]
    run = run_script(SCRIPT, "--quick", "--out", tmp_path, "--datasets", "bimodal",
                     "digits halves", "--models", *models, "cnflow + CNN")
    assert "| data (train pairs, dim x → dim y) | model |" in run.stdout
    result = json.loads((tmp_path / "bench_conditional_quick.json").read_text())
    # the CNN reads the digits' top halves as images: it runs on that data set only
    assert [r["model"] for r in result["rows"]] == models + models + ["cnflow + CNN"]
    assert all(math.isfinite(r["test_ll"]) for r in result["rows"])
    assert all(math.isfinite(r["kl"]) for r in result["rows"] if r["data"] == "bimodal")
    png = tmp_path / "bench_conditional_quick_digits.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_joint_mixture_is_conditioned_exactly():
    """Against Bayes' rule by brute force: log p(y | x) = log p(x, y) − log p(x), with p(x)
    the mixture's marginal."""
    from scipy.stats import multivariate_normal
    from sklearn.mixture import GaussianMixture

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from bench_conditional import conditional_gmm_log_prob
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.normal(size=(300, 3)), rng.normal(2, 0.5, size=(300, 3))])
    gmm = GaussianMixture(2, covariance_type="full", random_state=0).fit(rows)
    X, Y = rows[:10, :2], rows[:10, 2:]
    joint = gmm.score_samples(rows[:10])
    marginal = np.log(sum(w * multivariate_normal(m[:2], c[:2, :2]).pdf(X)
                          for w, m, c in zip(gmm.weights_, gmm.means_, gmm.covariances_)))
    np.testing.assert_allclose(conditional_gmm_log_prob(gmm, 2, X, Y), joint - marginal,
                               rtol=1e-10, atol=1e-10)
