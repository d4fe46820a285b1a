"""The multiscale image CNF and ImageCNFDensity: the log-density against a brute-force
Jacobian of the whole map on tiny images, sampling against scoring, the estimator's contract
and its errors."""

import math

import numpy as np
import pytest
import torch

from cnflow import ImageCNFDensity
from cnflow.flows import MultiscaleImageCNF
from cnflow.flows.image_transforms import squeeze
from cnflow.nn import ConcatSquashConv2d, ConvVelocityField
from script_runner import run_script


def _tiny_flow(shape, n_scales, seed=0):
    torch.manual_seed(seed)
    flow = MultiscaleImageCNF(shape, n_scales=n_scales, hidden=(6,), rtol=1e-8, atol=1e-8,
                              adjoint=False).double()
    with torch.no_grad():  # a field far from zero
        for p in flow.parameters():
            p.mul_(2)
    return flow


def _forward_map(flow, x_flat):
    """x ↦ every base coordinate (factored-out channels, then the last scale's), flat."""
    h, _ = flow.logit.forward(x_flat.reshape(1, *flow.shape))
    outs = []
    for s, block in enumerate(flow.blocks):
        h = squeeze(h)
        z, _ = block.transform(h.reshape(1, -1), trace="exact")
        z = z.reshape(1, *flow.block_shapes[s])
        if s < flow.n_scales - 1:
            outs.append(z[:, :z.shape[1] // 2].reshape(-1))
            h = z[:, z.shape[1] // 2:]
        else:
            outs.append(z.reshape(-1))
    return torch.cat(outs)


@pytest.mark.parametrize("shape, n_scales", [((1, 2, 2), 1), ((1, 4, 4), 2)])
def test_log_prob_matches_a_brute_force_jacobian(shape, n_scales):
    """log p(x) = log N(g(x); 0, I) + log|det ∂g/∂x|, with g the whole map (logit, squeezes,
    solves, factor-outs) differentiated by autograd through the solver, in float64."""
    flow = _tiny_flow(shape, n_scales)
    x = torch.rand(2, *shape, dtype=torch.float64) * 0.9 + 0.05
    logp = flow.log_prob(x, trace="exact")
    for i in range(2):
        flat = x[i].reshape(-1)
        z = _forward_map(flow, flat)
        jac = torch.autograd.functional.jacobian(lambda v: _forward_map(flow, v), flat)
        expected = (-0.5 * (z.square().sum() + len(z) * math.log(2 * math.pi))
                    + torch.linalg.slogdet(jac)[1])
        torch.testing.assert_close(logp[i], expected, rtol=0, atol=1e-6)


def test_sampling_inverts_the_map():
    """A sample carried forward lands on the base draws it came from: log p of samples is
    finite and sampling then scoring round-trips the logit and squeezes."""
    flow = _tiny_flow((1, 4, 4), 2)
    torch.manual_seed(1)
    with torch.no_grad():
        x = flow.sample(5)
        assert x.shape == (5, 1, 4, 4) and ((x > 0) & (x < 1)).all()
        torch.manual_seed(1)  # the same base draws, pushed through by hand
        c, h, w = flow.block_shapes[-1]
        z_last = torch.randn(5, c * h * w, dtype=torch.float64)
        out = torch.randn(5, flow.block_shapes[0][0] // 2, *flow.block_shapes[0][1:],
                          dtype=torch.float64)
        logp = flow.log_prob(x, trace="exact")
        assert torch.isfinite(logp).all()
        z = torch.stack([_forward_map(flow, x[i].reshape(-1)) for i in range(5)])
    torch.testing.assert_close(z, torch.cat([out.reshape(5, -1), z_last], dim=1), rtol=0,
                               atol=1e-6)


def test_conv_field_handles_one_time_per_row_and_checks_its_arguments():
    layer = ConcatSquashConv2d(2, 3)
    x = torch.randn(4, 2, 3, 3)
    per_row = layer(torch.full((4, 1), 0.3), x)
    torch.testing.assert_close(per_row, layer(torch.tensor(0.3), x))
    with pytest.raises(ValueError, match="odd"):
        ConcatSquashConv2d(1, 1, kernel_size=2)
    with pytest.raises(ValueError, match="shape"):
        ConvVelocityField((1, 4))
    with pytest.raises(ValueError, match="divisible by 2\\^n_scales = 4"):
        MultiscaleImageCNF((1, 6, 6), n_scales=2)


@pytest.fixture(scope="module")
def digits_small():
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.int64)[:, None][:120]
    est = ImageCNFDensity(levels=17, n_scales=2, hidden=(8,), max_iter=10, batch_size=64,
                          rtol=1e-3, atol=1e-3, random_state=0, device="cpu").fit(images)
    return images, est


def test_image_estimator_scores_and_samples(digits_small):
    images, est = digits_small
    scores = est.score_samples(images[:8])
    assert scores.shape == (8,) and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, est.score_samples(images[:8]))  # seeded u
    bpd = est.bits_per_dim(images[:8])
    assert bpd == pytest.approx(-scores.mean() / (64 * math.log(2)))
    drawn = est.sample(4, random_state=0)
    assert drawn.shape == (4, 1, 8, 8) and drawn.dtype == np.int64
    assert drawn.min() >= 0 and drawn.max() <= 16
    assert est.n_iter_ == 20 and {h["scale"] for h in est.history_} == {0, 1}
    # (n, H, W) is read as one channel
    # (other batches take other adaptive steps: equal to the tolerance)
    np.testing.assert_allclose(est.score_samples(images[:3, 0]), scores[:3], atol=1e-3)


def test_fixed_step_image_draws(digits_small):
    """steps=K: every block's reverse map by K midpoint steps (2K evaluations a block);
    with enough rk4 steps the tiny flow's draws are the adaptive ones."""
    _, est = digits_small
    drawn = est.sample(3, random_state=0, steps=2)
    assert drawn.shape == (3, 1, 8, 8) and drawn.dtype == np.int64
    assert drawn.min() >= 0 and drawn.max() <= 16
    assert [b.stats_forward.n_accepted for b in est.flow_.blocks] == [2, 2]
    assert est.flow_.nfe_forward == 2 * 2 * 2
    np.testing.assert_array_equal(est.sample(3, random_state=0, steps=2), drawn)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 1.5"):
        est.sample(3, steps=1.5)
    flow = _tiny_flow((1, 4, 4), 2)
    with torch.no_grad():
        torch.manual_seed(2)
        fixed = flow.sample(4, steps=8, method="rk4")
        torch.manual_seed(2)
        adaptive = flow.sample(4)
    torch.testing.assert_close(fixed, adaptive, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="give steps too"):
        flow.sample(2, method="rk4")


@pytest.mark.parametrize("images, message", [
    (np.full((4, 1, 8, 8), 17), "integers from 0 to levels − 1 = 16"),
    (np.full((4, 1, 8, 8), 1.5), "integers"),
    (np.zeros((4, 8)), "shape"),
    (np.zeros((4, 1, 4, 4)), "the model was fitted on"),
])
def test_bad_images_are_clear_errors(digits_small, images, message):
    _, est = digits_small
    with pytest.raises(ValueError, match=message):
        est.score_samples(images)


def test_the_untrained_field_is_a_logistic_model_with_the_right_units():
    """With the blocks at the zero field, log p(y) is the logit map's Jacobian plus the
    Gaussian of the logits, so score_samples is computable by hand."""
    est = ImageCNFDensity(levels=4, n_scales=1, hidden=(4,), max_iter=1, lr=1e-12,
                          rtol=1e-6, atol=1e-6, random_state=0, device="cpu")
    X = np.random.default_rng(0).integers(0, 4, size=(6, 1, 2, 2))
    est.fit(X)
    with torch.no_grad():
        for p in est.flow_.parameters():
            p.zero_()
    generator = torch.Generator().manual_seed(0)
    u = torch.rand((6, 1, 2, 2), generator=generator, dtype=torch.float32).double()
    y = (torch.as_tensor(X, dtype=torch.float64) + u) / 4
    s = 1e-6 + (1 - 2e-6) * y
    logit = torch.log(s) - torch.log1p(-s)
    log_jac = (math.log(1 - 2e-6) - torch.log(s) - torch.log1p(-s)).sum((1, 2, 3))
    gauss = (-0.5 * logit.square() - 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))
    expected = (log_jac + gauss - 4 * math.log(4)).numpy()
    np.testing.assert_allclose(est.score_samples(X), expected, rtol=0, atol=1e-4)


