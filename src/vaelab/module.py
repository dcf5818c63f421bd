"""One LightningModule for the VAE, the beta-VAE and the conditional VAE.

It is built from plain config dicts (saved as hyperparameters), so a checkpoint alone is
enough to rebuild it: ``vaelab.load(path)`` (read as data, weights_only).

Logged metrics, all in nats per image (sum over pixels / latent dims, mean over the batch):
``{train,val,test}/recon``, ``/kl``, ``/elbo`` (beta = 1), ``/loss`` (the weighted training
objective), ``/iwae`` (the k-sample IWAE bound, when ``model.importance_samples`` > 1), ``train/beta`` (the
current KL weight, beta * schedule(step)). The learning rate is Lightning's LearningRateMonitor's
(``callbacks.lr_monitor``): ``train/lr`` under a ``model.lr_scheduler``.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate

from vaelab.config import ModelSchema, check
from vaelab.diagnostics import summarize
from vaelab.errors import CheckpointError, ConfigError, first_line
from vaelab.inner_steps import (
    InnerSteps,
    advance_logging_step,
    carry_step_count,
    take_steps,
    warn_if_an_epoch_logs_nothing,
)
from vaelab.instantiate import instantiate_setting
from vaelab.metrics import TERMS
from vaelab.networks import VAE
from vaelab.objectives import Objective
from vaelab.version import __version__
from vaelab.workarounds import skip_nvml_cuda_probe

log = logging.getLogger(__name__)


# the random states, saved by on_save_checkpoint and set again at the first epoch after a resume,
# so that a resumed run draws the same batches, bits and z samples as an uninterrupted one
def rng_states() -> dict:
    """The random states as tensors, lists and numbers only, so that weights_only loading accepts them."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    """Set the states ``rng_states`` saved; a malformed one is a CheckpointError."""
    try:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
    except Exception as error:  # noqa: BLE001 - any malformed state means the same to the user
        raise CheckpointError(f"the checkpoint's rng_states cannot be restored: {first_line(error)}") from None


def lightning_logs_this_step(trainer: L.Trainer) -> bool:
    """Whether Lightning writes this training step's logged metrics. Lightning keeps the answer in
    a private attribute (``trainer._logger_connector.should_update_logs``); an upgrade that moves
    it stops here with a message saying so, rather than logging silently on every step or none.
    Under ``steps_per_fetch`` > 1 the module decides (``inner_logs_now``)."""
    module = getattr(trainer, "lightning_module", None)
    if getattr(module, "inner", None) is not None:
        return module.inner_logs_now
    connector = getattr(trainer, "_logger_connector", None)
    if connector is None or not hasattr(type(connector), "should_update_logs"):
        raise RuntimeError(
            f"Lightning {L.__version__} has no trainer._logger_connector.should_update_logs, "
            "which vaelab uses to log only on logging steps (vaelab/module.py)"
        )
    return bool(connector.should_update_logs or trainer.fast_dev_run)


def likelihood_shape(config: dict, image_shape) -> dict:
    """``{"image_shape": ...}`` for a likelihood class that takes the data's shape (``takes_image_shape``)."""
    from hydra.utils import get_object

    try:
        found = get_object(str(config.get("_target_")))
    except Exception:  # noqa: BLE001 - instantiate_setting reports a bad target in one line
        return {}
    return {"image_shape": tuple(image_shape)} if getattr(found, "takes_image_shape", False) else {}


