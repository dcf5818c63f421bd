"""A folder of 32x32 RGB images with the conv net and the discretized logistic: (a) vaelab's step
against a plain loop over the same network, likelihood and cached tensors, in lockstep."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from benchmarks import BATCH
from benchmarks.through_vaelab import Lockstep, lightning_overrides, run_train

FOLDER_IMAGES = 10_000
FOLDER_SETTINGS = ["data=folder", "data.image_size=32", "model/net=conv", "likelihood=discretized_logistic"]


def write_rgb_folder(root: Path, count: int = FOLDER_IMAGES, classes: int = 10) -> Path:
    """``count`` 32x32 RGB PNG files in ``classes`` subfolders: smooth colour fields (noise
    upsampled from 4x4), so that the PNG codec has real work to do."""
    from torch.nn.functional import interpolate
    from torchvision.io import write_png

    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    images = (interpolate(coarse, size=32, mode="bilinear", align_corners=False) * 255).to(torch.uint8)
    for index, image in enumerate(images):
        folder = root / f"class_{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        write_png(image, str(folder / f"{index:05d}.png"))
    return root


class SameNetLockstep(Lockstep):
    """(b_same): a hand-written loop over a copy of vaelab's own network and likelihood, fed by
    slices of the data module's cached training tensor, with the fused Adam: the same maths with
    nothing of Lightning or vaelab's training code around it."""

    def plain_steps(self, trainer, pl_module) -> dict:
        from vaelab.objectives import kl_standard_normal

        vae, likelihood = copy.deepcopy(pl_module.vae), copy.deepcopy(pl_module.likelihood)
        optimizer = torch.optim.Adam([*vae.parameters(), *likelihood.parameters()], lr=1e-3, fused=True)
        images = trainer.datamodule.train_set.images  # (N, 3, 32, 32) float32 in [0, 1]

        def epoch():
            order = torch.randperm(len(images))
            for start in range(0, len(order), BATCH):
                yield images[order[start : start + BATCH]]

        batches = self.endless(epoch)

        def step() -> None:
            x = next(batches)
            out = vae(x, None)
            recon = -likelihood.log_prob(x, out.decoder_output).mean()
            loss = recon + kl_standard_normal(out.mean, out.logvar).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return {"b_same": step}


def bench_folder_lockstep(work: Path, epochs: int, warmup: int) -> dict[str, float]:
    """(a) on a generated folder of 32x32 RGB images (decoded once, cached as in any folder run)
    and (b_same) in turn, one step each, for ``epochs`` epochs of (a): images/s of each."""
    root = write_rgb_folder(work / "images")
    run_train(
        [
            *lightning_overrides(str(root), epochs, work / "run"),
            *FOLDER_SETTINGS,
            "+callbacks.lockstep._target_=benchmarks.folder.SameNetLockstep",
            f"+callbacks.lockstep.warmup={warmup}",
        ]
    )
    return SameNetLockstep.last.images_per_second()
