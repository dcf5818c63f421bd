"""The plots of vaelab-compare, drawn with matplotlib's object API (no pyplot: the user's
backend is left alone). Each function takes the runs (``run_reader.Run``) and returns a Figure.
"""

from __future__ import annotations

import math
from pathlib import Path

from vaelab.results.run_reader import Run, front_points, pareto_front


def figure(**size):
    """A matplotlib Figure drawn without pyplot, so that the user's backend is left alone."""
    from matplotlib.figure import Figure

    return Figure(**size)


def plot_rate_distortion(runs: list[Run]):
    fig = figure(figsize=(6, 4.5), dpi=110)
    ax = fig.subplots()
    for latent_dim in sorted({r.latent_dim for r in runs}):
        group = sorted(
            (r for r in runs if r.latent_dim == latent_dim and not math.isnan(r.final("kl"))), key=lambda r: r.beta
        )
        if not group:
            continue
        ax.plot(
            [r.final("kl") for r in group], [r.final("recon") for r in group], "o-", label=f"latent_dim = {latent_dim}"
        )
        for r in group:
            ax.annotate(
                f"β={r.beta:g}",
                (r.final("kl"), r.final("recon")),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=8,
            )
    split = "test" if any("test/kl" in r.metrics for r in runs) else "val"
    ax.set_xlabel(f"rate: {split} KL(q(z|x) || p(z)) [nats per image]")
    ax.set_ylabel(f"distortion: {split} −log p(x|z) [nats per image]")
    ax.set_title("Rate–distortion across β")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


SETTING_NAMES = {"beta": "β", "latent_dim": "z"}  # as in Run.label


def run_settings(runs: list[Run]) -> dict[Path, str]:
    """Each run's overrides that differ between the runs, short: ``β=1.62 z=2 lr=0.000443``."""
    from vaelab.runs import short_number

    parsed = {run.folder: dict(item.split("=", 1) for item in run.overrides.split() if "=" in item) for run in runs}
    keys = dict.fromkeys(k for pairs in parsed.values() for k in pairs)
    varying = [k for k in keys if len({pairs.get(k) for pairs in parsed.values()}) > 1]

    def short(value: str) -> str:
        try:
            return short_number(float(value)) if "." in value or "e" in value else value
        except ValueError:
            return value

    def name(key: str) -> str:
        last = key.rsplit(".", 1)[-1]
        return SETTING_NAMES.get(last, last)

    return {f: " ".join(f"{name(k)}={short(p[k])}" for k in varying if k in p) for f, p in parsed.items()}


def place_labels(ax, points: list[tuple[float, float]], labels: list[str], fontsize: float = 7) -> None:
    """Annotate each point with its label, moving a label to another side of its point when it
    would cover a label already placed (boxes estimated from the font size, in points)."""
    ax.autoscale_view()
    to_points = ax.transData + ax.figure.dpi_scale_trans.inverted()  # data -> inches
    placed: list[tuple[float, float, float, float]] = []
    order = sorted(range(len(points)), key=lambda i: (-points[i][1], points[i][0]))
    for i in order:
        x_in, y_in = to_points.transform(points[i])
        px, py = x_in * 72, y_in * 72
        width, height = 0.55 * fontsize * len(labels[i]), 1.3 * fontsize
        sides = [(5, 3), (5, -3 - height), (-5 - width, 3), (-5 - width, -3 - height)]
        sides += [(dx, dy + k * height * (1 if dy > 0 else -1)) for k in (1, 2) for dx, dy in sides[:4]]
        for dx, dy in sides:
            box = (px + dx, py + dy, px + dx + width, py + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(labels[i], points[i], textcoords="offset points", xytext=(dx, dy), fontsize=fontsize)


def plot_pareto_front(runs: list[Run]):
    """Every run as a point of the two objectives (rate and distortion by default), the Pareto
    front highlighted and joined (a staircase when both are minimized), each point labelled
    with the settings that vary."""
    points, x_name, y_name, signs = front_points(runs)
    front = set(pareto_front([(x, y) for _, x, y in points], signs))
    settings = run_settings([r for r, _, _ in points])
    fig = figure(figsize=(7, 5), dpi=110)
    ax = fig.subplots()
    others = [p for i, p in enumerate(points) if i not in front]
    on_front = sorted((p for i, p in enumerate(points) if i in front), key=lambda p: p[1])
    if others:
        ax.scatter([x for _, x, _ in others], [y for _, _, y in others], color="0.6", label="other runs", zorder=2)
    if on_front:
        steps = "steps-post" if signs == (1.0, 1.0) else "default"
        xs, ys = [x for _, x, _ in on_front], [y for _, _, y in on_front]
        ax.plot(xs, ys, "-", color="tab:red", drawstyle=steps, lw=1.2, zorder=3)
        ax.plot(xs, ys, "o", color="tab:red", label="Pareto front", zorder=4)
    place_labels(ax, [(x, y) for _, x, y in points], [settings.get(r.folder) or r.label for r, _, _ in points])
    ax.set_xlabel(f"{x_name} [nats per image]")
    ax.set_ylabel(f"{y_name} [nats per image]")
    ax.set_title(f"Pareto front: {len(on_front)} of {len(points)} runs")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_metrics_vs_latent(runs: list[Run]):
    panels = [("elbo", "ELBO [nats per image]"), ("kl", "KL [nats per image]"), ("active_units", "active units")]
    fig = figure(figsize=(13, 4), dpi=110)
    axes = fig.subplots(1, 3)
    for ax, (name, unit) in zip(axes, panels, strict=True):
        for beta in sorted({r.beta for r in runs}):
            group = sorted((r for r in runs if r.beta == beta), key=lambda r: r.latent_dim)
            values = [r.final(name) for r in group]
            if all(math.isnan(v) for v in values):
                continue
            ax.plot([r.latent_dim for r in group], values, "o-", label=f"β = {beta:g}")
        split = (
            "val" if name == "active_units" else ("test" if any(f"test/{name}" in r.metrics for r in runs) else "val")
        )
        ax.set_xlabel("latent_dim")
        ax.set_ylabel(f"{split} {unit}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r.latent_dim for r in runs}), [str(d) for d in sorted({r.latent_dim for r in runs})])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Final metrics against the latent size")
    fig.tight_layout()
    return fig


def plot_curves(runs: list[Run]):
    fig = figure(figsize=(13, 4.5), dpi=110)
    left, right = fig.subplots(1, 2)
    for run in runs:
        train = [(row["step"], row["train/elbo"]) for row in run.history if "train/elbo" in row and "step" in row]
        val = [(row["epoch"] + 1, row["val/elbo"]) for row in run.history if "val/elbo" in row and "epoch" in row]
        line = left.plot(*zip(*train, strict=True), lw=1, label=run.label)[0] if train else None
        if val:
            right.plot(*zip(*val, strict=True), "o-", color=line.get_color() if line else None, label=run.label)
    left.set_xlabel("training step")
    left.set_ylabel("train ELBO (β = 1) [nats per image]")
    left.set_title("Training ELBO per step")
    right.set_xlabel("epoch")
    right.set_ylabel("validation ELBO [nats per image]")
    right.set_title("Validation ELBO per epoch")
    from matplotlib.ticker import MaxNLocator

    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path, root: Path) -> None:
    from vaelab.runs import write_file

    write_file(path, lambda handle: fig.savefig(handle, format="png"), root=root)
