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
import os
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from vaelab.api import CallableEvaluateModule
from vaelab.checkpointing import describe
from vaelab.cli import CONFIG_DIR, run_hydra_app
from vaelab.config import DATA_NAMES, is_count, require
from vaelab.data import load_split, to_float_images
from vaelab.diagnostics import summarize
from vaelab.errors import ConfigError, first_line, one_line_errors
from vaelab.objectives import (
    importance_samples,
    iwae_bound,
    kl_standard_normal,
    log_importance_weights,
)
from vaelab.safe_load import CheckpointError, read_vaelab_checkpoint

log = logging.getLogger(__name__)


def load_module(path: str | Path, device: str = "cpu", key: str = "ckpt"):
    """A VAELitModule in eval mode from a vaelab checkpoint.

    The file is read as data (``read_vaelab_checkpoint``: weights_only, bounded, every
    ``_target_`` in its hyperparameters on the allow-list) before anything is built from it."""
    return module_from_checkpoint(read_vaelab_checkpoint(path, key), f"{key}={path}", device)


def module_from_checkpoint(checkpoint: dict, source: str, device: str = "cpu"):
    """A VAELitModule in eval mode from a checkpoint that ``read_vaelab_checkpoint`` returned."""
    from vaelab import __version__
    from vaelab.module import VAELitModule

    try:
        module = VAELitModule(**checkpoint["hyper_parameters"])
        module.load_state_dict(checkpoint["state_dict"])
    except Exception as error:  # noqa: BLE001 - any failure to rebuild means the same to the user
        written_by = (checkpoint.get("vaelab") or {}).get("version")
        other = "" if written_by == __version__ else (
            f" (written by vaelab {written_by or 'of unrecorded version'}, this is vaelab {__version__})")
        raise CheckpointError(f"{source} is not a usable vaelab checkpoint{other}: {first_line(error)}") from None
    return module.to(device).eval()


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


def results_path(cfg: DictConfig) -> Path:
    """Where the JSON results go, checked to be writable before anything is evaluated."""
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.ckpt).with_suffix(".eval.json")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"out={out}: the folder {folder} does not exist")
    if out.is_dir() or not os.access(out if out.exists() else folder, os.W_OK):
        raise ConfigError(f"out={out}: cannot write there (set out= to a writable file path)")
    return out


def pick_device(setting: str) -> str:
    """cpu or cuda[:N] for device=auto|cpu|cuda[:N]; a GPU asked for where there is none is a ConfigError."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={setting}: no CUDA GPU is available to torch here; use device=cpu or device=auto")
    return setting


def evaluate(cfg: DictConfig, checkpoint: dict | None = None) -> dict:
    """The vaelab-eval results of ``cfg.ckpt`` (``<split>/<name>`` keys, nats per image), computed
    without writing anything. ``checkpoint``: the file as ``read_vaelab_checkpoint`` returned it."""
    validate_eval_config(cfg)
    torch.manual_seed(cfg.seed)
    device = pick_device(str(cfg.device))
    checkpoint = checkpoint or read_vaelab_checkpoint(cfg.ckpt)
    module = module_from_checkpoint(checkpoint, f"ckpt={cfg.ckpt}", device)
    datamodule = datamodule_for(module, cfg.get("data_root"))
    dataset = {"val": datamodule.val_set, "test": datamodule.test_set}[cfg.split]
    if len(dataset) == 0:
        raise ConfigError(f"split={cfg.split}: the checkpoint's data has no {cfg.split} images "
                          f"(data.val_size={datamodule.val_size}); use split=test")
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
    return prefixed


def run(cfg: DictConfig) -> dict:
    """``vaelab-eval``: describe the checkpoint, evaluate it, print the results, then write them
    to the JSON file and the run's W&B summary."""
    validate_eval_config(cfg)
    out = results_path(cfg)
    pick_device(str(cfg.device))  # a GPU asked for where there is none fails before the file is read
    checkpoint = read_vaelab_checkpoint(cfg.ckpt)
    if cfg.get("scan"):
        print("\n".join(describe(checkpoint)))
        config = (checkpoint.get("vaelab") or {}).get("config")
        print("config:\n" + OmegaConf.to_yaml(config).rstrip() if config else "config: not recorded")
        return {}
    for line in describe(checkpoint):  # what the file holds, before anything is built from it
        log.info("ckpt: %s", line)
    results = evaluate(cfg, checkpoint)
    del checkpoint
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list)}, indent=2))  # shown before any write
    out.write_text(json.dumps(results, indent=2) + "\n")
    log.info("wrote %s", out)
    if cfg.get("wandb", True):
        results["wandb_run_id"] = update_wandb_summary(Path(cfg.ckpt).resolve().parent.parent, results)
    return results


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def app(cfg: DictConfig) -> None:
    with one_line_errors():
        run(cfg)


def main() -> None:
    """``vaelab-eval``: Hydra's command line, its errors as one line."""
    run_hydra_app(app)


# ``vaelab.evaluate`` is both this module and the Python API's ``vaelab.evaluate(ckpt, k=...)``
# (see vaelab/train.py): the module is made callable rather than shadowing the function.
sys.modules[__name__].__class__ = CallableEvaluateModule

if __name__ == "__main__":
    main()
