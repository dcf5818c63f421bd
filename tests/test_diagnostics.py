import math

import pytest
import torch

from vaelab.diagnostics import (
    active_unit_variances,
    active_units,
    kl_per_dimension,
    mutual_information,
)


def hand_built_posterior(n=2000):
    """dim 0: means spread with variance 1 (active); dim 1: variance 1e-4 (inactive); dim 2: prior (collapsed)."""
    g = torch.Generator().manual_seed(0)
    mean = torch.zeros(n, 3)
    mean[:, 0] = torch.randn(n, generator=g)
    mean[:, 1] = 0.01 * torch.randn(n, generator=g)
    logvar = torch.zeros(n, 3)
    logvar[:, 0] = math.log(0.25)
    return mean, logvar


def test_active_units_follow_burda_threshold():
    mean, _ = hand_built_posterior()
    variances = active_unit_variances(mean)
    assert variances[0].item() == pytest.approx(1.0, rel=0.1)
    assert variances[1].item() == pytest.approx(1e-4, rel=0.1)
    assert variances[2].item() == 0.0
    assert active_units(mean) == 1
    assert active_units(mean, threshold=1e-5) == 2


def test_kl_per_dimension_matches_closed_form():
    mean, logvar = hand_built_posterior()
    kl = kl_per_dimension(mean, logvar)
    expected_0 = 0.5 * (mean[:, 0].square().mean() + 0.25 - 1 - math.log(0.25))
    assert kl[0].item() == pytest.approx(expected_0.item(), rel=1e-5)
    assert kl[1].item() == pytest.approx(0.5 * mean[:, 1].square().mean().item(), rel=1e-5)
    assert kl[2].item() == 0.0


def test_mutual_information_is_zero_for_collapsed_and_log_n_for_separated_posteriors():
    n = 500
    collapsed = mutual_information(torch.zeros(n, 4), torch.zeros(n, 4), generator=torch.Generator().manual_seed(0))
    assert abs(collapsed) < 0.1  # analytic entropy minus a Monte-Carlo term (He et al. 2019): noise only
    separated_means = torch.arange(n, dtype=torch.float32)[:, None] * 10.0
    separated = mutual_information(
        separated_means, torch.full((n, 1), math.log(0.01)), generator=torch.Generator().manual_seed(0)
    )
    assert separated == pytest.approx(math.log(n), abs=0.05)  # the most it can be


def test_mutual_information_of_gaussian_channel():
    # x ~ N(0, 1) encoded as q(z | x) = N(x, s^2): I(x; z) = 0.5 log(1 + 1 / s^2)
    g = torch.Generator().manual_seed(0)
    n, s = 4000, 0.5
    mean = torch.randn(n, 1, generator=g)
    estimate = mutual_information(mean, torch.full((n, 1), math.log(s**2)), generator=g)
    assert estimate == pytest.approx(0.5 * math.log(1 + 1 / s**2), abs=0.05)
