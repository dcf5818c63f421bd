"""The one table writer: CSV keeps values as they are, Markdown rounds them and escapes pipes."""

import csv

from vaelab.results.tables import cell, iwae_columns, write_table


def test_cells_round_numbers_and_escape_pipes():
    assert [cell(v) for v in (16.0, 0.5, -102.3456, 12345.678, "a|b", 3)] == [
        "16",
        "0.500",
        "-102.346",
        "12345.7",
        "a\\|b",
        "3",
    ]


def test_csv_keeps_values_and_markdown_shows_its_rows(tmp_path):
    rows = [
        {"run": "/x/logs/runs/a", "val/elbo": -101.23456, "status": "ok"},
        {"run": "/x/logs/runs/b", "val/elbo": "", "status": "failed"},
    ]
    write_table(
        rows,
        ["run", "status", "val/elbo"],
        tmp_path / "runs",
        shown_rows=[{**row, "run": row["run"].rsplit("/", 1)[1]} for row in rows],
    )
    with open(tmp_path / "runs.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == [
            {"run": "/x/logs/runs/a", "status": "ok", "val/elbo": "-101.23456"},
            {"run": "/x/logs/runs/b", "status": "failed", "val/elbo": ""},
        ]
    assert (tmp_path / "runs.md").read_text().splitlines() == [
        "| run | status | val/elbo |",
        "|---|---|---|",
        "| a | ok | -101.235 |",
        "| b | failed |  |",
    ]


def test_iwae_columns_only_when_a_run_has_them():
    assert iwae_columns([{"val/elbo": -1.0}, {"val/iwae": -0.9}]) == ["val/iwae"]
    assert iwae_columns([{"val/elbo": -1.0}]) == []
