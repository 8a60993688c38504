"""The documents' tables are what their commands make from the committed raw files."""

import itertools
import json
import math
import shutil
import statistics

import pytest

from experiments.tables import docs, registry
from experiments.tables import newcomers as newcomers_tables
from experiments.tables import privacy as privacy_tables
from experiments.tables import results as results_tables
from experiments.tables import runs as run_tables
from experiments.tables import sweeps as sweep_tables
from fecosr_jax.report import markdown, sweep_results
from fecosr_jax.report import results as results_lib
from fecosr_jax.store.files import read_json
from tests.conftest import row_cells


def test_every_table_in_the_docs_is_its_regeneration():
    assert docs.check() == []
    # every table the command knows is in a document, once
    names = [b["name"] for doc in docs.DOCS for b in docs.blocks(doc.read_text())]
    assert sorted(names) == sorted(registry.TABLES)


def test_a_changed_raw_row_or_table_cell_is_found(tmp_path, monkeypatch):
    raw = json.loads(sweep_tables.CLAIM2.read_text())
    raw["rows"][0]["methods"]["local"]["ndcg@10"] += 0.003  # one seed's local at h 0, overlap 0
    changed = tmp_path / "claim2.json"
    changed.write_text(json.dumps(raw))
    monkeypatch.setattr(sweep_tables, "CLAIM2", changed)
    (problem,) = docs.check()
    assert "docs/results.md:" in problem and "table claim2_gains differs" in problem
    assert "| 0.0 | 0.0 | 0.1740 ± " in sweep_tables.claim2_gains()  # 0.1730 + 0.003 / 3
    # and a hand edit of a document's cell
    monkeypatch.setattr(sweep_tables, "CLAIM2", results_tables.RAW / "claim2_heterogeneity.json")
    doc = tmp_path / "results.md"
    shutil.copy(docs.DOCS[0], doc)
    doc.write_text(doc.read_text().replace("| 5, 3, 6 |", "| 5, 3, 7 |", 1))
    monkeypatch.setattr(docs, "DOCS", (doc,))
    problems = docs.check()
    assert problems == [
        f"{doc}:{line}: table claim2_significance differs from "
        "`python -m experiments.tables claim2_significance`"
        for line in [
            doc.read_text()[: doc.read_text().index("<!-- table claim2_sig")].count("\n") + 1
        ]
    ]


def test_a_table_name_the_command_does_not_know_is_reported(tmp_path, monkeypatch):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- table nothing: python -m experiments.tables nothing -->\n| a |\n<!-- end table -->\n"
    )
    monkeypatch.setattr(docs, "DOCS", (doc,))
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    assert docs.check() == ["doc.md:1: no table named 'nothing' (experiments/tables/registry.py)"]


def test_a_table_without_raw_files_must_say_why(tmp_path, monkeypatch):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Text\n\n| a | b |\n| --- | ---: |\n| 1 | 2 |\n\n"  # line 3: neither
        "<!-- markdown only: a verdict table -->\n| a |\n| --- |\n\n"  # labelled
        "- item\n\n  <!-- markdown only: indented -->\n  | a |\n  | :--- |\n"  # in a list
        "  | c |\n  | --- |\n"  # rows that look like a header and rule: the same table
        "<!-- table bench_dp: python -m experiments.tables bench_dp -->\n"
        + registry.TABLES["bench_dp"]()
        + "<!-- end table -->\n"
    )
    monkeypatch.setattr(docs, "DOCS", (doc,))
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    assert docs.unlabelled(doc) == ["doc.md:3"]
    assert docs.check() == [
        "doc.md:3: a table with no raw files and no `<!-- markdown only: REASON -->` above it"
    ]


def test_pairs_over_seeds_says_what_the_claim2_table_says():
    # Two code paths over the same 5 seeds (h 1, overlap 0): the claim-2 table's S²CE − CE and
    # fecosr − local cells (difference over seeds; markets ▲ / ▼) and the pairs table's.
    pairs = [("fecosr", "fecosr_no_s2ce", "S²CE vs CE"), ("fecosr", "local", "vs local")]
    text = run_tables.pairs_over_seeds(sweep_tables.CLAIM2_SEEDS / "h1_o0", range(5), pairs)
    rows = [row_cells(line) for line in text.splitlines()[2:]]
    claim2 = next(
        row_cells(line)
        for line in sweep_tables.claim2_seeds().splitlines()
        if line.startswith("| 1 | 0 |")
    )
    for cells, test, counts in zip(
        rows, (claim2[5], claim2[7]), (claim2[6], claim2[8]), strict=True
    ):
        assert cells[3].split(" [")[0] == test.split(" (")[0]  # the same difference
        # the same raw p (each table adjusts it in its own family: 2 pairs, 6 grid points)
        assert cells[3].split("] (")[1].split(";")[0] == test.split(" (")[1].split(";")[0]
        better, worse = (int(c.split(" (")[0]) for c in (cells[6], cells[7]))
        assert f"{better} / {worse}" == counts


