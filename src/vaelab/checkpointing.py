"""Crash-safe checkpoints and exact resumption.

- ``AtomicCheckpointIO`` writes each checkpoint to a temporary file and renames it over
  ``<path>``: a run killed during a save never leaves a half-written ``last.ckpt``; it keeps
  the files a checkpoint names for deleting or testing inside the run's ``checkpoints/``.
- ``check_fits`` refuses, in one line, a checkpoint whose parameters have other shapes than
  the model a run builds, naming the config keys that differ.
- ``RemoveStaleCheckpoints`` deletes best-checkpoint files that a run killed during a save
  left beside the one its ModelCheckpoint keeps.
- ``describe`` says what a checkpoint holds, in a few lines, without building anything from it.
- ``CheckpointArtifacts``: at the end of fit, the best and the last checkpoint as versions of the
  run's W&B model artifact.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vaelab.errors import CheckpointError
from vaelab.runs import checkpoint_dir
from vaelab.wandb_run import log_checkpoints, wandb_loggers


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that keeps a run's checkpoints in its folder ``root`` (``paths.output_dir``).

    - save: ``runs.write_file``, a temporary file renamed into place (atomic on POSIX), no symlink
      followed below ``root``; a failed save (disk full) leaves the previous file and no temporary one.
    - load: ``read_checkpoint`` (weights_only, bounded), and ModelCheckpoint states whose file
      paths lie outside ``<root>/checkpoints/`` dropped with a warning naming them.
    - remove: only files in ``<root>/checkpoints/``."""

    def __init__(self, root: str | Path | None = None) -> None:
        super().__init__()
        self.root = Path(root) if root else None

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        import io

        from vaelab.runs import write_file

        buffer = io.BytesIO()  # as Lightning's own save: torch.save turns a failed file write into a RuntimeError
        torch.save(checkpoint, buffer)
        write_file(path, buffer.getbuffer(), root=self.root or Path(path).parent)

    def load_checkpoint(self, path, map_location=None, weights_only=True) -> dict:
        from vaelab.safe_load import read_checkpoint

        checkpoint = read_checkpoint(path, "checkpoint")
        if self.root is not None and isinstance(checkpoint.get("callbacks"), dict):
            checkpoint["callbacks"] = {
                key: state
                for key, state in checkpoint["callbacks"].items()
                if usable_callback_state(key, state, checkpoint_dir(self.root), path)
            }
        return checkpoint

    def remove_checkpoint(self, path) -> None:
        if self.root is not None and not in_folder(path, checkpoint_dir(self.root)):
            warnings.warn(f"not removing {path}: it is outside {self.root / 'checkpoints'}", stacklevel=2)
            return
        super().remove_checkpoint(path)


def in_folder(path, folder: Path) -> bool:
    """True when ``path`` lies below ``folder`` (symlinks followed), ``folder`` itself excluded."""
    if not isinstance(path, str | Path) or str(path) in ("", "."):
        return False
    return os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep)


CHECKPOINT_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


def usable_callback_state(key: str, state, folder: Path, source) -> bool:
    """False (with a warning naming the checkpoint) for a ModelCheckpoint state that names a
    file outside ``folder`` or is malformed: Lightning would delete that file, or test on it."""
    if not isinstance(state, dict) or "best_model_path" not in state:
        return True  # not a ModelCheckpoint's
    paths = [state.get(name) for name in CHECKPOINT_PATH_KEYS]
    best_k = state.get("best_k_models", {})
    ok = isinstance(best_k, dict) and all(isinstance(p, str) for p in [*best_k, *(p for p in paths if p is not None)])
    ok = ok and all(in_folder(p, folder) for p in [*best_k, *(p for p in paths if p)])
    if not ok:
        warnings.warn(
            f"checkpoint {source}: its {str(key)[:60]} state names files outside {folder} or is malformed; "
            "it is left out (that callback starts afresh)",
            stacklevel=2,
        )
    return ok


SHAPE_KEYS = ("model.latent_dim", "model.conditional", "model.net", "likelihood", "data.name")


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """{"a.b.c": value} for every leaf of a nested dict."""
    flat = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, path) if isinstance(value, dict) else {path: value})
    return flat


def check_fits(module, checkpoint: dict, source: str) -> None:
    """Raise CheckpointError unless the checkpoint's parameters have the names and shapes of ``module``'s.

    The message names the first parameter that differs and the shape-giving config keys
    (latent size, conditioning, networks, likelihood, data set) whose values differ."""

    here = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    saved = {name: tuple(t.shape) for name, t in checkpoint["state_dict"].items() if isinstance(t, torch.Tensor)}
    if here == saved:
        return
    name = next(n for n in [*here, *saved] if here.get(n) != saved.get(n))
    ours = flatten({k: dict(v) if isinstance(v, dict) else v for k, v in module.hparams.items()})
    theirs = flatten(checkpoint.get("hyper_parameters") or {})
    keys = [k for k in set(ours) | set(theirs) if k.startswith(SHAPE_KEYS) and ours.get(k) != theirs.get(k)]
    keys.sort(key=lambda k: (not k.endswith("_target_"), k))  # a different network class says the most
    differ = "; ".join(f"{k} is {ours.get(k)!r} here, {theirs.get(k)!r} in the checkpoint" for k in keys[:3])
    raise CheckpointError(
        f"{source} does not fit this model: {differ or 'the networks differ'} (parameter {name}: "
        f"{here.get(name)} here, {saved.get(name)} in the checkpoint)"
    )


