"""What the documents say in words is what the committed raw files show: README.md,
docs/running.md and docs/results.md quote figures and verdicts, and each quote is checked
against the regenerated tables or the runs' own files."""

import math
import re

from experiments.tables import bench as bench_tables
from experiments.tables import docs
from experiments.tables import privacy as privacy_tables
from experiments.tables import results as results_tables
from experiments.tables import runs as run_tables
from experiments.tables import sweeps as sweep_tables
from fecosr_jax.runs import paradigms
from fecosr_jax.store import metrics_log
from fecosr_jax.store.files import read_json
from tests.conftest import row_cells


def words(doc: str = "README.md") -> str:
    """A document with every run of whitespace as one space, so a quote may wrap anywhere."""
    return " ".join((docs.ROOT / doc).read_text().split())


def test_the_readme_quotes_the_main_jobs_time_from_its_benchmark_record():
    # README's figures come from docs/results/default (its table block, checked above) and
    # its time from the benchmark's record of that fresh-clone run, named by its date (the
    # day's last record: main_job_DATE.json, then main_job_DATEb.json, ...).
    took = re.search(r"the main job took \*\*(\d+) min (\d+) s\*\* on (\d{4}-\d{2}-\d{2})", words())
    assert took, "README no longer gives the main job's time with its date"
    latest = sorted(bench_tables.BENCH.glob(f"main_job_{took[3]}*.json"))[-1]
    wall = read_json(latest)["wall_s"]
    assert int(took[1]) * 60 + int(took[2]) == round(wall)


def test_the_guide_quotes_the_alpha_grids_best_setting():
    # docs/running.md: "on synthetic markets alpha = A, tau_s = T is best, above CE on all N seeds
    # (+G validation NDCG@10)": the bold (best) row of the regenerated 3-seed table.
    text = words("docs/running.md")
    quoted = re.search(
        r"on synthetic markets alpha = ([\d.]+), tau_s = ([\d.]+) is best, above CE on all "
        r"(\d) seeds \(\+(0\.\d{4}) validation NDCG@10\)",
        text,
    )
    assert quoted, "docs/running.md no longer quotes the alpha grid's best setting"
    best = next(line for line in sweep_tables.alpha_seeds().splitlines() if line.startswith("| **"))
    cells = row_cells(best)
    alpha, tau, gain = cells[0], cells[1], cells[3]
    assert (alpha, tau) == quoted.group(1, 2)
    assert gain == f"+{quoted[4]} ({quoted[3]}/{quoted[3]})"  # above CE on every seed


def test_the_guide_says_what_the_ml100k_alpha_grid_shows():
    # docs/running.md: "on ml-100k regions every alpha at tau_s = 0.1 is within D of CE over N
    # seeds": every gain-over-CE cell of the regenerated table at τ_s 0.1 is that small, none
    # of them on every seed.
    text = words("docs/running.md")
    quoted = re.search(
        r"on ml-100k regions every alpha at tau_s = 0.1 is within (0\.\d{4}) of CE over "
        r"(\d) seeds",
        text,
    )
    assert quoted, "docs/running.md no longer says what the ml-100k alpha grid shows"
    lines = sweep_tables.alpha_ml100k().splitlines()[2:]
    rows = [row_cells(line) for line in lines]
    gains = [r[3] for r in rows if r[1] == "0.1"]
    assert len(gains) == 3  # α 0.2, 0.5, 0.8
    for gain in gains:
        value, seeds = re.fullmatch(r"([+−]0\.\d{4}) \((\d)/(\d)\)", gain).group(1, 3)
        assert abs(float(value.replace("−", "-"))) <= float(quoted[1])
        assert seeds == quoted[2] and not gain.endswith(f"({seeds}/{seeds})")


def test_the_readme_quotes_the_main_jobs_five_seeds():
    # README: "Over those 5 seeds every method with the item-ID adaptation module is above
    # `local` in A to B of the 8 markets with the seeds counted, and every method without it
    # is below `local` in the market mean over seeds".
    text = words()
    quoted = re.search(
        r"Over those 5 seeds every method with the item-ID adaptation module is above `local` "
        r"in (\d) to (\d) of the 8 markets with the seeds counted, and every method without it "
        r"is below `local` in the market mean over seeds",
        text,
    )
    assert quoted, "README no longer says what the main job's 5 seeds show"
    results = run_tables.combined(results_tables.DEFAULT_SEEDS, range(5))
    assert len(results["markets"]) == 8
    marked = []
    for method, against in results["vs_local"].items():
        spec = paradigms.SPECS.get(method)
        tests = against["seed_aware"]["markets"].values()
        assert all(t["seeds"] == 5 for t in tests)
        if spec is not None and spec.finetune == "adapt":
            assert against["markets_better"] == 8, method  # by sign
            assert against["over_seeds"]["verdict"] == "better", method
            assert not any(t["verdict"] == "worse" for t in tests), method
            marked.append(against["markets_significantly_better"])
        else:
            assert against["over_seeds"]["verdict"] == "worse", method
    assert (min(marked), max(marked)) == (int(quoted[1]), int(quoted[2]))


