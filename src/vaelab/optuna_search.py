"""Optuna studies for ``hparams_search=optuna`` and ``hparams_search=rate_distortion``: what the
sweeper (``hydra_plugins.vaelab_sweepers``) asks Optuna, and what a trial's job reports back.

- ``search_space``: Hydra's sweep grammar (``choice``, ``range``, ``interval``, ``tag(log, ...)``)
  as Optuna distributions, plus the fixed overrides every trial gets.
- ``trial_overrides``: a trial's values as Hydra overrides (exact values; run names round them).
- ``objective_values``: a job's returned objective(s) as finite floats, or why they cannot be
  reported (a trial that cannot report is failed, never "ok").
- ``pruning_callback``: inside a trial's job, Optuna's Lightning pruning callback on the trial.
- ``write_results``: ``optimization_results.yaml`` with the best trial or the Pareto front.

Optuna is imported only inside these functions (it is an extra: ``pip install 'vaelab[optuna]'``).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from vaelab.errors import ConfigError, UserError

log = logging.getLogger(__name__)

# user attributes each trial carries: the sweep folder it runs in and its job folder
SWEEP_DIR_ATTR = "vaelab_sweep_dir"
JOB_DIR_ATTR = "vaelab_job_dir"
RESULTS_FILE = "optimization_results.yaml"
# trials asked by a sweeper in this process, by (storage, study name, trial number): an in-memory
# study is reachable from its jobs only when they run in this process (the basic launcher)
ACTIVE_TRIALS: dict[tuple[str | None, str, int], object] = {}


def import_optuna():
    """The optuna module, or a UserError saying which extra installs it."""
    try:
        import optuna
    except ImportError:
        raise UserError("hparams_search with Optuna needs optuna: pip install 'vaelab[optuna]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # vaelab prints one line per trial itself
    return optuna


def distribution_for(override):
    """The Optuna distribution of one sweep override (a parsed Hydra ``Override``):
    ``choice(a, b)`` / ``a,b`` -> categorical; ``range(1, 10, 2)`` of ints -> int with that step
    (float ranges -> categorical of their values); ``interval(lo, hi)`` -> float, of ints
    (``int(interval(1, 64))``) -> int; ``tag(log, ...)`` -> log scale."""
    import optuna.distributions as d
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    key, value = override.get_key_element(), override.value()
    log_scale = "log" in (value.tags or set())
    if isinstance(value, ChoiceSweep):
        choices = list(value.list)
        if not all(c is None or isinstance(c, bool | int | float | str) for c in choices):
            raise ConfigError(f"{key}: choice() may hold numbers, strings, booleans or null, not {choices!r}")
        return d.CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            values = range(value.start, value.stop, value.step)
            if len(values) == 0:
                raise ConfigError(f"{key}: range({value.start}, {value.stop}, {value.step}) is empty")
            return d.IntDistribution(min(values), max(values), step=abs(value.step), log=log_scale)
        values = list(override.sweep_iterator())
        return d.CategoricalDistribution(values)
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if not low < high or (log_scale and low <= 0):
            raise ConfigError(
                f"{key}: interval({low}, {high}) is empty{' or not positive for log' if log_scale else ''}"
            )
        if isinstance(low, int) and isinstance(high, int):
            return d.IntDistribution(low, high, log=log_scale)
        return d.FloatDistribution(float(low), float(high), log=log_scale)
    raise ConfigError(f"{key}: {type(value).__name__} is not a search space Optuna can sample")


def search_space(overrides) -> tuple[dict, list[str]]:
    """({key: Optuna distribution} of the sweep overrides, [the fixed ``key=value`` overrides]),
    from parsed Hydra overrides (``hydra.sweeper.params`` then the command line; a later
    override of the same key wins)."""
    space, fixed = {}, {}
    for override in overrides:
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution_for(override)
        else:
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
    return space, list(fixed.values())


SIMPLE_STRING = re.compile(r"[A-Za-z0-9_./+-]+")


def override_value(value) -> str:
    """A sampled value as Hydra's override grammar reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if SIMPLE_STRING.fullmatch(text) and text.lower() not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(params: dict, fixed: list[str]) -> list[str]:
    """The overrides of one trial's job: the fixed ones, then each sampled value, exactly."""
    return [*fixed, *(f"{key}={override_value(value)}" for key, value in params.items())]


def objective_names(optimized_metric) -> list[str]:
    """``optimized_metric`` (one name or a list of names) as a list."""
    if optimized_metric is None:
        return []
    if isinstance(optimized_metric, str):
        return [optimized_metric]
    return [str(name) for name in optimized_metric]


def objective_values(returned, objectives: list[str], logged: dict | None = None) -> list[float]:
    """The job's returned objective(s) as finite floats, one per name in ``objectives``; a
    ValueError says why they cannot be reported (naming the metric, and what was logged)."""
    values = list(returned) if isinstance(returned, list | tuple) else [returned]
    if len(values) != len(objectives):
        raise ValueError(f"the job returned {len(values)} objective values for {len(objectives)} objectives")
    result = []
    for name, value in zip(objectives, values, strict=True):
        if value is None:
            known = ", ".join(sorted(k for k in (logged or {}) if "/kl_dim/" not in k)) or "none"
            raise ValueError(f"optimized_metric {name} was not logged (logged: {known})")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"optimized_metric {name} is {value!r}, not a finite number")
        result.append(float(value))
    return result