def test_privacy_curve_shows_each_budgets_own_tests_and_spent_epsilon(tmp_path):
    # The private runs have no `local` of their own (a sweep over DP settings trains `fedavg_id`
    # only): each budget is compared with the `local` of the runs without DP.
    seeds = range(3)
    plain = [results_tables.XMREC_SEEDS / f"seed_{s}" for s in seeds]
    private = []
    for s, folder in zip(seeds, plain, strict=True):
        copy = tmp_path / f"eps1.0_seed{s}"
        shutil.copytree(folder, copy)
        raw = read_json(copy / "results.json")
        raw["privacy"] = {"federated_id_ce": {"ca": {"epsilon": 0.97}, "de": {"epsilon": 1.0}}}
        del raw["methods"]["local"]
        (copy / "results.json").write_text(json.dumps(raw))
        ranks = results_lib.read_ranks(copy / "ranks.npz")
        results_lib.write_ranks(
            copy / "ranks.npz", {m: r for m, r in ranks.items() if m != "local"}
        )
        private.append(copy)
    columns = {1.0: private, math.inf: plain}
    text = run_tables.privacy_curve(columns, seeds, "fedavg_id", local=plain)
    tests = run_tables.combined(results_tables.XMREC_SEEDS, seeds)["vs_local"]["fedavg_id"]
    for market, t in tests["seed_aware"]["markets"].items():
        cell = run_tables.signed(t["diff"]) + markdown.mark(t)  # the seed-aware test's
        assert f"| {market} ({t['users']:,}) | {cell} | {cell} |" in text
    assert text.startswith("| market (test users) | ε = 1 | ε = ∞ |\n")
    assert text.endswith("| epsilon spent (most of any market) | 1.00 | - |\n")
    # The plot's band: local's market mean over its seeds, 95% t-interval, every budget's.
    means = [read_json(f / "results.json")["methods"]["local"]["market_mean"]["ndcg@10"]
             for f in plain]  # fmt: skip
    half = 4.302653 * statistics.stdev(means) / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    points = run_tables.privacy_points(columns, seeds, "fedavg_id", local=plain)
    for p in points.values():
        assert p["local"] == pytest.approx([statistics.fmean(means), half], rel=1e-6)
    # A `local` of other test users is refused, not paired with the wrong users.
    other = tmp_path / "other_seed0"
    shutil.copytree(plain[0], other)
    ranks = results_lib.read_ranks(other / "ranks.npz")
    ranks["local"]["ca"] = ranks["local"]["ca"][1:]
    results_lib.write_ranks(other / "ranks.npz", ranks)
    with pytest.raises(ValueError, match="test users differ"):
        run_tables.privacy_points(columns, seeds, "fedavg_id", local=[other, *plain[1:]])