def test_save_load_and_a_damaged_file(digits_small, tmp_path):
    from cnflow import ModelFileError

    images, est = digits_small
    est.save(tmp_path / "image.pt")
    loaded = ImageCNFDensity.load(tmp_path / "image.pt")
    np.testing.assert_allclose(loaded.score_samples(images[:4]), est.score_samples(images[:4]),
                               rtol=0, atol=1e-6)
    assert loaded.n_iter_ == est.n_iter_ and loaded.shape_ == (1, 8, 8)
    (tmp_path / "bad.pt").write_bytes(b"nonsense")
    with pytest.raises(ModelFileError, match="bad.pt"):
        ImageCNFDensity.load(tmp_path / "bad.pt")


class _Stop(Exception):
    pass


def test_an_image_fit_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from cnflow.training import FitCheckpoint

    X = np.random.default_rng(0).integers(0, 4, size=(48, 1, 4, 4))
    settings = dict(levels=4, n_scales=2, hidden=(4,), max_iter=12, batch_size=16, rtol=1e-4,
                    atol=1e-4, fine_tune_tol=1e-4, random_state=0, device="cpu")
    reference = ImageCNFDensity(**settings).fit(X)
    path = tmp_path / "image.ckpt"
    real_write, count = FitCheckpoint.write, [0]

    def write(self, loop_state=None):
        real_write(self, loop_state)
        count[0] += 1
        if count[0] == 16:  # in the second scale
            raise _Stop

    with monkeypatch.context() as patch:
        patch.setattr(FitCheckpoint, "write", write)
        with pytest.raises(_Stop):
            ImageCNFDensity(checkpoint=path, checkpoint_interval=0, **settings).fit(X)
    resumed = ImageCNFDensity(checkpoint=path, checkpoint_interval=0, **settings).fit(X)
    assert resumed.n_iter_ == reference.n_iter_ == 24
    for name, value in reference.flow_.state_dict().items():
        torch.testing.assert_close(resumed.flow_.state_dict()[name], value, rtol=0, atol=1e-6)


