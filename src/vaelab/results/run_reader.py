"""Run folders read as data, for vaelab-compare: what each run was and how it ended.

- ``find_run_folders``: every folder with a ``.hydra/config.yaml`` at or below some paths;
- ``read_run``: one folder's config, ``status.json``, training curves (the CSV logger's, else the
  offline W&B run's, else TensorBoard's) and ``checkpoints/*.eval.json`` as a ``Run``;
- ``front_points`` / ``pareto_front`` / ``on_front``: the runs no other run beats in both
  objectives (rate and distortion, or the two objectives of the Optuna study they came from).

Nothing from a folder is resolved or instantiated: interpolations are shown as written.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from vaelab.errors import UserError, first_line, printable
from vaelab.results.wandb_offline import read_history
from vaelab.runs import CONFIG_FILE, checkpoint_dir, config_file, overrides_file, read_status


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
        for config in path.rglob(str(CONFIG_FILE)):
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
    saved = config_file(folder)
    cfg = OmegaConf.to_container(load_yaml(saved, str(saved), root=folder), resolve=False)
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    saved_overrides = overrides_file(folder)
    overrides = (
        " ".join(map(str, load_yaml(saved_overrides, str(saved_overrides), list, root=folder)))
        if saved_overrides.exists()
        else ""
    )
    status = read_status(folder, strict=True) or {"status": "unknown"}
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
    for eval_file in sorted(checkpoint_dir(folder).glob("*.eval.json")):
        results = read_json(eval_file, folder)  # vaelab-eval's "<split>/nll", "<split>/bits_per_dim", ...
        run.metrics.update(
            {k: v for k, v in results.items() if k.endswith(("/nll", "/bits_per_dim")) and isinstance(v, (int, float))}
        )
    return run


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


def on_front(runs: list[Run]) -> set[Path]:
    """The folders of the runs on the Pareto front drawn by plot_pareto_front."""
    points, _, _, signs = front_points(runs)
    return {points[i][0].folder for i in pareto_front([(x, y) for _, x, y in points], signs)}
