import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from vaelab.annealing import Linear
from vaelab.networks import MaskedConv2d
from vaelab.objectives import (
    BernoulliLikelihood,
    GaussianLikelihood,
    LocalAutoregressiveBernoulli,
    Objective,
    kl_standard_normal,
)


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mean, logvar = torch.randn(16, 5) * 2, torch.randn(16, 5)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(torch.zeros(5), torch.ones(5)))
    torch.testing.assert_close(kl_standard_normal(mean, logvar), expected)


def test_kl_is_zero_only_at_the_prior():
    zeros = torch.zeros(3, 4)
    assert torch.equal(kl_standard_normal(zeros, zeros), zeros)
    assert (kl_standard_normal(zeros + 0.1, zeros) > 0).all()


def test_bernoulli_log_prob_is_minus_bce_summed_per_image():
    torch.manual_seed(0)
    x, logits = torch.rand(4, 1, 28, 28).round(), torch.randn(4, 1, 28, 28)
    expected = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=(1, 2, 3))
    log_prob = BernoulliLikelihood().log_prob(x, logits)
    assert log_prob.shape == (4,)
    torch.testing.assert_close(log_prob, expected)


def test_bernoulli_log_prob_equals_the_torch_distribution_and_broadcasts_over_samples():
    torch.manual_seed(0)
    likelihood = BernoulliLikelihood()
    x, logits = torch.rand(5, 1, 28, 28).round(), torch.randn(3, 5, 1, 28, 28, requires_grad=True)
    log_prob = likelihood.log_prob(x, logits)
    expected = likelihood.distribution(logits, event_dims=3).log_prob(x)
    assert log_prob.shape == (3, 5)
    torch.testing.assert_close(log_prob, expected)
    (grad,) = torch.autograd.grad(log_prob.sum(), logits)
    torch.testing.assert_close(grad, x - torch.sigmoid(logits.detach()))  # d/dlogit log Bernoulli = x - p


def test_gaussian_log_prob_is_scaled_mse_plus_constant():
    torch.manual_seed(0)
    sigma, x, decoder_output = 0.3, torch.rand(3, 1, 28, 28), torch.randn(3, 1, 28, 28)
    squared_error = (x - torch.sigmoid(decoder_output)).square().sum(dim=(1, 2, 3))
    constant = 784 * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(
        GaussianLikelihood(sigma).log_prob(x, decoder_output), -squared_error / (2 * sigma**2) - constant
    )


def test_gaussian_learned_sigma_is_a_parameter_and_gets_gradients():
    likelihood = GaussianLikelihood(0.5, learn_sigma=True)
    assert [name for name, _ in likelihood.named_parameters()] == ["log_sigma"]
    likelihood.log_prob(torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)).sum().backward()
    assert likelihood.log_sigma.grad is not None and likelihood.log_sigma.grad != 0
    assert list(GaussianLikelihood(0.5).parameters()) == []


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, 1, 28, 28, generator=g).round()
    return x, torch.randn(8, 1, 28, 28, generator=g), torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)


def test_elbo_terms_are_per_image_sums_averaged_over_the_batch():
    x, decoder_output, mean, logvar = batch()
    terms = Objective(BernoulliLikelihood(), beta=4.0)(x, decoder_output, mean, logvar, step=0)
    recon = F.binary_cross_entropy_with_logits(decoder_output, x, reduction="sum") / 8
    kl = kl_standard_normal(mean, logvar).sum() / 8
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(terms["elbo"], -(recon + kl))  # the plain ELBO ignores beta
    torch.testing.assert_close(terms["loss"], recon + 4.0 * kl)
    assert terms["beta"] == 4.0


def test_annealing_scales_the_kl_weight_by_global_step():
    x, decoder_output, mean, logvar = batch()
    objective = Objective(BernoulliLikelihood(), beta=2.0, schedule=Linear(warmup_steps=100))
    at_0, at_50 = (
        objective(x, decoder_output, mean, logvar, step=0),
        objective(x, decoder_output, mean, logvar, step=50),
    )
    assert at_0["beta"] == 0.0 and at_50["beta"] == 1.0
    torch.testing.assert_close(at_0["loss"], at_0["recon"])
    torch.testing.assert_close(at_50["loss"], at_50["recon"] + at_50["kl"])


def test_free_bits_hold_each_dimension_at_least_lambda():
    x, decoder_output, _, _ = batch()
    mean, logvar = torch.zeros(8, 6), torch.zeros(8, 6)
    mean[:, 0] = 3.0  # dimension 0 carries 4.5 nats, the rest none
    terms = Objective(BernoulliLikelihood(), free_bits=0.5)(x, decoder_output, mean, logvar, step=0)
    torch.testing.assert_close(terms["kl"], torch.tensor(4.5))
    torch.testing.assert_close(terms["loss"] - terms["recon"], torch.tensor(4.5 + 5 * 0.5))


