"""Accuracy vs budget plot of an evaluation grid (PNG, matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

from omnimem_train.utils.atomic import atomic_write

_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
            "tab:olive", "tab:cyan", "tab:gray"]
_STYLES = {"calibrated": ("-", "o"), "uniform": (":", "^"), "blind": ("--", "s")}  # allocation -> line, marker


_MIB = 2**20


def _x(row: dict, key: str) -> float:
    """A row's position on a panel's x axis: its budget, or (key "total") its mean total retained MiB."""
    return row["total_bytes_mean"] / _MIB if key == "total" else row[key]


def _panel(ax, rows: list[dict], key: str, full: dict | None, colours: dict[str, str], xlabel: str) -> None:
    """One panel: a line per (scorer, allocation[, budget kind]) of accuracy against `key` ("budget",
    "budget_fraction", or "total": total retained MiB per sample, KV + extra state)."""
    kinds = {"budget" if r.get("budget") is not None else "fraction" for r in rows}
    lines: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        kind = "budget" if r.get("budget") is not None else "fraction"
        lines.setdefault((r["scorer"], r["allocation"], kind), []).append(r)
    for i, ((scorer, allocation, kind), pts) in enumerate(sorted(lines.items())):
        pts = sorted(pts, key=lambda r: _x(r, key))
        # Overlapping budgets stay visible; measured MiB are not moved.
        dodge = 1.0 if key == "total" else 2 ** (0.04 * (i - (len(lines) - 1) / 2))
        x = [_x(r, key) * dodge for r in pts]
        y = [r["accuracy"] for r in pts]
        err = [[r["accuracy"] - r["ci"][0] for r in pts], [r["ci"][1] - r["accuracy"] for r in pts]]
        axis = ", bytes" if any(r.get("budget_axis") == "bytes" for r in pts) else ""
        label = f"{scorer} ({allocation}{axis}" + (f", {kind})" if len(kinds) > 1 else ")")
        ax.errorbar(x, y, yerr=err, color=colours[scorer], linestyle=_STYLES.get(allocation, ("-", "o"))[0],
                    marker=_STYLES.get(allocation, ("-", "o"))[1], capsize=3, alpha=0.9, label=label)
    if full is not None:
        ax.axhline(full["accuracy"], color="black", linewidth=1.2, label=f"full memory ({full['accuracy']:.3f})")
        ax.axhspan(full["ci"][0], full["ci"][1], color="black", alpha=0.07)
        if key == "total":
            ax.plot([_x(full, key)], [full["accuracy"]], marker="*", markersize=11, color="black", linestyle="none")
    xs = sorted({_x(r, key) for r in rows} | ({_x(full, key)} if full is not None and key == "total" else set()))
    if xs and xs[0] > 0:
        ax.set_xscale("log", base=2)
        ax.set_xlim(xs[0] / 1.5, xs[-1] * 1.5)
    if xs and key != "total":
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
        ax.minorticks_off()
    elif xs:
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)


def plot_accuracy_vs_budget(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """One line per (scorer, allocation) of accuracy against budget, the full-memory accuracy as a
    horizontal line with its CI band; written atomically to `path`. `rows`: cell metrics with
    scorer, allocation, budget or budget_fraction, accuracy, ci and total_bytes_mean. Absolute and
    fractional budgets go to separate panels; a last panel puts every cell at its mean total retained
    MiB (KV + extra state), so methods that store more per token than K/V sit further right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = next((r for r in rows if r["scorer"] == "full"), None)
    grid = [r for r in rows if r["scorer"] != "full"]
    scorers = sorted({r["scorer"] for r in grid})
    colours = {s: _COLOURS[i % len(_COLOURS)] for i, s in enumerate(scorers)}
    at_bytes = " at equal total bytes" if any(r.get("budget_axis") == "bytes" for r in grid) else ""
    panels = [(key, label + at_bytes) for key, label in (
        ("budget", "budget (audio+visual tokens per layer)"),
        ("budget_fraction", "budget (fraction of the stream's audio+visual tokens)"),
    ) if any(r.get(key) is not None for r in grid)] or [("budget", "budget (audio+visual tokens per layer)")]
    if grid or full is not None:
        panels.append(("total", "total retained MiB per sample (KV + extra state)"))
    fig = Figure(figsize=(8.5 * len(panels), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        own = grid if key == "total" else [r for r in grid if r.get(key) is not None]
        _panel(ax, own, key, full, colours, label)
    fig.suptitle(title or "accuracy vs memory budget", fontsize=10)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
