"""Pictures of what a VAE learned, each one image tensor (3, H, W) in [0, 1].

Used by the ``ImagePanels`` callback (during training) and by ``vaelab-sample`` (from a
checkpoint). Image grids come from ``torchvision.utils.make_grid`` (2-pixel padding unless
said otherwise); the latent scatter is a matplotlib figure rendered to a tensor.

- ``reconstructions``: inputs (top row) above their reconstructions;
- ``prior_samples``: decoded prior samples;
- ``class_samples`` (CVAE): one row per class, one column per shared z;
- ``traversals``: one row per latent dimension (sorted by KL, largest first), each row
  moving that dimension of a posterior mean over ``span`` prior standard deviations;
- ``interpolations``: one row per pair of images, decoding the straight line between their
  posterior means (the left and right ends are the two encodings);
- ``manifold`` (latent_dim = 2): the decoder over a grid of prior quantiles, no padding;
- ``latent_scatter``: posterior means coloured by class, on the two dimensions with the
  largest KL (the axes say which).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch.distributions import Normal
from torchvision.utils import make_grid

from vaelab.diagnostics import kl_per_dimension
from vaelab.errors import ConfigError

GRID = dict(pad_value=1.0)


def prior_quantile_grid(steps: int, low: float = 0.05, high: float = 0.95) -> torch.Tensor:
    """z on a steps x steps grid of N(0, 1) quantiles: (steps * steps, 2), row-major, y decreasing down."""
    values = Normal(0.0, 1.0).icdf(torch.linspace(low, high, steps))
    ys, xs = torch.meshgrid(values.flip(0), values, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


@torch.no_grad()
def reconstructions(module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """x (B, C, H, W): a 2-row grid, inputs above reconstructions."""
    return make_grid(torch.cat([x, module.reconstruct(x, y)]), nrow=len(x), **GRID)


@torch.no_grad()
def prior_samples(module, z: torch.Tensor, labels: torch.Tensor | None = None, nrow: int | None = None) -> torch.Tensor:
    """z (N, D): the decoded images, about sqrt(N) per row."""
    return make_grid(module.generate(z, labels), nrow=nrow or max(1, round(len(z) ** 0.5)), **GRID)


@torch.no_grad()
def class_samples(module, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """A (num_classes x per_class) grid: row = class, column = one z shared by all rows."""
    vae, device = module.vae, module.device
    z = torch.randn(per_class, vae.latent_dim, generator=generator).to(device).repeat(vae.num_classes, 1)
    labels = torch.arange(vae.num_classes, device=device).repeat_interleave(per_class)
    return make_grid(module.generate(z, labels), nrow=per_class, **GRID)


def dimensions_by_kl(
    kl_per_dim: torch.Tensor | list[float] | None, latent_dim: int, limit: int | None = None
) -> list[int]:
    """Latent dimensions sorted by KL (nats), largest first; in index order when KL is unknown."""
    if kl_per_dim is None or len(kl_per_dim) != latent_dim:
        order = list(range(latent_dim))
    else:
        order = torch.as_tensor(kl_per_dim).argsort(descending=True, stable=True).tolist()
    return order[:limit]


@torch.no_grad()
def traversals(
    module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    kl_per_dim=None,
    steps: int = 9,
    span: float = 3.0,
    max_dims: int | None = 10,
) -> torch.Tensor:
    """x (1, C, H, W): rows = latent dims by decreasing KL (at most max_dims), columns = steps values
    of that dimension from -span to +span around the posterior mean of x, the other dims fixed."""
    mean, _ = module.vae.encode(x, y)
    dims = dimensions_by_kl(kl_per_dim, mean.shape[1], max_dims)
    values = torch.linspace(-span, span, steps, device=mean.device)
    z = mean.repeat(len(dims) * steps, 1)
    for row, dim in enumerate(dims):
        z[row * steps : (row + 1) * steps, dim] = values
    labels = y.repeat(len(z)) if y is not None and module.vae.conditional else None
    return make_grid(module.generate(z, labels), nrow=steps, **GRID)


@torch.no_grad()
def interpolations(
    module, x_start: torch.Tensor, x_end: torch.Tensor, y_start: torch.Tensor | None = None, steps: int = 10
) -> torch.Tensor:
    """x_start, x_end (P, C, H, W): one row per pair, steps images along the line between the
    posterior means. A CVAE decodes the whole row with the start image's label."""
    conditional = module.vae.conditional
    mean_a, _ = module.vae.encode(x_start, y_start if conditional else None)
    mean_b, _ = module.vae.encode(x_end, y_start if conditional else None)
    t = torch.linspace(0, 1, steps, device=mean_a.device).view(1, steps, 1)
    z = (mean_a.unsqueeze(1) * (1 - t) + mean_b.unsqueeze(1) * t).flatten(0, 1)  # (P * steps, D), row-major
    labels = y_start.repeat_interleave(steps) if conditional else None
    return make_grid(module.generate(z, labels), nrow=steps, **GRID)


@torch.no_grad()
def manifold(module, steps: int = 15) -> torch.Tensor:
    """latent_dim = 2 only: a steps x steps grid of decoded prior quantiles, no padding."""
    z = prior_quantile_grid(steps).to(module.device)
    return make_grid(module.generate(z), nrow=steps, padding=0)