def describe(checkpoint: dict) -> list[str]:
    """What a vaelab checkpoint (as ``read_vaelab_checkpoint`` returns it) holds, one fact per line."""
    from vaelab.allow_list import find_targets

    hparams = checkpoint["hyper_parameters"]
    model, data = hparams["model"], hparams.get("data") or {}
    net = model.get("net") or {}
    tensors = [t for t in checkpoint["state_dict"].values() if isinstance(t, torch.Tensor)]
    meta = checkpoint.get("vaelab") or {}
    commit = meta.get("commit") or "not recorded"
    lines = [
        f"vaelab {meta.get('version', 'version not recorded')} (commit {commit}), "
        f"Lightning {checkpoint.get('pytorch-lightning_version', '?')}",
        f"seed {meta.get('seed', 'not recorded')}, W&B run id {meta.get('wandb_run_id') or 'none'}",
        f"epoch {checkpoint.get('epoch', '?')}, global step {checkpoint.get('global_step', '?')}",
        f"model {model.get('name', '?')}: latent_dim={model.get('latent_dim')}, beta={model.get('beta')}, "
        f"conditional={model.get('conditional', False)}, importance_samples={model.get('importance_samples', 1)}",
        f"encoder {(net.get('encoder') or {}).get('_target_')}, decoder {(net.get('decoder') or {}).get('_target_')}, "
        f"likelihood {hparams['likelihood'].get('_target_')}, annealing {hparams['annealing'].get('_target_')}",
        f"data {data.get('name', '?')}: binarize={data.get('binarize')}, val_size={data.get('val_size')}",
        f"{sum(t.numel() for t in tensors):,} parameters in {len(tensors)} tensors",
        f"{len(find_targets(hparams))} _target_ entries, all on the allow-list",
    ]
    return lines


class RemoveStaleCheckpoints(Callback):
    """At the end of training, on global rank 0 (where the top-k state lives, also under
    ddp_spawn): delete files named like a top-k ModelCheckpoint's that it does not keep. A kill
    between saving a new best checkpoint and deleting the old one leaves both."""

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint) or callback.monitor is None or not callback.best_k_models:
                continue
            prefix = (callback.filename or "").split("{")[0]
            if not prefix or not callback.dirpath or not Path(callback.dirpath).is_dir():
                continue
            if not in_folder(Path(callback.dirpath) / "x", checkpoint_dir(trainer.default_root_dir)):
                continue  # only in this run's own checkpoints/
            kept = {Path(p).resolve() for p in [*callback.best_k_models, callback.best_model_path] if p}
            for path in Path(callback.dirpath).glob(f"{prefix}*.ckpt"):
                if path.resolve() not in kept:
                    path.unlink(missing_ok=True)


def last_checkpoint_written(trainer: L.Trainer) -> Path | None:
    """The newest checkpoint written: last.ckpt (callbacks.last_checkpoint) or Lightning's save_last."""
    paths = [
        Path(path)
        for cb in trainer.checkpoint_callbacks
        for path in (cb.last_model_path, cb.best_model_path)
        if path and Path(path).stem == "last"
    ]
    return paths[0] if paths else None


class CheckpointArtifacts(L.Callback):
    """At the end of fit, the best checkpoint (on ``val/elbo``) and the last one as two versions of
    the W&B artifact ``model-<run id>``, aliased ``best`` and ``last`` (W&B makes the last one
    ``latest``); online they are uploaded, offline staged for ``wandb sync``. Nothing without a W&B
    logger. Lightning's own ``log_model`` is not used: it aliases the newest file of every
    ModelCheckpoint ``best``, and vaelab has two (the best one and ``last.ckpt``)."""

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero or not wandb_loggers(trainer.loggers) or trainer.checkpoint_callback is None:
            return
        best_callback = trainer.checkpoint_callback  # the first ModelCheckpoint: the one on val/elbo
        at = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        checkpoints = []  # W&B gives the version logged last the alias "latest" too
        if best_callback.best_model_path and Path(best_callback.best_model_path).is_file():
            best = Path(best_callback.best_model_path)
            score = best_callback.best_model_score
            scored = {"monitor": best_callback.monitor, "score": float(score)} if score is not None else {}
            checkpoints.append((best, ["best"], {**at, **scored, "file": best.name}))
        last = last_checkpoint_written(trainer)
        if last is not None and last.is_file():
            checkpoints.append((last, ["last"], {**at, "file": last.name}))
        log_checkpoints(trainer.loggers, checkpoints)
