"""Run folders: their layout, one writer at a time, and what a start continues from.

- The layout: ``config_file`` (``.hydra/config.yaml``; a folder that has it ``holds_run``),
  ``overrides_file``, ``checkpoint_dir``, ``last_checkpoint_file`` and ``run_of_checkpoint``;
  ``status.json`` (``write_status`` / ``read_status``); the source commit a run was trained from
  (``source_commit``); ``write_file``, the one writer that never follows a symlink out of a folder.
  Every other module asks here.

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
import math
import os
import re
import socket
import subprocess
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from vaelab.allow_list import check_file_config
from vaelab.compat import upgrade_config, upgrade_overrides
from vaelab.errors import FolderInUseError, NotAFileError, UserError, exit_with_error, first_line  # noqa: F401 - raised here
from vaelab.safe_load import load_yaml, read_file

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
STATUS_FILE = "status.json"
CONFIG_FILE = Path(".hydra") / "config.yaml"  # the config a run trains with (Hydra's place for it)
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"  # in CHECKPOINT_DIR, written at every epoch's end
DATA_SPLIT_FILE = "data_split.json"  # a folder's files per split (train, val, test)
_MISSING = object()


def config_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / CONFIG_FILE


def overrides_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / OVERRIDES_FILE


def holds_run(run_dir: str | Path) -> bool:
    """Whether a run saved its config in ``run_dir`` (it passed its checks and started)."""
    return config_file(run_dir).is_file()


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def last_checkpoint_file(run_dir: str | Path) -> Path:
    """Where the run's last checkpoint is (it may not be there yet)."""
    return checkpoint_dir(run_dir) / LAST_CHECKPOINT


def run_of_checkpoint(checkpoint: str | Path) -> Path | None:
    """The run folder of a checkpoint in its ``checkpoints/``, else None (a file copied elsewhere)."""
    checkpoint = Path(checkpoint)
    run_dir = checkpoint.parent.parent
    return run_dir if checkpoint.parent.name == CHECKPOINT_DIR and holds_run(run_dir) else None


def is_global_zero() -> bool:
    """False on the other ranks of a multi-process (DDP) run, which must not write the run's files.
    Reads the same variables, in the same order, as Lightning's ``rank_zero_only``."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if var in os.environ:
            return int(os.environ[var]) == 0
    return True


def write_status(run_dir: str | Path, status: str, metrics: dict | None = None, error: str | None = None) -> None:
    """``status.json``: ``{"status": ok | failed | stopped | pruned | cancelled | timed out,
    "metrics": {name: nats per image}, "error": one line or null}``, from rank 0 only; never
    half-written, even when killed."""
    if not is_global_zero():
        return
    content = json.dumps({"status": status, "metrics": metrics or {}, "error": error}, indent=2) + "\n"
    write_file(Path(run_dir) / STATUS_FILE, content, root=run_dir)


def read_status(run_dir: str | Path, strict: bool = False) -> dict | None:
    """A run folder's ``status.json`` (see ``write_status``), read as data from a regular file
    inside the folder. None when absent; when damaged, None, or with ``strict`` a UserError
    naming the file."""
    path = Path(run_dir) / STATUS_FILE
    if not path.exists():
        return None
    try:
        status = json.loads(read_file(path, run_dir))
    except ValueError as error:
        problem = f"{path} is not readable JSON: {first_line(error)}"
    except UserError as error:
        problem = str(error)
    else:
        if isinstance(status, dict) and isinstance(status.get("metrics", {}), dict):
            return status
        problem = f"{path} is not a vaelab status file: it holds a {type(status).__name__}"
    if strict:
        raise UserError(problem)
    return None


def read_run_config(run_dir: str | Path, key: str = "resume") -> DictConfig:
    """A run folder's ``.hydra/config.yaml`` as an unresolved config, bounded in size and
    structure. Not yet checked: ``config_from_folder`` gives it this command's paths and checks
    it whole (``check_file_config``) before anything is built from it."""
    path = config_file(run_dir)
    if not path.is_file():
        raise UserError(f"{key}={run_dir} is not a vaelab run folder: it has no {CONFIG_FILE}")
    return load_yaml(path, f"{key}={run_dir}: {path.name}", root=run_dir)


def source_commit() -> str | None:
    """The git commit of vaelab's source tree (``+dirty`` with uncommitted changes), or None when
    vaelab is not run from a git checkout of itself (an installed wheel)."""
    package = Path(__file__).resolve().parent

    def git(*args: str, cwd: Path) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        top = git("rev-parse", "--show-toplevel", cwd=package).strip()
        if not top or Path(top).resolve() / "src" / "vaelab" != package:  # another project's repository
            return None
        commit = git("rev-parse", "HEAD", cwd=Path(top)).strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", cwd=Path(top)).strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


class FolderLock:
    """``with FolderLock(folder, "run folder"):`` holds an exclusive lock on ``folder/.lock``.

    Raises FolderInUseError, naming the process that holds it, when another process has it."""

    def __init__(self, folder: str | Path, what: str):
        self.folder, self.what, self.handle = Path(folder), what, None

    def __enter__(self) -> FolderLock:
        import fcntl
        import stat

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        try:  # never through a symlink, never blocking on a FIFO
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as error:
            raise NotAFileError(f"cannot lock {path}: {error.strerror} (a symlink or not a file?)") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotAFileError(f"cannot lock {path}: it is not a regular file")
        handle = os.fdopen(fd, "r+")
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
    """Before Hydra makes a run's or a sweep's folder: one ``error:`` line and exit 1 if it cannot.
    It exits itself: Hydra turns an exception raised in a callback into a warning."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(Path(config.hydra.run.dir), "run folder")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(Path(config.hydra.sweep.dir), "sweep folder")

    @staticmethod
    def _check(folder: Path, what: str) -> None:
        try:
            check_can_create(folder, what)
            check_folder_contents(folder, what)
        except UserError as error:
            exit_with_error(error)