def test_the_results_say_what_the_dp_recipes_show():
    # docs/results.md: the DP defaults (client Adam) learned nothing; client SGD at sigma 0.6
    # learned almost as much as without noise. The pretraining loss from round 1 to 20 says so.
    text = words("docs/results.md")
    assert "On XMRec the DP defaults learned nothing at any ε" in text
    assert "Client SGD learned with a larger expected batch and one local step, at σ = 0.6" in text

    def loss(run, step):
        logged = metrics_log.read_lines(privacy_tables.PROBES["dp_recipes"].folder / run)
        (x,) = [x for x in logged if x["stage"] == "pretrain" and x["step"] == step]
        return x["loss"]

    for adam in ("default", "adam1e-3", "adam1e-4"):
        assert loss(adam, 20) > loss(adam, 1) - 0.05, adam  # no better than the first round
    assert loss("default_sigma0", 20) < loss("default_sigma0", 1) - 0.5  # clipping alone learns
    learned = loss("sgd3_sigma0", 1) - loss("sgd3_sigma0", 20)
    assert learned > 0.5
    assert loss("sgd3", 20) - loss("sgd3_sigma0", 20) < 0.1 * learned  # the noise costs < 10%


def test_the_results_say_what_the_xmrec_privacy_curve_shows():
    text = words("docs/results.md")
    assert (
        "`fedavg_id` marked neither better nor worse than `local` at any ε from 1 to 8 in any "
        "market, and without DP in none either" in text
    )
    curve = privacy_tables.CURVES["privacy_xmrec"]
    points = curve.points()
    assert sorted(points) == [1.0, 2.0, 4.0, 8.0, math.inf]
    for epsilon, point in points.items():
        assert [m["verdict"] for m in point["markets"].values()] == ["same"] * 4, epsilon
        assert all(m["seeds"] == 3 for m in point["markets"].values())
    assert (
        "its market mean is above `local` at ε = 1 on all 3 seeds; no market is marked at ε = 1 "
        "or 8 once the seeds are counted, where the per-user test of these trained models marked "
        "the two smaller markets (de, fr: ~2,400 test users each) better at both budgets and uk "
        "(−0.0116) worse at ε = 8" in text
    )
    sgd = privacy_tables.CURVES["privacy_xmrec_sgd"]
    points = sgd.points()
    assert all(g > 0 for g in points[1.0]["seed_gains"])
    for epsilon in (1.0, 8.0):
        markets = points[epsilon]["markets"]
        assert [t["verdict"] for t in markets.values()] == ["same"] * 4, epsilon
        fixed = points[epsilon]["trained_models"]
        better = sorted(m for m, t in fixed.items() if t["verdict"] == "better")
        assert better == ["de", "fr"], epsilon
        assert all(markets[m]["users"] < 2500 < markets[n]["users"] for m in better
                   for n in ("ca", "uk"))  # fmt: skip
        worse = [m for m, t in fixed.items() if t["verdict"] == "worse"]
        assert worse == ([] if epsilon == 1.0 else ["uk"]), epsilon
    assert f"{points[8.0]['markets']['uk']['diff']:+.4f}" == "-0.0116"