def test_capacity_control_penalises_distance_to_the_ramped_target():
    x, decoder_output, mean, logvar = batch()
    capacity = {"gamma": 10.0, "max_nats": 20.0, "ramp_steps": 100}
    objective = Objective(BernoulliLikelihood(), capacity=capacity)
    terms = objective(x, decoder_output, mean, logvar, step=25)
    assert terms["capacity"] == 5.0
    torch.testing.assert_close(terms["loss"], terms["recon"] + 10.0 * (terms["kl"] - 5.0).abs())
    assert objective(x, decoder_output, mean, logvar, step=10_000)["capacity"] == 20.0


def test_masked_convolution_sees_only_earlier_pixels():
    torch.manual_seed(0)
    for mask in ("A", "B"):
        conv = MaskedConv2d(1, 4, 5, mask)
        x = torch.randn(1, 1, 6, 6, requires_grad=True)
        conv(x)[0, :, 3, 2].sum().backward()  # output pixel (3, 2)
        seen = x.grad[0, 0] != 0
        rows, cols = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
        earlier = (rows < 3) | ((rows == 3) & (cols < 2))
        allowed = earlier | ((rows == 3) & (cols == 2)) if mask == "B" else earlier
        assert not (seen & ~allowed).any()  # nothing at or after the pixel (A), after it (B)
        assert seen[3, 1] and seen[1, 2] and seen[3, 2] == (mask == "B")


def test_autoregressive_bernoulli_sums_to_one_over_every_binary_image():
    torch.manual_seed(0)
    likelihood = LocalAutoregressiveBernoulli(channels=3, kernel_size=3)
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9))).view(512, 1, 3, 3)
    decoder_output = torch.randn(1, 1, 3, 3).expand(512, 1, 3, 3)  # one z
    with torch.no_grad():
        total = likelihood.log_prob(every, decoder_output).double().exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), atol=1e-5, rtol=0)


def test_autoregressive_bernoulli_shares_the_context_across_samples():
    torch.manual_seed(0)
    likelihood = LocalAutoregressiveBernoulli(channels=4)
    x, decoder_output = torch.rand(3, 1, 28, 28).round(), torch.randn(5, 3, 1, 28, 28)  # 5 samples of z per image
    with torch.no_grad():
        broadcast = likelihood.log_prob(x, decoder_output)
        one_by_one = torch.stack([likelihood.log_prob(x, p) for p in decoder_output])
    assert broadcast.shape == (5, 3)
    torch.testing.assert_close(broadcast, one_by_one)
    context = likelihood.context(x)  # blocks of 6 samples (two copies of the batch) give the same logits
    with torch.no_grad():
        torch.testing.assert_close(
            likelihood.logits(context, decoder_output, block=6), likelihood.logits(context, decoder_output, block=10**6)
        )


def test_autoregressive_pictures_are_the_probabilities_of_a_sequential_sample():
    torch.manual_seed(0)
    likelihood = LocalAutoregressiveBernoulli(channels=4)
    decoder_output = torch.randn(2, 1, 12, 10)
    torch.manual_seed(1)
    probs = likelihood.image(decoder_output)
    torch.manual_seed(1)  # the same draws again, to recover the sampled image
    sample = torch.zeros_like(decoder_output)
    for row in range(12):
        for col in range(10):
            sample[..., row, col] = torch.bernoulli(probs[..., row, col])
    with torch.no_grad():  # the strip-by-strip probabilities equal the whole-image ones for that image
        whole = torch.sigmoid(likelihood.logits(likelihood.context(sample), decoder_output))
    torch.testing.assert_close(probs, whole)
    assert probs.min() >= 0 and probs.max() <= 1


def iwae_inputs(k=5, seed=0):
    """x (8, 1, 28, 28), decoder logits (k, 8, 1, 28, 28), codes z (k, 8, 6) and the posterior (8, 6)."""
    g = torch.Generator().manual_seed(seed)
    x, _, mean, logvar = batch(seed)
    z = mean + (0.5 * logvar).exp() * torch.randn(k, 8, 6, generator=g)
    return x, torch.randn(k, 8, 1, 28, 28, generator=g), z, mean, logvar


def test_iwae_loss_is_minus_the_importance_weighted_bound():
    x, decoder_output, z, mean, logvar = iwae_inputs(k=5)
    terms = Objective(BernoulliLikelihood(), importance_samples=5)(x, decoder_output, mean, logvar, step=0, z=z)
    log_px_z = -F.binary_cross_entropy_with_logits(decoder_output, x.expand_as(decoder_output), reduction="none").sum(
        (2, 3, 4)
    )
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz = Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    bound = torch.logsumexp(log_px_z + log_pz - log_qz, 0) - math.log(5)  # (8,)
    torch.testing.assert_close(terms["loss"], -bound.mean())
    torch.testing.assert_close(terms["iwae"], bound.mean())
    torch.testing.assert_close(terms["recon"], -log_px_z.mean())  # the mean over all k samples
    torch.testing.assert_close(terms["kl"], kl_standard_normal(mean, logvar).sum() / 8)
    torch.testing.assert_close(terms["elbo"], -(terms["recon"] + terms["kl"]))


