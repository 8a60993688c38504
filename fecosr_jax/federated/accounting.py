"""The accountant: epsilon of user-level DP-SGD's releases (docs/design.md §7).

Each DP-SGD step is the truncated Poisson subsampled Gaussian event (q = E / U, truncated
at T, noise multiplier sigma); jax_privacy's DP-SGD accountant over dp_accounting's
privacy-loss distributions (PLD) gives the epsilon of `steps` of them at delta, composes a
market's releases in one run, and calibrates sigma to a target epsilon. The settings and
checks around it are federated/privacy.py's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from fecosr_jax.errors import ConfigError

# Beyond this noise multiplier a model learns nothing: a target epsilon that needs more is
# refused before training.
MAX_NOISE_MULTIPLIER = 100.0
# The privacy-loss distribution's discretisation. Its bound is pessimistic (never below a
# finer one's), and the pessimism grows with the steps composed. 0.01 computes in ~0.03 s
# instead of ~2 s at the library's 1e-4; up to PLD_STEPS steps (this project's configs
# compose 60 to 300) it reported at most 0.03 (60 steps) and 0.09 (300 steps) above 1e-4,
# under 2.5% of epsilon where epsilon >= 1 (tests/test_privacy.py). Beyond PLD_STEPS the
# interval shrinks in proportion: at 10,000 steps 0.01 would report 1.76 where 1e-4 gives
# 0.95 (Abadi et al.'s setting).
PLD_INTERVAL = 1e-2
PLD_STEPS = 300


def pld_interval(steps: int) -> float:
    """The discretisation used for `steps` composed steps (PLD_INTERVAL up to PLD_STEPS)."""
    return PLD_INTERVAL * min(1.0, PLD_STEPS / max(int(steps), 1))


def accountant_name(steps: int) -> str:
    """results.json's "accountant" of an epsilon over `steps` steps."""
    return (
        f"PLD (dp_accounting via jax_privacy, discretisation {pld_interval(steps):.3g}), "
        "truncated Poisson subsampled Gaussian"
    )


def _accountant(interval: float):
    from jax_privacy import accounting

    return accounting.DpsgdTrainingAccountant(
        accounting.PldAccountantConfig(value_discretization_interval=interval)
    )


def _params(sigma, users, expected, truncated, delta):
    from jax_privacy import accounting

    return accounting.DpParams(
        noise_multipliers=sigma,
        num_samples=users,
        delta=delta,
        batch_size=expected,
        truncated_batch_size=truncated,
        sampling_method=accounting.SamplingMethod.POISSON,
    )


def epsilon(sigma, users, expected, truncated, delta, steps, interval=None) -> float:
    """The epsilon of `steps` DP-SGD steps on `users` users, each step Poisson-sampling
    `expected` of them (truncated at `truncated`; None = not truncated), noise multiplier
    `sigma`, at `delta`; PLD accounting with discretisation `interval` (default
    `pld_interval(steps)`)."""
    if steps == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    params = _params(sigma, users, expected, truncated, delta)
    interval = pld_interval(steps) if interval is None else interval
    return float(_accountant(interval).compute_epsilon(steps, params))


cached_epsilon = functools.lru_cache(maxsize=4096)(epsilon)  # calibration asks for the same ones


def composed_epsilon(releases: Sequence[dict], delta: float) -> float:
    """The epsilon at `delta` of every release of one market's data in a run, composed.

    Each release is one pretraining's entry for the market (`Plan.report`: noise multiplier,
    sampling rate, expected and truncated batch, steps), each of its steps the truncated
    Poisson subsampled Gaussian event; dp_accounting's PLD accountant composes them (add or
    remove one user, as jax_privacy's; discretisation `pld_interval` of all the steps). One
    release gives its own epsilon."""
    import dp_accounting

    steps = sum(int(r["steps"]) for r in releases)
    if steps == 0:
        return 0.0
    if any(r["noise_multiplier"] == 0 and r["steps"] for r in releases):
        return math.inf
    accountant = dp_accounting.pld.PLDAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        value_discretization_interval=pld_interval(steps),
    )
    for r in releases:
        if r["steps"]:
            event = dp_accounting.TruncatedSubsampledGaussianDpEvent(
                dataset_size=round(r["expected_batch_size"] / r["sampling_rate"]),
                sampling_probability=r["sampling_rate"],
                truncated_batch_size=r["truncated_batch_size"],
                noise_multiplier=r["noise_multiplier"],
            )
            accountant.compose(event, int(r["steps"]))
    return float(accountant.get_epsilon(delta))


def calibrate(target, users, expected, truncated, delta, steps, name) -> float:
    """The noise multiplier that gives market `name` epsilon `target` at `delta` after `steps`
    steps (jax_privacy's calibrate_noise_multiplier, the same accountant as `epsilon`).

    Raises:
      ConfigError: even MAX_NOISE_MULTIPLIER gives more than `target`.
    """
    from jax_privacy import accounting

    best = cached_epsilon(MAX_NOISE_MULTIPLIER, users, expected, truncated, delta, steps)
    if best > target:
        raise ConfigError(
            f"config.federated.dp.target_epsilon={target} cannot be met in market {name}: "
            f"with {users} users, expected batch {expected} (q={expected / users:.4g}), "
            f"{steps} steps and delta={delta:.3g}, even sigma={MAX_NOISE_MULTIPLIER:g} gives "
            f"epsilon {best:.3g}"
        )
    return float(
        accounting.calibrate_noise_multiplier(
            target_epsilon=target,
            accountant=_accountant(pld_interval(steps)),
            batch_sizes=expected,
            num_updates=steps,
            num_samples=users,
            target_delta=delta,
            truncated_batch_size=truncated,
        )
    )