def test_a_curves_market_mean_is_tested_over_seeds_with_the_budgets_one_family(tmp_path):
    # With 5 seeds each budget's market mean gets the test over seeds (paired by seed,
    # t-test), the budgets adjusted together by Benjamini-Hochberg, worked out here by hand.
    from scipy import stats

    seeds = range(5)
    plain = [results_tables.XMREC_SEEDS / f"seed_{s}" for s in seeds]
    gains = [0.010, 0.012, 0.008, 0.011, 0.009]  # built into the copies' fedavg_id
    shifted = []
    for s, folder in zip(seeds, plain, strict=True):
        copy = tmp_path / f"eps8.0_seed{s}"
        shutil.copytree(folder, copy)
        raw = read_json(copy / "results.json")
        means = raw["methods"]
        means["fedavg_id"]["market_mean"]["ndcg@10"] = (
            means["local"]["market_mean"]["ndcg@10"] + gains[s]
        )
        (copy / "results.json").write_text(json.dumps(raw))
        shifted.append(copy)
    columns = {8.0: shifted, math.inf: plain}
    points = run_tables.privacy_points(columns, seeds, "fedavg_id")
    own = [read_json(f / "results.json")["methods"] for f in plain]
    mean = {m: [x[m]["market_mean"]["ndcg@10"] for x in own] for m in ("local", "fedavg_id")}
    p = {8.0: stats.ttest_1samp(gains, 0.0).pvalue}
    p[math.inf] = stats.ttest_rel(mean["fedavg_id"], mean["local"]).pvalue
    low, high = sorted(p, key=p.get)
    adjusted = {high: p[high], low: min(p[high], 2 * p[low])}  # BH over the 2 budgets
    critical = stats.t.ppf(0.975, 4) * statistics.stdev(gains) / math.sqrt(5)
    test = points[8.0]["mean"]
    assert test["diff"] == pytest.approx(statistics.fmean(gains), abs=1e-6)
    assert test["ci"] == pytest.approx([0.01 - critical, 0.01 + critical], abs=1e-6)
    for e in columns:
        t = points[e]["mean"]
        assert t["p_value"] == pytest.approx(p[e], abs=1e-6)  # results.json keeps 6 decimals
        assert t["p_adjusted"] == pytest.approx(adjusted[e], abs=2e-6)
        assert t["family"] == run_tables.CURVE_FAMILY and t["seeds"] == 5
    assert test["verdict"] == "better" and test["robust"]  # every seed's gain is positive
    text = run_tables.privacy_curve(columns, seeds, "fedavg_id")
    assert "| market mean (seeds above local) | +0.0100 ▲ (5/5) |" in text
    interval = f"[{run_tables.signed(test['ci'][0])}, {run_tables.signed(test['ci'][1])}]"
    assert f"| market mean: 95% interval over seeds (detectable) | {interval} (" in text
    # Fewer seeds than verdicts.SEED_TEST_MIN: no test over seeds, no marker, no row.
    three = run_tables.privacy_curve({e: f[:3] for e, f in columns.items()}, range(3), "fedavg_id")
    assert "95% interval over seeds" not in three and "+0.0100 (3/3)" in three


def test_a_curve_of_one_recipe_tests_the_noises_cost_against_its_inf_column(tmp_path):
    # Budgets whose runs differ from the ∞ run of their seed only in the noise (and the
    # methods trained beside): each budget's market mean minus ∞'s, paired by seed, t-test
    # over the 5 seeds, worked out here by hand. Any other change of recipe: no such test.
    from scipy import stats

    seeds = range(5)
    costs = [-0.004, -0.006, -0.005, -0.007, -0.003]  # built into the budget's fedavg_id
    columns = {8.0: [], math.inf: []}
    for s in seeds:
        plain = results_tables.XMREC_SEEDS / f"seed_{s}"
        for epsilon, name in ((8.0, f"eps8.0_seed{s}"), (math.inf, f"epsinf_seed{s}")):
            copy = tmp_path / name
            shutil.copytree(plain, copy)
            config = read_json(copy / "config.json")
            config["federated"]["dp"] |= {"enabled": True, "noise_multiplier": 0.0}
            if epsilon == 8.0:
                config["federated"]["dp"] |= {"noise_multiplier": 1.0, "target_epsilon": 8.0}
                config["methods"] = "fedavg_id"
                raw = read_json(copy / "results.json")
                raw["methods"]["fedavg_id"]["market_mean"]["ndcg@10"] += costs[s]
                (copy / "results.json").write_text(json.dumps(raw))
            (copy / "config.json").write_text(json.dumps(config))
            columns[epsilon].append(copy)
    assert run_tables.one_recipe(columns)
    test = run_tables.privacy_points(columns, seeds, "fedavg_id")[8.0]["noise"]
    critical = stats.t.ppf(0.975, 4) * statistics.stdev(costs) / math.sqrt(5)
    assert test["diff"] == pytest.approx(statistics.fmean(costs), abs=1e-6)
    assert test["ci"] == pytest.approx([-0.005 - critical, -0.005 + critical], abs=1e-6)
    assert test["p_value"] == pytest.approx(stats.ttest_1samp(costs, 0.0).pvalue, abs=1e-6)
    assert test["p_adjusted"] == test["p_value"]  # one finite budget: its family of one
    assert test["verdict"] == "worse" and test["robust"] and test["seeds"] == 5
    assert test["family"] == run_tables.NOISE_FAMILY
    text = run_tables.privacy_curve(columns, seeds, "fedavg_id")
    interval = f"[{run_tables.signed(test['ci'][0])}, {run_tables.signed(test['ci'][1])}]"
    assert f"| noise's cost: market mean minus ∞'s [95% interval] | −0.0050 ▼ {interval} | - |" in (
        text
    )
    # Another recipe at ∞ (here a client learning rate): the drop is not the noise's alone.
    config = read_json(columns[8.0][3] / "config.json")
    config["federated"]["client_lr"] = 3.0
    (columns[8.0][3] / "config.json").write_text(json.dumps(config))
    assert not run_tables.one_recipe(columns)
    assert "noise" not in run_tables.privacy_points(columns, seeds, "fedavg_id")[8.0]
    assert "noise's cost" not in run_tables.privacy_curve(columns, seeds, "fedavg_id")


