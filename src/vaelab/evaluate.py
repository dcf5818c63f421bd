"""Evaluate a checkpoint: ELBO, importance-sampled NLL, bits/dim and collapse diagnostics.

    vaelab-eval ckpt=logs/runs/<run>/checkpoints/last.ckpt k=5000
    python -m vaelab.evaluate ckpt=... split=test k=5000

All numbers are in nats per image except ``bits_per_dim`` (NLL / (pixels * ln 2)). The NLL is
minus the importance-weighted bound of Burda et al. (2015) with k samples from q(z | x),
combined with logsumexp in float64; it tightens towards -log p(x) as k grows. The data split
is the checkpoint's own data config (for dynamic binarization the split is binarized once
with a fixed seed, so numbers repeat). Results go to stdout, to ``<ckpt>.eval.json`` (or
``out=...``), and to the run's W&B summary when the run folder has a W&B run.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from vaelab.diagnostics import summarize
from vaelab.errors import UserError
from vaelab.objectives import iwae_bound, log_importance_weights
from vaelab.train import CONFIG_DIR, find_user_error

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A missing, unreadable or foreign checkpoint."""


def load_module(path: str | Path, device: str = "cpu"):
    """A VAELitModule from a vaelab checkpoint, loaded with weights_only=True."""
    from vaelab.module import VAELitModule

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt={path}: no such file")
    try:
        return VAELitModule.load_from_checkpoint(path, map_location=device, weights_only=True).eval()
    except Exception as error:  # noqa: BLE001 - any failure to read means the same to the user
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"ckpt={path} is not a readable vaelab checkpoint: {reason}") from error


def datamodule_for(module, data_root: str | None):
    """The checkpoint's data module (same split, binarization and seeds), reading from data_root."""
    from hydra.utils import instantiate

    data = dict(module.hparams.get("data") or {})
    if not data:
        raise CheckpointError("the checkpoint holds no data config (written by an older vaelab)")
    if data_root:
        data["root"] = data_root
    datamodule = instantiate(data)
    datamodule.setup("test")
    return datamodule


def images_per_forward(k: int, budget: int = 20_000) -> int:
    """How many images to score at once so that about `budget` decoded samples fit in one pass."""
    return max(1, budget // k)


@torch.no_grad()
def evaluate_split(module, images, labels, k: int = 5000, batch_images: int | None = None, mi_images: int = 1000) -> dict:
    """Score images (N, C, H, W) with labels (N,): nats per image, averaged over the N images."""
    vae, objective = module.vae, module.objective
    device = module.device
    batch_images = batch_images or images_per_forward(k)
    sums = {"recon": 0.0, "kl": 0.0, "elbo": 0.0, "nll": 0.0}
    means, logvars = [], []
    started = time.perf_counter()
    for x, y in zip(images.split(batch_images), labels.split(batch_images), strict=True):
        x, y = x.to(device), y.to(device)
        y = y if vae.conditional else None
        out = vae(x, y)
        terms = objective(x, out.params, out.mean, out.logvar, step=0)
        for name in ("recon", "kl", "elbo"):
            sums[name] += float(terms[name]) * len(x)
        log_w = log_importance_weights(vae, objective.likelihood, x, y, k)
        sums["nll"] -= float(iwae_bound(log_w).sum())
        means.append(out.mean.cpu())
        logvars.append(out.logvar.cpu())
    n = len(images)
    results = {name: value / n for name, value in sums.items()}
    results["bits_per_dim"] = results["nll"] / (math.prod(images.shape[1:]) * math.log(2))
    results.update(summarize(torch.cat(means), torch.cat(logvars), mi_images))
    results.update(k=k, n_images=n, seconds=round(time.perf_counter() - started, 2))
    return results


def update_wandb_summary(run_dir: Path, results: dict) -> str | None:
    """Write results into the summary of the W&B run logged in run_dir (resumed by id). Returns its id."""
    config_file = run_dir / ".hydra" / "config.yaml"
    runs = sorted((run_dir / "wandb").glob("*run-*/run-*.wandb"))
    if not (config_file.is_file() and runs):
        return None
    wandb_cfg = (OmegaConf.load(config_file).get("logger") or {}).get("wandb")
    if wandb_cfg is None:
        return None
    import wandb

    from vaelab.loggers import choose_wandb_mode

    choose_wandb_mode()
    run_id = runs[-1].stem.removeprefix("run-")
    run = wandb.init(id=run_id, resume="allow", project=wandb_cfg.get("project"), dir=str(run_dir), job_type="eval")
    run.summary.update(results)
    wandb.finish()
    return run_id


def run(cfg: DictConfig) -> dict:
    torch.manual_seed(cfg.seed)
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device)
    module = load_module(cfg.ckpt, device)
    datamodule = datamodule_for(module, cfg.get("data_root"))
    dataset = {"val": datamodule.val_set, "test": datamodule.test_set}[cfg.split]
    images, labels = dataset.images, dataset.labels
    if cfg.get("limit_images"):
        images, labels = images[: cfg.limit_images], labels[: cfg.limit_images]
    results = evaluate_split(module, images, labels, k=cfg.k, batch_images=cfg.get("batch_images"))
    prefixed = {f"{cfg.split}/{name}": value for name, value in results.items()}
    prefixed.update(ckpt=str(Path(cfg.ckpt).resolve()), data=datamodule.name, binarize=datamodule.binarize)
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.ckpt).with_suffix(".eval.json")
    out.write_text(json.dumps(prefixed, indent=2) + "\n")
    if cfg.get("wandb", True):
        run_id = update_wandb_summary(Path(cfg.ckpt).resolve().parent.parent, prefixed)
        prefixed["wandb_run_id"] = run_id
    print(json.dumps({k: v for k, v in prefixed.items() if not isinstance(v, list)}, indent=2))
    log.info("wrote %s", out)
    return prefixed


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