def _open_folder(folder: Path, root: Path | None) -> int:
    """A file descriptor of ``folder``, opened (and made) one part at a time below ``root``
    without following a symlink: a symlinked folder in a run folder cannot lead a writer out."""
    folder = Path(os.path.abspath(folder))
    root = Path(os.path.abspath(root)) if root is not None else None
    if root is None or (folder != root and root not in folder.parents):
        folder.mkdir(parents=True, exist_ok=True)  # the user's own folder (given on the command line)
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in folder.relative_to(root).parts:
            try:
                os.mkdir(part, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:
                raise NotAFileError(
                    f"cannot write in {folder}: {part} in it is not a folder (a symlink or a file)"
                ) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_file(path: str | Path, data: bytes | str | object, root: str | Path | None = None) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so
    that readers see the old or the new file and a failed write leaves no temporary file.

    ``data``: bytes, text (UTF-8), or a function that writes into an open binary file (for
    ``torch.save`` and ``savefig``). The folders from ``root`` (default: the file's folder)
    down are made and opened without following a symlink, and a symlink, folder, FIFO or
    device at ``path`` is refused with a NotAFileError naming it, never written through. Any
    OSError (disk full, no permission) is a UserError naming the file."""
    import stat

    path = Path(path)
    name, tmp = path.name, f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = _open_folder(path.parent, root if root is not None else path.parent)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        try:
            found = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            found = None
        if found is not None and not stat.S_ISREG(found.st_mode):
            what = "a symlink" if stat.S_ISLNK(found.st_mode) else "not a regular file"
            raise NotAFileError(f"refused to write {path}: it is {what}; remove it or use another folder")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as handle:
                if isinstance(data, str):
                    handle.write(data.encode("utf-8"))
                elif isinstance(data, bytes | bytearray | memoryview):
                    handle.write(data)
                else:
                    data(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=fd)
            except OSError:
                pass
            raise
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        os.close(fd)
    return path


def w_and_b_log_link(relative: Path) -> bool:
    """True for W&B's links to its service logs (``wandb/<run>/logs/debug-core.log`` points into
    W&B's cache): W&B replaces such a link and writes a new run folder, never through an old one."""
    return "wandb" in relative.parts[:-1] and relative.name.startswith("debug") and relative.suffix == ".log"


class NoFollowFileHandler(logging.FileHandler):
    """Hydra's ``train.log`` handler, opened without following a symlink and only as a regular
    file: a run folder from elsewhere cannot make the log append to a file outside it."""

    def _open(self):
        import stat

        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            descriptor = os.open(self.baseFilename, flags, 0o644)
        except OSError as error:
            raise NotAFileError(f"refused to write {self.baseFilename}: {error.strerror}") from None
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise NotAFileError(f"refused to write {self.baseFilename}: it is not a regular file")
        return os.fdopen(descriptor, "a", encoding=self.encoding, errors=self.errors)


def check_folder_contents(folder: Path, what: str) -> None:
    """Raise NotAFileError naming the first symlink that leads out of ``folder`` or FIFO, socket
    or device in it: a folder from elsewhere cannot make a writer or reader act outside it."""
    import stat

    if not folder.is_dir() or folder.is_symlink():
        return
    top = os.path.realpath(folder)
    for current, folders, files in os.walk(folder):
        for entry in [*folders, *files]:
            path = Path(current) / entry
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode) and w_and_b_log_link(path.relative_to(folder)):
                continue
            if stat.S_ISLNK(mode):
                target = os.path.realpath(path)
                if not (target == top or target.startswith(top + os.sep)):
                    raise NotAFileError(f"{what} {folder} is refused: {path} is a symlink to outside it ({target})")
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise NotAFileError(
                    f"{what} {folder} is refused: {path} is not a regular file (a FIFO, socket or device)"
                )


def saved_overrides(run_dir: Path) -> list[str] | None:
    path = overrides_file(run_dir)
    try:
        saved = [str(o) for o in load_yaml(path, str(path), list)] if path.is_file() else None
        return upgrade_overrides(saved, warn=False) if saved is not None else None
    except Exception:  # noqa: BLE001 - a damaged file is the same as none
        return None


def save_run_config(run_dir: str | Path, cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """``<run_dir>/.hydra/config.yaml`` (unresolved, as Hydra writes it), ``overrides.yaml`` and,
    under Hydra, ``hydra.yaml``."""
    from hydra.core.hydra_config import HydraConfig

    folder = config_file(run_dir).parent
    write_file(config_file(run_dir), OmegaConf.to_yaml(cfg), root=run_dir)
    if overrides is not None:
        write_file(overrides_file(run_dir), OmegaConf.to_yaml(OmegaConf.create(list(overrides))), root=run_dir)
    if HydraConfig.initialized():
        hydra_yaml = OmegaConf.to_yaml(OmegaConf.create({"hydra": HydraConfig.get()}))
        write_file(folder / "hydra.yaml", hydra_yaml, root=run_dir)


def last_checkpoint(run_dir: Path, setting: str) -> Path:
    """``<run_dir>/checkpoints/last.ckpt``; a UserError naming ``setting`` when there is none."""
    last = last_checkpoint_file(run_dir)
    if not last.is_file():
        raise UserError(f"{setting}={run_dir}: there is no {CHECKPOINT_DIR}/{LAST_CHECKPOINT} in that run folder")
    return last


def config_from_folder(
    cfg: DictConfig, run_dir: Path, overrides: list[str], key: str = "resume"
) -> tuple[DictConfig, list[str]]:
    """``run_dir``'s saved config, read as data: this command's ``paths`` (``output_dir`` the
    run folder) replace the file's, the values of ``overrides`` (the command line's, as composed
    into ``cfg``) are set again (returned: the ones that applied), then the whole is checked
    (``check_file_config``: interpolations, ``_target_`` allow-list, paths inside the run folder)
    before anything is built from it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config = read_run_config(run_dir, key)
    upgrade_config(config)  # an older release's key names, read as today's
    source = f"{key}={run_dir}: config.yaml"
    paths = OmegaConf.to_container(cfg.paths, resolve=False) if "paths" in cfg else {}
    paths["output_dir"] = str(run_dir)
    paths = OmegaConf.to_container(OmegaConf.create({"paths": paths}), resolve=True)["paths"]
    for name in ("hydra", "paths"):  # the file's own name the folders of the machine that wrote it
        config.pop(name, None)
    config.paths = paths
    given, trusted = [], []
    for override in OverridesParser.create().parse_overrides(overrides):
        name = override.key_or_group.replace("/", ".")
        if name in ("resume", "ckpt_path") or name.startswith(("hydra.", "paths.")) or override.package == "hydra":
            continue
        if override.is_delete():
            OmegaConf.update(config, name, None, force_add=True)
        else:
            value = OmegaConf.select(cfg, name, default=_MISSING, throw_on_resolution_failure=False)
            if value is _MISSING:
                raise UserError(
                    f"{key}={run_dir}: the override {override.input_line!r} sets a group of keys, which "
                    "a resumed run cannot take; give each key to change (e.g. trainer.max_epochs=20)"
                )
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
            OmegaConf.update(config, name, value, merge=False, force_add=True)
        given.append(override.input_line)
        trusted.append(name)
    check_file_config(config, source, run_dir, data_dir=paths.get("data_dir"), trusted=trusted)
    return config, given


def config_to_resume(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> DictConfig:
    """``run_dir``'s saved config (``config_from_folder``) with ``resume`` pointing at it."""
    if run_dir.is_file():
        raise UserError(f"resume={run_dir} is a file: give the run folder that holds checkpoints/last.ckpt")
    last_checkpoint(run_dir, "resume")
    resumed, given = config_from_folder(cfg, run_dir, overrides)
    resumed.resume, resumed.ckpt_path = str(run_dir), None
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
        if multirun:  # the job's overrides are the saved ones, already in its saved config (group choices too)
            return config_to_resume(cfg, run_dir, [])
        resume = str(run_dir)
    elif not resume and has_run:
        raise UserError(
            f"run folder {run_dir} holds a run already: continue it with resume={run_dir}, "
            "or choose another hydra.run.dir"
        )
    return config_to_resume(cfg, Path(resume), overrides) if resume else cfg


MAX_NAME = 100  # with the time stamp, well under the 255 bytes a file name may have


def file_name(name: str) -> str:
    """``name`` as one safe file-name part: only letters, digits and ``._=+-``, no leading dot
    (``run_name='../../x'`` cannot lead out of logs/), at most MAX_NAME characters (a longer one
    keeps its start and a hash of the whole)."""
    import hashlib

    safe = re.sub(r"[^A-Za-z0-9._=+-]", "_", str(name)).lstrip(".") or "run"
    if len(safe) > MAX_NAME:
        safe = f"{safe[: MAX_NAME - 9]}-{hashlib.sha1(str(name).encode()).hexdigest()[:8]}"
    return safe


def short_number(value) -> str:
    """A value for a run name: floats to 3 significant digits (``1.6748913598497648`` -> ``1.67``,
    ``4.0`` stays ``4.0``), anything else as it is. The config keeps the exact value."""
    if isinstance(value, float) and math.isfinite(value):
        return repr(float(f"{value:.3g}"))
    return str(value)


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