def latent_scatter(
    mean: torch.Tensor,
    labels: torch.Tensor,
    kl_per_dim=None,
    class_names=None,
    title: str = "posterior means",
    size_inches: float = 5.0,
    dpi: int = 100,
) -> torch.Tensor:
    """mean (N, D) posterior means, labels (N,): a scatter of the two dimensions with the largest KL,
    coloured by class, as a (3, size * dpi, size * dpi) image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: the user's matplotlib backend is left alone

    mean, labels = mean.detach().float().cpu(), labels.detach().cpu()
    dims = dimensions_by_kl(kl_per_dim, mean.shape[1], 2)
    xs = mean[:, dims[0]]
    ys = mean[:, dims[1]] if len(dims) > 1 else torch.zeros_like(xs)
    fig = Figure(figsize=(size_inches, size_inches), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    classes = len(class_names) if class_names else int(labels.max()) + 1 if len(labels) else 1
    cmap = "tab10" if classes <= 10 else "tab20" if classes <= 20 else "viridis"
    points = ax.scatter(xs, ys, c=labels, cmap=cmap, vmin=-0.5, vmax=classes - 0.5, s=4, alpha=0.7, linewidths=0)

    def kl_text(dim: int) -> str:
        known = kl_per_dim is not None and len(kl_per_dim) == mean.shape[1]
        return f", KL {float(kl_per_dim[dim]):.2f} nats" if known else ""

    ax.set_xlabel(f"z[{dims[0]}] posterior mean{kl_text(dims[0])}")
    ax.set_ylabel(f"z[{dims[1]}] posterior mean{kl_text(dims[1])}" if len(dims) > 1 else "(one latent dimension)")
    ax.set_title(f"{title} ({len(mean)} images)")
    ticks = range(classes) if classes <= 20 else None  # more classes: a colour scale without names
    bar = fig.colorbar(points, ax=ax, ticks=ticks)
    bar.set_label("class")
    if class_names and ticks is not None:
        bar.set_ticklabels(list(class_names))
    fig.tight_layout()
    canvas.draw()
    rgba = torch.frombuffer(bytearray(canvas.buffer_rgba()), dtype=torch.uint8)
    width, height = canvas.get_width_height()
    return rgba.view(height, width, 4)[..., :3].permute(2, 0, 1).float() / 255


@torch.no_grad()
def encode_all(
    module, images: torch.Tensor, labels: torch.Tensor, batch_images: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances of a whole split, batch by batch: two (N, D) tensors on the CPU."""
    means, logvars = [], []
    for start in range(0, len(images), batch_images):
        x = images[start : start + batch_images].to(module.device)
        y = labels[start : start + batch_images].to(module.device) if module.vae.conditional else None
        mean, logvar = module.vae.encode(x, y)
        means.append(mean.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(means), torch.cat(logvars)


def pick_test_images(module, cfg: DictConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test images (and labels) of the checkpoint's data set; only class `label` if given."""
    datamodule = module.data_module(cfg.get("data_root"))
    images, labels = datamodule.test_set.images, datamodule.test_set.labels
    if cfg.get("label") is not None:
        keep = labels == cfg.label
        images, labels = images[keep], labels[keep]
    return images[:n], labels[:n]


def make_picture(module, cfg: DictConfig) -> torch.Tensor:
    """The picture that ``cfg.kind`` asks for, as a (3, H, W) image in [0, 1]; ``cfg`` has passed
    ``validate_sample_config`` (vaelab-sample's first step)."""
    kind, n, vae = cfg.kind, cfg.n, module.vae
    module.check_label(cfg.get("label"))  # before test images load
    if kind == "samples":
        nrow = cfg.get("nrow") or max(1, round(n**0.5))
        return make_grid(module.sample(n, cfg.get("label"), cfg.seed), nrow=nrow, pad_value=1.0)
    if kind == "manifold":
        if vae.latent_dim != 2 or vae.conditional:
            raise ConfigError(
                "kind=manifold needs an unconditional model with latent_dim=2, "
                f"this one has latent_dim={vae.latent_dim}"
            )
        return manifold(module, cfg.get("nrow") or 15)
    images, labels = pick_test_images(module, cfg, max(2 * n, cfg.scatter_images) if kind == "scatter" else 2 * n)
    y = labels if vae.conditional else None
    if kind == "scatter":
        mean, logvar = encode_all(module, images, labels)
        return latent_scatter(mean, labels, kl_per_dimension(mean, logvar), title="test posterior means")
    if kind == "traversals":
        mean, logvar = encode_all(module, images[:1000], labels[:1000])
        return traversals(
            module,
            images[:1],
            None if y is None else y[:1],
            kl_per_dimension(mean, logvar),
            steps=cfg.steps,
            span=cfg.span,
            max_dims=n,
        )
    if len(images) < 2 * n:
        raise ConfigError(f"n={n} interpolation pairs need {2 * n} test images, the split has {len(images)}")
    return interpolations(module, images[:n], images[n : 2 * n], None if y is None else y[:n], steps=cfg.steps)
