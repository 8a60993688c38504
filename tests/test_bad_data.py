"""Every class of bad data file is refused through the command line's entry point with one
line naming the file, line and field, exit 2, no traceback, and the workdir as it was (absent,
or an old run byte for byte unchanged under --overwrite): ratings, RecBole atomic files, item
vectors, metadata and encodings. In-process: what the command line cannot reach (a vector
table's expected dimension, a market built in code), what is no error (a byte-order mark,
duplicate rows, short users) and the text cache."""

import io
import os
import re
import shutil

import numpy as np
import pytest

from fecosr_jax.data import DataError, leave_one_out, market_from_interactions, recbole, xmrec
from fecosr_jax.data import semantics as sem
from fecosr_jax.data.market import Interactions
from tests.conftest import ROOT, refused_by_main


def write(path, text):
    path.write_text(text)
    return path


def npy(array) -> bytes:
    """An array's .npy file."""
    out = io.BytesIO()
    np.save(out, np.asarray(array))
    return out.getvalue()


def npz(array) -> bytes:
    out = io.BytesIO()
    np.savez(out, vectors=np.asarray(array))
    return out.getvalue()


# --- Through the command line: experiments.main on the test config. -------------------------

GOOD = "u1 i1 5.0 2020-01-01\nu1 i2 5.0 2020-01-02\nu1 i3 5.0 2020-01-03\n"  # market a
XMREC = ["--config.data.format=xmrec", "--config.data.path={data}", "--config.data.markets=a"]
META = [*XMREC, "--config.data.metadata_path={data}/meta"]
RECBOLE = ["--config.data.format=recbole", "--config.data.path={data}", "--config.data.dataset=d"]
REGIONS = ["--config.data.format=ml100k_regions", "--config.data.path={data}"]
VECTORS = [
    *XMREC,
    "--config.data.semantics=npy",
    "--config.data.vectors_path={data}/v.npy",
    "--config.data.ids_path={data}/ids.txt",
]
IDS = "i1\ni2\ni3\n"
ZIP = "user_id:token\tzip_code:token\n1\t12345\n"
INTER = "user_id:token\titem_id:token\n"
CASES = {  # name: (the data folder's files, the flags ({data} = its path), the line's pattern)
    # XMRec ratings.
    "columns": ({"a_5core.txt": "u1 i1 5.0 2020-01-01\nu2 i1 5.0\n"}, XMREC,
                r"a_5core\.txt:2: expected 4 columns"),
    "rating": ({"a_5core.txt": "u1 i1 five 2020-01-01\n"}, XMREC,
               r"a_5core\.txt:1: field 'rate': rating 'five'"),
    "date": ({"a_5core.txt": "u1 i1 5.0 2020-01-01\nu1 i2 5.0 2020-13-45\n"}, XMREC,
             r"a_5core\.txt:2: field 'date': date '2020-13-45'"),
    "empty": ({"a_5core.txt": "userId itemId rate date\n"}, XMREC,
              r"a_5core\.txt: no interactions"),
    "unknown market": ({"b_5core.txt": GOOD}, XMREC, r"unknown market 'a'.*found: b"),
    "no folder": ({}, [*XMREC[:1], "--config.data.path={data}/none", XMREC[2]],
                  r"none: data folder not found"),
    # Encodings.
    "NUL byte": ({"a_5core.txt": b"u1 i1 5.0 2020-01-01\n\x00\x01\x02\n"}, XMREC,
                 r"a_5core\.txt:2: a NUL byte"),
    "not UTF-8": ({"a_5core.txt": b"u1 i1 5.0 2020-01-01\nu2 \xff\xfe 5.0 2020-01-01\n"}, XMREC,
                  r"a_5core\.txt:2: not UTF-8"),
    "fake gzip": ({"a_5core.txt.gz": GOOD}, XMREC,
                  r"a_5core\.txt\.gz: named \.gz but not a gzip file"),
    # XMRec metadata.
    "metadata list": (
        {"a_5core.txt": GOOD, "meta/metadata_a_x.json": "{'asin': 'i1', 'title': 'ok'}\n[1]\n"},
        META, r"metadata_a_x\.json:2: expected a dict literal, found list"),
    "metadata cut": ({"a_5core.txt": GOOD, "meta/metadata_a_x.json": "{'asin': 'i1'\n"}, META,
                     r"metadata_a_x\.json:1: not a Python literal dict"),
    "metadata id": ({"a_5core.txt": GOOD, "meta/metadata_a_x.json": "{'title': 'ok'}\n"}, META,
                    r"metadata_a_x\.json:1: field 'asin': missing item id"),
    "no metadata": ({"a_5core.txt": GOOD, "meta/metadata_b_x.json": ""}, META,
                    r"meta: no metadata file for market 'a'"),
    # RecBole atomic files.
    "recbole columns": ({"d.inter": f"{INTER}1\t2\n1\t2\t3\n"}, RECBOLE,
                        r"d\.inter:3: expected 2 tab-separated columns, found 3"),
    "recbole float": ({"d.inter": "user_id:token\titem_id:token\ttimestamp:float\n1\t2\tsoon\n"},
                      RECBOLE, r"d\.inter:2: field 'timestamp'"),
    "recbole token dates": (  # a timestamp declared a token, holding dates (after a blank line)
        {"d.inter": "user_id:token\titem_id:token\ttimestamp:token\n1\t2\t5\n\n1\t3\t2020-01-01\n"},
        RECBOLE, r"d\.inter:4: field 'timestamp': '2020-01-01' is not a"),
    "recbole no file": ({"e.inter": f"{INTER}1\t2\n"}, RECBOLE, r"d\.inter: file not found"),
    "recbole no item field": ({"d.inter": "user_id:token\titem:token\n1\t2\n"}, RECBOLE,
                              r"d\.inter: field 'item_id': missing field"),
    "regions zip code": (
        {"ml-100k.inter": f"{INTER}1\t2\n", "ml-100k.user": "user_id:token\tage:float\n1\t30\n"},
        REGIONS, r"ml-100k\.user: field 'zip_code': missing field"),
    "regions unknown": ({"ml-100k.inter": f"{INTER}1\t2\n", "ml-100k.user": ZIP},
                        [*REGIONS, "--config.data.markets=q"], r"unknown markets \['q'\]"),
    # Item vectors (semantics npy).
    "vectors rows": ({"a_5core.txt": GOOD, "v.npy": npy(np.zeros((4, 2))), "ids.txt": IDS},
                     VECTORS, r"v\.npy: 4 rows but 3 ids"),
    "vectors npz": ({"a_5core.txt": GOOD, "v.npy": npz(np.zeros((3, 2))), "ids.txt": IDS},
                    VECTORS, r"v\.npy: an \.npz archive, not an \.npy array"),
    "vectors garbage": ({"a_5core.txt": GOOD, "v.npy": b"\x00\xff garbage", "ids.txt": IDS},
                        VECTORS, r"v\.npy: not a numeric \.npy array"),
    "vectors width 0": ({"a_5core.txt": GOOD, "v.npy": npy(np.zeros((3, 0))), "ids.txt": IDS},
                        VECTORS, r"v\.npy: vectors of width 0 \(shape \(3, 0\)\)"),
    "vectors inf": ({"a_5core.txt": GOOD, "v.npy": npy([[0, 0], [0, 0], [0, np.inf]]),
                     "ids.txt": IDS}, VECTORS,
                    r"v\.npy: 1 rows hold NaN or Inf, first row 2 \(id 'i3'\)"),
    "vectors duplicate id": (
        {"a_5core.txt": GOOD, "v.npy": npy(np.ones((3, 2))), "ids.txt": "i1\ni2\ni1\n"},
        VECTORS, r"ids\.txt:3: duplicate id 'i1' \(first at line 1\)"),
    "vectors missing item": (
        {"a_5core.txt": GOOD, "v.npy": npy(np.ones((2, 2))), "ids.txt": "i1\ni2\n"},
        VECTORS, r"market 'a': 1 of 3 items have no semantic vector"),
    "vectors no file": ({"a_5core.txt": GOOD, "ids.txt": IDS}, VECTORS,
                        r"v\.npy: vector file not found"),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_a_bad_data_file_stops_the_command_line_in_one_line(tmp_path, name):
    """Refused through experiments.main's entry point (tests.conftest.refused_by_main): exit 2,
    one line naming the file, line and field, no traceback. In a new workdir nothing is
    written; over an old run with --overwrite (the data are checked before it is moved
    aside), the old run stays byte for byte where it was and nothing is written beside it."""
    files, flags, named = CASES[name]
    data = tmp_path / "data"
    data.mkdir()
    for relative, content in files.items():
        path = data / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    flags = [f.format(data=data) for f in flags]
    stderr = refused_by_main(tmp_path / "new", *flags)
    assert re.search(named, stderr), stderr
    old = tmp_path / "old"  # a finished run's files (the main job's, as committed)
    shutil.copytree(ROOT / "docs/results/default", old)
    assert refused_by_main(old, "--overwrite", *flags) == stderr


# --- In-process: the loaders' checks the command line cannot reach, and what is no error. ----


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: file not found"):
        xmrec.load_ratings(tmp_path / "nope.txt")


def test_a_market_without_interactions_built_in_code(tmp_path):
    with pytest.raises(DataError, match="market 'e' has no interactions"):
        market_from_interactions("e", Interactions(*(np.array([]),) * 3, source="t"))


def test_short_users_are_dropped_with_a_count(caplog):
    rows = Interactions(
        np.array(["u", "u", "u", "v"]), np.array(["a", "b", "c", "a"]), np.arange(4.0), "t"
    )
    split = leave_one_out(market_from_interactions("m", rows), 5)
    assert split.num_dropped_users == 1 and split.num_users == 1
    assert "dropped 1 of 2 users with fewer than 3" in caplog.text


def test_embedding_wrong_dimension(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((2, 4)))
    write(tmp_path / "ids.txt", "a\nb\n")
    with pytest.raises(DataError, match=r"v\.npy: vectors have dimension 4, expected 8"):
        sem.load_vector_table(tmp_path / "v.npy", tmp_path / "ids.txt", dim=8)


def test_text_cache_writes_nothing_partial(tmp_path):
    def broken(texts):
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        sem.encode_texts(["a", "b"], model="m", cache_dir=tmp_path, encode_fn=broken)
    assert os.listdir(tmp_path) == []


def test_a_byte_order_mark_is_dropped(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeffuserId itemId rate date\nu1 i1 5.0 2020-01-01\n".encode())
    log = xmrec.load_ratings(p)  # the BOM would make the header a phantom user
    assert log.users.tolist() == ["u1"]
    write(tmp_path / "d.inter", "\ufeffuser_id:token\titem_id:token\n1\t2\n")
    (market,) = recbole.load_markets(tmp_path, "d")
    assert market.user_ids.tolist() == ["1"]


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
