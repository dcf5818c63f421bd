"""Comparing runs locally, with no network (``vaelab-compare PATH [PATH ...] [--out DIR]``).

PATH is a run folder (it has ``.hydra/config.yaml``) or any folder above run folders, such as a
multirun folder. For each run it reads the config, ``status.json`` (final metrics), the
training curves from the CSV logger (``csv/metrics.csv``), else the offline W&B run, else TensorBoard's, and
``checkpoints/*.eval.json`` (importance-sampled NLL) when ``vaelab-eval`` has been run. It writes:

- ``runs.csv`` and ``runs.md``: one row per run, final metrics in nats per image;
- ``rate_distortion.png``: distortion (recon, nats) against rate (KL, nats), one line per
  latent size through the β values;
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

from vaelab.errors import first_line
from vaelab.report import printable, write_report
from vaelab.tables import FINAL_METRICS, iwae_columns, write_table
from vaelab.wandb_run import read_history

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
            raise SystemExit(f"error: {path}: no such folder")
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
        raise SystemExit(f"error: no run folders (with .hydra/config.yaml) under {', '.join(map(str, paths))}")
    runs, skipped = [], []
    for folder in folders:
        try:
            runs.append(read_run(folder))
        except Exception as error:  # noqa: BLE001 - one damaged folder must not hide the others
            skipped.append(printable(first_line(error)))
            print(f"warning: skipped {printable(str(folder))}: {skipped[-1]}", file=sys.stderr)
    if not runs:
        raise SystemExit(f"error: no readable run folder under {', '.join(map(str, paths))}: {skipped[0]}")
    rows = table_rows(runs)
    write_table(
        rows,
        list(rows[0]) if rows else ["run"],
        out / "runs",
        shown_rows=[{**row, "run": Path(row["run"]).name} for row in rows],
        root=root,
    )
    plots = [out / "rate_distortion.png", out / "metrics_vs_latent.png", out / "curves.png"]
    save_figure(plot_rate_distortion(runs), plots[0], root)
    save_figure(plot_metrics_vs_latent(runs), plots[1], root)
    save_figure(plot_curves(runs), plots[2], root)
    report = write_report(runs, rows, plots, out, [str(p) for p in paths], root=root)
    return {
        "csv": out / "runs.csv",
        "md": out / "runs.md",
        "html": report,
        "count": len(runs),
        **{p.stem: p for p in plots},
    }
