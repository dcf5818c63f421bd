"""SLURM as vaelab sees it: the scheduler's state of a job, and a job stopped by the scheduler.

- ``stop_on_sigterm``: in a SLURM job, SIGTERM (a requeue, a preemption, a time limit,
  ``scancel``) stops training at once without recording a failure. The run folder keeps its
  ``last.ckpt``, and the next attempt (or a re-run sweep) continues from it.
- ``job_states`` / ``wait_until_ended``: what ``squeue`` and ``scontrol`` say about jobs. Every
  cluster answers them, unlike ``sacct``, which clusters without accounting refuse.
- ``sbatch_refusal``: the reason in a failed submission.

The launcher that uses them is ``hydra_plugins.vaelab_launchers.slurm_launcher``. Imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence

from vaelab.errors import JobCannotStart, UserError  # noqa: F401 - raised here, imported from here

log = logging.getLogger(__name__)

# the states of a job that has not ended for good; a requeued job passes through several of them
ACTIVE_STATES = {
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "COMPLETING",
    "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "SPECIAL_EXIT", "RESV_DEL_HOLD",
    "POWER_UP_NODE",
}  # fmt: skip
# the cluster ended the job, not its user: the launcher submits it again (hydra.launcher.max_num_timeout times)
ENDED_BY_THE_CLUSTER = {"TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL"}
ENDED_WITHOUT_RESULT = {"CANCELLED": "cancelled", "TIMEOUT": "timed out", "PREEMPTED": "cancelled"}


class SchedulerStopped(SystemExit):
    """SIGTERM from SLURM: the job is requeued, preempted, out of time or cancelled. A SystemExit,
    so that neither Hydra nor submitit records it as the job's result."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)

    def __str__(self) -> str:
        return "stopped by SLURM (SIGTERM: requeued, preempted, out of time or cancelled)"


class Sigterm:
    """What arrived within ``stop_on_sigterm``: SIGTERM, and the time-limit warning."""

    received = False
    time_limit_handler = None  # what requeues the job, deferred until the next epoch starts


ARRIVED = Sigterm()  # of the ``stop_on_sigterm`` that runs now (one per process)


def requeue_this_job(signum, frame) -> None:
    """``scontrol requeue`` this job (an array task by its array id); SLURM then sends SIGTERM."""
    job = os.environ["SLURM_JOB_ID"]
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    log.warning("SLURM: requeueing job %s after its checkpoint", job)
    if subprocess.run(["scontrol", "requeue", job], check=False, timeout=60).returncode == 0:
        ARRIVED.received = True
        raise SchedulerStopped()  # SLURM's SIGTERM follows; this attempt is over either way
    log.warning("SLURM: job %s cannot be requeued (sbatch --requeue?); it runs on to its limit", job)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[Sigterm]:
    """Within a SLURM job: SIGTERM raises SchedulerStopped in the main thread, and the time-limit
    warning is deferred to the start of the next epoch (``TimeLimitRequeue``), so that the job
    is requeued right after a checkpoint and each attempt makes progress. SLURM may send the
    warning up to a minute early. It is USR2 in a submitit job (``signal_delay_s``), whose
    handler requeues the job at most ``max_num_timeout`` times, and USR1 in a plain batch job
    (``#SBATCH --signal=USR1@90``: scripts/slurm/train.sbatch), which ``scontrol requeue``s
    itself; Lightning's own USR1 handler, which would requeue at once after a mid-epoch
    checkpoint that an exact resume cannot use, is then not installed. Elsewhere nothing
    changes. The SIGTERM also reaches the job's other processes (W&B's service): an error that
    follows it is its consequence, which ``received`` tells."""
    global ARRIVED
    ARRIVED = arrived = Sigterm()
    if "SLURM_JOB_ID" not in os.environ or threading.current_thread() is not threading.main_thread():
        yield arrived
        return

    def stop(signum, frame) -> None:
        arrived.received = True
        raise SchedulerStopped()

    submitit_warning = signal.getsignal(signal.SIGUSR2)
    warning, requeue = (
        (signal.SIGUSR2, submitit_warning) if callable(submitit_warning) else (signal.SIGUSR1, requeue_this_job)
    )

    def defer(signum, frame) -> None:
        log.warning("SLURM: the time limit is near; the job requeues itself when this epoch ends")
        arrived.time_limit_handler = requeue

    previous = signal.signal(signal.SIGTERM, stop)
    previous_warning = signal.signal(warning, defer)
    try:
        yield arrived
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(warning, previous_warning)


