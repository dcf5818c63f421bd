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
- ``report.html`` (``vaelab.results.report``): one self-contained page with the table (sortable and
  filterable), a gallery of each run's last image panels, the three plots and failed runs' errors.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vaelab.errors import UserError, first_line, printable
from vaelab.metrics import FINAL_METRICS, TABLE_EXTRAS
from vaelab.results.plots import (
    plot_curves,
    plot_metrics_vs_latent,
    plot_pareto_front,
    plot_rate_distortion,
    save_figure,
)
from vaelab.results.report import write_report
from vaelab.results.run_reader import Run, find_run_folders, on_front, pareto_front, read_run  # noqa: F401 - the API
from vaelab.results.tables import iwae_columns, write_table

TABLE_METRICS = (TABLE_EXTRAS[0], *FINAL_METRICS, *TABLE_EXTRAS[1:])


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
