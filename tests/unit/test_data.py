from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from scope_shared import DataError, Outcome, load_outcomes, load_prices

HEADER = "query_id,query,model,correct,output_tokens,input_tokens,task\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    if name.endswith(".gz"):
        p.write_bytes(gzip.compress(text.encode()))
    else:
        p.write_text(text)
    return p


def test_loads_csv_gz_and_jsonl(tmp_path: Path) -> None:
    csv_path = write(tmp_path, "a.csv.gz", HEADER + 'q1,"What is 2+2?",m1,1,5,7,math\nq1,"What is 2+2?",m2,0,,,math\n')
    rows = load_outcomes(csv_path)
    assert rows[0] == Outcome(query="What is 2+2?", model="m1", correct=1.0, output_tokens=5, input_tokens=7, query_id="q1", task="math")
    assert rows[1].output_tokens is None and rows[1].input_tokens is None
    jl = write(tmp_path, "a.jsonl", '{"query": "hi there", "model": "m1", "correct": 0.5}\n\n')
    assert load_outcomes(jl)[0].correct == 0.5


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ('q,"   ",m1,1,,,t\n', "empty or whitespace"),
        ("q,text,m1,1.5,,,t\n", "less than or equal to 1"),
        ("q,text,m1,-0.1,,,t\n", "greater than or equal to 0"),
        ("q,text,m1,nan,,,t\n", "finite"),
        ("q,text,m1,inf,,,t\n", "finite"),
        ("q,text,m1,,,,t\n", "correct is empty"),
        ("q,text,m1,1,-3,,t\n", "output_tokens"),
        ("q,text,m1,1,2.5,,t\n", "whole number"),
        ("q,text,,1,,,t\n", "model"),
    ],
)
def test_bad_rows_name_the_row(tmp_path: Path, row: str, needle: str) -> None:
    p = write(tmp_path, "bad.csv", HEADER + "q0,fine,m1,1,,,t\n" + row)
    with pytest.raises(DataError) as err:
        load_outcomes(p)
    assert f"{p}:3" in str(err.value)
    assert needle in str(err.value)


def test_missing_columns(tmp_path: Path) -> None:
    p = write(tmp_path, "bad.csv", "query,model\nq,m\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['correct'\]"):
        load_outcomes(p)


def test_truncated_gzip_is_a_clear_error(tmp_path: Path) -> None:
    data = gzip.compress((HEADER + "q,text,m1,1,,,t\n" * 5000).encode())
    p = tmp_path / "cut.csv.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated"):
        load_outcomes(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_outcomes(tmp_path / "nope.csv")


def test_prices(tmp_path: Path) -> None:
    p = write(tmp_path, "prices.csv", "model,input_per_mtok,output_per_mtok\na,1,2\nb,0.5,0.5\n")
    cards = load_prices(p)
    assert [c.name for c in cards] == ["a", "b"]
    assert math.isclose(cards[0].cost(1_000_000, 500_000), 2.0)
    bad = write(tmp_path, "bad.csv", "model,input_per_mtok,output_per_mtok\na,-1,2\n")
    with pytest.raises(DataError, match="bad.csv:2"):
        load_prices(bad)
    dup = write(tmp_path, "dup.csv", "model,input_per_mtok,output_per_mtok\na,1,2\na,1,2\n")
    with pytest.raises(DataError, match="duplicate model 'a'"):
        load_prices(dup)


# -- hostile and sloppy files (issue 16: items 14, 15 and the loader one-liners) --------------------------


def test_a_huge_line_is_refused_before_it_is_held(tmp_path: Path) -> None:
    p = tmp_path / "bomb.csv.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(HEADER.encode())
        fh.write(b"q," + b"x" * 5_000_000)  # one 5 MB line, no newline
    with pytest.raises(DataError, match="longer than 1,000,000 characters"):
        load_outcomes(p, max_line_chars=1_000_000)


def test_a_file_of_blank_lines_stops_at_the_line_cap(tmp_path: Path) -> None:
    p = tmp_path / "blank.jsonl.gz"
    p.write_bytes(gzip.compress(b"\n" * 100_000))
    with pytest.raises(DataError, match="more than 1,000 lines"):
        load_outcomes(p, max_lines=1000)


def test_a_byte_order_mark_keeps_the_first_column(tmp_path: Path) -> None:
    p = tmp_path / "excel.csv"
    p.write_bytes(b"\xef\xbb\xbf" + (HEADER + "q7,hello there,m1,1,,,t\n").encode())
    assert load_outcomes(p)[0].query_id == "q7"


def test_a_json_null_query_or_model_is_an_error_not_the_text_none(tmp_path: Path) -> None:
    p = write(tmp_path, "n.jsonl", '{"query": null, "model": "m1", "correct": 1}\n')
    with pytest.raises(DataError, match="query must be text, got null"):
        load_outcomes(p)
    p = write(tmp_path, "m.jsonl", '{"query": "hi", "model": null, "correct": 1}\n')
    with pytest.raises(DataError, match="model must be text, got null"):
        load_outcomes(p)


def test_conflicting_outcomes_far_apart_are_refused_naming_both_rows(tmp_path: Path) -> None:
    rows = [f"q{i},question {i},m1,1,,,t\n" for i in range(1000)]
    rows.append("q3,question 3,m1,0,,,t\n")  # the same query and model, graded differently, 997 rows later
    p = write(tmp_path, "c.csv", HEADER + "".join(rows))
    with pytest.raises(DataError, match=r"c.csv:1002: conflicts with .*c.csv:5"):
        load_outcomes(p)
    same = write(tmp_path, "s.csv", HEADER + "".join(rows[:10]) + rows[3])  # an identical repeat is fine
    assert len(load_outcomes(same)) == 11


def test_a_bad_model_name_late_in_the_file_fails_the_whole_load(tmp_path: Path) -> None:
    rows = [f"q{i},question {i},m1,1,,,t\n" for i in range(700)] + ["q700,question 700, m1 ,1,,,t\n"]
    with pytest.raises(DataError, match=":702: model name ' m1 '"):
        load_outcomes(write(tmp_path, "late.csv", HEADER + "".join(rows)))


@pytest.mark.parametrize("field", ["output_tokens", "input_tokens"])
def test_absurd_token_counts_are_refused(tmp_path: Path, field: str) -> None:
    row = {"query": "hi there", "model": "m1", "correct": 1, field: 1e308}
    p = write(tmp_path, "t.jsonl", json.dumps(row) + "\n")
    with pytest.raises(DataError, match=field):
        load_outcomes(p)


def test_absurd_prices_are_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "prices.csv", "model,input_per_mtok,output_per_mtok\nm1,1e308,1\n")
    with pytest.raises(DataError, match="less than or equal to 100000"):
        load_prices(p)


def test_a_lone_surrogate_in_jsonl_is_a_one_row_error(tmp_path: Path) -> None:
    p = write(tmp_path, "s.jsonl", '{"query": "what is \\ud800 2+2", "model": "m1", "correct": 1}\n')
    with pytest.raises(DataError, match=r"s.jsonl:1: invalid outcome: query: .*lone surrogate"):
        load_outcomes(p)