def requeue_if_time_is_short() -> None:
    """At an epoch boundary (its checkpoint written): run the deferred requeue, which ends the job."""
    handler, ARRIVED.time_limit_handler = ARRIVED.time_limit_handler, None
    if handler is not None:
        handler(signal.SIGUSR2, None)


def gpus_per_node(accelerator: str, devices) -> int:
    """The ``vaelab_gpus_per_node`` resolver: ``trainer.devices`` GPUs unless the trainer runs on the CPU."""
    if str(accelerator) == "cpu":
        return 0
    return devices if isinstance(devices, int) else 1


def sbatch_refusal(error: BaseException) -> str | None:
    """The ``sbatch: error:`` line that explains why submitit's submission failed, or None."""
    lines = [line.strip() for line in str(error).splitlines() if "sbatch: error:" in line]
    return lines[-1].split("sbatch: error:", 1)[1].strip() if lines else None


# why a job is pending that no wait will change: the request exceeds what the partition offers
NEVER_STARTS = {
    "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidAccount",
    "InvalidQOS", "DependencyNeverSatisfied", "QOSMaxWallDurationPerJobLimit", "AssocMaxWallDurationPerJobLimit",
}  # fmt: skip


def job_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Each job's (state, reason) as the scheduler reports it now: ``squeue`` for jobs in the
    queue, then ``scontrol show job`` for jobs that left it (kept for MinJobAge, 300 s by
    default). A job neither knows is ``("UNKNOWN", "")``."""
    states: dict[str, tuple[str, str]] = {}
    for array_id in sorted({job_id.split("_")[0] for job_id in job_ids}):
        listed = run_quietly(["squeue", "-h", "-r", "-o", "%i %T %r", "-j", array_id])
        for line in listed.splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) >= 2:
                states[parts[0]] = (parts[1], parts[2] if len(parts) == 3 else "")
    for job_id in job_ids:
        if job_id not in states:
            shown = run_quietly(["scontrol", "show", "job", "-o", job_id])
            found = [word.split("=", 1)[1] for word in shown.split() if word.startswith("JobState=")]
            states[job_id] = (found[0] if found else "UNKNOWN", "")
    return {job_id: states[job_id] for job_id in job_ids}


def run_quietly(command: list[str]) -> str:
    """A scheduler command's output; empty when it fails (a job the scheduler has forgotten)."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def wait_until_ended(job_ids: Sequence[str], poll_s: float = 2.0, max_poll_s: float = 15.0) -> dict[str, str]:
    """Poll the scheduler until no job is active; log each change of state (a requeue shows as
    RUNNING -> PENDING). Returns each job's final state. A job that can never start (its
    request exceeds the partition: NEVER_STARTS) cancels them all and raises JobCannotStart:
    every job of a sweep asks for the same resources."""
    seen: dict[str, tuple[str, str]] = {}
    while True:
        states = job_states(job_ids)
        for job_id, (state, _) in states.items():
            if seen.get(job_id, ("",))[0] != state:
                log.info("SLURM job %s: %s", job_id, state)
        seen = states
        stuck = [(job_id, reason) for job_id, (state, reason) in states.items() if reason in NEVER_STARTS]
        if stuck:
            run_quietly(["scancel", *job_ids])
            job_id, reason = stuck[0]
            raise JobCannotStart(
                f"SLURM will not start job {job_id}: {reason} (it asks for more CPUs, memory, GPUs, nodes or "
                "time than the partition offers; see hydra.launcher.*); the sweep's jobs are cancelled"
            )
        if not any(state in ACTIVE_STATES for state, _ in states.values()):
            return {job_id: state for job_id, (state, _) in states.items()}
        time.sleep(poll_s)
        poll_s = min(max_poll_s, poll_s * 1.5)
