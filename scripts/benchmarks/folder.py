"""A folder of 32x32 RGB images with the conv net and the discretized logistic: (a) vaelab's step
against a plain loop over the same network, likelihood and cached tensors (``SameNetLockstep``)."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.through_vaelab import bench_same_net

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


def bench_folder_lockstep(work: Path, epochs: int, warmup: int) -> dict[str, float]:
    """(a) on a generated folder of 32x32 RGB images (decoded once, cached as in any folder run)
    and (b_same) in turn, one step each, for ``epochs`` epochs of (a): images/s of each."""
    return bench_same_net(str(write_rgb_folder(work / "images")), epochs, warmup, work / "run", FOLDER_SETTINGS)
