"""Privacy accounting: the same numbers as direct dp-accounting calls and a published value."""

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from jaxmia import accounting
from jaxmia.errors import UserError


def _direct(accountant, sigma, q, steps, delta):
    acc = accountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
                steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("name,cls", [("rdp", rdp.RdpAccountant), ("pld", pld.PLDAccountant)])
@pytest.mark.parametrize("sigma,q,steps", [(1.1, 256 / 60000, 1000), (2.0, 0.1, 450)])
def test_epsilon_equals_direct_dp_accounting(name, cls, sigma, q, steps):
    ours = accounting.epsilon(sigma, [(q, steps)], 1e-5, name)
    assert ours == pytest.approx(_direct(cls, sigma, q, steps, 1e-5), rel=1e-9)


def test_published_value_abadi_et_al_2016():
    # Abadi et al. 2016, section 3.1: q = 0.01, sigma = 4, 10,000 steps, delta = 1e-5 gives
    # epsilon ~= 1.26 with the moments accountant. RDP (Mironov et al.) is at least as tight,
    # PLD tighter still.
    eps_rdp = accounting.epsilon(4.0, [(0.01, 10_000)], 1e-5, "rdp")
    eps_pld = accounting.epsilon(4.0, [(0.01, 10_000)], 1e-5, "pld")
    assert 0.9 < eps_rdp <= 1.26
    assert 0.8 < eps_pld <= eps_rdp


def test_stages_compose_and_microbatch_doubles_sensitivity():
    one = accounting.epsilon(1.5, [(0.1, 300)], 1e-5)
    two = accounting.epsilon(1.5, [(0.1, 100), (0.1, 200)], 1e-5)
    assert two == pytest.approx(one, rel=1e-9)
    assert accounting.epsilon(3.0, [(0.1, 300)], 1e-5, sensitivity_factor=2.0) == pytest.approx(
        one, rel=1e-9)
    assert accounting.epsilon(1.5, [(0.1, 0)], 1e-5) == 0.0


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_calibrate_meets_the_target_tightly(target):
    sigma = accounting.calibrate(target, [(0.05, 500)], 1e-5)
    assert accounting.epsilon(sigma, [(0.05, 500)], 1e-5) <= target * (1 + 1e-3)
    assert accounting.epsilon(0.97 * sigma, [(0.05, 500)], 1e-5) > target


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="delta"):
        accounting.epsilon(1.0, [(0.1, 10)], 1.5)
    with pytest.raises(UserError, match="accountant"):
        accounting.epsilon(1.0, [(0.1, 10)], 1e-5, "moments")
    with pytest.raises(UserError, match="target_epsilon"):
        accounting.calibrate(-1.0, [(0.1, 10)], 1e-5)
