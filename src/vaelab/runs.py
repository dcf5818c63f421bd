"""Run folders: one writer at a time, and what a start continues from.

- ``FolderLock``: an exclusive ``flock`` on ``<folder>/.lock``, held while a run or a sweep
  writes there. A second process stops with one line naming the holder. The kernel drops the
  lock when its holder dies, kill -9 included, so a stale lock is simply taken over.
- ``plan_start``: a fresh run, a run continued from its folder (``resume=RUN_DIR``,
  ``resume=auto``, or a re-run sweep job), or a sweep job that already finished and is skipped.
- ``config_to_resume``: a resumed run starts from its folder's saved config; only the overrides
  given again apply, and the log lists them.
- ``OutputFolderCheck``: a Hydra callback that stops a run or a sweep with one line when its
  folder cannot be made or written, before Hydra makes it.
- ``save_run_config``: ``.hydra/config.yaml`` and ``overrides.yaml``, written by vaelab (not by
  Hydra, whose ``output_subdir`` is null) once a start has passed its checks, by atomic renames:
  a failed start never overwrites a run's saved config.

Imports nothing heavy: it runs before torch is imported.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vaelab.errors import UserError
from vaelab.safe_load import load_yaml, read_run_config

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
STATUS_FILE = "status.json"
_MISSING = object()


class FolderInUseError(UserError):
    """Another process holds the folder's lock: the folder is its, and is left alone."""


