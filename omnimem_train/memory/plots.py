"""Plots of memory budgets (PNG, matplotlib's Agg canvas: no display and no pyplot global state)."""

from __future__ import annotations

from pathlib import Path

from omnimem_train.utils.atomic import atomic_write


def plot_budgets(layers: list[list[int]] | list[tuple[int, int]], path: str | Path, title: str = "") -> Path:
    """Stacked bars of the per-layer [audio, visual] budgets, written atomically to `path` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = list(range(len(layers)))
    audio = [int(a) for a, _ in layers]
    visual = [int(v) for _, v in layers]
    fig = Figure(figsize=(max(6.0, 0.28 * len(layers) + 2.0), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(x, visual, color="tab:blue", label=f"visual (total {sum(visual)})")
    ax.bar(x, audio, bottom=visual, color="tab:orange", label=f"audio (total {sum(audio)})")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("retained tokens")
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_ylim(0, max([a + v for a, v in zip(audio, visual)], default=0) * 1.25 or 1)  # room for the legend
    if len(layers) <= 40:
        ax.set_xticks(x)
    ax.set_title(title or "per-layer audio/visual budgets", fontsize=10)
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
