"""Scoring a trained model: ELBO, importance-sampled NLL, bits/dim and collapse diagnostics over a
split, anomaly scores and OOD AUROC, CVAE class accuracy and classifier FID.

All numbers are in nats per image except ``bits_per_dim`` (NLL / (pixels * ln 2)). The NLL is
minus the importance-weighted bound of Burda et al. (2015) with k samples from q(z | x),
combined with logsumexp in float64; it tightens towards -log p(x) as k grows.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from vaelab.config import DATA_NAMES, pick_device
from vaelab.datasets import load_split, to_float_images
from vaelab.diagnostics import summarize
from vaelab.errors import ConfigError
from vaelab.module import VAELitModule
from vaelab.objectives import importance_weighted_terms, iwae_bound, kl_standard_normal
from vaelab.safe_load import read_vaelab_checkpoint

log = logging.getLogger(__name__)


def images_per_forward(k: int, budget: int = 20_000) -> int:
    """How many images to score at once so that about `budget` decoded samples fit in one pass."""
    return max(1, budget // k)


def report_progress(done: int, total: int, k: int, seconds: float, nll_so_far: float) -> None:
    """One log line on a long NLL pass: images done, images/s, minutes left, running NLL."""
    rate = done / seconds
    log.info(
        "NLL at k=%d: %d of %d images, %.1f images/s, about %.1f min left, NLL so far %.2f nats",
        k,
        done,
        total,
        rate,
        (total - done) / rate / 60,
        nll_so_far,
    )


@torch.no_grad()
def evaluate_split(
    module,
    images,
    labels,
    k: int = 5000,
    batch_images: int | None = None,
    mi_images: int = 1000,
    progress_seconds: float = 60.0,
) -> dict:
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
        log_w, log_px_z, mean, logvar = importance_weighted_terms(vae, objective.likelihood, x, y, k)
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
        log_w = importance_weighted_terms(vae, likelihood, x, y, samples)[0]  # (B, S): each a one-sample ELBO
        scores.append(-log_w.double().mean(1).cpu())
    return torch.cat(scores)


def ood_name(ood: str) -> str:
    """The name of the out-of-distribution data in result keys: a data set's name, or a folder's
    last part with anything but letters, digits, ``-`` and ``_`` made ``_``."""
    return ood if ood in DATA_NAMES else re.sub(r"[^A-Za-z0-9_-]", "_", Path(ood).expanduser().resolve().name)


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
    from vaelab.results.image_classifier import accuracy, classifier_fid, load_classifier

    classifier, classifier_accuracy = load_classifier(classifier_path)
    results = {"classifier_test_accuracy": classifier_accuracy}
    if module.vae.conditional:
        images, labels = generate_per_class(module, samples_per_class)
        predicted = torch.cat([classifier(x).argmax(1) for x in images.split(1000)])
        per_class = [(predicted[labels == c] == c).float().mean().item() for c in range(module.vae.num_classes)]
        results.update(
            cvae_class_accuracy=accuracy(classifier, images, labels), cvae_class_accuracy_per_class=per_class
        )
    else:
        images = module.generate(module.vae.prior(len(real_images), device=module.device).sample()).cpu()
    results["classifier_fid"] = classifier_fid(classifier, real_images, images)
    return results


def evaluate_checkpoint(cfg: DictConfig, checkpoint: dict | None = None) -> dict:
    """The vaelab-eval results of ``cfg.ckpt`` (``<split>/<name>`` keys, nats per image), computed
    without writing anything. ``cfg`` has passed ``validate_eval_config`` (the caller's first step);
    ``checkpoint``: the file as ``read_vaelab_checkpoint`` returned it."""
    torch.manual_seed(cfg.seed)
    device = pick_device(str(cfg.device))
    checkpoint = checkpoint or read_vaelab_checkpoint(cfg.ckpt)
    module = VAELitModule.from_checkpoint(checkpoint, device, source=f"ckpt={cfg.ckpt}")
    datamodule = module.data_module(cfg.get("data_root"))
    dataset = {"val": datamodule.val_set, "test": datamodule.test_set}[cfg.split]
    if len(dataset) == 0:
        raise ConfigError(
            f"split={cfg.split}: the checkpoint's data has no {cfg.split} images "
            f"(data.val_size={datamodule.val_size}); use split=test"
        )
    images, labels = dataset.images, dataset.labels
    if cfg.get("limit_images"):
        images, labels = images[: cfg.limit_images], labels[: cfg.limit_images]
    results = evaluate_split(
        module,
        images,
        labels,
        k=cfg.k,
        batch_images=cfg.get("batch_images"),
        progress_seconds=cfg.get("progress_seconds", 60),
    )
    classifier_path = Path(cfg.classifier_dir) / f"{datamodule.name}.pt"
    if cfg.get("generation") and classifier_path.is_file():
        real = to_float_images(load_split(datamodule.name, datamodule.root, train=False)[0])
        results.update(generation_quality(module, classifier_path, real, cfg.samples_per_class))
    elif cfg.get("generation"):
        log.info(
            "no classifier at %s: skipping class accuracy and FID (run vaelab-classifier data=%s)",
            classifier_path,
            datamodule.name,
        )
    if cfg.get("ood"):
        other = datamodule.ood_images(cfg.ood, cfg.split)
        count = min(len(images), len(other))
        # a seeded draw of as many images as are scored here: a folder's files come sorted by class
        chosen = torch.randperm(len(other), generator=torch.Generator().manual_seed(cfg.seed))[:count].sort().values
        scores_in = per_image_negative_elbo(module, images[:count], labels[:count])
        scores_out = per_image_negative_elbo(module, other.images[chosen], other.labels[chosen])
        results[f"ood_auroc_vs_{ood_name(cfg.ood)}"] = ood_auroc(scores_in, scores_out)
        results["ood_images"] = count
    prefixed = {f"{cfg.split}/{name}": value for name, value in results.items()}
    prefixed.update(ckpt=str(Path(cfg.ckpt).resolve()), data=datamodule.name, binarize=datamodule.binarize)
    if cfg.get("ood") and cfg.ood not in DATA_NAMES:
        prefixed["ood"] = str(Path(cfg.ood).expanduser().resolve())
    return prefixed
