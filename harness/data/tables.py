"""Reading and validating a corpus's tables: every problem with the data is a `UserError` naming the file, column or
value, raised before anything is written.

A valid split has a string text column without nulls and integer label columns without nulls inside
``[0, data.labels[column])``; it comes out as ``text`` (string) plus the labels (int64), without the source's schema
metadata. Empty or whitespace-only texts are an error (`DataConfig.blank_texts: error`) unless the config says to
drop them. Local Parquet is read with pyarrow rather than `load_dataset("parquet")`: that avoids writing an Arrow copy
into the user's cache on every new file and keeps the bundled corpus well under a second.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harness.config import DataConfig
from harness.data.corpus import TEXT, Corpus, Located, split_dataset
from harness.errors import UserError

log = logging.getLogger(__name__)


def first_line(exc: BaseException) -> str:
    """An exception's first line (or its type), for one-line error messages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_column_names(cfg: DataConfig) -> None:
    """Refuse a label named like the text column (the source's or the loaded one)."""
    if cfg.text_column in cfg.labels:
        raise UserError(f"data.labels: '{cfg.text_column}' is the text column (data.text_column), not a label")
    if TEXT in cfg.labels:
        raise UserError(f"data.labels: '{TEXT}' is reserved for the text column; rename the label column")


def read_files(located: Located, cfg: DataConfig) -> Corpus:
    """Read and validate the located files of every split; no scrubbing."""
    splits = {}
    dropped: dict[str, int] = {}
    for split, paths in located.files.items():
        table, dropped[split] = read_split(split, paths, cfg)
        splits[split] = split_dataset(table, split, located.fingerprint)
    return Corpus(source=located.source, files=located.files, fingerprint=located.fingerprint, splits=splits,
                  blank_dropped=dropped)


def read_split(split: str, paths: list[str], cfg: DataConfig) -> tuple[pa.Table, int]:
    """The split's validated table and how many blank texts were dropped from it (`data.blank_texts: drop`)."""
    columns = [cfg.text_column, *cfg.labels]
    tables = []
    dropped = 0
    for path in paths:
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
        check_schema(schema, path, cfg)
        table, blanks = valid_rows(pq.read_table(path, columns=columns), path, f"{path} (split '{split}')", cfg)
        tables.append(table)
        dropped += blanks
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if table.num_rows == 0:
        more = f" after dropping {dropped} blank text(s)" if dropped else ""
        raise UserError(f"split '{split}' is empty{more} ({', '.join(paths)})")
    if dropped:
        report_dropped(split, dropped)
    return table, dropped


def valid_rows(table: pa.Table, origin: str, where: str, cfg: DataConfig) -> tuple[pa.Table, int]:
    """`check_table` then `blank_texts`: the validated table (``text`` + int64 labels) and the blank texts dropped.
    `origin` names the data in column errors, `where` in blank-text ones."""
    return blank_texts(check_table(table, origin, cfg), where, cfg)


def blank_texts(table: pa.Table, origin: str, cfg: DataConfig) -> tuple[pa.Table, int]:
    """Refuse (`data.blank_texts: error`, with the count) or drop the rows whose text is blank."""
    mask = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(table.column(TEXT))), 0)  # empty or (Unicode) whitespace
    count = int(pc.sum(mask).as_py() or 0)
    if not count:
        return table, 0
    if cfg.blank_texts == "error":
        first = pc.index(mask, True).as_py()
        raise UserError(
            f"{origin}: column '{cfg.text_column}' has {count} empty or whitespace-only text(s) (first at row "
            f"{first}); fix the data or set data.blank_texts: drop"
        )
    return table.filter(pc.invert(mask)), count


def report_dropped(split: str, count: int) -> None:
    # A warning, not only a debug line: dropping rows changes the data, and the user asked for it by name.
    log.warning("split '%s': dropped %d empty or whitespace-only text(s) (data.blank_texts: drop)", split, count)


def check_schema(schema: pa.Schema, origin: str, cfg: DataConfig) -> None:
    """Refuse a schema without the configured columns or with the wrong types (before reading any row)."""
    for column in [cfg.text_column, *cfg.labels]:
        if column not in schema.names:
            what = "data.text_column" if column == cfg.text_column else "a key of data.labels"
            raise UserError(
                f"{origin}: missing column '{column}' ({what}); columns present: {', '.join(schema.names)}"
            )
    kind = schema.field(cfg.text_column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UserError(f"{origin}: column '{cfg.text_column}' has type {kind}, expected strings")
    for column in cfg.labels:
        kind = schema.field(column).type
        if not pa.types.is_integer(kind):
            raise UserError(f"{origin}: label column '{column}' has type {kind}, expected integers")


def check_table(table: pa.Table, origin: str, cfg: DataConfig) -> pa.Table:
    """Check nulls and label ranges; return ``text`` (string) + int64 labels without the source's schema metadata."""
    text = table.column(cfg.text_column)
    if text.null_count:
        first = pc.index(pc.is_null(text), True).as_py()
        raise UserError(
            f"{origin}: column '{cfg.text_column}' has {text.null_count} null value(s) (first at row {first}), "
            "expected a string in every row"
        )
    columns = {TEXT: text.cast(pa.string())}
    for column, n in cfg.labels.items():
        values = table.column(column)
        if values.null_count:
            first = pc.index(pc.is_null(values), True).as_py()
            raise UserError(
                f"{origin}: label column '{column}' has {values.null_count} null value(s) (first at row {first})"
            )
        if len(values):
            bounds = pc.min_max(values)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            if low < 0 or high >= n:
                bad = low if low < 0 else high
                outside = pc.sum(pc.or_(pc.less(values, 0), pc.greater_equal(values, n))).as_py()
                raise UserError(
                    f"{origin}: label column '{column}' has value {bad} outside [0, {n}) in {outside} row(s); "
                    f"data.labels.{column} declares {n} classes"
                )
        columns[column] = values.cast(pa.int64())
    # Dropping the source's metadata matters: the hub's shards carry a `huggingface` features entry naming the
    # original columns, which `datasets` would trust over the renamed table.
    return pa.table(columns)
