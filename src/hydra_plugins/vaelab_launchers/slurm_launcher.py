"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM launcher, with what that plugin
lacks on a real cluster:
- an ``sbatch`` refusal (a memory or GPU request the nodes cannot meet) is one ``error:`` line;
- it waits on ``squeue``/``scontrol`` (``vaelab.slurm``), not on ``sacct``, which clusters
  without accounting refuse with a warning on every poll;
- a requeued job (``scontrol requeue``, preemption, submitit's time-limit requeue) is waited for
  until its last attempt ends, so the summary shows that attempt, not the first;
- a job the cluster ended without a result (its time limit, a preemption without requeue, a
  node failure) is submitted again, ``max_num_timeout`` times; it continues from ``last.ckpt``;
- a job that ends without a result otherwise (``scancel``) is written in its folder's
  ``status.json`` as cancelled or failed, and the sweep goes on. A re-run sweep continues it.

The jobs themselves are submitit's and the plugin's: each runs the plugin launcher's
``__call__``, and its ``checkpoint`` lets submitit requeue a job at its time limit. Needs the
``launchers`` extra (hydra-submitit-launcher), imported only when the launcher is made.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


# where torch.distributed meets and which rank a process is: in a job they come from SLURM (Lightning's
# SLURM environment), never from the shell that submitted it, e.g. a port an earlier DDP run exported
RENDEZVOUS_VARIABLES = (
    "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
)  # fmt: skip


@contextlib.contextmanager
def without_rendezvous_variables():
    """This process's environment without RENDEZVOUS_VARIABLES, restored afterwards."""
    saved = {name: os.environ.pop(name) for name in RENDEZVOUS_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class SlurmLauncher(Launcher):
    """Submits each Hydra job as a task of one SLURM array through submitit and returns each
    job's outcome after its last attempt (see the module docstring)."""

    def __init__(self, **params) -> None:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as Submitit

        self.jobs_launcher = Submitit(**params)  # what each SLURM task runs; it holds the parameters
        self.config: DictConfig | None = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.jobs_launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config, self.hydra_context = config, hydra_context

    def executor(self, params: dict):
        """A submitit executor with the launcher's parameters, named as the plugin names them."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        params = dict(params)
        executor = submitit.AutoExecutor(
            cluster="slurm", folder=params.pop("submitit_folder"), slurm_max_num_timeout=params.pop("max_num_timeout")
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())  # submitit's names for every cluster
        executor.update_parameters(**{key if key in shared else f"slurm_{key}": v for key, v in params.items()})
        return executor

    def job_folder(self, overrides: Sequence[str], job_num: int) -> Path:
        """The folder Hydra gives job ``job_num``: ``hydra.sweep.dir`` / ``hydra.sweep.subdir``."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = job_num
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)

    def job_resources(self, overrides: Sequence[str]) -> dict:
        """The launcher's parameters as the job's own config resolves them: in a sweep over
        ``trainer.devices`` or ``trainer.num_nodes`` each job asks for its own tasks and nodes."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        params = OmegaConf.to_container(config.hydra.launcher, resolve=True)
        params.pop("_target_", None)
        return params

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        from vaelab.slurm import ENDED_BY_THE_CLUSTER, wait_until_ended

        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        todo = {initial_job_idx + i: list(overrides) for i, overrides in enumerate(job_overrides)}
        for number, overrides in todo.items():
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        outcomes: dict[int, JobReturn] = {}
        submissions_left = int(self.jobs_launcher.params.get("max_num_timeout", 0))
        while todo:
            resources = {number: self.job_resources(overrides) for number, overrides in todo.items()}
            groups: dict[str, list[int]] = {}  # one array job per set of resources
            for number in todo:
                groups.setdefault(repr(sorted(resources[number].items())), []).append(number)
            jobs = {}
            for numbers in groups.values():
                group = {number: todo[number] for number in numbers}
                jobs.update(zip(numbers, self.submit(group, resources[numbers[0]]), strict=True))
            final = wait_until_ended([job.job_id for job in jobs.values()])
            again = {}
            for number, job in jobs.items():
                state = final[job.job_id]
                if state in ENDED_BY_THE_CLUSTER and not job.paths.result_pickle.exists() and submissions_left > 0:
                    again[number] = todo[number]  # it continues from its folder's last.ckpt
                    log.warning("SLURM job %s: %s without a result; submitting it again", job.job_id, state)
                else:
                    outcomes[number] = self.outcome(job, state, todo[number], number)
            todo, submissions_left = again, submissions_left - 1
        return [outcomes[number] for number in sorted(outcomes)]

    def submit(self, todo: dict[int, list[str]], resources: dict) -> list:
        """One array job, a task per Hydra job (number -> overrides), each asking for ``resources``
        (the launcher's parameters); an sbatch refusal is a UserError."""
        from hydra.core.singleton import Singleton

        from vaelab.errors import UserError
        from vaelab.slurm import sbatch_refusal

        arguments = [
            (overrides, "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state())
            for number, overrides in todo.items()
        ]
        try:
            # sbatch passes this process's environment on; submitit prints sbatch's refusal, then raises it
            with without_rendezvous_variables(), contextlib.redirect_stderr(io.StringIO()):
                jobs = self.executor(resources).map_array(self.jobs_launcher, *zip(*arguments, strict=True))
        except Exception as error:  # noqa: BLE001 - submitit wraps sbatch's refusal in a traceback
            reason = sbatch_refusal(error)
            if reason is None:
                raise
            raise UserError(f"sbatch refused the sweep's jobs: {reason} (see hydra.launcher.*)") from None
        log.info("submitted SLURM jobs %s; waiting for them", ", ".join(job.job_id for job in jobs))
        return jobs

    def outcome(self, job, state: str, overrides: Sequence[str], number: int) -> JobReturn:
        """The job's JobReturn from its last attempt's result file. A job that left none, or whose
        result is submitit's error, has that written in its folder's status.json (unless it says
        ok) and returns NaN, as a failed vaelab job does: the sweep goes on."""
        from vaelab.runs import read_status, write_status
        from vaelab.slurm import ENDED_WITHOUT_RESULT

        if job.paths.result_pickle.exists():
            try:
                return job.results()[0]
            except Exception as error:  # noqa: BLE001 - the job's own traceback stays in its log
                message = f"SLURM job {job.job_id} ({state}) failed: {str(error).strip().splitlines()[-1]}"
        else:
            what = ENDED_WITHOUT_RESULT.get(state, f"ended ({state}) without a result")
            message = f"SLURM job {job.job_id} {what}; re-run the sweep to continue it"
        folder = self.job_folder(overrides, number)
        previous = read_status(folder) or {}
        if previous.get("status") != "ok":
            status = "cancelled" if ENDED_WITHOUT_RESULT.get(state) == "cancelled" else "failed"
            write_status(folder, status, previous.get("metrics"), error=message)
        log.error("sweep job %d: %s", number, message)
        result = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, working_dir=str(folder))
        result.return_value = float("nan")
        return result
