"""Every class of bad data file gets a DataError naming the file, line and field; nothing
partial: ratings, RecBole atomic files, item vectors, metadata, encodings and duplicates. The
ratings' errors also through the command line (one line, exit 2, no workdir)."""

import os

import numpy as np
import pytest

from fecosr_jax.data import DataError, leave_one_out, market_from_interactions, recbole, xmrec
from fecosr_jax.data import semantics as sem
from fecosr_jax.data.market import Interactions


def write(path, text):
    path.write_text(text)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: file not found"):
        xmrec.load_ratings(tmp_path / "nope.txt")


def test_wrong_column_count(tmp_path):
    p = write(tmp_path / "a.txt", "userId itemId rate date\nu1 i1 5.0 2020-01-01\nu2 i1 5.0\n")
    with pytest.raises(DataError, match=r"a\.txt:3: expected 4 columns"):
        xmrec.load_ratings(p)


def test_recbole_wrong_column_count(tmp_path):
    write(tmp_path / "d.inter", "user_id:token\titem_id:token\n1\t2\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"d\.inter:3: expected 2 tab-separated columns, found 3"):
        recbole.load_markets(tmp_path, "d")


def test_non_numeric_rating(tmp_path):
    p = write(tmp_path / "a.txt", "u1 i1 five 2020-01-01\n")
    with pytest.raises(DataError, match=r"a\.txt:1: field 'rate': rating 'five' is not a number"):
        xmrec.load_ratings(p)


def test_recbole_non_numeric_float_field(tmp_path):
    write(tmp_path / "d.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\tsoon\n")
    with pytest.raises(DataError, match=r"d\.inter:2: field 'timestamp'"):
        recbole.load_markets(tmp_path, "d")
    # A timestamp declared a token, holding dates: named too (line 4, after a blank line).
    write(tmp_path / "d.inter", "user_id:token\titem_id:token\ttimestamp:token\n1\t2\t5\n\n")
    with open(tmp_path / "d.inter", "a") as f:
        f.write("1\t3\t2020-01-01\n")
    with pytest.raises(DataError, match=r"d\.inter:4: field 'timestamp': '2020-01-01' is not a"):
        recbole.load_markets(tmp_path, "d")


def test_bad_date(tmp_path):
    p = write(tmp_path / "a.txt", "u1 i1 5.0 2020-01-01\nu1 i2 5.0 2020-13-45\n")
    with pytest.raises(DataError, match=r"a\.txt:2: field 'date': date '2020-13-45'"):
        xmrec.load_ratings(p)


def test_empty_market(tmp_path):
    p = write(tmp_path / "ca_5core.txt", "userId itemId rate date\n")
    with pytest.raises(DataError, match=r"ca_5core\.txt: no interactions"):
        xmrec.load_markets(tmp_path, ["ca"])
    with pytest.raises(DataError, match="market 'e' has no interactions"):
        market_from_interactions("e", Interactions(*(np.array([]),) * 3, source=str(p)))


def test_unknown_market_lists_the_known_ones(tmp_path):
    write(tmp_path / "ca_5core.txt", "u1 i1 5.0 2020-01-01\n")
    with pytest.raises(DataError, match=r"field 'markets': unknown market 'zz'.*found: ca"):
        xmrec.load_markets(tmp_path, ["zz"])


def test_unknown_ml100k_region(ml100k_dir):
    with pytest.raises(DataError, match=r"unknown markets \['q'\]"):
        recbole.load_ml100k_regions(ml100k_dir, ["q"])


def test_short_users_are_dropped_with_a_count(caplog):
    rows = Interactions(
        np.array(["u", "u", "u", "v"]), np.array(["a", "b", "c", "a"]), np.arange(4.0), "t"
    )
    split = leave_one_out(market_from_interactions("m", rows), 5)
    assert split.num_dropped_users == 1 and split.num_users == 1
    assert "dropped 1 of 2 users with fewer than 3" in caplog.text


def vector_files(tmp_path, vectors, ids):
    np.save(tmp_path / "v.npy", np.asarray(vectors))
    write(tmp_path / "ids.txt", "".join(f"{i}\n" for i in ids))
    return tmp_path / "v.npy", tmp_path / "ids.txt"


def test_embedding_wrong_row_count(tmp_path):
    v, i = vector_files(tmp_path, np.zeros((3, 4)), ["a", "b"])
    with pytest.raises(DataError, match=r"v\.npy: 3 rows but 2 ids"):
        sem.load_vector_table(v, i)


def test_embedding_wrong_dimension(tmp_path):
    v, i = vector_files(tmp_path, np.zeros((2, 4)), ["a", "b"])
    with pytest.raises(DataError, match=r"v\.npy: vectors have dimension 4, expected 8"):
        sem.load_vector_table(v, i, dim=8)


def test_embedding_npz_archive_or_garbage(tmp_path):
    v, i = vector_files(tmp_path, np.zeros((2, 4)), ["a", "b"])
    np.savez(tmp_path / "v.npz", vectors=np.zeros((2, 4)))
    with pytest.raises(DataError, match=r"v\.npz: an \.npz archive, not an \.npy array"):
        sem.load_vector_table(tmp_path / "v.npz", i)
    (tmp_path / "g.npy").write_bytes(b"\x00\xff garbage")
    with pytest.raises(DataError, match=r"g\.npy: not a numeric \.npy array"):
        sem.load_vector_table(tmp_path / "g.npy", i)


def test_embedding_zero_width(tmp_path):
    v, i = vector_files(tmp_path, np.zeros((2, 0)), ["a", "b"])
    with pytest.raises(DataError, match=r"v\.npy: vectors of width 0 \(shape \(2, 0\)\)"):
        sem.load_vector_table(v, i)


def test_embedding_nan_or_inf(tmp_path):
    vectors = np.zeros((3, 2))
    vectors[2, 1] = np.inf
    v, i = vector_files(tmp_path, vectors, ["a", "b", "c"])
    with pytest.raises(DataError, match=r"1 rows hold NaN or Inf, first row 2 \(id 'c'\)"):
        sem.load_vector_table(v, i)


def test_embedding_duplicate_ids(tmp_path):
    v, i = vector_files(tmp_path, np.zeros((3, 2)), ["a", "b", "a"])
    with pytest.raises(DataError, match=r"ids\.txt:3: duplicate id 'a' \(first at line 1\)"):
        sem.load_vector_table(v, i)


def test_embedding_missing_catalogue_item(tmp_path):
    v, i = vector_files(tmp_path, np.ones((1, 2)), ["a"])
    m = market_from_interactions(
        "m", Interactions(np.array(["u", "u"]), np.array(["a", "b"]), np.arange(2.0), "t")
    )
    with pytest.raises(DataError, match=r"market 'm': 1 of 2 items have no semantic vector"):
        sem.attach_semantics([m], sem.load_vector_table(v, i), source=str(v))


def test_metadata_line_not_a_literal_dict(tmp_path):
    p = write(tmp_path / "meta.json", "{'asin': 'a', 'title': 'ok'}\n['not', 'a', 'dict']\n")
    with pytest.raises(DataError, match=r"meta\.json:2: expected a dict literal, found list"):
        xmrec.load_metadata(p)
    p = write(tmp_path / "meta2.json", "{'asin': 'a', 'title': 'ok'\n")
    with pytest.raises(DataError, match=r"meta2\.json:1: not a Python literal dict"):
        xmrec.load_metadata(p)


def test_text_cache_writes_nothing_partial(tmp_path):
    def broken(texts):
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        sem.encode_texts(["a", "b"], model="m", cache_dir=tmp_path, encode_fn=broken)
    assert os.listdir(tmp_path) == []


# --- Config values: refused before anything is read or written, naming the field. ---------


def test_a_byte_order_mark_is_dropped(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeffuserId itemId rate date\nu1 i1 5.0 2020-01-01\n".encode())
    log = xmrec.load_ratings(p)  # the BOM would make the header a phantom user
    assert log.users.tolist() == ["u1"]
    write(tmp_path / "d.inter", "\ufeffuser_id:token\titem_id:token\n1\t2\n")
    (market,) = recbole.load_markets(tmp_path, "d")
    assert market.user_ids.tolist() == ["1"]


@pytest.mark.parametrize(
    "name, content, named",
    [
        ("a.txt", b"u1 i1 5.0 2020-01-01\n\x00\x01\x02\n", r"a\.txt:2: a NUL byte"),
        ("a.txt", b"u1 i1 5.0 2020-01-01\nu2 \xff\xfe 5.0 2020-01-01\n", r"a\.txt:2: not UTF-8"),
        ("a.txt.gz", b"u1 i1 5.0 2020-01-01\n", r"a\.txt\.gz: named \.gz but not a gzip file"),
    ],
)
def test_binary_undecodable_or_fake_gzip_files_are_named(tmp_path, name, content, named):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=named):
        xmrec.load_ratings(p)


def test_ml100k_regions_need_the_zip_code_field(tmp_path):
    write(tmp_path / "ml-100k.inter", "user_id:token\titem_id:token\n1\t2\n")
    write(tmp_path / "ml-100k.user", "user_id:token\tage:float\n1\t30\n")
    with pytest.raises(DataError, match=r"ml-100k\.user: field 'zip_code': missing field"):
        recbole.load_ml100k_regions(tmp_path)


def test_exact_duplicate_rows_are_dropped_and_counted(tmp_path, caplog):
    """A repeated last row made the user's test item their validation item. Dropped (the
    first kept) and counted, naming the file; `keep` keeps it; a row that differs in any
    field (here the date, or the rating) is no duplicate."""
    rows = ["u1 i1 5.0 2020-01-01", "u1 i2 5.0 2020-01-02", "u1 i3 4.0 2020-01-03"]
    more = ["u1 i3 4.0 2020-01-03", "u1 i3 4.0 2020-01-04", "u1 i3 5.0 2020-01-03"]
    p = write(tmp_path / "a.txt", "\n".join(rows + more[:1]) + "\n")
    split = {}
    for duplicates in ("keep", "drop"):
        log = xmrec.load_ratings(p, duplicates=duplicates)
        market = market_from_interactions("a", log)
        split[duplicates] = leave_one_out(market, 5)
    assert split["keep"].valid_targets[0] == split["keep"].test_targets[0]  # i3 and i3
    assert split["drop"].valid_targets[0] != split["drop"].test_targets[0]  # i2, then i3
    assert f"{p}: dropped 1 exact duplicate rows of 4" in caplog.text
    caplog.clear()
    write(p, "\n".join(rows + more[1:]) + "\n")
    assert len(xmrec.load_ratings(p)) == 5 and "dropped" not in caplog.text
    lines = ["user_id:token\titem_id:token\ttimestamp:float", "1\t2\t10", "1\t3\t11", "1\t2\t10"]
    inter = write(tmp_path / "d.inter", "\n".join(lines) + "\n")
    (market,) = recbole.load_markets(tmp_path, "d")
    assert market.num_interactions == 2
    assert f"{inter}: dropped 1 exact duplicate rows of 3" in caplog.text
    (market,) = recbole.load_markets(tmp_path, "d", duplicates="keep")
    assert market.num_interactions == 3


@pytest.mark.parametrize(
    "files, markets, named",
    [
        ({"a": "u1 i1 5.0 2020-01-01\nu2 i1 5.0\n"}, "a", r"a_5core\.txt:2: expected 4 columns"),
        ({"a": "u1 i1 five 2020-01-01\n"}, "a", r"a_5core\.txt:1: field 'rate': rating 'five'"),
        ({"a": "u1 i1 5.0 2020-01-01\nu1 i2 5.0 2020-13-45\n"}, "a",
         r"a_5core\.txt:2: field 'date': date '2020-13-45'"),
        ({"a": "userId itemId rate date\n"}, "a", r"a_5core\.txt: no interactions"),
        ({"a": "u1 i1 5.0 2020-01-01\n"}, "zz", r"unknown market 'zz'.*found: a"),
    ],
    ids=["columns", "rating", "date", "empty", "unknown market"],
)  # fmt: skip
def test_a_bad_data_file_stops_the_command_line_in_one_line(tmp_path, files, markets, named):
    # Through experiments.main's entry point (tests.conftest.refused_by_main): exit 2, one
    # line naming the file, line and field, no traceback, and no workdir.
    import re

    from tests.conftest import refused_by_main

    data = tmp_path / "data"
    data.mkdir()
    for market, text in files.items():
        write(data / f"{market}_5core.txt", text)
    stderr = refused_by_main(
        tmp_path / "w",
        "--config.data.format=xmrec",
        f"--config.data.path={data}",
        f"--config.data.markets={markets}",
    )
    assert re.search(named, stderr), stderr
