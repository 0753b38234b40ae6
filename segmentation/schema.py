"""The row schemas, loaded from `segmentation/schema/*.json` (BigQuery's JSON schema format).

These files are the single definition of the result tables: the code builds and checks rows
against them, the SQLite sink creates its tables from them, and Terraform passes them to
`google_bigquery_table.schema` with `file()`.

>>> [column["name"] for column in load_schema("images")][:3]
['row_id', 'source_uri', 'source_bucket']
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).parent / "schema"
TABLES = ("objects", "images", "embeddings", "search_matches")

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "STRING": (str,),
    "INT64": (int,),
    "FLOAT64": (float, int),
    "BOOL": (bool,),
    "TIMESTAMP": (str,),
}


class RowSchemaError(ValueError):
    """A row does not match its table's schema (a bug in row building, never bad input)."""


@functools.cache
def load_schema(table: str) -> tuple[dict[str, str], ...]:
    """The columns of `table` (one of TABLES) as BigQuery JSON schema dicts."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")
    with open(SCHEMA_DIR / f"{table}.json", encoding="utf-8") as handle:
        return tuple(json.load(handle))


def validate_row(table: str, row: Mapping[str, Any]) -> None:
    """Raise `RowSchemaError` if `row` has unknown columns, misses required ones, or has wrong types."""
    columns = {column["name"]: column for column in load_schema(table)}
    unknown = set(row) - set(columns)
    if unknown:
        raise RowSchemaError(f"{table}: unknown columns {sorted(unknown)}")
    for name, column in columns.items():
        value = row.get(name)
        if value is None:
            if column["mode"] == "REQUIRED":
                raise RowSchemaError(f"{table}: required column {name} is missing")
            continue
        if column["mode"] == "REPEATED":
            if not isinstance(value, (list, tuple)):
                raise RowSchemaError(f"{table}.{name}: {type(value).__name__} given for REPEATED {column['type']}")
            for item in value:
                _check_value(table, name, column["type"], item)
        else:
            _check_value(table, name, column["type"], value)


def _check_value(table: str, name: str, column_type: str, value: Any) -> None:
    expected = _PYTHON_TYPES[column_type]
    if isinstance(value, bool) and column_type != "BOOL":
        raise RowSchemaError(f"{table}.{name}: bool given for {column_type}")
    if not isinstance(value, expected):
        raise RowSchemaError(f"{table}.{name}: {type(value).__name__} given for {column_type}")
    if column_type == "TIMESTAMP":
        dt.datetime.fromisoformat(str(value))
