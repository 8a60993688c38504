"""The real loaders on ../shared/data, and on small files written by the tests."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from fecosr_jax.data import DataError, recbole, xmrec

# ../shared/data/README.md
XMREC_COUNTS = {
    "ca": (55045, 5675, 5772),
    "de": (22247, 2373, 2210),
    "fr": (22905, 2396, 1911),
    "uk": (44515, 4847, 3302),
}
ML100K_USERS = {
    "0": 96,
    "1": 97,
    "2": 101,
    "3": 62,
    "4": 77,
    "5": 121,
    "6": 78,
    "7": 67,
    "8": 56,
    "9": 170,
    "x": 18,
}
ML100K_INTERACTIONS = {
    "0": 9343,
    "1": 10331,
    "2": 10597,
    "3": 5933,
    "4": 7986,
    "5": 11759,
    "6": 8943,
    "7": 6728,
    "8": 7442,
    "9": 18852,
    "x": 2086,
}


def test_xmrec_reproduces_readme_counts(xmrec_dir):
    markets = xmrec.load_markets(xmrec_dir, list(XMREC_COUNTS), duplicates="keep")
    got = {m.name: (m.num_interactions, m.num_users, m.num_items) for m in markets}
    assert got == XMREC_COUNTS
    # Items overlap across markets by ASIN.
    assert len(np.intersect1d(markets[0].item_ids, markets[3].item_ids)) > 1000


def test_xmrec_exact_duplicate_rows_are_dropped_and_counted(xmrec_dir, caplog):
    """The files repeat some rows exactly (ca: 518 of 55,045). Dropped, each file's count is
    in the log, and no user or item goes (the first of the rows stays)."""
    caplog.set_level("WARNING")
    markets = xmrec.load_markets(xmrec_dir, list(XMREC_COUNTS))
    for m in markets:
        path = xmrec.ratings_path(xmrec_dir, m.name)
        rows = [tuple(line.split()) for line in open(path).read().splitlines()[1:]]
        repeats = len(rows) - len(set(rows))
        rows_kept, users, items = XMREC_COUNTS[m.name]
        assert (m.num_interactions, m.num_users, m.num_items) == (rows_kept - repeats, users, items)
        assert f"{path}: dropped {repeats} exact duplicate rows of {rows_kept}" in caplog.text
    # ca by hand: tail -n +2 ca_5core.txt | sort | uniq -c | awk '$1>1{s+=$1-1}END{print s}'
    assert "dropped 518 exact duplicate rows of 55045" in caplog.text


def test_ml100k_regions_reproduces_readme_counts(ml100k_dir):
    markets = recbole.load_ml100k_regions(ml100k_dir)
    assert {m.name: m.num_users for m in markets} == ML100K_USERS
    assert {m.name: m.num_interactions for m in markets} == ML100K_INTERACTIONS
    m = markets[0]
    toy_story = m.item_text[m.item_ids.tolist().index("1")]
    assert toy_story == "Toy Story. 1995. Animation Children's Comedy"


def test_ml100k_single_market(ml100k_dir):
    (m,) = recbole.load_markets(ml100k_dir, "ml-100k")
    assert (m.num_users, m.num_items, m.num_interactions) == (943, 1682, 100000)


def test_ml100k_published_catalogue_is_the_item_file_in_every_region(ml100k_dir):
    """config.data.catalogue=published: every region's items are the 1682 movies of the
    .item file, whatever its users watched; each user's sequence is the same movies."""
    rows = recbole.load_ml100k_regions(ml100k_dir, ["3", "x"])
    published = recbole.load_ml100k_regions(ml100k_dir, ["3", "x"], published=True)
    for a, b in zip(rows, published, strict=True):
        assert a.num_items < b.num_items == 1682
        assert (a.user_ids == b.user_ids).all() and (a.offsets == b.offsets).all()
        assert (a.item_ids[a.items - 1] == b.item_ids[b.items - 1]).all()


def test_xmrec_gzip_and_no_header_equal_plain(tmp_path):
    rows = "u1 i1 5.0 2020-01-02\nu1 i2 4.0 2020-01-01\nu2 i1 3.0 2020-01-03\n"
    (tmp_path / "aa_5core.txt").write_text("userId itemId rate date\n" + rows)
    with gzip.open(tmp_path / "bb_5core.txt.gz", "wt") as f:
        f.write(rows)
    a, b = xmrec.load_markets(tmp_path, ["aa", "bb"])
    for m in (a, b):
        assert m.item_ids.tolist() == ["i1", "i2"]
        assert m.sequence(0).tolist() == [2, 1]  # u1: i2 (Jan 1) before i1 (Jan 2)
        assert m.sequence(1).tolist() == [1]


def test_xmrec_metadata_literal_and_json(tmp_path):
    meta = tmp_path / "metadata_aa_Electronics.json"
    meta.write_text(
        "{'asin': 'i1', 'title': 'Cable', 'categories': [['Electronics', 'Cables']]}\n"
        '{"asin": "i2", "title": "Phone", "available": true}\n'
    )
    assert xmrec.load_metadata(meta) == {
        "i1": "Cable. Categories: Electronics, Cables",
        "i2": "Phone",
    }
    (tmp_path / "aa_5core.txt").write_text("u1 i1 5.0 2020-01-02\nu1 i2 4.0 2020-01-03\n")
    (m,) = xmrec.load_markets(tmp_path, ["aa"], metadata_dir=tmp_path)
    assert m.item_text == ("Cable. Categories: Electronics, Cables", "Phone")


def test_xmrec_published_catalogue_is_the_metadata_files_items(tmp_path):
    (tmp_path / "metadata_aa_Electronics.json").write_text(
        '{"asin": "i1", "title": "Cable"}\n{"asin": "i2", "title": "Phone"}\n'
        '{"asin": "i3", "title": "Case"}\n'  # listed, never rated
    )
    (tmp_path / "aa_5core.txt").write_text("u1 i2 5.0 2020-01-02\nu1 i1 4.0 2020-01-03\n")
    (m,) = xmrec.load_markets(tmp_path, ["aa"], metadata_dir=tmp_path, published=True)
    assert m.item_ids.tolist() == ["i1", "i2", "i3"] and m.sequence(0).tolist() == [2, 1]
    with pytest.raises(DataError, match="set config.data.metadata_path"):
        xmrec.load_markets(tmp_path, ["aa"], published=True)
    (tmp_path / "aa_5core.txt").write_text("u1 i2 5.0 2020-01-02\nu1 i4 4.0 2020-01-03\n")
    with pytest.raises(DataError, match=r"1 items of its rows are not in its published .*'i4'"):
        xmrec.load_markets(tmp_path, ["aa"], metadata_dir=tmp_path, published=True)


def test_metadata_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    meta = tmp_path / "m.json"
    meta.write_text(
        "{'asin': 'i0', 'title': 'ok'}\n" + f"__import__('pathlib').Path({str(marker)!r}).touch()\n"
    )
    with pytest.raises(DataError, match=r"m\.json:2: .*not a") as e:
        xmrec.load_metadata(meta)
    assert not marker.exists()
    assert "Traceback" not in str(e.value)


def test_stats_cli_json(xmrec_dir):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fecosr_jax.data.stats",
            "--format=xmrec",
            f"--path={xmrec_dir}",
            "--markets=ca,de,fr,uk",
            "--duplicates=keep",  # the README counts the files' rows
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.stdout)
    assert {r["market"]: (r["interactions"], r["users"], r["items"]) for r in rows} == (
        XMREC_COUNTS
    )
    assert set(rows[0]) == {"market", "users", "items", "interactions"}
