"""The importance-sampled NLL (k = 5000) of the IWAE-paper MLP: vaelab-eval's evaluate_split
against the same batched computation written out by hand."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from benchmarks.through_vaelab import compose_train_config


@torch.no_grad()
def bare_iwae_nll(vae, images: torch.Tensor, k: int, batch_images: int) -> float:
    """The importance-sampled NLL written out: same networks, no torch.distributions. Nats per image."""
    total = 0.0
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    for x in images.split(batch_images):
        mean, logvar = vae.encode(x)
        std = (0.5 * logvar).exp()
        eps = torch.randn(k, *mean.shape)
        z = mean + std * eps  # (k, B, D)
        logits = vae.decode(z.reshape(-1, z.shape[-1])).view(k, len(x), -1)
        log_px_z = -F.binary_cross_entropy_with_logits(
            logits, x.view(1, len(x), -1).expand_as(logits), reduction="none"
        ).sum(-1)
        log_pz = (-0.5 * z.pow(2) - half_log_2pi).sum(-1)
        log_qz = (-0.5 * eps.pow(2) - half_log_2pi - 0.5 * logvar).sum(-1)
        log_w = (log_px_z + log_pz - log_qz).double()
        total -= float((torch.logsumexp(log_w, 0) - math.log(k)).sum())
    return total / len(images)


def bench_nll(root: str, n_images: int, k: int) -> dict:
    """Seconds for the test NLL of the first n_images at k samples: vaelab-eval's path and the bare
    one, in lockstep (one forward's worth of images each, in turn)."""
    from vaelab.data import VAEDataModule
    from vaelab.module import VAELitModule
    from vaelab.results.evaluation import evaluate_split, images_per_forward

    cfg = compose_train_config(["experiment=iwae_paper_vae_mnist", f"data.root={root}"])

    datamodule = VAEDataModule(name="mnist", root=root, binarize="dynamic")
    datamodule.setup("test")
    torch.manual_seed(0)
    module = VAELitModule.from_config(cfg, datamodule).eval()
    images, labels = datamodule.test_set.images[:n_images], datamodule.test_set.labels[:n_images]
    batch_images = images_per_forward(k)
    paths = {
        "bare": lambda x, y: bare_iwae_nll(module.vae, x, k, batch_images),
        "vaelab": lambda x, y: evaluate_split(module, x, y, k=k)["nll"],
    }
    for run in paths.values():  # warm-up, not timed
        run(images[:batch_images], labels[:batch_images])
    # in lockstep: each forward's worth of images through one path, then the other, so that the
    # machine's slow spells weigh on both alike
    timings = {name: {"seconds": 0.0, "nll": 0.0} for name in paths}
    for x, y in zip(images.split(batch_images), labels.split(batch_images), strict=True):
        for name, run in paths.items():
            torch.manual_seed(0)
            started = time.perf_counter()
            nll = run(x, y)
            timings[name]["seconds"] += time.perf_counter() - started
            timings[name]["nll"] += nll * len(x) / n_images
    return {
        "n_images": n_images,
        "k": k,
        "vaelab_images_per_second": n_images / timings["vaelab"]["seconds"],
        "bare_images_per_second": n_images / timings["bare"]["seconds"],
        "time_ratio_vaelab_over_bare": timings["vaelab"]["seconds"] / timings["bare"]["seconds"],
        "nll_vaelab": timings["vaelab"]["nll"],
        "nll_bare": timings["bare"]["nll"],
    }
