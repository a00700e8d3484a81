"""Figures A.1-A.3 of the paper: the numbers (pure functions) and the drawings (figures only).

Drawn on bare `matplotlib.figure.Figure`s (no pyplot, no global backend state).

- A.1 top: the gap rho^2 - kappa(rho)^2 against the bound zeta rho^2 (1 - rho^2) (Lemma A.1).
- A.1 bottom: r_2(kappa[C]) / r_2(C) against 1 / (1 - zeta Phi) and 1 + zeta Phi along
  C(t) = (1 - t) I + t R, R a dense random correlation matrix (Theorem 3.1).
- A.2: zeta and the frozen probability of ReLU(z + b) against b and of tanh(a z) against a.
- A.3: zeta against the frozen probability over an (a, b) grid, one panel per activation with
  its threshold eps in the title; the points with zeta > 0.9 and P(frozen) < 0.2 are marked:
  SiLU and GELU decorrelate almost fully while almost never frozen (e.g. SiLU(3z - 15):
  zeta = 0.955, P = 0.006 at eps = 1e-8), a counterexample to "maximal decorrelation forces
  frozen units" (docs/theory.md).

Grids and thresholds are those of the reference code's theory script (docs/theory.md).
`write_figures(out_dir)` writes figure_A1/A2/A3 as PNG and PDF; `python -m core.theory figures`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from core.theory import bounds
from core.theory.kernels import decorrelation_strength, frozen_probability, kernel

A1_ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid")
# A.3: activation -> (modulation, frozen threshold eps, bias grid); "outer" is f(a x + b),
# "inner" is f(a (x + b)) (saturating activations, whose frozen region needs a large gain).
A3_FAMILIES: dict[str, tuple[str, float, tuple[float, float]]] = {
    "relu": ("outer", 1e-8, (-20.0, 5.0)),
    "leaky_relu": ("outer", 1e-8, (-20.0, 5.0)),
    "elu": ("outer", 1e-8, (-20.0, 5.0)),
    "selu": ("outer", 1e-8, (-20.0, 5.0)),
    "gelu": ("outer", 1e-8, (-20.0, 5.0)),
    "silu": ("outer", 1e-8, (-20.0, 5.0)),
    "softplus": ("outer", 1e-8, (-20.0, 5.0)),
    "tanh": ("inner", 1e-4, (-3.0, 1.0)),
    "sigmoid": ("inner", 1e-4, (-3.0, 1.0)),
}


def gap_curves(activations: tuple[str, ...] = A1_ACTIVATIONS, points: int = 401) -> dict:
    """Per activation: rho grid, the gap rho^2 - kappa^2, the bound zeta rho^2 (1 - rho^2), zeta."""
    rho = np.linspace(-1.0, 1.0, points)
    out = {}
    for name in activations:
        zeta = decorrelation_strength(name)
        out[name] = {
            "rho": rho,
            "gap": bounds.quartic_gap(kernel(name), rho),
            "bound": bounds.quartic_gap_bound(zeta, rho),
            "zeta": zeta,
        }
    return out


def rank_path(
    generator: np.random.Generator,
    activations: tuple[str, ...] = A1_ACTIVATIONS,
    n: int = 50,
    steps: int = 21,
) -> dict:
    """Per activation, along C(t) = (1 - t) I + t R for t in [0, 1]: the rank ratio and bounds."""
    target = bounds.random_correlation_matrix(n, generator)
    ts = np.linspace(0.0, 1.0, steps)
    path = [bounds.correlation_path(target, t) for t in ts]
    potentials = [bounds.decorrelation_potential(c) for c in path]
    out = {}
    for name in activations:
        zeta, kappa = decorrelation_strength(name), kernel(name)
        out[name] = {
            "t": ts,
            "ratio": np.array([bounds.rank_gain(c, kappa) for c in path]),
            "bound": np.array([bounds.rank_gain_bound(zeta, p) for p in potentials]),
            "linear_bound": np.array(
                [bounds.rank_gain_bound(zeta, p, linear=True) for p in potentials]
            ),
        }
    return out


def modulation_curves(points: int = 61) -> dict:
    """zeta and P(frozen) of ReLU(z + b) over b in [-3, 2] and of tanh(a z) over a in [0.1, 100]."""
    biases = np.linspace(-3.0, 2.0, points)
    gains = np.logspace(-1.0, 2.0, points)
    return {
        "relu": {
            "b": biases,
            "zeta": np.array([decorrelation_strength("relu", 1.0, b) for b in biases]),
            "frozen": np.array([frozen_probability("relu", 1.0, b, 1e-8) for b in biases]),
        },
        "tanh": {
            "a": gains,
            "zeta": np.array([decorrelation_strength("tanh", a, 0.0) for a in gains]),
            "frozen": np.array([frozen_probability("tanh", a, 0.0, 1e-4) for a in gains]),
        },
    }


def tradeoff_scatter(
    families: dict[str, tuple[str, float, tuple[float, float]]] = A3_FAMILIES,
    gains: int = 25,
    biases: int = 20,
) -> dict:
    """Per activation: zeta and P(frozen) over a in logspace(-0.5, 2) and the family's bias grid."""
    out = {}
    for name, (modulation, eps, (b_lo, b_hi)) in families.items():
        zetas, frozen, scales, shifts = [], [], [], []
        for a in np.logspace(-0.5, 2.0, gains):
            for b in np.linspace(b_lo, b_hi, biases):
                shift = a * b if modulation == "inner" else b  # f(a (x + b)) = f(a x + a b)
                zetas.append(decorrelation_strength(name, a, shift))
                frozen.append(frozen_probability(name, a, shift, eps))
                scales.append(a)
                shifts.append(shift)
        out[name] = {
            "zeta": np.array(zetas),
            "frozen": np.array(frozen),
            "a": np.array(scales),
            "b": np.array(shifts),  # the bias of f(a x + b)
            "eps": eps,
            "modulation": modulation,
        }
    return out


