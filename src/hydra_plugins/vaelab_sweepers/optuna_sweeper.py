"""``hydra/sweeper=vaelab_optuna``: an Optuna study driven through its ask-and-tell API, on any
Optuna from 4.0 and SQLAlchemy 2 (hydra-optuna-sweeper 1.3 pins optuna<3).

Each trial is one Hydra job, launched by the configured launcher; its job number is the trial
number. One objective or several (``optimized_metric`` a list, ``direction`` a list): then
Optuna's ``best_trials`` are the Pareto front. After each job the sweeper reads its folder's
``status.json``:
- ``ok`` with finite objective values: the trial is complete;
- ``pruned`` (the pruner stopped it after an epoch): the trial is pruned;
- anything else, or an objective that cannot be reported: the trial is failed, and a job whose
  status said ok is rewritten as failed, naming the metric, so the summary and the exit code agree.

Re-running the same sweep (same ``hydra.sweep.dir`` and storage) continues it: trials of that
folder that were running when it was killed are launched again in their own job folders (each
continues from its ``last.ckpt``), and only the trials still missing of ``n_trials`` are asked.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    """Samples ``params`` with ``sampler``, runs ``n_trials`` trials ``n_jobs`` at a time."""

    def __init__(
        self,
        direction="maximize",
        study_name: str | None = None,
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        sampler=None,
        pruner=None,
        params=None,
    ) -> None:
        self.directions = [direction] if isinstance(direction, str) else list(direction)
        self.study_name = study_name
        self.storage = storage
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.sampler_settings = sampler
        self.pruner_settings = pruner
        self.params = dict(params or {})
        self.config = None
        self.launcher = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def check_settings(self, objectives: list[str]) -> None:
        from vaelab.errors import ConfigError

        for direction in self.directions:
            if direction not in ("minimize", "maximize"):
                raise ConfigError(f"hydra.sweeper.direction: {direction!r} is not minimize or maximize")
        if len(objectives) != len(self.directions):
            raise ConfigError(
                f"optimized_metric names {len(objectives)} metrics ({', '.join(objectives) or 'none'}) but "
                f"hydra.sweeper.direction has {len(self.directions)} directions: give one per metric"
            )
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ConfigError(f"hydra.sweeper.n_trials must be an integer >= 1 (got {self.n_trials!r})")
        if not isinstance(self.n_jobs, int) or self.n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_jobs must be an integer >= 1 (got {self.n_jobs!r})")
        if self.pruner_settings is not None:
            if len(objectives) > 1:
                raise ConfigError("hydra.sweeper.pruner: Optuna prunes single-objective studies only; set it to null")
            if not objectives[0].startswith("val/"):
                raise ConfigError(
                    f"hydra.sweeper.pruner watches the objective after each validation epoch: optimized_metric "
                    f"must be a val/ metric (got {objectives[0]}), or set hydra.sweeper.pruner=null"
                )

    def sweep(self, arguments: list[str]) -> list:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from vaelab import optuna_search as search
        from vaelab.errors import ConfigError

        optuna = search.import_optuna()
        objectives = search.objective_names(self.config.get("optimized_metric"))
        self.check_settings(objectives)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides([f"{key}={value}" for key, value in self.params.items()] + list(arguments))
        space, fixed = search.search_space(parsed)
        if not space:
            raise ConfigError(
                "hydra.sweeper.params holds no search space (e.g. model.beta='tag(log, interval(0.25, 8))')"
            )
        sampler = search.build_optuna_object(self.sampler_settings, "hydra.sweeper.sampler", "optuna.samplers")
        pruner = search.build_optuna_object(self.pruner_settings, "hydra.sweeper.pruner", "optuna.pruners")
        logging.getLogger("alembic").setLevel(logging.WARNING)  # Optuna's SQLite setup: 7 INFO lines otherwise
        study = optuna.create_study(
            study_name=self.study_name,
            storage=search.storage_url(self.storage),
            sampler=sampler,
            pruner=pruner,
            directions=self.directions,
            load_if_exists=True,
        )
        if [d.name.lower() for d in study.directions] != self.directions:
            raise ConfigError(
                f"study {study.study_name} in {self.storage} optimizes {[d.name.lower() for d in study.directions]}, "
                f"not {self.directions}: choose another hydra.sweeper.study_name"
            )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        mine = [
            t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(search.SWEEP_DIR_ATTR) == str(sweep_dir)
        ]
        unfinished = [t for t in mine if t.state.name == "RUNNING"]  # killed with the sweep: run again
        to_ask = max(0, self.n_trials - len(mine))
        goals = ", ".join(f"{d} {o}" for d, o in zip(self.directions, objectives, strict=True))
        continued = f" ({len(unfinished)} continued)" if unfinished else ""
        print(f"sweep: Optuna study {study.study_name} ({goals}), {to_ask + len(unfinished)} trials to run{continued}")
        returns = []
        while unfinished or to_ask:
            batch = unfinished[: self.n_jobs]
            unfinished = unfinished[len(batch) :]
            # the search space's order, so that a continued trial's overrides equal the saved ones
            pending = [(t.number, {k: t.params[k] for k in space if k in t.params}) for t in batch]
            while len(pending) < self.n_jobs and to_ask:
                trial = study.ask(fixed_distributions=space)
                trial.set_user_attr(search.SWEEP_DIR_ATTR, str(sweep_dir))
                search.ACTIVE_TRIALS[(self.storage, study.study_name, trial.number)] = trial
                pending.append((trial.number, {k: trial.params[k] for k in space}))
                to_ask -= 1
            jobs = [search.trial_overrides(params, fixed) for _, params in pending]
            try:
                self.validate_batch_is_legal(jobs)
            except Exception:
                for number, _ in pending:  # no job ran: the trials must not stay running
                    study.tell(number, state=optuna.trial.TrialState.FAIL)
                raise
            results = self.launch(pending, jobs)
            for (number, params), result in zip(pending, results, strict=True):
                self.record(study, number, params, result, objectives)
                search.ACTIVE_TRIALS.pop((self.storage, study.study_name, number), None)
            returns.append(results)
        search.write_results(sweep_dir, study, objectives)
        return returns

    def launch(self, pending: list[tuple[int, dict]], jobs: list[list[str]]) -> list:
        """Launch the jobs, each with its trial number as its job number: in one call when the
        numbers follow each other (the usual case), else one call per job."""
        numbers = [number for number, _ in pending]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return list(self.launcher.launch(jobs, initial_job_idx=numbers[0]))
        return [
            self.launcher.launch([job], initial_job_idx=number)[0] for number, job in zip(numbers, jobs, strict=True)
        ]

    def record(self, study, number: int, params: dict, result, objectives: list[str]) -> None:
        """Tell Optuna how trial ``number`` ended (see the module docstring) and say it in one line."""
        from optuna.trial import TrialState

        from vaelab import optuna_search as search
        from vaelab.errors import first_line
        from vaelab.runs import read_status, write_status

        job_dir = Path(result.hydra_cfg.hydra.runtime.output_dir) if result.hydra_cfg is not None else None
        if job_dir is not None:
            study._storage.set_trial_user_attr(search.trial_id_of(study, number), search.JOB_DIR_ATTR, str(job_dir))
        status = (read_status(job_dir) if job_dir is not None else None) or {}
        settings = search.short_params(params)
        if status.get("status") == "pruned":
            study.tell(number, state=TrialState.PRUNED)
            print(f"sweep: trial {number} pruned ({settings}): {status.get('error') or ''}")
            return
        if result.status != JobStatus.COMPLETED:
            try:
                result.return_value  # noqa: B018 - raises the job's exception
                reason = "the job failed"
            except Exception as error:  # noqa: BLE001 - any exception of the job is its failure
                reason = first_line(error)
        elif status.get("status") != "ok":
            reason = status.get("error") or f"its status is {status.get('status', 'missing')}"
        else:
            try:
                values = search.objective_values(result.return_value, objectives, status.get("metrics"))
            except ValueError as error:
                reason = str(error)
                write_status(job_dir, "failed", status.get("metrics"), error=f"objective not reported: {reason}")
            else:
                study.tell(number, values)
                shown = ", ".join(f"{name}={value:.6g}" for name, value in zip(objectives, values, strict=True))
                print(f"sweep: trial {number} ({settings}): {shown}")
                return
        study.tell(number, state=TrialState.FAIL)
        print(f"sweep: trial {number} failed ({settings}): {reason}")
