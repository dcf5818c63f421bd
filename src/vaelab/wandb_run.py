"""What vaelab does with a live W&B run:

- the mode: online with credentials, else offline (never a prompt), ``choose_wandb_mode``;
- which run a run folder holds (``run_id_in``), so that a resumed run continues it;
- the final metrics in the run summary (``write_summaries``, called by the ``FinalSummary``
  callback, and ``update_summary`` after vaelab-eval), the best val/elbo (``define_best_metrics``);
- the final KL of each latent dimension as a W&B Table (``log_kl_table``);
- checkpoints as versions of the run's model artifact (``log_checkpoints``), uploaded online and
  staged offline for ``wandb sync``;
- finishing the run, so that the next job of a multirun starts its own (``finish_wandb``).

Reading runs back with no network is ``vaelab.results.wandb_offline``.
"""

from __future__ import annotations

import logging
import netrc
import os
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

from vaelab.metrics import BEST_SUMMARIES
from vaelab.runs import is_global_zero

log = logging.getLogger(__name__)
WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"


def has_wandb_credentials() -> bool:
    """True when WANDB_API_KEY is set or ~/.netrc (or $NETRC) holds a key for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # what wandb.Settings accepts


def check_wandb_mode() -> str | None:
    """WANDB_MODE from the environment (None when unset); a value W&B would refuse is a UserError."""
    from vaelab.errors import UserError

    mode = os.environ.get("WANDB_MODE")
    if mode and mode not in WANDB_MODES:
        raise UserError(f"WANDB_MODE={mode!r} (environment) is not a W&B mode: use {', '.join(WANDB_MODES)}")
    return mode or None


def choose_wandb_mode() -> str:
    """Respect WANDB_MODE; without it and without credentials, switch to offline and say so once."""
    mode = check_wandb_mode()
    if mode:
        return mode
    if has_wandb_credentials():
        return "online"
    os.environ["WANDB_MODE"] = "offline"
    log.warning(
        "W&B: no credentials found (WANDB_API_KEY or ~/.netrc), logging offline; "
        "sync later with `wandb sync <run>/wandb/offline-run-*`."
    )
    return "offline"


SERVICE_STARTING: list[threading.Thread] = []  # the thread start_wandb_service started, until it is waited for


def start_wandb_service(cfg) -> None:
    """Start W&B's service process in a background thread, when this process will log to W&B.

    ``wandb.init`` starts the service and then polls for it in steps of 0.2 s. Started before the
    data and the model are set up, that wait overlaps with them. ``prepare_wandb``, which runs
    before every ``wandb.init`` of vaelab's, waits for the thread to end, so that ``wandb.setup``
    never runs in two threads at once: before 0.18, W&B's set-up had no lock, and two at once
    could leave a second service that W&B's exit then waited for forever. The mode and the
    environment W&B reads when its service starts (``choose_wandb_mode``, ``WANDB_QUIET``) are set
    before."""
    loggers = cfg.get("logger") or {}  # not config.targets_in: config imports this module
    if not is_global_zero() or not any(c and c.get("_target_") == WANDB_TARGET for c in loggers.values()):
        return
    wandb = prepare_wandb()
    thread = threading.Thread(target=setup_or_leave_it_to_init, args=(wandb,), name="wandb-service", daemon=True)
    SERVICE_STARTING.append(thread)
    thread.start()


def prepare_wandb():
    """Before a W&B service or run starts: the service that ``start_wandb_service`` is starting
    (waited for), the mode (``choose_wandb_mode``), and ``wandb.init`` without the Launch import
    (``skip_unstaged_launch_inputs``). Returns the ``wandb`` module."""
    while SERVICE_STARTING:
        SERVICE_STARTING.pop().join()
    choose_wandb_mode()
    import wandb

    from vaelab.workarounds import skip_unstaged_launch_inputs

    skip_unstaged_launch_inputs()
    return wandb


def setup_or_leave_it_to_init(wandb) -> None:
    try:
        wandb.setup()
    except Exception:  # wandb.init starts the service again and reports what is wrong
        return


def run_files(run_dir: str | Path) -> list[Path]:
    """The ``run-<id>.wandb`` files logged under ``<run_dir>/wandb`` (online or offline), oldest first."""
    return sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb"), key=lambda p: (p.stat().st_mtime, p.parent.name))


def run_id_in(run_dir: str | Path) -> str | None:
    """The id of the newest W&B run logged in a run folder, or None."""
    files = run_files(run_dir)
    return files[-1].stem.removeprefix("run-") if files else None


def logged_run_ids(loggers) -> list[str]:
    """The W&B run ids of these Lightning loggers (the WandbLoggers among them)."""
    return [logger.version for logger in wandb_loggers(loggers)]


def finish_wandb() -> None:
    """Close the active W&B run, so that the next multirun job starts a run of its own, and
    return once its ``.wandb`` file holds the whole run (``wait_until_written``)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    run_file = Path(wandb.run.settings.sync_file)  # opened when the run started; none when disabled
    written = run_file.is_file() and wandb.run.settings.mode != "disabled"
    wandb.finish()
    if written:
        wait_until_written(run_file)


