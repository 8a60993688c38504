"""User-level DP in the compiled round: Poisson sampling, each user's gradient clipped to C
(worked out by hand), the noise's std, determinism, and the accountant against
dp_accounting's plain Poisson subsampled Gaussian."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fecosr_jax.data import leave_one_out, stack_markets, synthetic
from fecosr_jax.errors import ConfigError
from fecosr_jax.federated import accounting, privacy
from fecosr_jax.federated import round as fr
from fecosr_jax.federated.client import batch_loss, make_client, poisson_users
from fecosr_jax.federated.config import FedConfig
from fecosr_jax.model import ModelConfig, init_params

pytest.importorskip("jax_privacy")

MODEL = ModelConfig(
    hidden=16, num_layers=1, num_heads=2, ffn_dim=32, max_len=8, num_experts=2, dropout=0.0
)
GEN = synthetic.SyntheticConfig(
    num_markets=3, users_per_market=30, items_per_market=40, num_clusters=5, semantic_dim=8, seed=7
)
DP = privacy.DPConfig(enabled=True, clip_norm=0.05, noise_multiplier=0.0, expected_batch_size=4)
FED = FedConfig(local_steps=1, batch_size=8, client_optimizer="sgd", client_lr=1.0, dp=DP)


@pytest.fixture(scope="module")
def stacked():
    splits = [leave_one_out(m, MODEL.max_len) for m in synthetic.synthetic_markets(GEN)]
    return stack_markets(splits)


def market_data(stacked, plan, m=0):
    data = fr.round_data(stacked, FED) | plan.arrays(stacked.num_markets)
    return {k: jnp.asarray(v[m]) for k, v in data.items()}


def make_plan(stacked, dp=DP, fed=FED):
    users = stacked.num_train_rows[: len(stacked.names)]
    return privacy.plan(
        dp, stacked.names, users, batch_size=fed.batch_size, local_steps=fed.local_steps,
        num_rounds=3,
    )  # fmt: skip


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(tree))])


def test_poisson_sampling_rate_truncation_and_padding():
    draw = jax.jit(jax.vmap(lambda k: poisson_users(k, jnp.int32(30), 0.2, 8, 40)))
    rows, padding = draw(jax.random.split(jax.random.key(0), 4000))
    rows, real = np.asarray(rows), ~np.asarray(padding)
    counts = real.sum(1)
    # Binomial(30, 0.2) truncated at 8: mean 6 less the tail above 8
    assert abs(counts.mean() - 5.83) < 0.1 and counts.max() == 8
    picked = np.zeros(40)
    for r, k in zip(rows, real, strict=True):
        assert len(set(r[k])) == k.sum()  # no user twice in a step
        picked[r[k]] += 1
    assert picked[30:].sum() == 0  # padding rows are never users
    rate = picked[:30] / 4000
    assert np.all(np.abs(rate - rate.mean()) < 0.03)  # every user equally likely


@pytest.mark.parametrize("clip_norm", [0.05, 1e6], ids=["every user clipped", "none clipped"])
def test_each_users_gradient_is_clipped_to_c_by_hand(stacked, clip_norm):
    """One SGD step (lr 1, sigma 0) moves the parameters by the sum over the sampled users of
    each user's gradient scaled to norm <= C, divided by E: computed here user by user. With
    C above every norm it is the plain sum of the users' gradients over E: each user's mean
    loss weighs the same, where the non-private gradient of the same users weighs each
    training target the same (worked out below). The non-private round also draws its batch
    uniformly with replacement, not by Poisson sampling: the two rounds agree only given the
    same users, the same target counts and |B| = E."""
    fed = dataclasses.replace(FED, dp=dataclasses.replace(DP, clip_norm=clip_norm))
    plan = make_plan(stacked, fed.dp, fed)
    market = market_data(stacked, plan)
    client = make_client(MODEL, fed)
    params = init_params(MODEL, jax.random.key(0), GEN.semantic_dim)
    values = fed.values()
    state = client.init(params, jnp.int32(1), market["market_index"], values)
    new, _ = jax.jit(client.step)(state, market, jnp.int32(0), values)

    batch_key, _ = jax.random.split(jax.random.fold_in(state.key, 0))
    rows, padding = poisson_users(
        batch_key, market["num_rows"], market["dp_rate"], 8, market["train"].shape[0]
    )
    user_grad = jax.jit(
        jax.grad(lambda p, row: batch_loss(MODEL, fed, p, row[None], market, batch_key)[0])
    )
    grads = [
        flat(user_grad(params, market["train"][u])) for u in np.asarray(rows)[~np.asarray(padding)]
    ]
    norms = np.array([np.linalg.norm(g) for g in grads])
    total = sum(g * min(1.0, clip_norm / n) for g, n in zip(grads, norms, strict=True))
    assert len(norms) >= 2
    if clip_norm < 1:
        assert norms.min() > clip_norm  # every user was clipped
    else:
        assert norms.max() < clip_norm  # none was: the sum of the users' own gradients
    moved = flat(params) - flat(new.params)
    np.testing.assert_allclose(moved, total / DP.expected_batch_size, atol=1e-6)
    assert np.linalg.norm(moved) <= len(norms) * clip_norm / DP.expected_batch_size + 1e-6
    if clip_norm > 1:
        # sigma 0 and no user clipped against the non-private objective on the same users:
        # both are weighted sums of the same users' gradients g_u (of each user's mean loss),
        # the private step's with weight 1 / E each, the non-private gradient's with n_u / N
        # (n_u the user's training targets, N theirs in all): it weighs each target the same.
        # They are equal when every user has as many targets and |B| = E.
        sampled = market["train"][np.asarray(rows)[~np.asarray(padding)]]
        count = jax.jit(lambda r: batch_loss(MODEL, fed, params, r[None], market, batch_key)[1])
        counts = np.array([int(count(r)) for r in sampled])
        assert len(set(counts)) > 1  # the weights differ here
        plain = jax.jit(
            jax.grad(lambda p: batch_loss(MODEL, fed, p, sampled, market, batch_key)[0])
        )
        weighted = sum(g * n for g, n in zip(grads, counts, strict=True)) / counts.sum()
        np.testing.assert_allclose(flat(plain(params)), weighted, atol=1e-6)


def test_a_user_is_all_their_windows_clipped_once_by_hand():
    """data.train_windows > 1 under DP: two users with two training windows each (9 items,
    L = 3). A private step (sigma 0, lr 1, E 1, C small) samples users, not rows, and moves
    the parameters by the sum over the sampled users of the gradient of each user's mean loss
    over both their windows, clipped once to C: worked out here user by user. Clipping each
    window as if it were a user would give another step."""
    from fecosr_jax.data.market import Market
    from fecosr_jax.federated.client import train_pairs

    items = np.concatenate([np.arange(1, 10), np.arange(3, 12)]).astype(np.int32)
    rng = np.random.default_rng(0)
    semantics = np.concatenate([np.zeros((1, 8)), rng.normal(size=(11, 8))]).astype(np.float32)
    market = Market(
        "m", np.array([f"i{k}" for k in range(1, 12)]), np.array(["u0", "u1"]),
        np.array([0, 9, 18]), items, semantics=semantics,
    )  # fmt: skip
    split = leave_one_out(market, 3, train_windows=2)
    np.testing.assert_array_equal(split.train_user, [0, 0, 1, 1])  # two windows each
    stacked = stack_markets([split])
    np.testing.assert_array_equal(stacked.user_rows[0], [[0, 1], [2, 3]])
    model = dataclasses.replace(MODEL, max_len=3)
    clip = 0.05
    fed = dataclasses.replace(
        FED, batch_size=2, dp=dataclasses.replace(DP, clip_norm=clip, expected_batch_size=1)
    )
    data = {k: jnp.asarray(v[0]) for k, v in fr.round_data(stacked, fed).items()}
    data |= {"dp_rate": jnp.float32(0.9), "dp_noise": jnp.float32(0)}
    client = make_client(model, fed)
    params = init_params(model, jax.random.key(0), 8)
    values = fed.values()
    state = client.init(params, jnp.int32(1), data["market_index"], values)
    for step in range(20):  # a step that samples both users
        batch_key, _ = jax.random.split(jax.random.fold_in(state.key, step))
        users, padding = poisson_users(batch_key, data["num_users"], data["dp_rate"], 2, 2)
        if not np.asarray(padding).any():
            break
    new, _ = jax.jit(client.step)(state, data, jnp.int32(step), values)
    moved = flat(params) - flat(new.params)

    @jax.jit  # one program per number of rows: eagerly, every op would compile on its own
    def grad_of(rows):  # of the mean loss over the rows' training targets
        return jax.grad(lambda p: batch_loss(model, fed, p, rows, data, batch_key)[0])(params)

    def grad(rows):
        return flat(grad_of(rows))

    def clipped(g):
        return g * min(1.0, clip / np.linalg.norm(g))

    train = np.asarray(data["train"])
    assert all((train_pairs(train)[1] > 0).sum(1) == 3)  # every window holds 3 targets
    per_user = sum(clipped(grad(train[[2 * u, 2 * u + 1]])) for u in range(2))
    np.testing.assert_allclose(moved, per_user / 1, atol=1e-6)
    per_window = sum(clipped(grad(train[[r]])) for r in range(4))
    assert np.abs(moved - per_window).max() > 1e-3  # not each window as a user


@pytest.mark.parametrize("catalogue", ["published", "interactions"])
def test_removing_a_user_with_a_unique_item_changes_no_other_users_clipped_gradient(catalogue):
    """Under DP a user's contribution must be their own clipped gradient: with the published
    catalogue, removing user u, the only one with item i9, leaves every other user's
    clipped gradient (and the ID methods' union vocabulary) bit for bit the same. With the
    catalogue taken from the interactions it does not: i9 leaves the softmax every other
    user's loss is taken over, so one user moves the others' gradients (why such a run must
    declare its catalogues public)."""
    from fecosr_jax.data import semantics
    from fecosr_jax.data.market import Interactions, market_from_interactions
    from fecosr_jax.data.split import union_vocabulary

    sequences = {"u0": [1, 2, 3, 4, 5], "u1": [2, 3, 4, 1, 5, 6], "u2": [6, 5, 4, 3],
                 "u3": [7, 1, 2, 9, 3], "u4": [8, 7, 6, 5, 4]}  # fmt: skip
    published = [f"i{k}" for k in range(1, 10)]  # i9: u3's alone

    def split(without=None):
        rows = [(u, f"i{k}", t) for u, seq in sequences.items() if u != without
                for t, k in enumerate(seq)]  # fmt: skip
        log = Interactions(*map(np.asarray, zip(*rows, strict=True)), source="t")
        cat = published if catalogue == "published" else None
        market = market_from_interactions("m", log, catalogue=cat)
        (market,) = semantics.random_semantics([market], dim=8, seed=0)  # vectors by item id
        return leave_one_out(market, 4)

    model = dataclasses.replace(MODEL, max_len=4)
    fed = dataclasses.replace(FED, dp=dataclasses.replace(DP, clip_norm=0.05))
    params = init_params(model, jax.random.key(0), 8)

    def clipped_gradients(s):  # {user id: their clipped gradient}
        data = {k: jnp.asarray(v[0]) for k, v in fr.round_data(stack_markets([s]), fed).items()}
        grad = jax.jit(
            jax.grad(lambda p, r: batch_loss(model, fed, p, r, data, jax.random.key(1))[0])
        )
        out = {}
        for user, rows in zip(s.user_ids, np.asarray(data["user_rows"]), strict=True):
            g = flat(grad(params, data["train"][rows[rows >= 0]]))
            out[str(user)] = g * min(1.0, 0.05 / np.linalg.norm(g))
        return out

    whole, without = split(), split(without="u3")
    with_u, without_u = clipped_gradients(whole), clipped_gradients(without)
    assert sorted(without_u) == ["u0", "u1", "u2", "u4"]
    same = [np.array_equal(with_u[u], without_u[u]) for u in without_u]
    if catalogue == "published":
        assert all(same)
        np.testing.assert_array_equal(union_vocabulary([whole]), union_vocabulary([without]))
    else:
        assert not any(same)  # every other user's gradient moved with u3's item
        assert len(union_vocabulary([whole])) == len(union_vocabulary([without])) + 1


def test_noise_std_is_sigma_c_over_e(stacked):
    """Same users (the batch key is the step's), noise from its own stream: the difference of
    a sigma = 2 step and a sigma = 0 step is Gaussian with std sigma * C / E (lr 1)."""
    plan = make_plan(stacked)
    client = make_client(MODEL, FED)
    params = init_params(MODEL, jax.random.key(0), GEN.semantic_dim)
    values = FED.values()
    steps = []
    for sigma in (0.0, 2.0):
        market = market_data(stacked, plan) | {"dp_noise": jnp.float32(sigma)}
        state = client.init(params, jnp.int32(1), market["market_index"], values)
        steps.append(flat(jax.jit(client.step)(state, market, jnp.int32(0), values)[0].params))
    noise = steps[1] - steps[0]
    expected = 2.0 * DP.clip_norm / DP.expected_batch_size
    n = noise.size  # 2704 parameters: the sample std is within 1.4% (one sd) of the true one
    assert n > 2000
    assert abs(noise.std() / expected - 1) < 0.05 and abs(noise.mean()) < 4 * expected / n**0.5


def test_private_round_is_deterministic_and_seeded(stacked):
    fed = dataclasses.replace(FED, local_steps=2, dp=dataclasses.replace(DP, noise_multiplier=1.0))
    plan = make_plan(stacked, fed.dp, fed)
    out = []
    for seed in (0, 0, 1):
        mesh = fr.make_mesh(jax.devices()[:1])
        r = fr.build_round(MODEL, dataclasses.replace(fed, seed=seed), 3, mesh)
        data = r.put(fr.round_data(stacked, fed) | plan.arrays(stacked.num_markets))
        state = r.init(init_params(MODEL, jax.random.key(0), GEN.semantic_dim))
        for _ in range(2):
            state, metrics = r.step(state, data)
        assert np.all(np.isfinite(np.asarray(metrics["market_loss"])))
        out.append(flat(state.params))
    np.testing.assert_array_equal(out[0], out[1])
    assert np.abs(out[0] - out[2]).max() > 1e-4


def test_markets_in_sequence_give_the_vmapped_private_round(stacked):
    """federated.markets_per_step=1 (what docs/running.md gives DP sweeps to bound the per-user
    gradients' memory) trains the markets one after another: each draws the same users and the
    same noise (keys from the seed, round and market index) as in the vmapped round."""
    fed = dataclasses.replace(FED, local_steps=2, dp=dataclasses.replace(DP, noise_multiplier=1.0))
    plan = make_plan(stacked, fed.dp, fed)
    out = []
    for at_once in (0, 1):
        f = dataclasses.replace(fed, markets_per_step=at_once)
        r = fr.build_round(MODEL, f, 3, fr.make_mesh(jax.devices()[:1]))
        data = r.put(fr.round_data(stacked, f) | plan.arrays(stacked.num_markets))
        state = r.init(init_params(MODEL, jax.random.key(0), GEN.semantic_dim))
        for _ in range(2):
            state, _ = r.step(state, data)
        out.append(flat(state.params))
    np.testing.assert_allclose(out[1], out[0], atol=1e-5)


def test_epsilon_without_truncation_equals_dp_accountings_poisson_gaussian():
    """With T >= the users no batch can be truncated: the plan's epsilon (truncated event) is
    dp_accounting's PLD of the plain Poisson subsampled Gaussian, composed step by step (at
    dp_accounting's default, finer discretisation)."""
    dp = privacy.DPConfig(enabled=True, noise_multiplier=1.1, expected_batch_size=10)
    plan = privacy.plan(dp, ["a"], [200], batch_size=200, local_steps=5, num_rounds=20)
    expected = plain_poisson_epsilon(10 / 200, 1.1, 100, 1 / 2000)
    assert plan.delta[0] == 1 / 2000  # default delta: 1 / (10 users)
    # the plan's coarser discretisation (accounting.PLD_INTERVAL) bounds it from above, closely
    assert expected <= plan.epsilon(0, 20) <= 1.03 * expected
    assert plan.epsilon(0, 10) < plan.epsilon(0, 20)  # only rounds trained count
    report = plan.report([20])["a"]
    assert report["steps"] == 100 and report["sampling_rate"] == 0.05


def plain_poisson_epsilon(q, sigma, steps, delta, interval=1e-4) -> float:
    """dp_accounting's PLD of the plain Poisson subsampled Gaussian, composed `steps` times."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    accountant.compose(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    return accountant.get_epsilon(delta)


def test_epsilon_of_the_setting_abadi_et_al_published():
    """Abadi et al., "Deep Learning with Differential Privacy" (CCS 2016), section 3.1: q =
    0.01, sigma = 4, delta = 1e-5 and 10,000 steps give epsilon ~1.26 by their moments
    accountant, ~9.34 by the strong composition theorem. Both are upper bounds; PLD
    accounting is tighter than either, and dp_accounting's RDP accountant (the moments
    accountant's successor) lies between: 1.04. The accountant of a run, at its own
    discretisation for 10,000 steps, gives what the library's finest gives, within 2%."""
    import dp_accounting

    rdp = dp_accounting.rdp.RdpAccountant()
    rdp.compose(
        dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(4.0)), 10_000
    )
    ours = accounting.epsilon(4.0, 100_000, 1000, None, 1e-5, 10_000)  # users, E: q = 0.01
    finest = accounting.epsilon(4.0, 100_000, 1000, None, 1e-5, 10_000, interval=1e-4)
    assert finest <= ours <= 1.02 * finest
    assert 0.9 < ours < rdp.get_epsilon(1e-5) < 1.26 < 9.34
    # At the coarse 0.01 the pessimism of 10,000 compositions would have reported 1.76.
    assert accounting.epsilon(4.0, 100_000, 1000, None, 1e-5, 10_000, interval=1e-2) > 1.7


@pytest.mark.parametrize("steps, sigma", [(60, 0.6), (300, 2.0), (3000, 2.0)])
def test_the_runs_discretisation_bounds_the_finest_closely(steps, sigma):
    """accounting.pld_interval: 0.01 up to 300 steps (the project's configs compose 60 to 300),
    finer in proportion beyond. The bound is never below the library's finest (1e-4) and at
    most 0.09 above it, 2.5% where epsilon >= 1 (at sigma 2 and 300 steps it reports 0.31
    for 0.22; at sigma 0.6, 4.73 for 4.73). Truncated event, T = 2E as in every config."""
    ours = accounting.epsilon(sigma, 2000, 16, 32, 1 / 20_000, steps)
    finest = accounting.epsilon(sigma, 2000, 16, 32, 1 / 20_000, steps, interval=1e-4)
    assert finest <= ours <= finest + (0.09 if steps <= accounting.PLD_STEPS else 0.005)
    assert finest < 1 or ours <= 1.025 * finest
    assert accounting.accountant_name(steps).startswith(
        f"PLD (dp_accounting via jax_privacy, discretisation {accounting.pld_interval(steps):.3g})"
    )


def test_the_truncated_event_is_within_a_coupling_bound_of_plain_poisson():
    """An independent check of the truncated Poisson event. Truncation to T changes a step
    only when more than T users are drawn, which has probability tau <= P(Binomial(U + 1, q)
    > T), so over s steps the truncated and plain mechanisms are within s * tau in total
    variation. Hence if one is (eps, delta)-DP the other is (eps, delta + (1 + e^eps) s tau)-
    DP, both ways: eps_plain(delta + c) <= eps_trunc(delta) and eps_trunc(delta + c) <=
    eps_plain(delta). Here c ~ 1e-6 against delta 1e-4, so the two are nearly equal. (Where
    T binds often, tau is large and the bound says nothing: only the truncated analysis of
    jax_privacy and dp_accounting covers it.)"""
    import math

    from scipy import stats

    users, expected, truncated, sigma, steps, delta = 1000, 32, 72, 1.0, 300, 1e-4
    tau = stats.binom.sf(truncated, users + 1, expected / users)

    def trunc(d):
        return accounting.epsilon(sigma, users, expected, truncated, d, steps, interval=1e-3)

    def plain(d):
        return plain_poisson_epsilon(expected / users, sigma, steps, d, interval=1e-3)

    eps_trunc, eps_plain = trunc(delta), plain(delta)
    c_trunc, c_plain = ((1 + math.exp(e)) * steps * tau for e in (eps_trunc, eps_plain))
    assert c_trunc < 0.02 * delta
    assert plain(delta + c_trunc) <= eps_trunc  # a lower bound on the truncated epsilon
    assert trunc(delta + c_plain) <= eps_plain  # and an upper one
    assert abs(eps_trunc / eps_plain - 1) < 0.002


def test_target_epsilon_is_calibrated_per_market_or_refused():
    dp = privacy.DPConfig(enabled=True, target_epsilon=2.0, expected_batch_size=8)
    kw = dict(batch_size=16, local_steps=2, num_rounds=10)
    plan = privacy.plan(dp, ["small", "large"], [100, 1000], **kw)
    sigma = plan.noise_multiplier
    assert sigma[0] > sigma[1] > 0  # fewer users: a larger rate needs more noise
    for m in range(2):
        assert 1.9 < plan.epsilon(m, 10) <= 2.0
    with pytest.raises(ConfigError, match=r"target_epsilon=1e-06 cannot be met in market a"):
        privacy.plan(dataclasses.replace(dp, target_epsilon=1e-6), ["a"], [100], **kw)
    with pytest.raises(ConfigError, match="market a has only 8 users"):
        privacy.plan(dp, ["a"], [8], **kw)
    with pytest.raises(ConfigError, match=r"config.federated.dp.clip_norm=0"):
        privacy.DPConfig(clip_norm=0)


def test_dp_with_client_adam_is_warned_about():
    """DP with the default client Adam learned nothing on XMRec (docs/results.md): the run
    warns with the settings that learned; client SGD or DP off is not warned about."""
    from experiments.configs import default

    fed = default.get_config().federated
    assert fed.client_optimizer == "adam" and privacy.advice(fed) is None  # DP off
    fed.dp.enabled = True
    assert "client_optimizer=sgd (client_lr=3" in privacy.advice(fed)
    fed.client_optimizer = "sgd"
    assert privacy.advice(fed) is None


@pytest.mark.parametrize("methods", [["local"], ["local", "fedavg_id"]])
def test_the_warning_is_logged_only_when_a_method_pretrains(methods, caplog):
    """Nothing leaves a market under `local` alone, so its DP settings warn of nothing."""
    from experiments.configs import test as test_config
    from fecosr_jax.runs import inputs, runner

    config = test_config.get_config()
    config.data.semantics = "none"
    config.federated.dp.enabled = True
    config.federated.dp.noise_multiplier = 1.0
    _, splits, stacked = inputs.prepare_markets(config)
    names = [f"m{i}" for i in range(stacked.item_mask.shape[0])]
    trainer = runner.Runner(config, splits, stacked, names, methods)
    trainer.pretrainer.check_privacy([config])
    warned = [r for r in caplog.records if "client_optimizer=adam" in r.getMessage()]
    assert len(warned) == (len(methods) - 1)


def test_a_private_run_reports_each_markets_epsilon(tmp_path, capsys):
    """experiments.main's path with DP on: the log's running epsilon, and results.json /
    results.md hold each market's epsilon of the rounds it trained in (2 of 3 markets a
    round), the plan's own numbers."""
    import json

    from experiments.configs import test as test_config
    from fecosr_jax.runs import experiment

    config = test_config.get_config()
    config.methods, config.num_rounds, config.federated.clients_per_round = "fecosr", 4, 2
    config.federated.dp.update(
        enabled=True, noise_multiplier=0.8, expected_batch_size=4, public="catalogues,weights"
    )
    config.checkpoint.enabled, config.plots, config.tensorboard = False, False, False
    experiment.train_and_evaluate(config, str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    report = results["privacy"]["federated_s2ce"]
    fed = dataclasses.replace(FED, clients_per_round=2, local_steps=2, seed=0)
    trained = fr.rounds_trained(fed, 3, 4)
    assert np.all(np.diff(trained, axis=0) >= 0) and np.all(trained[0] <= 1)  # cumulative
    trained = trained[-1]
    assert sorted(trained) != [4, 4, 4] and trained.sum() == 2 * 4  # two markets a round
    for m, name in enumerate(results["markets"]):
        e = report[name]
        assert e["steps"] == 2 * trained[m] and e["noise_multiplier"] == 0.8
        users = round(4 / e["sampling_rate"])
        assert e["delta"] == pytest.approx(1 / (10 * users))
        assert e["epsilon"] == accounting.cached_epsilon(0.8, users, 4, 8, e["delta"], e["steps"])
    md = (tmp_path / "results.md").read_text()
    assert md.count("- `federated_s2ce` m000") == 3
    # One release per market: the whole run's epsilon is that release's.
    for name, whole in results["privacy_composed"].items():
        assert whole["releases"] == ["federated_s2ce"] and whole["steps"] == report[name]["steps"]
        assert whole["epsilon"] == pytest.approx(report[name]["epsilon"], abs=1e-6)
        assert whole["public"] == ["catalogues", "weights"]  # declared, sent without noise
    assert "Each market over the whole run" in md
    assert md.count("steps; declared public, sent without noise: catalogues, weights)") == 3
    out = capsys.readouterr().out
    last = max(e["epsilon"] for e in report.values())
    assert "federated_s2ce pretrain 4/4: " in out and f"epsilon {last:.4f}" in out


def test_releases_compose_and_a_target_is_met_by_their_composition():
    """accounting.composed_epsilon: two releases of s steps each are one of 2s steps (the
    accountant's own composition), and a plan for a market that two private pretrainings use
    is calibrated so that both together meet the target (each alone stays well below it)."""
    kw = dict(batch_size=16, local_steps=2, num_rounds=10)
    dp = privacy.DPConfig(enabled=True, target_epsilon=2.0, expected_batch_size=8)
    once, twice = (privacy.plan(dp, ["a"], [400], releases=[n], **kw) for n in (1, 2))
    assert twice.noise_multiplier[0] > once.noise_multiplier[0]
    entry = twice.report([10])["a"]
    together = accounting.composed_epsilon([entry, entry], entry["delta"])
    assert 1.9 < together <= 2.0 and entry["epsilon"] < 0.75 * together
    assert together == pytest.approx(
        accounting.epsilon(entry["noise_multiplier"], 400, 8, 16, entry["delta"], 40), rel=1e-9
    )
    assert accounting.composed_epsilon([entry], entry["delta"]) == pytest.approx(
        entry["epsilon"], rel=1e-9
    )


def test_a_run_reports_each_markets_epsilon_composed_over_its_releases(tmp_path):
    """A DP run of the test config with two private pretrainings (fecosr's S²CE and
    fedavg_ce's CE): each market's whole-run epsilon is the composition of the two private
    releases, which meets the target; dp_accounting
    recomputes it within 10% from the reported q, sigma, steps, E, T and delta alone (at a
    finer discretisation; with 40 users, E 4 and T 8 truncation matters: the plain Poisson
    event would give about half). A pooled pretraining (centralized) makes the markets it
    pools not private, and results.md says so."""
    import json

    import dp_accounting

    from experiments.configs import test as test_config
    from fecosr_jax.report import markdown
    from fecosr_jax.runs import experiment

    config = test_config.get_config()
    config.methods, config.num_rounds, config.finetune.max_epochs = "fecosr,fedavg_ce", 3, 1
    config.federated.dp.update(enabled=True, target_epsilon=4.0, expected_batch_size=4)
    # Nothing sent without noise: the published catalogues, uniform weights.
    config.data.catalogue, config.federated.weighting = "published", "uniform"
    config.checkpoint.enabled, config.plots, config.tensorboard = False, False, False
    experiment.train_and_evaluate(config, str(tmp_path / "two"))
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    for name, whole in results["privacy_composed"].items():
        entries = [results["privacy"][k][name] for k in ("federated_ce", "federated_s2ce")]
        assert whole["releases"] == ["federated_ce", "federated_s2ce"] and "public" not in whole
        assert 3.8 < whole["epsilon"] <= 4.0 and all(e["epsilon"] < 3.2 for e in entries)
        accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
        for e in entries:
            event = dp_accounting.TruncatedSubsampledGaussianDpEvent(
                dataset_size=round(e["expected_batch_size"] / e["sampling_rate"]),
                sampling_probability=e["sampling_rate"],
                truncated_batch_size=e["truncated_batch_size"],
                noise_multiplier=e["noise_multiplier"],
            )
            accountant.compose(event, e["steps"])
        assert accountant.get_epsilon(whole["delta"]) == pytest.approx(whole["epsilon"], rel=0.1)
    # A pooled pretraining besides them makes every market it pools not private.
    pooled = privacy.run_report(results["privacy"], {"central_s2ce": ["m0000", "m0001"]})
    assert pooled["m0000"]["epsilon"] is None and pooled["m0000"]["not_private"] == ["central_s2ce"]
    assert pooled["m0002"] == results["privacy_composed"]["m0002"]
    md = "\n".join(markdown.composed_privacy_markdown(pooled))
    assert md.count("not private (`central_s2ce` pools its raw data)") == 2


def test_runs_with_different_noise_multipliers_train_together_as_alone(stacked):
    """A sweep over the privacy budget is one group: each run's noise multipliers reach the
    round as values (FedValues.dp_noise, [R, M]), the program is the same for every budget,
    and each run of the group computes what it computes alone (up to the run axis's
    rounding)."""
    fed = dataclasses.replace(FED, local_steps=2)
    budgets = [dataclasses.replace(DP, target_epsilon=e) for e in (2.0, 8.0)]
    assert len({dataclasses.replace(fed, dp=dp).program() for dp in budgets}) == 1
    plans = [make_plan(stacked, dp, fed) for dp in budgets]
    assert (plans[0].noise_multiplier > plans[1].noise_multiplier).all()
    mesh = fr.make_mesh(jax.devices()[:1])
    r = fr.build_round(MODEL, fed, 3, mesh)
    params = init_params(MODEL, jax.random.key(0), GEN.semantic_dim)
    base = fr.round_data(stacked, fed)
    alone = []
    for plan in plans:
        data = r.put(base | plan.arrays(stacked.num_markets))
        state = r.init(params)
        for _ in range(2):
            state, _ = r.step(state, data)
        alone.append(flat(state.params))
    assert np.abs(alone[0] - alone[1]).max() > 1e-3  # the budgets differ
    values = fr.stack_runs([fed.values()] * 2).replace(
        dp_noise=np.stack([p.arrays(stacked.num_markets)["dp_noise"] for p in plans])
    )
    data = r.put(base | plans[0].arrays(stacked.num_markets))  # its dp_noise is overridden
    state = r.init_runs(fr.stack_runs([params, params]))
    for _ in range(2):
        state, _ = r.step(state, data, values)
    for i in range(2):
        together = flat(jax.tree.map(lambda x, i=i: x[i], state.params))
        np.testing.assert_allclose(together, alone[i], atol=1e-5)
    assert r.program.num_traces == 2  # one run, and one group of runs


def test_a_group_over_privacy_budgets_reports_each_runs_own_epsilon(tmp_path):
    """experiments.main's group path (--run=NAME:federated.dp.target_epsilon=E): each run's
    markets end at its own target, `local` (nothing leaves a market) is the same at both
    budgets, and the private pretraining differs between them."""
    import json

    from experiments.configs import test as test_config
    from fecosr_jax.runs import experiment, groups

    config = test_config.get_config()
    config.methods, config.num_rounds = "local,fecosr", 3
    config.federated.dp.update(enabled=True, expected_batch_size=4, public="catalogues,weights")
    config.checkpoint.enabled, config.plots, config.tensorboard = False, False, False
    targets = {"e2": 2.0, "e8": 8.0}
    points = [
        (groups.run_config(config, {"federated.dp.target_epsilon": str(e)}), tmp_path / name)
        for name, e in targets.items()
    ]
    experiment.train_and_evaluate_group(points)
    results = {n: json.loads((tmp_path / n / "results.json").read_text()) for n in targets}
    for name, target in targets.items():
        spent = [e["epsilon"] for e in results[name]["privacy"]["federated_s2ce"].values()]
        assert max(spent) <= target and min(spent) > 0.97 * target  # calibrated per market
    local, fecosr = ({n: r["methods"][m] for n, r in results.items()} for m in ("local", "fecosr"))
    assert local["e2"] == local["e8"]
    assert fecosr["e2"] != fecosr["e8"]


def test_a_run_at_sigma_zero_writes_strict_json(tmp_path):
    """DP's mechanism without noise (sigma 0, launch/sweep.py's noiseless inf) has no finite
    epsilon: results.json, metrics.jsonl, training.json and the export's meta write it as
    null (privacy.epsilon_json), never the non-standard Infinity that JSON readers outside
    Python refuse; results.md and the readers take null as inf."""
    import json

    from experiments.configs import test as test_config
    from fecosr_jax.report import markdown
    from fecosr_jax.runs import experiment
    from fecosr_jax.store import pretrained

    def strict(text: str):
        def refuse(constant):
            raise AssertionError(f"not strict JSON: {constant}")

        return json.loads(text, parse_constant=refuse)

    config = test_config.get_config()
    config.methods, config.num_rounds, config.finetune.max_epochs = "fecosr", 2, 1
    config.federated.dp.update(
        enabled=True, noise_multiplier=0.0, expected_batch_size=4, public="catalogues,weights"
    )
    config.checkpoint.enabled, config.plots, config.tensorboard = False, False, False
    experiment.train_and_evaluate(config, str(tmp_path))
    results = strict((tmp_path / "results.json").read_text())
    strict((tmp_path / "training.json").read_text())
    logged = [strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    export = strict((tmp_path / "pretrained" / "federated_s2ce" / pretrained.META).read_text())
    for report in (results["privacy"]["federated_s2ce"], export["privacy"]):
        assert report and all(e["epsilon"] is None for e in report.values())
        assert all(e["noise_multiplier"] == 0.0 and e["steps"] > 0 for e in report.values())
    assert all(e["epsilon"] is None for e in results["privacy_composed"].values())
    rounds = [x for x in logged if x["stage"] == "pretrain"]
    assert rounds and all(x["epsilon"] is None for x in rounds)
    assert all(v is None for x in rounds for v in x["market_epsilon"].values())
    assert privacy.epsilon_read(None) == math.inf and privacy.epsilon_read(1.5) == 1.5
    assert markdown.epsilon_text(None) == "inf" and markdown.epsilon_text(1.2345) == "1.23"
    md = (tmp_path / "results.md").read_text()
    assert md.count("- `federated_s2ce` m000") == 3 and "epsilon inf at delta" in md