class VAELitModule(L.LightningModule):
    """Args:
    model: the ``model`` config: latent_dim, beta, conditional, free_bits, capacity, importance_samples, dreg,
        ``net.encoder``, ``net.decoder`` and ``optimizer`` ``_target_`` configs.
    likelihood: the ``likelihood`` config: the likelihood's ``_target_`` config (``loss`` before).
    annealing: the ``annealing`` config: the KL schedule's ``_target_`` config.
    image_shape: (C, H, W) of the data.
    num_classes: number of classes in the data (used when ``model.conditional``).
    data: the ``data`` config, kept in the checkpoint so that evaluation uses the same data.
    diagnostics: compute KL per dimension, active units and I(x; z) after each validation.
    """

    def __init__(
        self,
        model: dict,
        likelihood: dict,
        annealing: dict,
        image_shape=(1, 28, 28),
        num_classes: int = 10,
        data: dict | None = None,
        diagnostics: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the loggers get the whole run config once (build_loggers)
        self._posteriors: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.last_diagnostics: dict = {}
        self._warned_splits: set[str] = set()
        self.last_terms: dict = {}  # the latest training step's terms, for the NaN guard
        self._rng_to_restore: dict | None = None
        # what the run's checkpoints record besides the weights (set by vaelab.training.train): the
        # composed config, the seed and the source commit
        self.run_record: dict = {}
        self.inner: InnerSteps | None = None  # several optimizer steps per Lightning step (use_inner_steps)
        self.inner_logs_now = False  # whether the latest fetch's train/ metrics are logged
        self.images_last_step: int | None = None  # images trained in the latest fetch, all ranks
        self._unwritten_metrics: dict[str, float] = {}  # a fetch's train/ metrics, for the loggers
        self.fetch_ended_epoch = False  # whether the latest fetch was its epoch's last
        check("model", ModelSchema, model)  # the one place the model's rules live
        latent_dim = int(model["latent_dim"])
        label_classes = num_classes if model.get("conditional", False) else 0  # the one-hot label's width; 0: none
        common = dict(image_shape=tuple(image_shape), latent_dim=latent_dim, cond_dim=label_classes)
        encoder = instantiate_setting(model["net"]["encoder"], "model.net.encoder", **common)
        decoder = instantiate_setting(model["net"]["decoder"], "model.net.decoder", **common)
        self.vae = VAE(encoder, decoder, latent_dim, num_classes=label_classes)
        self.objective = Objective(
            likelihood=instantiate_setting(likelihood, "likelihood", **likelihood_shape(likelihood, image_shape)),
            beta=model.get("beta", 1.0),
            schedule=instantiate_setting(annealing, "annealing"),
            free_bits=model.get("free_bits", 0.0),
            capacity=model.get("capacity"),
            importance_samples=model.get("importance_samples", 1),
            dreg=model.get("dreg", False),
        )

    @classmethod
    def from_config(cls, cfg, datamodule) -> VAELitModule:
        """The module for a composed train config (``cfg.model``, ``cfg.likelihood``, ``cfg.annealing``,
        ``cfg.data``) and the data module whose image shape and classes it fits. A network,
        likelihood or schedule that refuses its settings is a ConfigError naming ``model``."""
        from omegaconf import OmegaConf

        from vaelab.errors import find_user_error, first_line

        settings = {
            key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "likelihood", "annealing", "data")
        }
        if datamodule.image_shape is None:  # a folder or torchvision data set: known once its images are read
            datamodule.setup()
        try:
            return cls(**settings, image_shape=datamodule.image_shape, num_classes=datamodule.num_classes)
        except Exception as error:  # noqa: BLE001 - a network, likelihood or schedule refused its settings
            raise find_user_error(error) or ConfigError(f"model: {first_line(error)}") from error

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path | dict, device: str = "cpu", key: str = "ckpt", source: str | None = None
    ) -> VAELitModule:
        """The module in eval mode from a vaelab checkpoint: a file (read as data first by
        ``read_vaelab_checkpoint``: weights_only, bounded, every ``_target_`` in its hyperparameters
        on the allow-list) or the dict that function returned. ``key`` (the setting that names the
        file) or ``source`` says where it came from in a CheckpointError."""
        if not isinstance(checkpoint, dict):
            from vaelab.safe_load import read_vaelab_checkpoint

            source = source or f"{key}={checkpoint}"
            checkpoint = read_vaelab_checkpoint(checkpoint, key)
        try:
            module = cls(**checkpoint["hyper_parameters"])
            module.load_state_dict(checkpoint["state_dict"])
        except Exception as error:  # noqa: BLE001 - any failure to rebuild means the same to the user
            written_by = (checkpoint.get("vaelab") or {}).get("version")
            other = (
                ""
                if written_by == __version__
                else f" (written by vaelab {written_by or 'of unrecorded version'}, this is vaelab {__version__})"
            )
            raise CheckpointError(
                f"{source or key} is not a usable vaelab checkpoint{other}: {first_line(error)}"
            ) from None
        return module.to(device).eval()

    def data_module(self, data_root: str | None = None):
        """The data module this model was trained on (same split, binarization and seeds, from
        the ``data`` hyperparameters), set up for testing and reading from ``data_root``. Without
        ``data_root`` it reads the checkpoint's own data root and never downloads there: a
        checkpoint from elsewhere names a folder that is read, not written."""
        from hydra.utils import instantiate

        data = dict(self.hparams.get("data") or {})
        if not data:
            raise CheckpointError("the checkpoint holds no data config (written by an older vaelab)")
        if not data_root and data.get("source", "builtin") == "builtin":  # the MNIST folder the user exported
            data_root = os.environ.get("VAELAB_DATA_DIR")
        if data_root:
            data["root"] = data_root
        else:
            data["download"] = False
        datamodule = instantiate(data)
        datamodule.setup("test")
        return datamodule

    @property
    def likelihood(self):
        return self.objective.likelihood

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        return self.vae(x, y)

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        terms = self.batch_terms(batch, stage)
        if stage == "train":
            self.last_terms = terms
            if not self._logging_step():
                return terms["loss"]
        self._log_terms(terms, stage, batch_size=batch[0].shape[0])
        return terms["loss"]

    def batch_terms(self, batch, stage: str) -> dict[str, torch.Tensor]:
        """The objective's terms (nats per image, scalars) for a batch (x, y); keeps the validation
        posteriors for the diagnostics."""
        x, y = batch
        out = self.vae(x, y, samples=self.objective.importance_samples)
        terms = self.objective(x, out.decoder_output, out.mean, out.logvar, self.global_step, z=out.z)
        if stage == "val" and self.hparams.diagnostics:
            self._posteriors.append((out.mean.detach(), out.logvar.detach()))
        return terms

    def _log_terms(self, terms: dict[str, torch.Tensor], stage: str, batch_size: int) -> None:
        on_step = stage == "train"
        names = terms if on_step else [n for n in TERMS if n in terms]  # the KL weight only in train/
        metrics = {f"{stage}/{name}": terms[name] for name in names}
        self.log_dict(metrics, on_step=on_step, on_epoch=not on_step, batch_size=batch_size, sync_dist=not on_step)

    def _logging_step(self) -> bool:
        """True on the training steps whose metrics the loggers write (every trainer.log_every_n_steps).

        Each ``self.log`` runs a good deal of Lightning's Python; logging the terms only on these
        steps loses nothing (train/ metrics are per step, not epoch means) and keeps the training
        step close to a hand-written loop's speed."""
        return self._trainer is None or lightning_logs_this_step(self._trainer)

    def use_inner_steps(self, inner: InnerSteps) -> None:
        """Take ``inner.steps_per_fetch`` optimizer steps per Lightning step (vaelab.inner_steps),
        under manual optimization."""
        self.inner = inner
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        if self.inner is None:
            return self._shared_step(batch, "train")
        return take_steps(self, batch, batch_idx)

    def log_train_metrics(self, metrics: dict[str, torch.Tensor | float]) -> None:
        """Log per-step training metrics on a logging step. Under ``steps_per_fetch`` > 1 they go
        to the callbacks (``self.log``, logger=False) and, once per fetch after every callback's
        on_train_batch_end, to the loggers at the fetch's last optimizer step: Lightning would
        write them again at every fetch after (it keeps a step's values until the epoch ends and
        vaelab leaves its own logging cadence off, trainer.log_every_n_steps=1)."""
        if self.inner is None:
            self.log_dict(metrics, on_step=True, on_epoch=False)
            return
        self.log_dict(metrics, on_step=True, on_epoch=False, logger=False)
        self._unwritten_metrics.update({name: float(torch.as_tensor(v).detach()) for name, v in metrics.items()})

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.inner is None or not self._unwritten_metrics:
            return
        metrics = {**self._unwritten_metrics, "epoch": self.current_epoch}
        self._unwritten_metrics = {}
        step = advance_logging_step(self.trainer, 0)  # the fetch's last optimizer step (0-based)
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()

    def on_before_optimizer_step(self, optimizer) -> None:
        """Under ``steps_per_fetch``, the Trainer's gradient clipping (which Lightning leaves to a
        manually optimized module), after the callbacks' checks, as Lightning orders it."""
        if self.inner is not None and self.inner.clip_val:
            self.clip_gradients(optimizer, self.inner.clip_val, self.inner.clip_algorithm)

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")

    def setup(self, stage: str) -> None:
        skip_nvml_cuda_probe()  # in every process, spawned DDP ranks included

    def on_validation_epoch_start(self) -> None:
        self._posteriors.clear()
        self._warn_if_ranks_repeat_images("val", self.trainer.val_dataloaders)

    def on_test_epoch_start(self) -> None:
        self._warn_if_ranks_repeat_images("test", self.trainer.test_dataloaders)

    def _warn_if_ranks_repeat_images(self, split: str, loader) -> None:
        """Under DDP each rank's epoch mean is over an equal share of the split, and the ranks'
        means are averaged (sync_dist): exact when the split divides by the world size. Otherwise
        DistributedSampler repeats a few images to even the shares; say so, once per split."""
        world, images = self.trainer.world_size, len(loader.dataset) if loader is not None else 0
        if world > 1 and images % world and split not in self._warned_splits:
            self._warned_splits.add(split)
            if not self.trainer.is_global_zero:
                return
            repeated = world - images % world
            log.warning(
                "%s: %d images over %d ranks: %d of them count twice in the %s/ metrics "
                "(choose a split size divisible by the world size for exact numbers)",
                split, images, world, repeated, split,
            )  # fmt: skip

    def on_validation_epoch_end(self) -> None:
        """Log val/active_units, val/mutual_info and val/kl_dim/NN over the whole validation split."""
        if not (self.hparams.diagnostics and self._posteriors):
            return
        mean = torch.cat([m for m, _ in self._posteriors])
        logvar = torch.cat([v for _, v in self._posteriors])
        self._posteriors.clear()
        if self.trainer.world_size > 1:  # every rank sees the whole split, in its order
            mean, logvar = (self._gather_split(t) for t in (mean, logvar))
        self.last_diagnostics = summarize(mean.float().cpu(), logvar.float().cpu())
        metrics = {
            "val/active_units": float(self.last_diagnostics["active_units"]),
            "val/mutual_info": self.last_diagnostics["mutual_info"],
        }
        metrics.update({f"val/kl_dim/{d:02d}": v for d, v in enumerate(self.last_diagnostics["kl_per_dim"])})
        # the same numbers on every rank: syncing them changes nothing and tells Lightning so
        self.log_dict(metrics, on_epoch=True, sync_dist=True)

    def _gather_split(self, shard: torch.Tensor) -> torch.Tensor:
        """(n_rank, ...) rows of this rank's validation shard -> (N, ...) rows of the whole split in
        its order. Lightning's DistributedSampler (no shuffling) gives rank r the images r, r + W,
        r + 2W, ... and pads the last round with the first images: interleave, then drop the padding."""
        gathered = self.all_gather(shard)  # (W, n_rank, ...)
        whole = gathered.transpose(0, 1).flatten(0, 1)
        return whole[: len(self.trainer.val_dataloaders.dataset)]

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The random states, and under ``checkpoint["vaelab"]``: vaelab's version, the latest
        logged metrics as plain numbers, the W&B run id, and ``run_record`` (commit, seed, config)."""
        from vaelab.wandb_run import logged_run_ids

        checkpoint["rng_states"] = rng_states()
        trainer = self._trainer
        metrics = trainer.callback_metrics if trainer is not None else {}
        wandb_ids = logged_run_ids(trainer.loggers) if trainer is not None else []
        checkpoint["vaelab"] = {
            "version": __version__,
            "metrics": {k: float(v) for k, v in metrics.items() if v.numel() == 1},
            "wandb_run_id": wandb_ids[0] if wandb_ids else None,
            **self.run_record,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Keep the random states for the next epoch's start, and the step count whichever
        loop (one or several steps per fetch) wrote the checkpoint."""
        self._rng_to_restore = checkpoint.get("rng_states")
        carry_step_count(checkpoint, manual=not self.automatic_optimization)

    def on_train_epoch_start(self) -> None:
        """After a resume, continue the random streams where the checkpoint left them."""
        if self._rng_to_restore is not None:
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_start(self) -> None:
        if self.inner is not None and self.trainer.is_global_zero:
            warn_if_an_epoch_logs_nothing(self)

    def on_train_epoch_end(self) -> None:
        """Under ``steps_per_fetch``, step the epoch-interval schedulers (Lightning leaves them to a
        manually optimized module) after a whole epoch, as Lightning does (not when max_steps ends
        one early); this runs before the epoch's last.ckpt is written."""
        if self.inner is not None and self.fetch_ended_epoch:
            for config in self.trainer.lr_scheduler_configs:
                if config.interval == "epoch":
                    config.scheduler.step()

    def configure_optimizers(self):
        """The ``model.optimizer``, and the ``model.lr_scheduler`` when one is set.

        The scheduler is stepped every epoch (``interval: epoch``) or every optimizer step
        (``interval: step``); Lightning keeps its state in the checkpoint, so it survives a resume.
        Its ``name`` is what ``callbacks.lr_monitor`` logs the learning rate as: ``train/lr``."""
        optimizer = instantiate(self.hparams.model["optimizer"])(self.parameters())
        scheduler = dict(self.hparams.model.get("lr_scheduler") or {})
        if not scheduler:
            return optimizer
        interval = scheduler.pop("interval", "epoch")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": instantiate(scheduler)(optimizer), "interval": interval, "name": "train/lr"},
        }

    def _inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (B, C, H, W) in [0, 1] and labels (B,) on this module's device; a CVAE needs the labels."""
        if self.vae.conditional and y is None:
            raise ValueError("this is a conditional VAE: give the class labels y, a (B,) tensor of integers")
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        if y is not None and self.vae.conditional:
            y = torch.as_tensor(y, device=self.device).long()
        return x, y if self.vae.conditional else None

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x): images (B, C, H, W) in [0, 1] (and labels (B,) for a CVAE) -> mean, logvar,
        each (B, latent_dim)."""
        return self.vae.encode(*self._inputs(x, y))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel means of p(x | z = posterior mean): (B, C, H, W) in [0, 1]."""
        x, y = self._inputs(x, y)
        mean, _ = self.vae.encode(x, y)
        return self.likelihood.image(self.vae.decode(mean, y))

    @torch.no_grad()
    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel means of p(x | z): z (B, D) -> (B, C, H, W) in [0, 1]."""
        return self.likelihood.image(self.vae.decode(z, y))

    def check_label(self, label: int | None) -> None:
        """A ConfigError unless ``label`` is None or a class this (conditional) model knows."""
        if label is not None and not self.vae.conditional:
            raise ConfigError(f"label={label} needs a conditional VAE checkpoint (model=cvae)")
        if label is not None and not (isinstance(label, int) and 0 <= label < self.vae.num_classes):
            raise ConfigError(f"label={label} is not allowed: an integer in [0, {self.vae.num_classes})")

    @torch.no_grad()
    def sample(self, n: int, label: int | None = None, seed: int | None = None) -> torch.Tensor:
        """Pixel means of p(x | z) for n prior draws z ~ N(0, I): (n, C, H, W) in [0, 1], on the CPU.

        For a CVAE, ``label`` is the class of every image (None: they cycle through the classes);
        ``seed`` makes the draws repeat (None: torch's global generator)."""
        vae = self.vae
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n={n} is not allowed: an integer >= 1")
        self.check_label(label)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        z = torch.randn(n, vae.latent_dim, generator=generator).to(self.device)
        labels = None
        if vae.conditional:
            labels = torch.full((n,), label) if label is not None else torch.arange(n) % vae.num_classes
            labels = labels.to(self.device)
        return self.generate(z, labels).cpu()
