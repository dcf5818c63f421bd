"""Posterior-collapse diagnostics from posterior means and log-variances over a data set.

Inputs are ``mean`` and ``logvar`` of q(z | x) for N images, each (N, D). Units: nats.
"""

from __future__ import annotations

import math

import torch

from vaelab.objectives import kl_standard_normal

ACTIVE_UNIT_THRESHOLD = 0.01


def kl_per_dimension(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z_d | x) || N(0, 1)) averaged over the N images: (D,) nats."""
    return kl_standard_normal(mean, logvar).mean(0)


def active_unit_variances(mean: torch.Tensor) -> torch.Tensor:
    """Cov_x(E_q[z_u]) of each latent unit u (Burda et al. 2015): (D,)."""
    return mean.var(0, unbiased=True) if len(mean) > 1 else torch.zeros(mean.shape[1], device=mean.device)


def active_units(mean: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """How many units have Cov_x(E_q[z_u]) > threshold (0.01 in Burda et al. 2015)."""
    return int((active_unit_variances(mean) > threshold).sum())


def mutual_information(mean: torch.Tensor, logvar: torch.Tensor, chunk: int = 256, generator=None) -> float:
    """I(x; z) under q(x, z) = p_data(x) q(z | x), the estimator of He et al. (2019), in nats.

    I = E_x E_q(z|x)[log q(z | x)] - E_q(z)[log q(z)], where the aggregate posterior q(z) is the
    mixture of the N posteriors, and one z is drawn from each q(z | x_i). At most log N.
    """
    mean, logvar = mean.double(), logvar.double()
    n, d = mean.shape
    neg_entropy = (-0.5 * d * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(1)).mean()
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
    z = mean + (0.5 * logvar).exp() * noise
    inv_var, log_norm = (-logvar).exp(), -0.5 * (d * math.log(2 * math.pi) + logvar.sum(1))  # (N, D), (N,)
    # sum_d (z_id - m_jd)^2 / v_jd expanded into matrix products: (chunk, N) memory, never (chunk, N, D)
    mean_over_var, mean_term = mean * inv_var, (mean.square() * inv_var).sum(1)  # (N, D), (N,)
    log_qz = []
    for rows in z.split(chunk):  # log q(z_i | x_j) for a chunk of i and all j: (chunk, N)
        squared = rows.square() @ inv_var.T - 2 * rows @ mean_over_var.T + mean_term[None]
        log_density = -0.5 * squared + log_norm[None]
        log_qz.append(torch.logsumexp(log_density, dim=1) - math.log(n))
    return float(neg_entropy - torch.cat(log_qz).mean())


def summarize(mean: torch.Tensor, logvar: torch.Tensor, mi_images: int = 1000) -> dict:
    """KL per dimension (list, nats), the variance of each dimension's posterior mean over the
    images (list), active units, mutual information (nats, on the first mi_images)."""
    kl = kl_per_dimension(mean, logvar)
    generator = torch.Generator().manual_seed(0)
    return {
        "kl_per_dim": kl.tolist(),
        "mean_variance": active_unit_variances(mean).tolist(),
        "active_units": active_units(mean),
        "mutual_info": mutual_information(mean[:mi_images], logvar[:mi_images], generator=generator),
    }
