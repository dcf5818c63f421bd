import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from vaelab.annealing import Linear
from vaelab.objectives import BernoulliLikelihood, GaussianLikelihood, Objective, kl_standard_normal


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


def test_gaussian_log_prob_is_scaled_mse_plus_constant():
    torch.manual_seed(0)
    sigma, x, params = 0.3, torch.rand(3, 1, 28, 28), torch.randn(3, 1, 28, 28)
    squared_error = (x - torch.sigmoid(params)).square().sum(dim=(1, 2, 3))
    constant = 784 * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(GaussianLikelihood(sigma).log_prob(x, params), -squared_error / (2 * sigma**2) - constant)


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
    x, params, mean, logvar = batch()
    terms = Objective(BernoulliLikelihood(), beta=4.0)(x, params, mean, logvar, step=0)
    recon = F.binary_cross_entropy_with_logits(params, x, reduction="sum") / 8
    kl = kl_standard_normal(mean, logvar).sum() / 8
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(terms["elbo"], -(recon + kl))  # the plain ELBO ignores beta
    torch.testing.assert_close(terms["loss"], recon + 4.0 * kl)
    assert terms["beta"] == 4.0


def test_annealing_scales_the_kl_weight_by_global_step():
    x, params, mean, logvar = batch()
    objective = Objective(BernoulliLikelihood(), beta=2.0, schedule=Linear(warmup_steps=100))
    at_0, at_50 = objective(x, params, mean, logvar, step=0), objective(x, params, mean, logvar, step=50)
    assert at_0["beta"] == 0.0 and at_50["beta"] == 1.0
    torch.testing.assert_close(at_0["loss"], at_0["recon"])
    torch.testing.assert_close(at_50["loss"], at_50["recon"] + at_50["kl"])


def test_free_bits_hold_each_dimension_at_least_lambda():
    x, params, _, _ = batch()
    mean, logvar = torch.zeros(8, 6), torch.zeros(8, 6)
    mean[:, 0] = 3.0  # dimension 0 carries 4.5 nats, the rest none
    terms = Objective(BernoulliLikelihood(), free_bits=0.5)(x, params, mean, logvar, step=0)
    torch.testing.assert_close(terms["kl"], torch.tensor(4.5))
    torch.testing.assert_close(terms["loss"] - terms["recon"], torch.tensor(4.5 + 5 * 0.5))


def test_capacity_control_penalises_distance_to_the_ramped_target():
    x, params, mean, logvar = batch()
    capacity = {"gamma": 10.0, "max_nats": 20.0, "ramp_steps": 100}
    objective = Objective(BernoulliLikelihood(), capacity=capacity)
    terms = objective(x, params, mean, logvar, step=25)
    assert terms["capacity"] == 5.0
    torch.testing.assert_close(terms["loss"], terms["recon"] + 10.0 * (terms["kl"] - 5.0).abs())
    assert objective(x, params, mean, logvar, step=10_000)["capacity"] == 20.0


@pytest.mark.parametrize("kwargs", [{"beta": -1.0}, {"free_bits": -0.1}])
def test_objective_rejects_negative_weights(kwargs):
    with pytest.raises(ValueError, match="model."):
        Objective(BernoulliLikelihood(), **kwargs)