class FolderLock:
    """``with FolderLock(folder, "run folder"):`` holds an exclusive lock on ``folder/.lock``.

    Raises FolderInUseError, naming the process that holds it, when another process has it."""

    def __init__(self, folder: str | Path, what: str):
        self.folder, self.what, self.handle = Path(folder), what, None

    def __enter__(self) -> FolderLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_FILE, "a+")  # noqa: SIM115 - held open for as long as the lock
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FolderInUseError(
                f"{self.what} {self.folder} is in use by {holder}; wait for it to end or use another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.handle is not None:
            import fcntl

            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def check_can_create(folder: Path, what: str) -> None:
    """Raise UserError unless ``folder`` exists as a writable folder or can be made in one."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create the {what} {folder}: {existing} is a file (set paths.log_dir)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot create the {what} {folder}: {existing} is not writable (set paths.log_dir)")


class OutputFolderCheck(Callback):
    """Before Hydra makes a run's or a sweep's folder: one ``error:`` line and exit 1 if it cannot."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(Path(config.hydra.run.dir), "run folder")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(Path(config.hydra.sweep.dir), "sweep folder")

    @staticmethod
    def _check(folder: Path, what: str) -> None:
        try:
            check_can_create(folder, what)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_status(run_dir: Path) -> dict | None:
    """A run folder's status.json ({"status": "ok" | "failed", "metrics", "error"}), None when absent or damaged."""
    try:
        status = json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def saved_overrides(run_dir: Path) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        return [str(o) for o in load_yaml(path, str(path), list)] if path.is_file() else None
    except Exception:  # noqa: BLE001 - a damaged file is the same as none
        return None


def save_run_config(run_dir: str | Path, cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """``<run_dir>/.hydra/config.yaml`` (unresolved, as Hydra writes it), ``overrides.yaml`` and,
    under Hydra, ``hydra.yaml``."""
    from hydra.core.hydra_config import HydraConfig

    folder = Path(run_dir) / ".hydra"
    write_atomically(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    if overrides is not None:
        write_atomically(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    if HydraConfig.initialized():
        write_atomically(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": HydraConfig.get()})))


def last_checkpoint(run_dir: Path, setting: str) -> Path:
    """``<run_dir>/checkpoints/last.ckpt``; a UserError naming ``setting`` when there is none."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise UserError(f"{setting}={run_dir}: there is no checkpoints/last.ckpt in that run folder")
    return last


def config_to_resume(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> DictConfig:
    """``run_dir``'s saved config with the values of ``overrides`` (the command line's, as
    composed into ``cfg``) set again; ``resume`` points at ``run_dir``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if run_dir.is_file():
        raise UserError(f"resume={run_dir} is a file: give the run folder that holds checkpoints/last.ckpt")
    last_checkpoint(run_dir, "resume")
    resumed = read_run_config(run_dir)
    given = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group.replace("/", ".")
        if key in ("resume", "ckpt_path") or key.startswith("hydra.") or override.package == "hydra":
            continue
        if override.is_delete():
            OmegaConf.update(resumed, key, None, force_add=True)
        else:
            value = OmegaConf.select(cfg, key, default=_MISSING, throw_on_resolution_failure=False)
            if value is _MISSING:
                raise UserError(
                    f"resume={run_dir}: the override {override.input_line!r} sets a group of keys, which "
                    "a resumed run cannot take; give each key to change (e.g. trainer.max_epochs=20)"
                )
            OmegaConf.update(resumed, key, value, merge=False, force_add=True)
        given.append(override.input_line)
    resumed.resume, resumed.ckpt_path = str(run_dir), None
    if "paths" in resumed:  # the folder it is in now (also outside a Hydra app)
        resumed.paths.output_dir = str(run_dir)
    log.info("resume=%s: its saved config, with the overrides given again: %s", run_dir, " ".join(given) or "none")
    return resumed


def finished_job(run_dir: Path, overrides: list[str]) -> dict | None:
    """The final metrics of a sweep job folder whose status.json says ok and whose saved
    overrides are these, read without writing anything; None otherwise."""
    status = read_status(run_dir)
    if status and status.get("status") == "ok" and saved_overrides(run_dir) == list(overrides):
        return dict(status.get("metrics") or {})
    return None


def plan_start(cfg: DictConfig, run_dir: Path, overrides: list[str], multirun: bool) -> DictConfig:
    """The config to train with in ``run_dir``.

    - ``resume=RUN_DIR``: continue that run from its saved config and its last.ckpt.
    - ``resume=auto`` and every sweep job: continue this folder's run if it has a last.ckpt, else start.
    - otherwise a fresh start, refused in a folder that holds a run already."""
    resume = cfg.get("resume")
    if resume and cfg.get("ckpt_path"):
        raise UserError("resume= and ckpt_path= were both given: give one (resume=RUN_DIR continues a run folder)")
    has_run = (run_dir / ".hydra" / "config.yaml").is_file()
    if multirun or resume == "auto":
        if not has_run:
            return cfg
        if multirun and saved_overrides(run_dir) not in (None, list(overrides)):
            raise UserError(
                f"sweep job folder {run_dir} holds a job with other overrides "
                f"({' '.join(saved_overrides(run_dir) or [])}); use another hydra.sweep.dir"
            )
        if not (run_dir / "checkpoints" / "last.ckpt").is_file():
            return cfg  # stopped before its first checkpoint: start it again
        resume = str(run_dir)
    elif not resume and has_run:
        raise UserError(
            f"run folder {run_dir} holds a run already: continue it with resume={run_dir}, "
            "or choose another hydra.run.dir"
        )
    return config_to_resume(cfg, Path(resume), overrides) if resume else cfg


def file_name(name: str) -> str:
    """``name`` as one safe file-name part: only letters, digits and ``._=+-``, no leading dot
    (``run_name='../../x'`` cannot lead out of logs/)."""
    safe = re.sub(r"[^A-Za-z0-9._=+-]", "_", str(name)).lstrip(".")
    return safe or "run"


def remove_if_empty(run_dir: str | Path) -> None:
    """Delete a run folder that holds only bookkeeping (.hydra/, train.log, .lock): a run that
    stopped on a bad input leaves no half-made run behind. Folders with anything else stay."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log", LOCK_FILE}:
        import shutil

        for handler in logging.getLogger().handlers:  # close Hydra's train.log before removing it
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir.resolve():
                handler.close()
        shutil.rmtree(run_dir, ignore_errors=True)
