"""Output that reads well anywhere: a terminal of any width, a pipe, a file.

Nothing is ever cut short: a table that does not fit the width turns into records (one
``column | value`` line per field, values wrapped whole, like psql's ``\\x auto``), and
every command can print JSON or CSV instead.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aura_es.payload import json_default


class Format(StrEnum):
    AUTO = "auto"
    TABLE = "table"
    RECORDS = "records"
    JSON = "json"
    CSV = "csv"


def console() -> Console:
    """Stdout; 80 columns when it is not a terminal (a pipe, a file) and COLUMNS is unset."""
    return Console(soft_wrap=False, highlight=False)


def text(value: Any) -> str:
    """A value as one piece of text, whole: lists and objects as JSON."""
    if value is None:
        return ""
    if isinstance(value, (list, dict, tuple)):
        return orjson.dumps(value, default=json_default).decode()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (UUID, Decimal)):
        return str(value)
    return str(value)


def rows(
    records: Sequence[dict[str, Any]], columns: Sequence[str], *, title: str,
    fmt: Format = Format.AUTO, out: Console | None = None,
) -> None:
    """Prints ``records`` in ``fmt``; AUTO is a table when it fits the width, else records."""
    out = out or console()
    if fmt is Format.JSON:
        sys.stdout.write(orjson.dumps(list(records), default=json_default,
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if fmt is Format.CSV:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[text(r.get(c)) for c in columns] for r in records])
        sys.stdout.write(buffer.getvalue())
        return
    cells = [[text(r.get(c)) for c in columns] for r in records]
    fits = _fits(columns, cells, out.width)
    if fmt is Format.TABLE or (fmt is Format.AUTO and fits):
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, no_wrap=True)
        for row in cells:
            table.add_row(*(escape(c) for c in row))
        # A table asked for is printed whole and wide, as psql does: nothing folded
        # mid-word; a narrower terminal wraps the long lines itself.
        width = max(out.width, _needed(columns, cells))
        wide = out if width == out.width else Console(
            soft_wrap=False, highlight=False, width=width, file=out.file)
        wide.print(table)
        return
    out.print(f"{title}: {len(records)} rows", highlight=False)
    width = max((len(c) for c in columns), default=0)
    for number, row in enumerate(cells, start=1):
        out.print(f"-[ record {number} ]" + "-" * max(0, min(out.width, 60) - 14),
                  highlight=False)
        for column, value in zip(columns, row, strict=True):
            out.print(f"{column.ljust(width)} | {escape(value)}", highlight=False,
                      overflow="fold")


def _needed(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> int:
    """The width of the table with every value unfolded (borders: 3 characters a column)."""
    return 1 + sum(
        3 + max([len(column), *(len(line) for row in cells for line in row[i].splitlines() or
                                [""])])
        for i, column in enumerate(columns)
    )


def _fits(columns: Sequence[str], cells: Sequence[Sequence[str]], width: int) -> bool:
    """Would every value fit its column unfolded?"""
    return _needed(columns, cells) <= width


def print_whole(table: Table, out: Console) -> None:
    """A table the user asked for in full (``--wide``): printed at its natural width, as
    psql does, never cropped or folded; a narrower terminal wraps the long lines."""
    width = max(out.width, out.measure(table, options=out.options.update_width(10_000))
                .maximum)
    wide = out if width == out.width else Console(
        soft_wrap=False, highlight=False, width=width, file=out.file)
    wide.print(table)


def header_column(table: Table, header: str, **options: Any) -> None:
    """A column whose header is never folded mid-word (its longest word sets the least
    width); its cells fold where they must, at spaces first."""
    least = max((len(word) for word in header.split()), default=1)
    table.add_column(header, overflow="fold", min_width=least, **options)