def wait_until_written(run_file: Path, timeout: float = 60.0) -> bool:
    """Wait until a finished run's ``.wandb`` file ends with its exit record; False after ``timeout`` s.

    ``wandb.finish()`` returns before W&B's service has written the run's last records to the
    file (the final summary, the test metrics, the exit; all of a short run); the service writes
    them when it handles the finish, in its own process. A reader right after, such as
    ``vaelab.compare`` on the run folder, would otherwise find them missing."""
    import time

    from vaelab.results.wandb_offline import ends_with_exit

    deadline = time.monotonic() + timeout
    while True:
        try:
            if ends_with_exit(run_file):
                return True
        except (OSError, ValueError):  # not written yet, or a record cut short
            pass
        if time.monotonic() > deadline:
            log.warning("W&B: %s still lacks the run's exit record after %.0f s", run_file, timeout)
            return False
        time.sleep(0.005)


def update_summary(run_dir: Path, results: dict) -> str | None:
    """Write results into the summary of the W&B run logged in run_dir (resumed by id). Returns its id,
    or None when the run folder has no W&B run."""
    from omegaconf import OmegaConf

    from vaelab.runs import holds_run, read_run_config

    run_id = run_id_in(run_dir)
    if run_id is None or not holds_run(run_dir):
        return None
    saved = OmegaConf.to_container(read_run_config(run_dir), resolve=False)  # data: nothing resolved
    wandb_cfg = (saved.get("logger") or {}).get("wandb")
    if not isinstance(wandb_cfg, dict):
        return None
    project = wandb_cfg.get("project")
    project = project if isinstance(project, str) and "${" not in project else None
    wandb = prepare_wandb()
    run = wandb.init(id=run_id, resume="allow", project=project, dir=str(run_dir), job_type="eval")
    run.summary.update(results)
    finish_wandb()
    return run_id


def wandb_loggers(loggers) -> list:
    """The WandbLoggers among these Lightning loggers."""
    from lightning.pytorch.loggers import WandbLogger

    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


def define_best_metrics(loggers) -> None:
    """Let W&B keep the best value of these metrics as their summary (e.g. the highest val/elbo)."""
    for logger in wandb_loggers(loggers):
        for key, best in BEST_SUMMARIES.items():
            logger.experiment.define_metric(key, summary=best)


def write_summaries(loggers, values: dict) -> None:
    """Update the summary of every W&B run among these Lightning loggers; the metrics whose summary
    is their best value (BEST_SUMMARIES) keep it."""
    values = {key: value for key, value in values.items() if key not in BEST_SUMMARIES}
    for logger in wandb_loggers(loggers):
        summary = logger.experiment.summary
        summary.update(values)
        # reading it back waits for W&B's service to apply the update: a ddp_spawn rank that exits
        # next cannot lose it to the parent's finish, which comes over another connection
        summary.keys()


KL_TABLE_COLUMNS = ["dim", "kl_nats", "mean_variance", "active"]


def log_kl_table(loggers, kl_per_dim: list[float], mean_variance: list[float], threshold: float) -> None:
    """Log ``final/kl_per_dim``, a W&B Table with one row per latent dimension: its KL(q(z_d|x) ||
    N(0, 1)) in nats averaged over the validation images, the variance of its posterior mean over
    those images, and whether that variance is above ``threshold`` (an active unit)."""
    rows = [[d, kl, var, var > threshold] for d, (kl, var) in enumerate(zip(kl_per_dim, mean_variance, strict=True))]
    for logger in wandb_loggers(loggers):
        logger.log_table(key="final/kl_per_dim", columns=KL_TABLE_COLUMNS, data=rows)


def log_checkpoints(loggers, checkpoints: list[tuple[Path, list[str], dict]]) -> None:
    """Each (file, aliases, metadata) as a version of the W&B artifact ``model-<run id>`` of type
    ``model``, the file named ``model.ckpt`` in it (as Lightning's ``log_model`` names it). The file
    is copied when logged, so that an offline run keeps what ``wandb sync`` uploads later."""
    import wandb

    for logger in wandb_loggers(loggers):
        for path, aliases, metadata in checkpoints:
            artifact = wandb.Artifact(name=f"model-{logger.experiment.id}", type="model", metadata=metadata)
            artifact.add_file(str(path), name="model.ckpt")
            logger.experiment.log_artifact(artifact, aliases=aliases)
