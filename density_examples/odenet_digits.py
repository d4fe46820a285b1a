"""ResNet against ODE-Net on scikit-learn's 8x8 digits: accuracy, parameters, NFE and time.

Chen et al. (2018, section 3) replace a stack of residual blocks h ← h + f(h, θ_k) by one ODE
block h(1) = h(0) + ∫₀¹ f(h(t), t, θ) dt (cnflow.nn.ODEBlock, dopri5, adjoint gradients):
one set of parameters for the whole depth, the depth chosen by the solver. The claim to
test: the ODE-Net reaches about the same accuracy as the ResNet with fewer parameters.

Data: ``sklearn.datasets.load_digits`` (1797 images of 8x8 pixels, 10 classes), scaled to
[0, 1], split 80/20 stratified (1437 training, 360 test images).

Every network is stem → feature part → head, with C channels:

- stem: Conv(1→C, 3x3) → GroupNorm → ReLU → Conv(C→C, 4x4, stride 2), 8x8 → 4x4;
- feature part, one of
  * ResNet-k: k pre-activation residual blocks h + conv(relu(gn(conv(relu(gn(h)))))),
    k = 6 (the depth of Chen et al.'s ResNet) and k = 1 (the ODE-Net's parameter count);
  * ODE-Net: one ODE block whose f(t, h) is the same residual branch with t appended to the
    convolutions' input as a constant channel (rtol = atol = 1e-3 as in Chen et al.);
- head: GroupNorm → ReLU → global average pool → Linear(C→10).

Same training budget for all: Adam, lr 3e-3 with cosine decay, batch 64, the same number of
epochs, three seeds each. After training the ODE-Net is also evaluated at other tolerances
(the accuracy-for-NFE trade-off: the depth is chosen at test time).

Writes density_examples/figures/odenet_digits.png (test accuracy by epoch; the ODE-Net's
NFE by epoch; accuracy against NFE over test tolerances) and odenet_digits.json, .md, or
*_quick.* with --quick.

Run: .venv/bin/python density_examples/odenet_digits.py [--quick] [--out FOLDER]
(about 2 minutes with one CPU thread, --threads 1; --quick: seconds, for the tests).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from cnflow.nn import ODEBlock


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """h + conv(relu(gn(conv(relu(gn(h)))))): one residual block, pre-activation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(norm(channels), nn.ReLU(),
                                    nn.Conv2d(channels, channels, 3, padding=1), norm(channels),
                                    nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.branch(h)


class ConcatConv(nn.Module):
    """A 3x3 convolution of [h, t]: the time enters as one more, constant, input channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels + 1, channels, 3, padding=1)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        tt = t.expand(h.shape[0], 1, *h.shape[2:])
        return self.conv(torch.cat([h, tt], dim=1))


class ODEFunc(nn.Module):
    """f(t, h): the residual branch with time-aware convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(channels), ConcatConv(channels)
        self.norm2, self.conv2 = norm(channels), ConcatConv(channels)
        self.norm3 = norm(channels)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        h = self.conv1(t, torch.relu(self.norm1(h)))
        h = self.conv2(t, torch.relu(self.norm2(h)))
        return self.norm3(h)


def build(kind: str, channels: int) -> nn.Module:
    stem = [nn.Conv2d(1, channels, 3, padding=1), norm(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 4, stride=2, padding=1)]
    if kind == "ODE-Net":
        features = [ODEBlock(ODEFunc(channels), T=1.0, method="dopri5", rtol=1e-3, atol=1e-3)]
    else:
        features = [ResBlock(channels) for _ in range(int(kind.split("-")[1]))]
    head = [norm(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(channels, 10)]
    return nn.Sequential(*stem, *features, *head)


def ode_block(model: nn.Module) -> ODEBlock | None:
    return next((m for m in model.modules() if isinstance(m, ODEBlock)), None)


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean forward NFE per batch of 256; 0 for a ResNet)."""
    model.eval()
    correct, nfes = 0, []
    for start in range(0, len(X), 256):
        logits = model(X[start:start + 256])
        correct += int((logits.argmax(1) == y[start:start + 256]).sum())
        block = ode_block(model)
        nfes.append(block.nfe_forward if block is not None else 0)
    model.train()
    return correct / len(X), float(np.mean(nfes))


def fit_one(kind: str, data: dict, channels: int, epochs: int, batch: int, lr: float,
            seed: int) -> dict:
    torch.manual_seed(seed)
    model = build(kind, channels)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * int(np.ceil(len(data["X_train"]) / batch))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    block = ode_block(model)
    curve, nfe_f, nfe_b, train_seconds = [], [], [], 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(data["X_train"]), generator=generator)
        fwd, bwd = [], []
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(data["X_train"][idx]), data["y_train"][idx])
            loss.backward()
            optimizer.step()
            schedule.step()
            if block is not None:
                fwd.append(block.nfe_forward)
                bwd.append(block.nfe_backward)
        train_seconds += time.perf_counter() - start
        accuracy, _ = evaluate(model, data["X_test"], data["y_test"])
        curve.append(accuracy)
        nfe_f.append(float(np.mean(fwd)) if fwd else 0.0)
        nfe_b.append(float(np.mean(bwd)) if bwd else 0.0)
    start = time.perf_counter()
    accuracy, test_nfe = evaluate(model, data["X_test"], data["y_test"])
    test_seconds = time.perf_counter() - start
    row = {"model": kind, "seed": seed, "parameters": n_params, "test_accuracy": accuracy,
           "train_seconds": train_seconds, "test_seconds": test_seconds,
           "test_nfe": test_nfe, "accuracy_by_epoch": curve,
           "train_nfe_forward_by_epoch": nfe_f, "train_nfe_backward_by_epoch": nfe_b}
    if block is not None:  # the same weights, solved at other tolerances
        sweep = []
        for tol in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5):
            block.rtol = block.atol = tol
            acc, nfe = evaluate(model, data["X_test"], data["y_test"])
            sweep.append({"tol": tol, "test_accuracy": acc, "test_nfe": nfe})
        block.rtol = block.atol = 1e-3
        row["tolerance_sweep"] = sweep
    return row


def plot(rows: list[dict], kinds: list[str], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.2))
    FigureCanvasAgg(fig)
    ax_acc, ax_nfe, ax_tol = fig.subplots(1, 3)
    for i, kind in enumerate(kinds):
        mine = [r for r in rows if r["model"] == kind]
        curves = np.array([r["accuracy_by_epoch"] for r in mine])
        epochs = np.arange(1, curves.shape[1] + 1)
        label = f"{kind} ({mine[0]['parameters'] / 1000:.1f}k params)"
        ax_acc.plot(epochs, curves.mean(0), color=f"C{i}", label=label)
        ax_acc.fill_between(epochs, curves.min(0), curves.max(0), color=f"C{i}", alpha=0.2)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy (mean, min-max)")
    ax_acc.set_ylim(max(0.0, ax_acc.get_ylim()[0]), 1.0)
    ax_acc.legend(fontsize=7, loc="lower right")
    odes = [r for r in rows if r["model"] == "ODE-Net"]
    for r in odes:
        epochs = np.arange(1, len(r["train_nfe_forward_by_epoch"]) + 1)
        ax_nfe.plot(epochs, r["train_nfe_forward_by_epoch"], color="C0", lw=1)
        ax_nfe.plot(epochs, r["train_nfe_backward_by_epoch"], color="C1", lw=1)
    ax_nfe.plot([], [], color="C0", label="forward")
    ax_nfe.plot([], [], color="C1", label="backward (adjoint)")
    ax_nfe.set(xlabel="epoch", ylabel="NFE per training batch",
               title="ODE-Net: evaluations of f")
    ax_nfe.legend(fontsize=7)
    for r in odes:
        sweep = r["tolerance_sweep"]
        ax_tol.plot([s["test_nfe"] for s in sweep], [s["test_accuracy"] for s in sweep],
                    "o-", color="C0", lw=1, ms=3)
        for s in sweep if r is odes[0] else []:
            ax_tol.annotate(f"{s['tol']:g}", (s["test_nfe"], s["test_accuracy"]), fontsize=6,
                            textcoords="offset points", xytext=(3, -8))
    ax_tol.set(xlabel="NFE per test batch", ylabel="test accuracy",
               title="ODE-Net at test tolerances (labels)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def summarise(rows: list[dict], kinds: list[str]) -> list[dict]:
    out = []
    for kind in kinds:
        mine = [r for r in rows if r["model"] == kind]
        acc = np.array([r["test_accuracy"] for r in mine])
        out.append({"model": kind, "parameters": mine[0]["parameters"],
                    "accuracy_mean": float(acc.mean()), "accuracy_min": float(acc.min()),
                    "accuracy_max": float(acc.max()),
                    "test_nfe": float(np.mean([r["test_nfe"] for r in mine])),
                    "train_nfe_forward_last_epoch": float(np.mean(
                        [r["train_nfe_forward_by_epoch"][-1] for r in mine])),
                    "train_nfe_backward_last_epoch": float(np.mean(
                        [r["train_nfe_backward_by_epoch"][-1] for r in mine])),
                    "train_seconds": float(np.mean([r["train_seconds"] for r in mine])),
                    "test_seconds": float(np.mean([r["test_seconds"] for r in mine]))})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the tests")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs per model (default 20; 1 with --quick)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's CPU threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    epochs = args.epochs or (1 if args.quick else 20)
    channels = 8 if args.quick else 16
    seeds = [0] if args.quick else [0, 1, 2]
    batch, lr = 64, 3e-3
    digits = load_digits()
    X = digits.images.astype(np.float32)[:, None] / 16.0
    X_train, X_test, y_train, y_test = train_test_split(
        X, digits.target, test_size=0.2, stratify=digits.target, random_state=0)
    if args.quick:
        X_train, y_train, X_test, y_test = X_train[:128], y_train[:128], X_test[:64], y_test[:64]
    data = {"X_train": torch.as_tensor(X_train), "y_train": torch.as_tensor(y_train),
            "X_test": torch.as_tensor(X_test), "y_test": torch.as_tensor(y_test)}
    kinds = ["ResNet-6", "ResNet-1", "ODE-Net"]
    rows = []
    for seed in seeds:
        for kind in kinds:
            row = fit_one(kind, data, channels, epochs, batch, lr, seed)
            rows.append(row)
            print(f"{kind:9s} seed {seed}: accuracy {row['test_accuracy']:.4f}, "
                  f"{row['parameters']} parameters, test NFE {row['test_nfe']:.0f}, "
                  f"{row['train_seconds']:.1f} s", flush=True)
    summary = summarise(rows, kinds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "odenet_digits_quick" if args.quick else "odenet_digits"
    plot(rows, kinds, out / f"{stem}.png")
    lines = ["| model | parameters | test accuracy (mean; min-max over seeds) | NFE forward / "
             "backward per training batch (last epoch) | NFE per test batch | training time |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        nfe = (f"{s['train_nfe_forward_last_epoch']:.0f} / "
               f"{s['train_nfe_backward_last_epoch']:.0f}") if s["test_nfe"] else "-"
        lines.append(f"| {s['model']} | {s['parameters']:,} | {s['accuracy_mean']:.4f}; "
                     f"{s['accuracy_min']:.4f}-{s['accuracy_max']:.4f} | {nfe} | "
                     f"{s['test_nfe']:.0f} | {s['train_seconds']:.1f} s |")
    table = "\n".join(lines)
    print(table)
    result = {"config": {"epochs": epochs, "channels": channels, "batch": batch, "lr": lr,
                         "lr_schedule": "cosine", "seeds": seeds, "n_train": len(X_train),
                         "n_test": len(X_test), "solver": "dopri5", "tol": 1e-3,
                         "torch": torch.__version__, "threads": torch.get_num_threads()},
              "summary": summary, "rows": rows}
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(table + "\n")
    print(f"wrote {out / stem}.png, .json, .md")
    return result


if __name__ == "__main__":
    main()