def test_iwae_bound_is_at_least_the_mean_log_weight_and_anneals_the_prior_ratio():
    x, decoder_output, z, mean, logvar = iwae_inputs(k=5)
    objective = Objective(BernoulliLikelihood(), importance_samples=5, schedule=Linear(warmup_steps=100))
    at_0, at_100 = (
        objective(x, decoder_output, mean, logvar, step=0, z=z),
        objective(x, decoder_output, mean, logvar, step=100, z=z),
    )
    log_px_z = BernoulliLikelihood().log_prob(x, decoder_output)  # (5, 8)
    # beta_t = 0: the weights are p(x | z_i) alone
    torch.testing.assert_close(at_0["loss"], -(torch.logsumexp(log_px_z, 0) - math.log(5)).mean())
    assert at_0["beta"] == 0.0 and at_100["beta"] == 1.0
    torch.testing.assert_close(at_0["iwae"], at_100["iwae"])  # the logged bound is always at beta = 1
    torch.testing.assert_close(at_100["iwae"], -at_100["loss"])
    # Jensen: log-mean-exp of the weights >= their mean (the ELBO's Monte-Carlo estimate on the same samples)
    log_w = log_px_z + Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    assert at_100["iwae"] >= log_w.mean()


def dreg_setup(k, copies, dtype=torch.float64):
    """A linear-Gaussian decoder p(x | z) = N(W z, 0.5^2 I) and a posterior off the exact one, on
    ``copies`` copies of one x: each row's gradient is an independent estimate of the same gradient."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(4, 2, generator=g, dtype=dtype)
    x = torch.randn(1, 4, generator=g, dtype=dtype).expand(copies, 4)
    mean = torch.full((copies, 2), 0.3, dtype=dtype, requires_grad=True)
    logvar = torch.full((copies, 2), -1.0, dtype=dtype, requires_grad=True)
    eps = torch.randn(k, copies, 2, generator=g, dtype=dtype)
    return W, x, mean, logvar, eps


class GaussianOfMean(nn.Module):
    """p(x | z) = N(decoder_output, 0.5^2 I) over the last dimension."""

    def log_prob(self, x, decoder_output):
        return Normal(decoder_output, 0.5).log_prob(x).sum(-1)


def encoder_gradients(dreg, k=8, copies=4000):
    """Per-copy gradients of the loss (times the batch size) with respect to mean and logvar: (copies, 4)."""
    W, x, mean, logvar, eps = dreg_setup(k, copies)
    z = mean + (0.5 * logvar).exp() * eps
    objective = Objective(GaussianOfMean(), importance_samples=k, dreg=dreg)
    decoder_output = (z @ W.T).float()
    terms = objective(x.float(), decoder_output, mean.float(), logvar.float(), step=0, z=z)
    mean_grad, logvar_grad = torch.autograd.grad(terms["loss"] * copies, (mean, logvar))
    return torch.cat([mean_grad, logvar_grad], dim=1).double()


def test_dreg_matches_its_surrogate_and_leaves_the_decoder_gradient_alone():
    """DReG's encoder gradient is -sum_i w~_i^2 d log w_i / dz_i dz_i/dphi with q's parameters held
    fixed in log w_i (Tucker et al. 2019); the decoder's is the IWAE gradient -sum_i w~_i d log w_i / dtheta."""
    k, copies = 5, 3
    W, x, mean, logvar, eps = dreg_setup(k, copies)
    W = W.clone().requires_grad_(True)
    z = mean + (0.5 * logvar).exp() * eps
    log_w = (
        GaussianOfMean().log_prob(x, z @ W.T)
        + Normal(0.0, 1.0).log_prob(z).sum(-1)
        - Normal(mean.detach(), (0.5 * logvar).exp().detach()).log_prob(z).sum(-1)
    )
    weights = torch.softmax(log_w.detach(), 0)
    surrogate_encoder = -(weights.square() * log_w).sum(0).mean()
    expected_enc = torch.autograd.grad(surrogate_encoder, (mean, logvar), retain_graph=True)
    expected_dec = torch.autograd.grad(-(weights * log_w).sum(0).mean(), W)[0]

    z = mean + (0.5 * logvar).exp() * eps
    terms = Objective(GaussianOfMean(), importance_samples=k, dreg=True)(x, z @ W.T, mean, logvar, step=0, z=z)
    *got_enc, got_dec = torch.autograd.grad(terms["loss"], (mean, logvar, W))
    for got, expected in zip([*got_enc, got_dec], [*expected_enc, expected_dec], strict=True):
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


def test_dreg_is_unbiased_with_less_variance_than_the_iwae_encoder_gradient():
    iwae, dreg = encoder_gradients(dreg=False), encoder_gradients(dreg=True)
    standard_error = (iwae.var(0) / len(iwae) + dreg.var(0) / len(dreg)).sqrt()
    assert ((iwae.mean(0) - dreg.mean(0)).abs() < 4 * standard_error).all()  # the same expected gradient
    assert (dreg.var(0) < 0.5 * iwae.var(0)).all()  # and a much less noisy one
