"""Privacy accounting of DP-SGD with Google's dp-accounting library (nothing computed by hand).

A run is a list of stages, each ``steps`` compositions of the Poisson-subsampled Gaussian
mechanism with sampling rate ``q`` and noise multiplier ``sigma`` (divided by the sensitivity
factor: 2 for mia_prune's micro-batch clipping). ``epsilon`` reports ε for a δ with the RDP or
the PLD accountant (add/remove-one adjacency); ``calibrate`` finds the smallest σ that meets a
target (ε, δ).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import dp_accounting
from absl import logging
from dp_accounting import pld, rdp

from jaxmia.errors import UserError

ACCOUNTANTS = ("rdp", "pld")


@contextlib.contextmanager
def _quiet():
    """dp-accounting's RDP logs a warning for every fractional order whose series does not
    converge at small sigma (it drops that order; the bound stays valid). Hide them."""
    previous = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(previous)


def _accountant(name: str):
    if name == "rdp":
        return rdp.RdpAccountant()
    if name == "pld":
        return pld.PLDAccountant()
    raise UserError(f"unknown accountant '{name}'; choose one of {', '.join(ACCOUNTANTS)}")


def event(noise_multiplier: float, stages: Sequence[tuple[float, int]],
          sensitivity_factor: float = 1.0) -> dp_accounting.DpEvent:
    """The DpEvent of ``stages`` = [(sampling_rate, steps), ...] at one noise multiplier."""
    if noise_multiplier <= 0:
        return dp_accounting.NonPrivateDpEvent()
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / sensitivity_factor)
    return dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, gaussian), n)
        for q, n in stages if n > 0])


def epsilon(noise_multiplier: float, stages: Sequence[tuple[float, int]], delta: float,
            accountant: str = "rdp", sensitivity_factor: float = 1.0) -> float:
    """ε of the composed stages at ``delta`` (inf without noise, 0 without steps)."""
    if not 0 < delta < 1:
        raise UserError(f"--delta must be in (0, 1), got {delta}")
    if sum(n for _, n in stages) == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    acc = _accountant(accountant)
    with _quiet():
        acc.compose(event(noise_multiplier, stages, sensitivity_factor))
        return float(acc.get_epsilon(delta))


def calibrate(target_epsilon: float, stages: Sequence[tuple[float, int]], delta: float,
              accountant: str = "rdp", sensitivity_factor: float = 1.0) -> float:
    """The smallest noise multiplier whose ε over ``stages`` is at most ``target_epsilon``."""
    if not target_epsilon > 0:
        raise UserError(f"--target_epsilon must be > 0, got {target_epsilon}")
    if not 0 < delta < 1:
        raise UserError(f"--delta must be in (0, 1), got {delta}")
    with _quiet():
        return float(dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(accountant),
            lambda sigma: event(sigma, stages, sensitivity_factor),
            target_epsilon, delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0)))