def build_optuna_object(settings, key: str, module: str):
    """A sampler or pruner from its ``_target_`` settings (None when null), only from ``module``
    (``optuna.samplers`` / ``optuna.pruners``); a bad value is a ConfigError naming ``key``."""
    from omegaconf import DictConfig, OmegaConf

    from vaelab.instantiate import instantiate_setting

    if settings is None:
        return None
    if not isinstance(settings, DictConfig):
        settings = OmegaConf.create(settings)
    target = settings.get("_target_")
    if not isinstance(target, str) or not target.startswith(module + "."):
        raise ConfigError(f"{key}._target_ must name a class of {module} (got {target!r})")
    return instantiate_setting(settings, key)


def storage_url(storage: str | None) -> str | None:
    """The study's storage URL; an SQLite file's folder is made first (Optuna would fail)."""
    if storage and storage.startswith("sqlite:///"):
        path = Path(storage[len("sqlite:///") :])
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
    return storage or None


def short_params(params: dict) -> str:
    """A trial's values for a log line: ``model.beta=1.67 model.latent_dim=10``."""
    return " ".join(f"{k}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in params.items())


def write_results(sweep_dir: Path, study, objectives: list[str]) -> Path:
    """``optimization_results.yaml`` in the sweep folder: the study, its directions and
    objectives, how many of its trials completed, were pruned or failed; the best trial (one
    objective) or the Pareto front (several), with each trial's number, job folder, values and
    settings."""
    from omegaconf import OmegaConf

    from vaelab.runs import write_file

    def describe(trial) -> dict:
        return {
            "trial": trial.number,
            "job": Path(trial.user_attrs.get(JOB_DIR_ATTR, "")).name,
            "values": [float(v) for v in trial.values],
            "params": dict(trial.params),
        }

    results = {
        "name": "optuna",
        "study_name": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "objectives": objectives,
    }
    trials = study.get_trials(deepcopy=False)
    results["trials"] = {state: sum(t.state.name == state for t in trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    completed = [t for t in trials if t.state.name == "COMPLETE"]
    if completed and len(study.directions) == 1:
        best = study.best_trial
        results.update(best_params=dict(best.params), best_value=float(best.value), best_trial=describe(best))
    elif completed:
        results["pareto_front"] = [describe(t) for t in sorted(study.best_trials, key=lambda t: t.number)]
    path = sweep_dir / RESULTS_FILE
    write_file(path, OmegaConf.to_yaml(OmegaConf.create(results)), root=sweep_dir)
    return path


def read_results(sweep_dir: Path) -> dict | None:
    """A sweep folder's optimization_results.yaml read as data (a regular file inside the folder,
    bounded, interpolations left as text), or None when it is missing or damaged."""
    from omegaconf import OmegaConf

    from vaelab.safe_load import load_yaml

    path = sweep_dir / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        return OmegaConf.to_container(load_yaml(path, str(path), root=sweep_dir))
    except Exception:  # noqa: BLE001 - a damaged results file is the same as none
        return None


def read_front(sweep_dir: Path) -> set[str] | None:
    """The job folder names on the Pareto front of a multi-objective study in ``sweep_dir``,
    None when it has no front."""
    front = (read_results(sweep_dir) or {}).get("pareto_front")
    return {str(entry.get("job")) for entry in front if isinstance(entry, dict)} if isinstance(front, list) else None


def this_trial():
    """(the Optuna trial this job runs, the sweeper's settings), or (None, None) outside a trial
    of vaelab's Optuna sweeper. The job number is the trial number (the sweeper launches them so)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    if not str(sweeper.get("_target_", "")).startswith("hydra_plugins.vaelab_sweepers."):
        return None, None
    number = int(hydra_cfg.job.num)
    key = (sweeper.storage, sweeper.study_name, number)
    if key in ACTIVE_TRIALS:
        return ACTIVE_TRIALS[key], sweeper
    if not sweeper.storage:
        return None, sweeper  # an in-memory study in another process: not reachable
    optuna = import_optuna()
    pruner = build_optuna_object(sweeper.get("pruner"), "hydra.sweeper.pruner", "optuna.pruners")  # it decides
    study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage, pruner=pruner)
    return optuna.trial.Trial(study, trial_id_of(study, number)), sweeper


def trial_id_of(study, number: int) -> int:
    """The storage's id of trial ``number`` of ``study`` (Optuna's Trial is built from the id)."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def pruning_callback(objectives: list[str]):
    """Optuna's Lightning pruning callback on this job's trial, reporting the objective after
    every validation epoch, or None when the job is no trial of a study with a pruner."""
    trial, sweeper = this_trial()
    if sweeper is None or sweeper.get("pruner") is None:
        return None
    if trial is None:
        log.warning("trials are not pruned: set hydra.sweeper.storage (e.g. sqlite:///logs/optuna.db) for jobs "
                    "that run in other processes")  # fmt: skip
        return None
    from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback

    return PyTorchLightningPruningCallback(trial, monitor=objectives[0])


def is_pruned(error: BaseException) -> bool:
    """True when ``error`` is (or was raised from) Optuna's TrialPruned."""
    while error is not None:
        if type(error).__name__ == "TrialPruned" and type(error).__module__.startswith("optuna"):
            return True
        error = error.__cause__ or error.__context__
    return False