def counterexamples(scatter: dict, zeta_min: float = 0.9, frozen_max: float = 0.2) -> dict:
    """Per activation, the boolean mask of its points with zeta > zeta_min and P < frozen_max."""
    return {
        name: (s["zeta"] > zeta_min) & (s["frozen"] < frozen_max) for name, s in scatter.items()
    }


def draw_a1(gaps: dict, path: dict) -> Figure:
    """Figure A.1: gap vs bound (top row), rank ratio vs bounds along the path (bottom row)."""
    names = list(gaps)
    fig = Figure(figsize=(3.2 * len(names), 6.2))
    axes = fig.subplots(2, len(names), squeeze=False)
    for col, name in enumerate(names):
        g = gaps[name]
        ax = axes[0, col]
        ax.plot(g["rho"], g["gap"], label=r"$\rho^2-\kappa(\rho)^2$")
        ax.plot(g["rho"], g["bound"], "--", label=r"$\zeta\rho^2(1-\rho^2)$")
        ax.set_title(f"{name}  ($\\zeta$ = {g['zeta']:.3f})")
        ax.set_xlabel(r"$\rho$")
        p = path[name]
        ax = axes[1, col]
        ax.plot(p["t"], p["ratio"], label=r"$r_2(\kappa[C])/r_2(C)$")
        ax.plot(p["t"], p["bound"], "--", label=r"$1/(1-\zeta\Phi)$")
        ax.plot(p["t"], p["linear_bound"], ":", label=r"$1+\zeta\Phi$")
        ax.set_xlabel(r"$t$ in $C(t)=(1-t)I+tR$")
    axes[0, 0].set_ylabel("decorrelation gap")
    axes[1, 0].set_ylabel("Rényi-2 rank ratio")
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def draw_a2(curves: dict) -> Figure:
    """Figure A.2: zeta and P(frozen) against the ReLU bias and the tanh gain."""
    fig = Figure(figsize=(9.0, 3.6))
    left, right = fig.subplots(1, 2)
    relu, tanh = curves["relu"], curves["tanh"]
    left.plot(relu["b"], relu["zeta"], label=r"$\zeta$")
    left.plot(relu["b"], relu["frozen"], "--", label="P(dead)")
    left.set_xlabel(r"bias $b$ in ReLU$(z+b)$")
    right.semilogx(tanh["a"], tanh["zeta"], label=r"$\zeta$")
    right.semilogx(tanh["a"], tanh["frozen"], "--", label=r"P($|f'_{a}|<10^{-4}$)")
    right.set_xlabel(r"gain $a$ in tanh$(az)$")
    for ax in (left, right):
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def draw_a3(scatter: dict) -> Figure:
    """Figure A.3: zeta against P(frozen), one panel per activation (eps in its title); the
    counterexample points (`counterexamples`) in red."""
    names = list(scatter)
    cols = 3
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    marked = counterexamples(scatter)
    for ax, name in zip(axes, names):
        s, hit = scatter[name], marked[name]
        ax.scatter(s["frozen"][~hit], s["zeta"][~hit], s=8, alpha=0.6)
        ax.scatter(s["frozen"][hit], s["zeta"][hit], s=10, color="tab:red", label="ζ>0.9, P<0.2")
        form = "f(a(x+b))" if s["modulation"] == "inner" else "f(ax+b)"
        ax.set_title(f"{name}, {form}, ε = {s['eps']:g}", fontsize=9)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(r"P($|f'_{a,b}(Z)|<\varepsilon$)", fontsize=8)
        ax.set_ylabel(r"$\zeta$", fontsize=8)
        if hit.any():
            ax.legend(fontsize=7, loc="lower right")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def write_figures(out_dir: str | Path, seed: int = 0, quick: bool = False) -> list[Path]:
    """Compute and write Figures A.1-A.3 (PNG and PDF) into `out_dir`; the paths written.

    `seed` seeds the random correlation matrix of A.1's bottom row. About 40 s of CPU;
    `quick` draws the same figures on coarse grids in a few seconds (for CI).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rho_points, path_steps, curve_points, gains, biases = (
        (101, 6, 15, 6, 5) if quick else (401, 21, 61, 25, 20)
    )
    generator = np.random.default_rng(seed)
    figures = {
        "figure_A1": draw_a1(gap_curves(points=rho_points), rank_path(generator, steps=path_steps)),
        "figure_A2": draw_a2(modulation_curves(points=curve_points)),
        "figure_A3": draw_a3(tradeoff_scatter(gains=gains, biases=biases)),
    }
    written = []
    for stem, fig in figures.items():
        for ext in ("png", "pdf"):
            path = out_dir / f"{stem}.{ext}"
            fig.savefig(path, dpi=150)
            written.append(path)
    return written
