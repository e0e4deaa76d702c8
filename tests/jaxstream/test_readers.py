"""Readers against hand-written fixture lines, good and malformed, and a plain-Python parser."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxstream.data import read_paddlerec, readers

GOOD_CRITEO = [
    "1\t1\t2\t\t-3\t4\t5\t6\t7\t8\t9\t10\t11\t12\t68fd1e64\t80e26c9b\t" + "\t".join(["ab"] * 24),
    "0\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t",  # everything missing but the label (tabs kept)
    "0\t5\t260.0\t1\t1\t1\t1\t1\t1\t1\t1\t1\t1\t1\tffffffffffffffff\t0",  # trimmed, 16 digits
    "1\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0",  # all categoricals trimmed away
    # counts past the reader's log1p table, negative ones; upper- and mixed-case hex
    "0\t1023\t1024\t-1024\t5000000\t-1\t\t\t\t\t\t\t\t7\tABCDEF01\taBcD\t0000000000000001",
]
BAD_CRITEO = [
    ("2\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13", "label is not 0 or 1"),
    ("1\tx\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13", "bad integer"),
    ("1\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13\tzz", "bad hex"),
    ("1\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13\t" + "f" * 17, "bad hex"),
    ("1\t" + "\t".join(["1"] * 13) + "\t" + "\t".join(["a"] * 27), "too many fields"),
    ("1\t1\t2", "too few fields"),
    ("1\t1.5\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13", "bad integer"),
]


def _python_criteo(line):
    """Independent reference: split, pad, convert."""
    f = line.split("\t")
    f += [""] * (40 - len(f))
    dense = [0.0 if x == "" else math.copysign(math.log1p(abs(int(float(x)))), int(float(x)))
             for x in f[1:14]]  # fmt: skip
    cats = [None if x == "" else np.uint64(int(x, 16)).astype(np.int64) for x in f[14:40]]
    return int(f[0]), dense, cats


def _write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_criteo_good_and_malformed(tmp_path):
    lines = []
    for i, g in enumerate(GOOD_CRITEO):
        lines.append(g)
        lines.append(BAD_CRITEO[i % len(BAD_CRITEO)][0])
    lines += [b for b, _ in BAD_CRITEO[len(GOOD_CRITEO) :]]
    path = _write(tmp_path, "part-0", lines)
    ex, report = readers.read_criteo(path)
    assert len(ex) == len(GOOD_CRITEO)
    assert report.lines == len(lines) and report.malformed == len(BAD_CRITEO)
    assert report.first_errors[0] == "part-0:2: label is not 0 or 1"
    assert len(report.first_errors) == readers.MAX_REPORTED
    for i, line in enumerate(GOOD_CRITEO):
        label, dense, cats = _python_criteo(line)
        assert ex.labels[i] == label
        np.testing.assert_allclose(ex.dense[i], dense, rtol=1e-6)
        for j, name in enumerate(readers.CRITEO_SLOTS):
            o = ex.slot_offsets[name]
            got = ex.slot_ids[name][o[i] : o[i + 1]].tolist()
            assert got == ([] if cats[j] is None else [int(cats[j])])


def test_line_numbers_count_blank_lines(tmp_path):
    p = tmp_path / "part-0"
    bad = BAD_CRITEO[0][0]
    p.write_bytes(f"\n{GOOD_CRITEO[0]}\r\n\r\n{bad}\n\n\n{bad}\n".encode())
    ex, report = readers.read_criteo(str(p))
    assert ex.line_numbers.tolist() == [2]
    assert report.first_errors == ["part-0:4: label is not 0 or 1", "part-0:7: label is not 0 or 1"]


def test_criteo_crlf_and_comma_variant(tmp_path):
    p = tmp_path / "part-1"
    p.write_bytes(("label,I1\r\n" + GOOD_CRITEO[0].replace("\t", ",") + "\r\n").encode())
    ex, report = readers.read_criteo(str(p), sep=",")
    assert len(ex) == 1 and report.malformed == 1 and ex.labels[0] == 1


AVAZU_HEADER = ",".join(readers.AVAZU_COLUMNS)
AVAZU_GOOD = "10000169349117863715,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,96809ac8,711ee120,1,0,15704,320,50,1722,0,35,100084,79"  # noqa: E501


@pytest.mark.parametrize(
    "line, reason",
    [
        (AVAZU_GOOD.replace(",0,14102100", ",7,14102100"), "label"),
        (AVAZU_GOOD.replace("14102100", "1410210"), "bad hour"),
        (AVAZU_GOOD + ",extra", "too many fields"),
        (AVAZU_GOOD.rsplit(",", 1)[0], "too few fields"),
    ],
)
def test_avazu_malformed(tmp_path, line, reason):
    path = _write(tmp_path, "part-0", [AVAZU_HEADER, AVAZU_GOOD, line, AVAZU_GOOD])
    ex, report, hours = readers.read_avazu(path)
    assert len(ex) == 2 and report.malformed == 1 and reason in report.first_errors[0]
    assert report.first_errors[0].startswith("part-0:3:")
    assert hours.tolist() == [14102100, 14102100]
    # The same string in a column hashes to the same ID; different strings differ.
    assert ex.slot_ids["site_id"][0] == ex.slot_ids["site_id"][1]
    assert ex.slot_ids["site_id"][0] != ex.slot_ids["site_domain"][0]


def test_slot_format_multi_hot(tmp_path):
    lines = [
        "1:1 11:2 12:2 13:3",
        "0:1 21:3",
        "0:1 5:2 bad",  # bad token
        "1:1 7:9",  # a slot not read: skipped and counted, the line is fine
        "3:1 7:2",  # label not 0/1
        "8:2",  # no label
        "0:1 18446744073709551615:2",
        "0:1 18446744073709551616:2",  # 2^64 would wrap onto ID 0
    ]
    ex, report = readers.read_slots(_write(tmp_path, "part-0", lines), ("2", "3"))
    assert len(ex) == 4 and report.malformed == 4 and report.ignored_tokens == 1
    assert report.first_errors[-1] == "part-0:8: ID over 2^64-1 (it would wrap onto another ID)"
    assert ex.labels.tolist() == [1, 0, 1, 0]
    assert ex.slot_offsets["2"].tolist() == [0, 2, 2, 2, 3]
    assert ex.slot_ids["2"].tolist() == [11, 12, -1]
    assert ex.slot_offsets["3"].tolist() == [0, 1, 2, 2, 2]
    assert ex.slot_ids["3"].tolist() == [13, 21]


@pytest.mark.parametrize(
    "line, reason",
    [
        ("click:2 dense_feature:0.5 dense_feature:1 1:7", "label is not 0 or 1"),
        ("dense_feature:0.5 dense_feature:1 1:7", "label is not 0 or 1"),  # no label
        ("click:1 dense_feature:0.5 1:7", "wrong number of dense values"),
        ("click:1 dense_feature:0.5 dense_feature:1 dense_feature:2 1:7", "wrong number of dense"),
        ("click:1 dense_feature:x dense_feature:1 1:7", "bad float"),
        ("click:1 dense_feature:0.5 dense_feature:1 1:7a", "bad token (want name:value)"),
        ("click:1 dense_feature:0.5 dense_feature:1 oops", "bad token (want name:value)"),
        ("click:1 dense_feature:0.5 dense_feature:1 1:18446744073709551616", "ID over 2^64-1"),
        ("click:1 dense_feature:0.5 dense_feature:1 18446744073709551617:7", "ID over 2^64-1"),
        ("click:1 dense_feature:1e999 dense_feature:1 1:7", "dense value is not finite"),
        ("click:1 dense_feature:1e18446744073709551617 dense_feature:1 1:7", "not finite"),
    ],
)
def test_paddlerec_malformed(tmp_path, line, reason):
    ex, report = read_paddlerec(_write(tmp_path, "part-0", [line]), ("1", "2"), 2)
    assert len(ex) == 0 and report.malformed == 1 and reason in report.first_errors[0]


def test_paddlerec_name_value_lines(tmp_path):
    lines = [
        "click:1 dense_feature:0.25 dense_feature:1e-3 1:7 2:8 2:9 3:5",
        "click:0 dense_feature:-2.5 dense_feature:0 2:18446744073709551615",
    ]
    ex, report = read_paddlerec(_write(tmp_path, "part-0", lines), ("1", "2"), 2)
    assert len(ex) == 2 and report.malformed == 0 and report.ignored_tokens == 1  # slot 3
    assert ex.labels.tolist() == [1, 0]
    np.testing.assert_allclose(ex.dense, [[0.25, 1e-3], [-2.5, 0.0]], rtol=1e-6)
    assert ex.slot_offsets["1"].tolist() == [0, 1, 1] and ex.slot_ids["1"].tolist() == [7]
    assert ex.slot_offsets["2"].tolist() == [0, 2, 3]
    assert ex.slot_ids["2"].tolist() == [8, 9, -1]


def test_ten_thousand_malformed_lines_never_crash(tmp_path):
    rng = np.random.default_rng(0)
    alphabet = np.array(list("0123456789abcdefxyz\t:,. -"))
    lines = ["".join(rng.choice(alphabet, rng.integers(0, 60))) for _ in range(10_000)]
    lines += GOOD_CRITEO
    ex, report = readers.read_criteo(_write(tmp_path, "part-0", lines))
    assert report.lines == len([x for x in lines if x]) and len(ex) >= len(GOOD_CRITEO)
    assert report.malformed + len(ex) == report.lines


@pytest.mark.parametrize(
    "read, lines",
    [
        (readers.read_criteo, GOOD_CRITEO[:2]),
        (lambda p: readers.read_slots(p, ("2",)), ["1:1 5:2", "0:1 6:2"]),
        (lambda p: read_paddlerec(p, ("1",), 1), ["click:1 dense_feature:1 1:5"] * 2),
    ],
)
def test_a_last_line_without_its_newline_is_truncated_not_trusted(tmp_path, read, lines):
    p = tmp_path / "part-0"
    p.write_text("\n".join(lines))  # no newline at the end: maybe a partial write
    ex, report = read(str(p))[:2]
    assert len(ex) == len(lines) - 1 and report.malformed == 1
    assert "truncated" in report.first_errors[0]
    assert all(len(v) <= len(ex) for v in ex.slot_ids.values())


@pytest.mark.parametrize(
    "read, good, bad",
    [
        (readers.read_criteo, GOOD_CRITEO, [b for b, _ in BAD_CRITEO]),
        (lambda p, threads: readers.read_avazu(p, threads=threads)[:2], [AVAZU_GOOD],
         [AVAZU_GOOD.replace(",0,", ",7,", 1), "1,0"]),
    ],
)  # fmt: skip
def test_runs_of_lines_parsed_at_once_read_the_same(tmp_path, read, good, bad):
    """Enough lines for three runs: the same examples, line numbers and report with one
    thread or three, malformed lines on both sides of the cuts, and a truncated last line."""
    n = 3 * readers.MIN_LINES_PER_THREAD + 11
    lines = [(bad if i % 7 == 3 else good)[i % len(bad if i % 7 == 3 else good)]
             for i in range(n)]  # fmt: skip
    p = tmp_path / "part-0"
    p.write_text("\n".join(lines))  # the last line has no newline
    (ex1, rep1), (ex3, rep3) = read(str(p), threads=1), read(str(p), threads=3)
    assert rep1.malformed == sum(i % 7 == 3 for i in range(n - 1)) + 1
    assert len(ex1) == n - rep1.malformed  # (the + 1: the last line, truncated)
    assert vars(rep1) == vars(rep3)
    assert ex1.line_numbers.tolist() == ex3.line_numbers.tolist()
    assert ex1.labels.tolist() == ex3.labels.tolist()
    np.testing.assert_array_equal(ex1.dense, ex3.dense)
    for name in ex1.slot_ids:
        assert ex1.slot_ids[name].tolist() == ex3.slot_ids[name].tolist()
        assert ex1.slot_offsets[name].tolist() == ex3.slot_offsets[name].tolist()
