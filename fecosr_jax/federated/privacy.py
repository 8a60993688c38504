"""User-level differential privacy for what leaves a market (docs/design.md §7).

What leaves a market in federated pretraining is its model delta after K local steps. With
`federated.dp.enabled`, every local step is DP-SGD over the market's users:

  users sampled by Poisson sampling with rate q = E / U (E the expected batch size, U the
  market's users), truncated to T = federated.batch_size (the compiled batch shape: a random
  T of them when more are drawn) -> one gradient per user, clipped to L2 norm C
  (jax_privacy.clipped_grad) -> summed -> Gaussian noise of std sigma * C
  (jax_privacy.noise_addition.gaussian_privatizer) -> divided by E -> the client optimiser.

All of it runs on the device inside the compiled round. A user's gradient is that of their
mean loss over all their training windows (data.train_windows), clipped once. Epsilon of
market m after s of its steps, for (q_m, sigma_m, T, s, delta_m), is federated/accounting.py's;
only the steps of rounds a market trained in count. This module holds the settings (DPConfig),
each run's plan and report, and the check that nothing leaves a market unnoised undeclared.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from fecosr_jax.errors import ConfigError, check_ranges
from fecosr_jax.federated import accounting

# What a private run may send without noise, each covered only if declared public
# (DPConfig.public; docs/design.md §7): {name: (what it is, the setting that avoids it)}.
UNNOISED = {
    "catalogues": (
        "each market's item catalogue from its interactions (config.data.catalogue="
        "interactions): the softmax every user's gradient is taken over, and the ID methods' "
        "union vocabulary",
        "config.data.catalogue=published (each market's published items)",
    ),
    "weights": (
        "each market's count of training targets, its FedAvg weight "
        "(config.federated.weighting=examples)",
        "config.federated.weighting=uniform",
    ),
}


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """config.federated.dp: DP-SGD in every market's local steps.

    Attributes:
      enabled: on or off (off: the round is exactly the non-private one).
      clip_norm: C, the L2 bound of each user's gradient.
      noise_multiplier: sigma (noise std = sigma * C), used when target_epsilon is 0.
      target_epsilon: > 0: sigma calibrated per market so that every market ends the run at
        this epsilon (all rounds counted, so partial participation ends below it).
      delta: the delta of (epsilon, delta); 0 = 1 / (10 * the market's users).
      expected_batch_size: E, the expected users per step (q = E / users); 0 = half of
        federated.batch_size (the truncation bound T).
      public: what the run may send without noise because the user declares it public,
        comma-separated names of UNNOISED ("catalogues", "weights"); "" = nothing. A private
        run that sends one undeclared is refused (`check_sent`). A declaration changes no
        number: results.json lists it beside the epsilons.
    """

    enabled: bool = False
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    target_epsilon: float = 0.0
    delta: float = 0.0
    expected_batch_size: int = 0
    public: str = ""

    def __post_init__(self):
        ranges = {
            "clip_norm": self.clip_norm > 0,
            "noise_multiplier": self.noise_multiplier >= 0,
            "target_epsilon": self.target_epsilon >= 0,
            "delta": 0 <= self.delta < 1,
            "expected_batch_size": self.expected_batch_size >= 0,
        }
        check_ranges("config.federated.dp", self, ranges)
        unknown = [n for n in self.declared() if n not in UNNOISED]
        if unknown:
            raise ConfigError(
                f"config.federated.dp.public={self.public!r}: {unknown[0]} is not one of "
                f"{', '.join(UNNOISED)}"
            )

    def declared(self) -> list[str]:
        """The names `public` declares, in order."""
        return [n for n in str(self.public).split(",") if n]

    def expected_batch(self, batch_size: int) -> int:
        return self.expected_batch_size or max(1, batch_size // 2)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The privacy settings of every market of one run (host numbers, [M] arrays over the
    real markets), and its accountant."""

    names: tuple[str, ...]
    users: np.ndarray  # [M] int, U
    sampling_rate: np.ndarray  # [M] float, q = E / U
    noise_multiplier: np.ndarray  # [M] float, sigma
    delta: np.ndarray  # [M] float
    clip_norm: float
    expected_batch: int  # E
    truncated_batch: int  # T
    local_steps: int  # K: steps per round trained

    def epsilon(self, market: int, rounds_trained: int) -> float:
        """Market `market`'s epsilon after `rounds_trained` rounds (K steps each)."""
        return accounting.cached_epsilon(
            float(self.noise_multiplier[market]),
            int(self.users[market]),
            self.expected_batch,
            self.truncated_batch,
            float(self.delta[market]),
            rounds_trained * self.local_steps,
        )

    def report(self, rounds_trained: Sequence[int]) -> dict[str, dict]:
        """results.json's "privacy": per market epsilon (`epsilon_json`), delta and the
        settings behind it."""
        return {
            name: {
                "epsilon": epsilon_json(self.epsilon(m, int(rounds_trained[m]))),
                "delta": float(self.delta[m]),
                "noise_multiplier": float(self.noise_multiplier[m]),
                "clip_norm": self.clip_norm,
                "sampling_rate": float(self.sampling_rate[m]),
                "expected_batch_size": self.expected_batch,
                "truncated_batch_size": self.truncated_batch,
                "steps": int(rounds_trained[m]) * self.local_steps,
                "accountant": accounting.accountant_name(int(rounds_trained[m]) * self.local_steps),
            }
            for m, name in enumerate(self.names)
        }

    def arrays(self, num_markets: int) -> dict[str, np.ndarray]:
        """The round's per-market inputs [M] (padding markets: rate 0, noise 0)."""
        pad = num_markets - len(self.names)
        rate = np.concatenate([self.sampling_rate, np.zeros(pad)]).astype(np.float32)
        sigma = np.concatenate([self.noise_multiplier, np.zeros(pad)]).astype(np.float32)
        return {"dp_rate": rate, "dp_noise": sigma}


def epsilon_json(epsilon: float) -> float | None:
    """An epsilon as results.json, metrics.jsonl and an export write it: null where no finite
    bound holds (sigma 0: launch/sweep.py's noiseless inf), so the files stay strict JSON."""
    return None if math.isinf(epsilon) else epsilon


def epsilon_read(value: float | None) -> float:
    """An epsilon that `epsilon_json` wrote, read back: inf for null (files of runs before
    2026-12-07 held a non-standard Infinity, which Python's json also reads as inf)."""
    return math.inf if value is None else float(value)


def run_report(
    per_pretraining: dict[str, dict[str, dict]],
    not_private: dict[str, Sequence[str]],
    public: Sequence[str] = (),
) -> dict[str, dict]:
    """results.json's "privacy_composed": per market, every release of its data in one run.

    Args:
      per_pretraining: {pretraining: {market: its Plan.report entry}}, the private releases
        (a loaded export's included: its users' data are in the model too).
      not_private: {pretraining: its markets} of releases without DP (pooled data).
      public: what every market sent without noise, declared public (names of UNNOISED;
        `unnoised`): outside the epsilon.

    Returns:
      {market: {"epsilon" (composed_epsilon at the market's delta, `epsilon_json`: null for
      sigma 0, and where a release is not private, which "not_private" names), "delta",
      "releases", "not_private" (when any), "steps", "accountant", "public" (when any)}}.
    """
    by_market: dict[str, dict[str, dict]] = {}
    for key, markets in per_pretraining.items():
        for name, entry in markets.items():
            by_market.setdefault(name, {})[key] = entry
    for names in not_private.values():
        for name in names:
            by_market.setdefault(name, {})
    out = {}
    for name, entries in by_market.items():
        raw = sorted(k for k, names in not_private.items() if name in names)
        steps = sum(int(e["steps"]) for e in entries.values())
        delta = min((e["delta"] for e in entries.values()), default=None)
        epsilon = None if raw else accounting.composed_epsilon(list(entries.values()), delta)
        out[name] = {
            "epsilon": None if epsilon is None else epsilon_json(round(epsilon, 6)),
            "delta": delta,
            "releases": sorted(entries),
            **({"not_private": raw} if raw else {}),
            "steps": steps,
            "accountant": accounting.accountant_name(steps),
            **({"public": list(public)} if public else {}),
        }
    return out


def unnoised(weighting: str, catalogue: str) -> list[str]:
    """What a run with these settings sends without noise (names of UNNOISED)."""
    return [
        name
        for name, sent in (
            ("catalogues", catalogue == "interactions"),
            ("weights", weighting == "examples"),
        )
        if sent
    ]


def check_sent(dp: DPConfig, weighting: str, catalogue: str) -> None:
    """A private run sends nothing without noise that is not declared public.

    Raises:
      ConfigError: naming the first undeclared thing and the two ways out.
    """
    if not dp.enabled:
        return
    for name in unnoised(weighting, catalogue):
        if name not in dp.declared():
            what, way_out = UNNOISED[name]
            raise ConfigError(
                f"config.federated.dp.enabled=True sends {what} without noise: set "
                f"{way_out}, or declare it public with "
                f"config.federated.dp.public={','.join([*dp.declared(), name])}"
            )


def default_delta(users: int) -> float:
    return 1.0 / (10.0 * users)


def plan(
    dp: DPConfig,
    names: Sequence[str],
    users: Sequence[int],
    *,
    batch_size: int,
    local_steps: int,
    num_rounds: int,
    releases: Sequence[int] | None = None,
) -> Plan:
    """Each market's sampling rate, delta and noise multiplier (calibrated to
    dp.target_epsilon over all num_rounds * local_steps steps when it is set). `releases`:
    per market, how many private pretrainings of the run (this one included, each of as many
    steps) release its data; the target is then met by their composition, so each is
    calibrated over releases x the steps (default 1 each). Settings that cannot hold are
    refused (ConfigError) before anything trains."""
    try:
        import jax_privacy  # noqa: F401
    except ImportError:
        raise ConfigError(
            "config.federated.dp.enabled=True needs jax-privacy: pip install 'fecosr_jax[privacy]'"
        ) from None
    expected = dp.expected_batch(batch_size)
    if expected > batch_size:
        raise ConfigError(
            f"config.federated.dp.expected_batch_size={expected} is above "
            f"config.federated.batch_size={batch_size}, the most users one step takes"
        )
    users = np.asarray(users, np.int64)
    for name, u in zip(names, users, strict=True):
        if expected >= u:
            raise ConfigError(
                f"config.federated.dp.expected_batch_size={expected}: market {name} has only "
                f"{u} users; Poisson sampling needs a rate E / users below 1"
            )
    delta = np.asarray([dp.delta or default_delta(int(u)) for u in users])
    steps = num_rounds * local_steps
    releases = [1] * len(names) if releases is None else [int(r) for r in releases]
    if dp.target_epsilon:
        sigma = np.asarray(
            [
                accounting.calibrate(
                    dp.target_epsilon, int(u), expected, batch_size, float(d), steps * n, name
                )
                for name, u, d, n in zip(names, users, delta, releases, strict=True)
            ]
        )
    else:
        sigma = np.full(len(users), dp.noise_multiplier)
    return Plan(
        names=tuple(names),
        users=users,
        sampling_rate=expected / users,
        noise_multiplier=sigma,
        delta=delta,
        clip_norm=dp.clip_norm,
        expected_batch=expected,
        truncated_batch=batch_size,
        local_steps=local_steps,
    )


def advice(fed) -> str | None:
    """The warning for config.federated when its DP settings are known to learn nothing, else
    None: client Adam restarts every round, so its first steps move each coordinate by
    ~lr * sign(gradient), and under the noise that sign is mostly the noise's."""
    if not (fed.dp.enabled and fed.client_optimizer == "adam"):
        return None
    return (
        "config.federated.dp.enabled=True with config.federated.client_optimizer=adam: the "
        "client's Adam restarts every round and steps by ~lr * sign(gradient), which DP noise "
        "dominates. On XMRec it learned nothing at sigma 0.6, where client_optimizer=sgd "
        "(client_lr=3, dp.expected_batch_size=128, local_steps=1) learned (docs/results.md, "
        "'Differential privacy: which settings learn')"
    )
