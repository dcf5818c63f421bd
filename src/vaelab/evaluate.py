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
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from vaelab.config import DATA_NAMES, require
from vaelab.data import load_split, to_float_images
from vaelab.diagnostics import summarize
from vaelab.errors import UserError, one_line_errors
from vaelab.objectives import (
    importance_samples,
    iwae_bound,
    kl_standard_normal,
    log_importance_weights,
)
from vaelab.train import CONFIG_DIR

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


def datamodule_like(datamodule, name: str):
    """Another data set prepared exactly as the checkpoint's (root, split, binarization, seeds)."""
    from vaelab.data import VAEDataModule

    other = VAEDataModule(name=name, root=datamodule.root, val_size=datamodule.val_size, binarize=datamodule.binarize,
                          split_seed=datamodule.split_seed, binarize_seed=datamodule.binarize_seed,
                          download=datamodule.download)
    other.setup("test")
    return other


def images_per_forward(k: int, budget: int = 20_000) -> int:
    """How many images to score at once so that about `budget` decoded samples fit in one pass."""
    return max(1, budget // k)


def report_progress(done: int, total: int, k: int, seconds: float, nll_so_far: float) -> None:
    """One log line on a long NLL pass: images done, images/s, minutes left, running NLL."""
    rate = done / seconds
    log.info("NLL at k=%d: %d of %d images, %.1f images/s, about %.1f min left, NLL so far %.2f nats",
             k, done, total, rate, (total - done) / rate / 60, nll_so_far)


@torch.no_grad()
def evaluate_split(module, images, labels, k: int = 5000, batch_images: int | None = None, mi_images: int = 1000,
                   progress_seconds: float = 60.0) -> dict:
    """Score images (N, C, H, W) with labels (N,): nats per image, averaged over the N images.

    One encoder and one decoder pass per batch: nll from the k importance weights, recon as the
    k-sample mean of -log p(x | z), kl in closed form, elbo = -(recon + kl). Every
    `progress_seconds` a log line tells the images done, the rate and the time left."""
    vae, objective = module.vae, module.objective
    device = module.device
    batch_images = batch_images or images_per_forward(k)
    sums = {"recon": 0.0, "kl": 0.0, "elbo": 0.0, "nll": 0.0}
    means, logvars = [], []
    started = last_report = time.perf_counter()
    done = 0
    for x, y in zip(images.split(batch_images), labels.split(batch_images), strict=True):
        x, y = x.to(device), y.to(device)
        y = y if vae.conditional else None
        log_w, log_px_z, mean, logvar = importance_samples(vae, objective.likelihood, x, y, k)
        recon = -log_px_z.double().mean(1).sum()  # a k-sample estimate of E_q[-log p(x|z)]
        kl = kl_standard_normal(mean, logvar).double().sum()  # closed form
        sums["recon"] += float(recon)
        sums["kl"] += float(kl)
        sums["elbo"] -= float(recon + kl)
        sums["nll"] -= float(iwae_bound(log_w).sum())
        means.append(mean.cpu())
        logvars.append(logvar.cpu())
        done += len(x)
        if time.perf_counter() - last_report >= progress_seconds and done < len(images):
            last_report = time.perf_counter()
            report_progress(done, len(images), k, last_report - started, sums["nll"] / done)
    n = len(images)
    results = {name: value / n for name, value in sums.items()}
    results["bits_per_dim"] = results["nll"] / (math.prod(images.shape[1:]) * math.log(2))
    results.update(summarize(torch.cat(means), torch.cat(logvars), mi_images))
    results.update(k=k, n_images=n, seconds=round(time.perf_counter() - started, 2))
    return results


@torch.no_grad()
def per_image_negative_elbo(module, images, labels, samples: int = 1, batch_images: int = 1000) -> torch.Tensor:
    """Anomaly scores: -ELBO of each image (N,) in nats, averaged over `samples` draws of z."""
    vae, likelihood = module.vae, module.objective.likelihood
    scores = []
    for x, y in zip(images.split(batch_images), labels.split(batch_images), strict=True):
        x, y = x.to(module.device), (y.to(module.device) if vae.conditional else None)
        log_w = log_importance_weights(vae, likelihood, x, y, samples)  # (B, S): each a one-sample ELBO
        scores.append(-log_w.double().mean(1).cpu())
    return torch.cat(scores)


def ood_auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """AUROC of telling out-of-distribution images (positives) by a higher score."""
    from torchmetrics.functional.classification import binary_auroc

    scores = torch.cat([scores_in, scores_out]).double()
    # min-max to [0, 1]: torchmetrics would squash scores outside [0, 1] with a sigmoid (saturating at ~100 nats)
    scores = ((scores - scores.min()) / (scores.max() - scores.min()).clamp(min=1e-12)).float()
    targets = torch.cat([torch.zeros(len(scores_in)), torch.ones(len(scores_out))]).long()
    return float(binary_auroc(scores, targets))


@torch.no_grad()
def generate_per_class(module, samples_per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel means of samples_per_class prior samples for every class: (K * n, C, H, W), labels (K * n,)."""
    vae = module.vae
    labels = torch.arange(vae.num_classes, device=module.device).repeat_interleave(samples_per_class)
    z = vae.prior(len(labels), device=module.device).sample()
    return module.generate(z, labels).cpu(), labels.cpu()


def generation_quality(module, classifier_path: Path, real_images: torch.Tensor, samples_per_class: int) -> dict:
    """CVAE class accuracy (per class and overall) and the classifier-feature Fréchet distance to real images."""
    from vaelab.classifier import accuracy, classifier_fid, load_classifier

    classifier, classifier_accuracy = load_classifier(classifier_path)
    results = {"classifier_test_accuracy": classifier_accuracy}
    if module.vae.conditional:
        images, labels = generate_per_class(module, samples_per_class)
        predicted = torch.cat([classifier(x).argmax(1) for x in images.split(1000)])
        per_class = [(predicted[labels == c] == c).float().mean().item() for c in range(module.vae.num_classes)]
        results.update(cvae_class_accuracy=accuracy(classifier, images, labels), cvae_class_accuracy_per_class=per_class)
    else:
        images = module.generate(module.vae.prior(len(real_images), device=module.device).sample()).cpu()
    results["classifier_fid"] = classifier_fid(classifier, real_images, images)
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


def is_count(value, allow_null: bool = False) -> bool:
    """An integer >= 1 (not a bool), or None when allowed."""
    return (value is None and allow_null) or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def validate_eval_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line naming the key) for a bad vaelab-eval value, before anything loads."""
    require(is_count(cfg.k), "k", cfg.k, "an integer >= 1")
    require(cfg.split in ("test", "val"), "split", cfg.split, "test or val")
    for key in ("batch_images", "limit_images"):
        require(is_count(cfg.get(key), allow_null=True), key, cfg.get(key), "null or an integer >= 1")
    progress = cfg.get("progress_seconds", 60)
    require(isinstance(progress, int | float) and not isinstance(progress, bool) and progress >= 0,
            "progress_seconds", progress, "a number >= 0")
    require(cfg.device in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:"), "device", cfg.device,
            "auto, cpu, cuda or cuda:N")
    require(cfg.get("ood") in (None, *DATA_NAMES), "ood", cfg.get("ood"), f"null or one of {', '.join(DATA_NAMES)}")
    require(is_count(cfg.samples_per_class), "samples_per_class", cfg.samples_per_class, "an integer >= 1")


def run(cfg: DictConfig) -> dict:
    validate_eval_config(cfg)
    torch.manual_seed(cfg.seed)
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device)
    module = load_module(cfg.ckpt, device)
    datamodule = datamodule_for(module, cfg.get("data_root"))
    dataset = {"val": datamodule.val_set, "test": datamodule.test_set}[cfg.split]
    images, labels = dataset.images, dataset.labels
    if cfg.get("limit_images"):
        images, labels = images[: cfg.limit_images], labels[: cfg.limit_images]
    results = evaluate_split(module, images, labels, k=cfg.k, batch_images=cfg.get("batch_images"),
                             progress_seconds=cfg.get("progress_seconds", 60))
    classifier_path = Path(cfg.classifier_dir) / f"{datamodule.name}.pt"
    if cfg.get("generation") and classifier_path.is_file():
        real = to_float_images(load_split(datamodule.name, datamodule.root, train=False)[0])
        results.update(generation_quality(module, classifier_path, real, cfg.samples_per_class))
    elif cfg.get("generation"):
        log.info("no classifier at %s: skipping class accuracy and FID (run vaelab-classifier data=%s)",
                 classifier_path, datamodule.name)
    if cfg.get("ood"):
        other = datamodule_like(datamodule, cfg.ood)
        other_set = {"val": other.val_set, "test": other.test_set}[cfg.split]
        count = len(images)
        scores_in = per_image_negative_elbo(module, images, labels)
        scores_out = per_image_negative_elbo(module, other_set.images[:count], other_set.labels[:count])
        results[f"ood_auroc_vs_{cfg.ood}"] = ood_auroc(scores_in, scores_out)
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
    with one_line_errors():
        run(cfg)


if __name__ == "__main__":
    main()
