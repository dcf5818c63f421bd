"""The KL divergence and the (beta-weighted) ELBO objective; the likelihoods are in ``likelihoods``.

Units: every number here is in nats **per image**: a sum over the image's pixels (or
latent dimensions), then a mean over the batch.

- ``recon`` = -E_q[log p(x | z)], one Monte-Carlo sample.
- ``kl``    = KL(q(z | x) || p(z)), in closed form.
- ``elbo``  = -(recon + kl): the plain ELBO at beta = 1, a lower bound on log p(x).
- ``loss``  = the training objective: recon + beta_t * kl (with free bits applied to the
  KL term), or recon + gamma * |kl - C_t| with capacity control, or with k > 1 importance
  samples minus the IWAE bound of Burda et al. (2015).
- ``iwae``  = with k > 1 samples: the k-sample IWAE bound at beta = 1, between the ELBO and log p(x).

All variants (VAE, beta-VAE, CVAE, free bits, capacity, IWAE) are configuration of ``Objective``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import Normal

from vaelab.annealing import Constant, capacity_target

# the likelihoods' former home: ``_target_``s in older run folders and checkpoints name them here
from vaelab.likelihoods import (  # noqa: F401
    LOG_2PI,
    BernoulliLikelihood,
    GaussianLikelihood,
    LocalAutoregressiveBernoulli,
    bernoulli_log_prob,
)
from vaelab.networks import reparameterize


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per latent dimension, closed form: (B, D) nats."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)


class Objective(nn.Module):
    """The negative ELBO with beta weighting, KL annealing, free bits and capacity control.

    Args:
        likelihood: ``BernoulliLikelihood`` or ``GaussianLikelihood``.
        beta: the KL weight (1 = VAE, > 1 = beta-VAE of Higgins et al. 2017).
        schedule: step -> weight in [0, 1]; the KL weight at step t is beta * schedule(t).
        free_bits: lambda of Kingma et al. (2016), in nats per latent dimension: each
            dimension's batch-mean KL counts at least lambda in the loss (0 = off).
        capacity: None, or dict(gamma, max_nats, ramp_steps) for Burgess et al. (2018):
            loss = recon + gamma * |KL - C_t|, C_t ramping linearly from 0 to max_nats.
        importance_samples: k. With k = 1 the loss is the (weighted) negative ELBO with the KL
            in closed form; with k > 1 it is minus the IWAE bound log (1/k) sum_i w_i over k
            samples z_i ~ q(z | x), with log w_i = log p(x | z_i) + beta_t (log p(z_i) - log q(z_i | x))
            (beta_t = 1 is Burda et al.'s IWAE; a KL warm-up anneals the prior-to-posterior ratio).
        dreg: with k > 1, the doubly reparameterized gradient of Tucker et al. (2019) for the
            encoder: q's parameters are held fixed in log q(z_i | x) and the gradient reaching
            z_i is weighted by its normalized importance weight once more. The decoder's
            gradient is the IWAE gradient either way. Unbiased for the bound at beta_t = 1.
    """

    def __init__(
        self,
        likelihood: nn.Module,
        beta: float = 1.0,
        schedule: Callable[[int], float] | None = None,
        free_bits: float = 0.0,
        capacity: dict | None = None,
        importance_samples: int = 1,
        dreg: bool = False,
    ):
        super().__init__()  # the values are checked by vaelab.config.ModelSchema (VAELitModule)
        self.likelihood = likelihood
        self.beta = float(beta)
        self.schedule = schedule or Constant()
        self.free_bits = float(free_bits)
        self.capacity = dict(capacity) if capacity else None
        self.importance_samples = int(importance_samples)
        self.dreg = bool(dreg)

    def kl_weight(self, step: int) -> float:
        """beta * schedule(step): a Python float, no device sync."""
        return self.beta * self.schedule(step)

    def forward(
        self,
        x: torch.Tensor,
        decoder_output: torch.Tensor,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        step: int,
        z: torch.Tensor | None = None,
    ) -> dict:
        """x (B, C, H, W), decoder_output (B, C, H, W), mean, logvar (B, D) -> dict of scalar tensors (nats per
        image) and floats. With k = importance_samples > 1: decoder_output (k, B, C, H, W) and the codes z
        (k, B, D) they were decoded from; recon is then the mean over the k samples.

        The sums run in float32 even under mixed precision (bf16 would round 784-pixel sums)."""
        decoder_output, mean, logvar = decoder_output.float(), mean.float(), logvar.float()
        log_px_z = self.likelihood.log_prob(x, decoder_output)  # (B,) or (k, B)
        recon = -log_px_z.mean()
        kl_per_dim = kl_standard_normal(mean, logvar).mean(0)  # (D,) batch-mean KL of each dimension
        kl = kl_per_dim.sum()
        kl_term = kl_per_dim.clamp(min=self.free_bits).sum() if self.free_bits > 0 else kl
        terms = {"recon": recon, "kl": kl, "elbo": -(recon + kl)}
        if self.importance_samples > 1:
            terms.update(self.importance_weighted(log_px_z, z, mean, logvar, step))
        elif self.capacity:
            target = capacity_target(step, self.capacity["max_nats"], self.capacity["ramp_steps"])
            terms["loss"] = recon + self.capacity["gamma"] * (kl_term - target).abs()
            terms["capacity"] = target
        else:
            weight = self.kl_weight(step)
            terms["loss"] = recon + weight * kl_term
            terms["beta"] = weight
        return terms

    def importance_weighted(
        self, log_px_z: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, step: int
    ) -> dict:
        """log p(x | z_i) (k, B), z (k, B, D), mean, logvar (B, D) -> loss (minus the IWAE bound on the
        beta_t-weighted weights), iwae (the bound at beta = 1), beta: batch means, nats per image."""
        k = log_px_z.shape[0]
        posterior = Normal(mean, (0.5 * logvar).exp(), validate_args=False)
        if self.dreg:  # q's parameters reach the loss only through z
            posterior = Normal(posterior.loc.detach(), posterior.scale.detach(), validate_args=False)
        z32 = z.float()
        log_ratio = (-0.5 * (z32.square() + LOG_2PI)).sum(-1) - posterior.log_prob(z32).sum(
            -1
        )  # log p(z) - log q(z | x)
        weight = self.kl_weight(step)
        log_w = log_px_z + weight * log_ratio
        bound = torch.logsumexp(log_w, 0) - math.log(k)
        if self.dreg and z.requires_grad:
            normalized = torch.softmax(log_w.detach(), 0).unsqueeze(-1).to(z.dtype)  # (k, B, 1)
            z.register_hook(lambda grad: grad * normalized)
        plain = log_w if weight == 1.0 else log_px_z + log_ratio
        iwae = torch.logsumexp(plain.detach(), 0) - math.log(k)
        return {"loss": -bound.mean(), "iwae": iwae.mean(), "beta": weight}


def importance_weighted_terms(vae, likelihood, x: torch.Tensor, y: torch.Tensor | None, k: int):
    """log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x) for k draws z_i ~ q(z | x) per image,
    from one encoder pass and one decoder pass over the k * B codes.

    x (B, C, H, W), y (B,) or None -> log_w (B, k) and log p(x | z_i) (B, k) in nats, and the
    posterior mean and log-variance (B, D). z_i = mean + std * eps_i, so log q(z_i | x) needs only eps_i.
    """
    mean, logvar = vae.encode(x, y)
    z, eps = reparameterize(mean, logvar, (k,))  # (k, B, D)
    batch = x.shape[0]
    labels = None if y is None else y.repeat(k)
    decoder_output = vae.decode(z.reshape(k * batch, -1), labels).view(k, *x.shape)
    log_px_z = likelihood.log_prob(x, decoder_output)  # (k, B): x broadcasts over the k samples
    log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    log_qz = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)
    log_w = log_px_z + log_pz - log_qz
    return log_w.transpose(0, 1), log_px_z.transpose(0, 1), mean, logvar


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """The importance-weighted bound log (1/k) sum_i w_i (Burda et al. 2015), in float64: (B, k) -> (B,) nats.

    With k = 1 it is a one-sample estimate of the ELBO; as k grows it rises towards log p(x).
    """
    k = log_w.shape[-1]
    return torch.logsumexp(log_w.double(), dim=-1) - math.log(k)
