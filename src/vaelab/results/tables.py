"""The tables vaelab writes, as CSV (values as they are) and Markdown (numbers rounded):
the sweep summary and vaelab-compare's runs table."""

from __future__ import annotations

import csv
from pathlib import Path

from vaelab.metrics import IWAE_METRICS


def iwae_columns(metrics: list[dict]) -> list[str]:
    """The IWAE_METRICS that at least one of these metric dicts holds."""
    return [key for key in IWAE_METRICS if any(m.get(key, "") != "" for m in metrics)]


def cell(value) -> str:
    """A value as a Markdown or HTML table cell: whole numbers without decimals, others to 3
    decimals (1 from 1000 on), and ``|`` escaped."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1:
            return f"{value:.0f}"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value).replace("|", "\\|")


def write_table(
    rows: list[dict], columns: list[str], stem: Path, shown_rows: list[dict] | None = None, root: Path | None = None
) -> None:
    """``<stem>.csv`` and ``<stem>.md`` with these columns; ``shown_rows``: what the Markdown
    shows instead of ``rows`` (e.g. a folder's name for its path); ``root``: the folder below
    which no symlink is followed (``runs.write_file``)."""
    import io

    from vaelab.runs import write_file

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_file(stem.with_suffix(".csv"), text.getvalue(), root=root)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in (shown_rows or rows)]
    write_file(stem.with_suffix(".md"), "\n".join(lines) + "\n", root=root)
