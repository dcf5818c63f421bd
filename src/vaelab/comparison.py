"""Comparing runs locally, with no network (``vaelab-compare PATH [PATH ...] [--out DIR]``).

PATH is a run folder (it has ``.hydra/config.yaml``) or any folder above run folders, such as a
multirun folder. For each run it reads the config, ``status.json`` (final metrics), the
training curves from the CSV logger (``csv/metrics.csv``), else the offline W&B run, else TensorBoard's, and
``checkpoints/*.eval.json`` (importance-sampled NLL) when ``vaelab-eval`` has been run. It writes:

- ``runs.csv`` and ``runs.md``: one row per run, final metrics in nats per image;
- ``rate_distortion.png``: distortion (recon, nats) against rate (KL, nats), one line per
  latent size through the β values;
- ``pareto_front.png``: every run as a point of rate and distortion (or of the two objectives of
  the multi-objective Optuna study the runs came from), the Pareto front highlighted, each point
  labelled with the settings that vary; ``runs.csv`` marks the front in ``pareto_front``;
- ``metrics_vs_latent.png``: ELBO, KL and active units against the latent size, one line per β;
- ``curves.png``: the training ELBO against the step and the validation ELBO against the epoch;
- ``report.html`` (``vaelab.report``): one self-contained page with the table (sortable and
  filterable), a gallery of each run's last image panels, the three plots and failed runs' errors.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from vaelab.errors import UserError, first_line
from vaelab.report import printable, write_report
from vaelab.tables import FINAL_METRICS, iwae_columns, write_table
from vaelab.wandb_offline import read_history

TABLE_METRICS = ("test/nll", *FINAL_METRICS, "time/fit_seconds")


@dataclass
class Run:
    """One run folder: what it was (config), how it ended (status, metrics) and its curves."""

    folder: Path
    model: str
    data: str
    beta: float
    latent_dim: int
    seed: int
    overrides: str
    status: str
    error: str = ""  # why a failed run failed (status.json), else ""
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # rows with "step", "epoch" and metric keys
    curve_source: str = ""

    @property
    def label(self) -> str:
        """What the run was, readably: ``β=4 z=10 beta_vae s0``."""
        return f"β={self.beta:g} z={self.latent_dim} {self.model} s{self.seed}"

    def final(self, name: str) -> float:
        """test/<name> when the run was tested, else val/<name>; NaN when neither was logged."""
        for key in (f"test/{name}", f"val/{name}"):
            if isinstance(self.metrics.get(key), (int, float)):
                return float(self.metrics[key])
        return math.nan


def find_run_folders(paths: list[Path]) -> list[Path]:
    """Every folder with a .hydra/config.yaml at or below the given paths (not through a symlink
    that leads out of them), sorted, without repeats."""
    from vaelab.allow_list import inside

    found = []
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such folder")
        for config in path.rglob(".hydra/config.yaml"):
            if inside(config.parent.parent, path):
                found.append(config.parent.parent)
            else:  # a symlinked folder must not bring another run of the user's into the report
                print(
                    f"warning: skipped {printable(str(config.parent.parent))}: it leads outside {path}", file=sys.stderr
                )
    return sorted(
        set(found),
        key=lambda p: (str(p.parent), int(p.name.split("_")[0]) if p.name.split("_")[0].isdigit() else 0, p.name),
    )


MAX_HISTORY_BYTES = 256 << 20  # metrics.csv of a long run is a few MB


def read_csv_history(folder: Path) -> list[dict]:
    import io

    from vaelab.safe_load import read_file

    path = folder / "csv" / "metrics.csv"
    if not path.exists():
        return []
    text = read_file(path, folder, MAX_HISTORY_BYTES).decode("utf-8")
    return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(io.StringIO(text))]


def read_tensorboard_history(folder: Path) -> list[dict]:
    """History rows ("step" and the scalars logged at it) of the TensorBoard run in
    ``<folder>/tensorboard``; [] without one, or without the tensorboard package."""
    if not (folder / "tensorboard").is_dir():
        return []
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return []
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    rows: dict[int, dict] = {}
    for tag in events.Tags()["scalars"]:
        if not tag.startswith("final/"):  # the hparams' copies of the final metrics
            for event in events.Scalars(tag):
                rows.setdefault(event.step, {"step": event.step})[tag] = event.value
    return [rows[step] for step in sorted(rows)]


def read_json(path: Path, folder: Path) -> dict:
    """A JSON object from a regular file inside ``folder``; anything else a UserError naming the file."""
    from vaelab.errors import UserError
    from vaelab.safe_load import read_file

    try:
        value = json.loads(read_file(path, folder))
    except ValueError as error:
        raise UserError(f"{path} is not readable JSON: {first_line(error)}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} holds a {type(value).__name__}, not a JSON object")
    return value


def read_run(folder: Path) -> Run:
    """One run folder, read as data (bounded YAML, nothing instantiated)."""
    from vaelab.safe_load import load_yaml

    # values as written: an interpolation in a file from elsewhere is shown, never resolved
    config_file = folder / ".hydra" / "config.yaml"
    cfg = OmegaConf.to_container(load_yaml(config_file, str(config_file), root=folder), resolve=False)
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides = (
        " ".join(map(str, load_yaml(overrides_file, str(overrides_file), list, root=folder)))
        if overrides_file.exists()
        else ""
    )
    status_file = folder / "status.json"
    status = read_json(status_file, folder) if status_file.exists() else {"status": "unknown"}
    if not isinstance(status, dict) or not isinstance(status.get("metrics", {}), dict):
        raise ValueError(f"{status_file} is not a vaelab status file")
    run = Run(
        folder=folder,
        model=str(model.get("name")),
        data=str(data.get("name")),
        beta=float(model.get("beta")),
        latent_dim=int(model.get("latent_dim")),
        seed=int(cfg.get("seed", 0)),
        overrides=overrides,
        status=status["status"],
        error=status.get("error") or "",
        metrics=dict(status.get("metrics") or {}),
    )
    run.history, run.curve_source = read_csv_history(folder), "csv"
    if not run.history:
        run.history, summary = read_history(folder)
        run.curve_source = "wandb" if run.history else ""
        for key, value in summary.items():
            if isinstance(value, (int, float)):
                run.metrics.setdefault(key, value)
    if not run.history:
        run.history = read_tensorboard_history(folder)
        run.curve_source = "tensorboard" if run.history else ""
    last_logged = {}
    for row in run.history:
        last_logged.update({k: v for k, v in row.items() if "/" in k and not k.startswith("trainer/")})
    run.metrics = {**last_logged, **run.metrics}  # status.json's final metrics win; else (a killed run) the last logged
    for eval_file in sorted(folder.glob("checkpoints/*.eval.json")):
        results = read_json(eval_file, folder)  # vaelab-eval's "<split>/nll", "<split>/bits_per_dim", ...
        run.metrics.update(
            {k: v for k, v in results.items() if k.endswith(("/nll", "/bits_per_dim")) and isinstance(v, (int, float))}
        )
    return run


def table_rows(runs: list[Run]) -> list[dict]:
    iwae = iwae_columns([run.metrics for run in runs])
    front = on_front(runs)
    rows = []
    for run in runs:
        row = {
            "run": str(run.folder),
            "model": run.model,
            "data": run.data,
            "beta": run.beta,
            "latent_dim": run.latent_dim,
            "seed": run.seed,
            "status": run.status,
            "pareto_front": "yes" if run.folder in front else "",
        }
        row.update({key: run.metrics.get(key, "") for key in (*TABLE_METRICS, *iwae)})
        rows.append(row)
    return rows


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


def front_objectives(runs: list[Run]) -> tuple[list[str], list[str]] | None:
    """(the two metrics, their directions) of the multi-objective Optuna study the runs came
    from (``optimization_results.yaml`` beside their folders), else None."""
    from vaelab.optuna_search import read_results

    for folder in sorted({run.folder.parent for run in runs}):
        results = read_results(folder) or {}
        objectives, directions = results.get("objectives") or [], results.get("directions") or []
        if len(objectives) == 2 and len(directions) == 2:
            return [str(o) for o in objectives], [str(d) for d in directions]
    return None


def front_points(runs: list[Run]) -> tuple[list[tuple[Run, float, float]], str, str, tuple[float, float]]:
    """([(run, x, y)] of the runs that logged both, x metric, y metric, (x sign, y sign)): the
    study's two objectives when the runs are its trials (x the second, y the first; sign -1 for
    one it maximized), else the final rate (KL) and distortion (recon), test when tested, else
    validation, both minimized."""
    study = front_objectives(runs)
    if study is not None:
        (y_name, x_name), (y_direction, x_direction) = study
        signs = (-1.0 if x_direction == "maximize" else 1.0, -1.0 if y_direction == "maximize" else 1.0)
        points = [(r, r.metrics.get(x_name), r.metrics.get(y_name)) for r in runs]
    else:
        split = "test" if any("test/kl" in r.metrics for r in runs) else "val"
        x_name, y_name, signs = f"{split}/kl", f"{split}/recon", (1.0, 1.0)
        points = [(r, r.final("kl"), r.final("recon")) for r in runs]
    numbers = [(r, x, y) for r, x, y in points if all(isinstance(v, float | int) and math.isfinite(v) for v in (x, y))]
    return [(r, float(x), float(y)) for r, x, y in numbers], x_name, y_name, signs


def pareto_front(points: list[tuple[float, float]], signs: tuple[float, float] = (1.0, 1.0)) -> list[int]:
    """Indices of the points no other point dominates, each coordinate times its sign minimized:
    another point dominates one when it is no worse in both and better in one."""
    signed = [(signs[0] * x, signs[1] * y) for x, y in points]
    front = []
    for i, (x, y) in enumerate(signed):
        if not any(a <= x and b <= y and (a < x or b < y) for j, (a, b) in enumerate(signed) if j != i):
            front.append(i)
    return front


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


def on_front(runs: list[Run]) -> set[Path]:
    """The folders of the runs on the Pareto front drawn by plot_pareto_front."""
    points, _, _, signs = front_points(runs)
    return {points[i][0].folder for i in pareto_front([(x, y) for _, x, y in points], signs)}


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


def compare(paths: list[Path], out: Path, root: Path | None = None) -> dict[str, Path]:
    """Read every run under paths and write the tables, plots and report into out; ``root``:
    the folder below which no symlink is followed (default: ``out``)."""
    root = root or out
    folders = find_run_folders(paths)
    if not folders:
        raise UserError(f"no run folders (with .hydra/config.yaml) under {', '.join(map(str, paths))}")
    runs, skipped = [], []
    for folder in folders:
        try:
            runs.append(read_run(folder))
        except Exception as error:  # noqa: BLE001 - one damaged folder must not hide the others
            skipped.append(printable(first_line(error)))
            print(f"warning: skipped {printable(str(folder))}: {skipped[-1]}", file=sys.stderr)
    if not runs:
        raise UserError(f"no readable run folder under {', '.join(map(str, paths))}: {skipped[0]}")
    rows = table_rows(runs)
    write_table(
        rows,
        list(rows[0]) if rows else ["run"],
        out / "runs",
        shown_rows=[{**row, "run": Path(row["run"]).name} for row in rows],
        root=root,
    )
    plots = [out / "rate_distortion.png", out / "pareto_front.png", out / "metrics_vs_latent.png", out / "curves.png"]
    save_figure(plot_rate_distortion(runs), plots[0], root)
    save_figure(plot_pareto_front(runs), plots[1], root)
    save_figure(plot_metrics_vs_latent(runs), plots[2], root)
    save_figure(plot_curves(runs), plots[3], root)
    report = write_report(runs, rows, plots, out, [str(p) for p in paths], root=root)
    return {
        "csv": out / "runs.csv",
        "md": out / "runs.md",
        "html": report,
        "count": len(runs),
        **{p.stem: p for p in plots},
    }
