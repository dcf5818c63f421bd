"""Hydra multirun support: one W&B group per sweep, failed jobs recorded (not fatal), a summary.

- ``sweep_group(default)`` (the ``vaelab_group`` resolver): ``sweep-<sweep folder name>`` in a
  multirun, ``default`` otherwise, so that every job of a sweep shares one W&B group.
- Each job writes ``status.json`` (``ok`` with its final metrics, ``failed`` with the error,
  or ``pruned`` by Optuna's pruner) into its own folder; a failed job does not stop the sweep.
- ``SweepSummary``, a Hydra callback, writes ``sweep_summary.csv`` and ``sweep_summary.md``
  (one row per job: overrides, status, final metrics; for a multi-objective Optuna study, whether
  the job is on the Pareto front) into the sweep folder when the sweep ends, lists the failed
  jobs and exits with status 1 if there were any (pruned jobs are not failures).

Imports nothing heavy: Hydra loads it before every run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from vaelab.errors import UserError, exit_with_error
from vaelab.metrics import FINAL_METRICS, IWAE_METRICS
from vaelab.results.tables import iwae_columns, write_table
from vaelab.runs import LOCK_FILE, OVERRIDES_FILE, STATUS_FILE, FolderLock, read_status, saved_overrides

log = logging.getLogger(__name__)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group(default: str) -> str:
    """The W&B group: ``sweep-<sweep folder name>`` in a multirun, ``default`` otherwise."""
    if in_multirun():
        return "sweep-" + Path(HydraConfig.get().sweep.dir).name
    return default


def collect(sweep_dir: Path) -> list[dict]:
    """One row per job folder under sweep_dir: job number, overrides, status, error, final metrics."""
    rows = []
    job_dirs = {p.parent.parent for p in sweep_dir.glob(f"*/{OVERRIDES_FILE}")}
    job_dirs |= {p.parent for p in sweep_dir.glob(f"*/{STATUS_FILE}")}
    for job_dir in sorted(job_dirs):
        status = read_status(job_dir) or {"status": "missing", "metrics": {}}
        row = {
            "job": job_dir.name,
            "overrides": " ".join(saved_overrides(job_dir) or []),
            "status": status.get("status", "missing"),
            "error": status.get("error") or "",
        }
        metrics = status.get("metrics") or {}
        row.update({key: metrics.get(key, "") for key in (*FINAL_METRICS, *IWAE_METRICS)})
        rows.append(row)
    return sorted(rows, key=lambda r: int(r["job"].split("_")[0]) if r["job"].split("_")[0].isdigit() else 0)


def mark_front(sweep_dir: Path, rows: list[dict]) -> list[str]:
    """Set each row's ``pareto_front`` ("yes" or "") when the sweep was a multi-objective Optuna
    study (its optimization_results.yaml lists the front); the jobs on the front, in order."""
    from vaelab.optuna_search import read_front

    front = read_front(sweep_dir)
    if front is None:
        return []
    for row in rows:
        row["pareto_front"] = "yes" if row["job"] in front else ""
    return [row["job"] for row in rows if row["pareto_front"]]


def write_summary(sweep_dir: Path, rows: list[dict]) -> None:
    """sweep_summary.csv and sweep_summary.md: one row per job."""
    front = ["pareto_front"] if rows and "pareto_front" in rows[0] else []
    columns = ["job", "overrides", "status", *front, *FINAL_METRICS, *iwae_columns(rows), "error"]
    write_table(rows, columns, sweep_dir / "sweep_summary", root=sweep_dir)


class SweepSummary(Callback):
    """Holds the sweep folder's lock while the sweep runs (a second sweep into the same folder
    stops with one line); at the end, writes the summary, reports failed jobs, exits 1 if any failed.
    ``SweepSummary.running`` is the sweep of this process that has started and not ended."""

    running: SweepSummary | None = None

    def __init__(self) -> None:
        self.lock: FolderLock | None = None
        self.sweep_dir: Path | None = None
        self.made_the_folder = False

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.made_the_folder = not self.sweep_dir.is_dir() or not any(self.sweep_dir.iterdir())
        self.lock = FolderLock(self.sweep_dir, "sweep folder")
        try:
            self.lock.__enter__()
        except UserError as error:  # exits itself: Hydra turns a callback's exception into a warning
            exit_with_error(error)
        SweepSummary.running = self

    def abandon(self) -> None:
        """The sweep stopped before its first job (Hydra checks every job's overrides first): let
        go of the lock, and remove the folder when this sweep made it and it holds only Hydra's
        multirun.yaml, the lock and submitit's folder (jobs SLURM refused), so that a bad
        override leaves nothing behind."""
        SweepSummary.running = None
        if self.lock is not None:
            self.lock.release()
        leftovers = {p.name for p in self.sweep_dir.iterdir()} if self.sweep_dir.is_dir() else set()
        if self.made_the_folder and leftovers <= {"multirun.yaml", LOCK_FILE, ".submitit"}:
            import shutil

            shutil.rmtree(self.sweep_dir, ignore_errors=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        SweepSummary.running = None
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir)
        front = mark_front(sweep_dir, rows)
        write_summary(sweep_dir, rows)
        if self.lock is not None:
            self.lock.release()
        ok = sum(row["status"] == "ok" for row in rows)
        pruned = sum(row["status"] == "pruned" for row in rows)  # Optuna's pruner stopped them: not failures
        failed = [row for row in rows if row["status"] not in ("ok", "pruned")]
        print(
            f"sweep: {ok} of {len(rows)} jobs ok{f', {pruned} pruned' if pruned else ''}; "
            f"summary in {sweep_dir / 'sweep_summary.md'}"
        )
        if front:
            print(f"sweep: Pareto front: {', '.join(front)}")
        if failed:
            for row in failed:
                print(f"sweep: job {row['job']} ({row['overrides']}) {row['status']}: {row['error']}", file=sys.stderr)
            sys.exit(1)