def test_a_curve_of_one_recipe_reads_its_own_inf_column_and_local(tmp_path):
    # A sweep whose ∞ point ran the same recipe (epsinf_seed<s>/) and whose runs each hold
    # their `local`: the ∞ column is the sweep's own, compared with each run's own `local`.
    seeds = (0, 1, 2)
    for s in seeds:
        for name in (f"eps1.0_seed{s}", f"epsinf_seed{s}"):
            shutil.copytree(results_tables.XMREC_SEEDS / f"seed_{s}", tmp_path / name)
    curve = privacy_tables.Curve(tmp_path, (1.0,), None, "fedavg_id", "t", seeds)
    assert curve.local() is None
    assert curve.columns()[math.inf] == [tmp_path / f"epsinf_seed{s}" for s in seeds]
    points = curve.points()
    tests = run_tables.combined(results_tables.XMREC_SEEDS, seeds)["vs_local"]["fedavg_id"]
    for budget in (1.0, math.inf):
        assert points[budget]["markets"] == tests["seed_aware"]["markets"]
        assert points[budget]["spent"] is None


def test_a_dp_recipe_reads_as_its_config_says():
    # E = 0 means half the batch; DP off shows no E and no sigma.
    fed = {
        "batch_size": 32,
        "local_steps": 5,
        "client_optimizer": "adam",
        "client_lr": 0.001,
        "server_optimizer": "fedavg",
        "server_lr": 1.0,
        "dp": {"enabled": True, "expected_batch_size": 0, "noise_multiplier": 0.6},
    }
    assert privacy_tables.recipe({"federated": fed}) == [
        "16 / 32 / 5",
        "adam 0.001",
        "fedavg 1",
        "0.6",
    ]
    fed["dp"] = {"enabled": False, "expected_batch_size": 0, "noise_multiplier": 1.0}
    assert privacy_tables.recipe({"federated": fed})[::3] == ["- / 32 / 5", "off"]


def test_one_to_one_runs_made_apart_join_the_run_over_the_same_seeds(tmp_path):
    # Each source's one-to-one method (transfer_id@ca, transfer_id@de) is run apart and joined
    # to `local` and `fedavg_id` of the run over the same seeds. Here the "one-to-one" methods
    # are copies of that run's `fedavg_id`, so each must read exactly as `fedavg_id` does.
    seeds = range(5)
    base = results_tables.XMREC_SEEDS
    joined = tuple(
        run_tables.Joined(tmp_path / source, (f"transfer_id@{source}",)) for source in ("ca", "de")
    )
    for source, s in itertools.product(("ca", "de"), seeds):
        copy = tmp_path / source / f"seed_{s}"
        shutil.copytree(base / f"seed_{s}", copy)
        raw = read_json(copy / "results.json")
        raw["methods"] = {f"transfer_id@{source}": raw["methods"]["fedavg_id"]}
        (copy / "results.json").write_text(json.dumps(raw))
        ranks = results_lib.read_ranks(copy / "ranks.npz")
        ranks = {f"transfer_id@{source}": ranks["fedavg_id"], "popularity": ranks["popularity"]}
        results_lib.write_ranks(copy / "ranks.npz", ranks)
        config = read_json(copy / "config.json") | {"methods": f"transfer_id@{source}"}
        (copy / "config.json").write_text(json.dumps(config))
    text = run_tables.over_seeds(base, seeds, joined)
    header = "| market | local | fedavg_id | transfer_id@ca | transfer_id@de | popularity |"
    assert header in text
    for line in text.splitlines():
        if line.startswith(("| ca |", "| fr |", "| mean |")) and "[" not in line:
            cells = line.split(" | ")
            assert cells[2] == cells[3] == cells[4], line
    tests = run_tables.combined(base, seeds)["vs_local"]["fedavg_id"]["seed_aware"]["markets"]
    gains = [f"{t['diff']:+.4f}{markdown.mark(t)}" for t in tests.values()]
    assert f"| ca | [{gains[0]}] | {' | '.join(gains[1:])} |" in text  # the matrix's rows
    assert f"| de | {gains[0]} | [{gains[1]}] | {' | '.join(gains[2:])} |" in text
    pairs = [("fedavg_id", "transfer_id@ca", "many-to-many vs one-to-one from ca")]
    compared = run_tables.pairs_over_seeds(base, seeds, pairs, joined)
    assert "| fedavg_id | transfer_id@ca | many-to-many vs one-to-one from ca | +0.0000" in compared
    # A joined run must be of the same test users ...
    seed_3 = tmp_path / "de" / "seed_3"
    ranks = results_lib.read_ranks(seed_3 / "ranks.npz")
    ranks["transfer_id@de"]["fr"] = ranks["transfer_id@de"]["fr"][1:]
    results_lib.write_ranks(seed_3 / "ranks.npz", ranks)
    with pytest.raises(ValueError, match="test users differ"):
        run_tables.over_seeds(base, seeds, joined)
    # ... and of the same config but for its methods.
    config = read_json(seed_3 / "config.json")
    config["finetune"]["patience"] += 1
    (seed_3 / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"de/seed_3: its config differs in .*finetune.patience"):
        run_tables.over_seeds(base, seeds, joined)