def test_load_images_from_npy_and_npz(tmp_path):
    from cnflow.datasets import load_images

    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "a.npy", images)
    np.savez(tmp_path / "b.npz", x_train=images, y_train=np.arange(5))
    np.savez(tmp_path / "c.npz", first=images, second=images)
    np.testing.assert_array_equal(load_images(tmp_path / "a.npy"), images)
    np.testing.assert_array_equal(load_images(tmp_path / "b.npz"), images)
    np.testing.assert_array_equal(load_images(tmp_path / "c.npz", key="second"), images)
    with pytest.raises(ValueError, match="several arrays"):
        load_images(tmp_path / "c.npz")
    with pytest.raises(ValueError, match="no array 'x'"):
        load_images(tmp_path / "c.npz", key="x")
    np.save(tmp_path / "flat.npy", images.reshape(5, -1))
    with pytest.raises(ValueError, match="shape"):
        load_images(tmp_path / "flat.npy")
    with pytest.raises(ValueError, match=".npy or .npz"):
        load_images(tmp_path / "a.csv")


def test_the_command_line_trains_scores_and_samples_images(tmp_path, capsys):
    from cnflow.cli import main

    images = np.random.default_rng(0).integers(0, 4, size=(40, 1, 4, 4))
    np.save(tmp_path / "images.npy", images)
    code = main(["train-images", str(tmp_path / "images.npy"), "--levels", "4", "--n-scales",
                 "1", "--hidden", "4", "--max-iter", "3", "--quiet", "--out",
                 str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "samples.png").read_bytes()[:4] == b"\x89PNG"
    model = tmp_path / "out" / "model.pt"
    assert main(["score", str(model), str(tmp_path / "images.npy")]) == 0
    assert "bits/dim over 40 images" in capsys.readouterr().out
    assert main(["sample", str(model), "--n", "3", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (3, 1, 4, 4)
    assert main(["train-images", str(tmp_path / "images.npy"), "--levels", "2", "--out",
                 str(tmp_path / "o2")]) == 2
    assert "integers from 0 to levels − 1 = 1" in capsys.readouterr().err


def test_the_gpu_script_runs_on_the_cpu(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import gpu_images
    finally:
        sys.path.pop(0)
    result = gpu_images.main(["--quick", "--out", str(tmp_path)])
    assert [r["batch"] for r in result["steps"]] == [16, 32]
    assert all(r["seconds_per_step"] > 0 for r in result["steps"])


@pytest.mark.slow  # runs the benchmark script; .ci/run includes it
def test_bench_images_quick(tmp_path):
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_images.py"
    models = ["image CNF"]
    run_script(script, "--quick", "--out", tmp_path, "--models", *models)
    result = json.loads((tmp_path / "bench_images_quick.json").read_text())
    assert [r["model"] for r in result["rows"]] == models
    assert all(0 < r["bits_per_dim"] < 20 for r in result["rows"])
    assert (tmp_path / "bench_images_quick_samples.png").read_bytes()[:4] == b"\x89PNG"