def test_the_results_say_what_the_ml100k_privacy_curve_shows():
    text = words("docs/results.md")
    assert (
        "On ml-100k regions (markets of 18-170 users, client SGD at E = 16, K = 1) the DP "
        "pretraining diverged at every ε from 1 to 8, and `fecosr` is below `local` in the "
        "market mean at every ε on every seed, marked worse in 1 of 11 markets at ε = 1 "
        "(fragile)" in text
    )
    curve = privacy_tables.CURVES["privacy_ml100k_sgd"]
    points = curve.points()
    for epsilon in (1.0, 2.0, 4.0, 8.0):
        assert all(g < 0 for g in points[epsilon]["seed_gains"]), epsilon
        assert all(t["verdict"] != "better" for t in points[epsilon]["markets"].values())
    worse = [t for t in points[1.0]["markets"].values() if t["verdict"] == "worse"]
    assert len(worse) == 1 and worse[0]["robust"] is False and len(points[1.0]["markets"]) == 11
    assert all(g > 0 for g in points[math.inf]["seed_gains"])  # without DP: above `local`
    private = [run for e in curve.budgets for run in curve.columns()[e]]
    assert len(private) == 12
    for run in private:
        pretrain = [x for x in metrics_log.read_lines(run) if x["stage"] == "pretrain"]
        assert pretrain[-1]["loss"] > pretrain[0]["loss"] + 0.5, run  # it diverged


def test_the_results_say_what_the_one_recipe_ml100k_curve_shows():
    # One recipe at every point, ∞ its mechanism at σ = 0: the drop from ∞ is the noise's,
    # tested over the 5 seeds; README and results.md quote the cost at ε = 8.
    text, readme = words("docs/results.md"), words()
    assert "the noise alone costs ml-100k's market mean 0.0084 at ε = 8" in readme
    assert (
        "the noise's cost is shown: the market mean falls by 0.0084 from ∞ to ε = 8, on every "
        "seed, from +0.0072 over `local` without noise (not significant) to −0.0011" in text
    )
    assert "At ε = 8 the market mean is 0.0084 below ∞'s [−0.0126, −0.0041], at ε = 4 0.0120" in (
        text
    )
    curve = privacy_tables.CURVES["privacy_ml100k_one"]
    columns = curve.columns()
    assert run_tables.one_recipe(columns) and len(curve.seeds) == 5
    points = curve.points()
    inf = points[math.inf]
    assert f"{inf['mean']['diff']:+.4f}" == "+0.0072" and inf["mean"]["verdict"] == "same"
    assert inf["mean"]["robust"] is False and sum(g > 0 for g in inf["seed_gains"]) == 4
    for epsilon, cost in ((8.0, "-0.0084"), (4.0, "-0.0120")):
        point = points[epsilon]
        noise = point["noise"]
        assert f"{noise['diff']:+.4f}" == cost and noise["verdict"] == "worse" and noise["robust"]
        drops = [g - i for g, i in zip(point["seed_gains"], inf["seed_gains"], strict=True)]
        assert all(d < 0 for d in drops), epsilon  # on every seed
        assert point["mean"]["verdict"] == "same" and sum(g > 0 for g in point["seed_gains"]) == 1
        assert all(t["verdict"] == "same" for t in point["markets"].values()), epsilon
    assert f"{points[8.0]['mean']['diff']:+.4f}" == "-0.0011"
    two = points[2.0]
    assert f"{two['noise']['diff']:+.4f}" == "-0.0198" and two["noise"]["verdict"] == "worse"
    assert two["mean"]["verdict"] == "worse" and two["mean"]["robust"] is False
    assert all(g < 0 for g in two["seed_gains"])
    worse = [m for m, t in two["markets"].items() if t["verdict"] == "worse"]
    assert worse == ["9"] and two["markets"]["9"]["robust"] is False
    for epsilon, folders in columns.items():
        for run in folders:
            pretrain = [x for x in metrics_log.read_lines(run) if x["stage"] == "pretrain"]
            learned = pretrain[-1]["loss"] < pretrain[0]["loss"]
            assert learned == math.isinf(epsilon), run  # σ = 0 learns, the noised diverge


def test_the_readmes_claims_table_is_the_results_summary():
    # Each README claim's verdict, and every figure its row quotes, is in docs/results.md's
    # "Findings" (its one-screen summary), so the front page cannot drift from the results.
    readme = (docs.ROOT / "README.md").read_text()
    results = (docs.ROOT / "docs" / "results.md").read_text()
    findings = " ".join(results[: results.index("## How to read this document")].split())
    rows = [line for line in readme.splitlines() if re.match(r"\| \d\. ", line)]
    assert len(rows) == 3, rows
    for line in rows:
        claim, verdict = row_cells(line)[:2]
        headline = re.search(r"\*\*(.+?)\.?\*\*", line)[1].rstrip(".")
        assert headline.lower() in findings.lower(), (claim, headline)
        numbers = re.findall(r"[+−±-]?\d+\.\d+|\d+ of (?:the )?\d+", verdict)
        assert numbers, claim
        for number in numbers:
            assert number in findings, (claim, number)