def test_an_ml100k_alpha_run_is_read_beside_its_seed_and_refused_if_it_differs(
    tmp_path, monkeypatch
):
    # A grid run that is seed 0 of ml100k_seeds5 itself, under the grid's name for the default
    # (α 0.2, τ_s 0.1): its row must read exactly as the default row taken from ml100k_seeds5.
    seed0 = results_tables.ML100K_SEEDS / "seed_0"
    run = tmp_path / "alpha0.2_tau0.1_seed0"
    shutil.copytree(seed0, run)
    config = read_json(run / "config.json")
    config["methods"] = "fecosr"
    (run / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(sweep_tables, "ALPHA_ML100K", tmp_path)
    monkeypatch.setattr(sweep_tables, "ALPHA_ML100K_SEEDS", (0,))
    rows = sweep_tables.alpha_ml100k_rows()
    assert [(r["alpha"], r["temperature"], r["run"]) for r in rows] == [
        (0.0, 0.1, "seed_0"),
        (0.2, 0.1, "seed_0"),
        (0.2, 0.1, run.name),
    ]
    ce, default, grid = (r["methods"]["fecosr"] for r in rows)
    assert grid == default != ce
    assert ce == sweep_results.collect(seed0, {})["methods"]["fecosr_no_s2ce"]
    # The soft-label profile at τ_s 0.1, worked out from results.json's own numbers.
    soft = read_json(seed0 / "results.json")["soft_labels"]["markets"].values()
    mass = sum(m["target_mass"] for m in soft) / len(soft)
    line = sweep_tables.soft_labels_ml100k().splitlines()[2]
    assert line.startswith(f"| 0.1 | {mass:.2f} | ")
    # Another dropout rate is another experiment: refused, naming the field.
    config["model"]["dropout"] += 0.1
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"alpha0.2_tau0.1_seed0: not the config .*model.dropout"):
        sweep_tables.alpha_ml100k_rows()


def test_the_sasrec_config_alone_is_its_seed_0_and_a_variant_is_its_one_change(
    tmp_path, monkeypatch
):
    # The same seed trained alone and beside two other seeds on the run axis: equal results.
    alone = read_json(results_tables.SASREC_VARIANTS / "post_ln" / "results.json")
    grouped = read_json(results_tables.SASREC_SEEDS / "seed_0" / "results.json")
    assert alone["methods"] == grouped["methods"]
    # A variant whose config holds a second change is refused, naming both.
    shutil.copytree(results_tables.SASREC_VARIANTS, tmp_path, dirs_exist_ok=True)
    monkeypatch.setattr(results_tables, "SASREC_VARIANTS", tmp_path)
    path = tmp_path / "lr2e-3" / "config.json"
    config = read_json(path)
    config["model"]["dropout"] = 0.1
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"lr2e-3/config.json: changes .*'model.dropout': 0.1"):
        results_tables.sasrec_variants()


def test_leave_one_market_out_runs_of_another_config_are_refused(tmp_path):
    # The committed runs of two points (none and m0000) read as the whole study's table
    # does; the same rows with one run's fine-tuning changed are refused, naming the field.
    for run in newcomers_tables.NEWCOMERS_DEFAULT.iterdir():
        if run.name.startswith(("newnone_", "newm0000_")):
            shutil.copytree(run, tmp_path / run.name)
    table = newcomers_tables.newcomers_table(tmp_path)
    assert "| m0000 | +0.0366 [+0.0132, +0.0599] ▲ | +0.0283 [+0.0072, +0.0494] ▲ |" in table
    changed = tmp_path / "newm0000_seed2" / "config.json"
    config = read_json(changed)
    config["finetune"]["patience"] += 1
    changed.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"newm0000_seed2: its config differs from "
                       r"newm0000_seed0's in finetune.patience$"):  # fmt: skip
        newcomers_tables.newcomers_table(tmp_path)
