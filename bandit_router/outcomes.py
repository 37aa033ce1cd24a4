"""Tables of routing outcomes: prompt × model → quality, cost (the format of `../shared/data`).

A table is a CSV (optionally gzip) in UTF-8 (a byte-order mark is skipped) with one row per prompt and the columns

    prompt_id, prompt, task, quality_<model>, cost_<model>   [, output_tokens_<model>, split column, …]

Missing cells (empty, NaN or not a number) are kept as NaN: a model with no quality or cost for a prompt is
*unavailable* for that prompt (`available[i, k]` is False), and `missing_cells` counts them. A quality outside
[0, 1] or a negative cost is refused, naming the cell: it is a wrong outcome, not a missing one.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import math
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InvalidInput


@dataclass(frozen=True, eq=False)
class OutcomeTable:
    """Arrays of one outcome table. `quality` and `cost_usd` have shape (n_prompts, n_models)."""

    prompt_ids: tuple[str, ...]
    prompts: tuple[str, ...]
    tasks: tuple[str, ...]
    models: tuple[str, ...]
    quality: np.ndarray
    cost_usd: np.ndarray
    output_tokens: np.ndarray | None = None
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def available(self) -> np.ndarray:
        """(n_prompts, n_models) bool: both quality and cost are known."""
        return np.asarray(np.isfinite(self.quality) & np.isfinite(self.cost_usd))

    @property
    def missing_cells(self) -> int:
        return int((~self.available).sum())

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def subset(self, rows: np.ndarray | Sequence[int]) -> OutcomeTable:
        """The rows `rows` (indices or a boolean mask), in that order."""
        idx = np.arange(len(self))[np.asarray(rows)] if np.asarray(rows).dtype == bool else np.asarray(rows)
        pick = [int(i) for i in idx]
        return OutcomeTable(
            prompt_ids=tuple(self.prompt_ids[i] for i in pick),
            prompts=tuple(self.prompts[i] for i in pick),
            tasks=tuple(self.tasks[i] for i in pick),
            models=self.models,
            quality=self.quality[idx],
            cost_usd=self.cost_usd[idx],
            output_tokens=None if self.output_tokens is None else self.output_tokens[idx],
            columns={k: tuple(v[i] for i in pick) for k, v in self.columns.items()},
        )


class NotUTF8(InvalidInput):
    """A CSV file's bytes are not UTF-8 (a table saved as Latin-1 or Windows-1252)."""


def csv_text(raw: bytes) -> str:
    """The text of a CSV file's bytes: UTF-8, after a byte-order mark (Excel's "CSV UTF-8") if there is one.

    Bytes that are not UTF-8 raise `NotUTF8`, naming the first such line (lines end with LF, CRLF or a lone CR) and
    byte and the fix, or that the file is UTF-16 (its byte-order mark): decoded with replacement characters they
    changed the prompts (an `é` read as `�`) without a word. The conversion suggested is from Windows-1252, which
    reads Latin-1's letters alike and its 0x80–0x9F as the curly quotes and € it saves there (from Latin-1 they
    would become invisible control characters)."""
    for bom, name in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),  # FF FE 00 00 first
                      (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            raise NotUTF8(
                f"the file is {name.upper()} (it starts with the byte-order mark "
                f"{' '.join(f'0x{b:02x}' for b in bom)}), not UTF-8: save it as UTF-8 (Excel: \"CSV UTF-8\"), or "
                f"convert it, e.g. iconv -f {name} -t utf-8"
            )
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.start  # line breaks before it: LF, CR and CRLF (counted once), by counts, not a match per line
        breaks = raw.count(b"\n", 0, bad) + raw.count(b"\r", 0, bad) - raw.count(b"\r\n", 0, bad)
        line_start = max(raw.rfind(b"\n", 0, bad), raw.rfind(b"\r", 0, bad)) + 1
        raise NotUTF8(
            f"line {breaks + 1} is not UTF-8 (its byte {exc.start - line_start + 1} is 0x{raw[exc.start]:02x}: a "
            "file saved as Latin-1 or Windows-1252?): save it as UTF-8 (Excel: \"CSV UTF-8\"), or convert it, e.g. "
            "iconv -f windows-1252 -t utf-8"
        ) from None


def _float(cell: str) -> float:
    if cell is None or cell.strip() == "":
        return math.nan
    try:
        return float(cell)
    except ValueError:
        return math.nan


def _refuse_out_of_range(
    path: Path, ids: Sequence[str], names: Sequence[str], kind: str, bad: np.ndarray, values: np.ndarray, what: str
) -> None:
    """Refuse the table, naming its first cell where `bad` (row, prompt_id, column, value) and how many there are:
    such a cell is no missing outcome but a wrong one (a 1–10 score, a typo), and counting it as missing dropped
    it from every mean without a word."""
    cells = np.argwhere(bad)
    if not cells.size:
        return
    i, k = (int(v) for v in cells[0])
    others = f" (and {len(cells) - 1} more cell(s))" if len(cells) > 1 else ""
    hint = (
        "qualities are scores in [0, 1]: rescale (a 1–10 score s as (s − 1)/9)"
        if kind == "quality"
        else "costs are USD per request, >= 0"
    )
    raise InvalidInput(
        f"{path}: {kind}_{names[k]} = {values[i, k]:g} on data row {i + 1} (prompt_id {ids[i]!r}) {what}{others}; "
        f"{hint}, or leave a cell empty for an outcome that is missing"
    )


def load_table(path: str | Path, *, models: Sequence[str] | None = None) -> OutcomeTable:
    """Read an outcome table; keep every extra column (e.g. `split_routerdc`) in `columns`."""
    path = Path(path)
    if not path.exists():
        raise InvalidInput(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as exc:  # a folder, a file it may not read
        raise InvalidInput(f"{path}: cannot read: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # a truncated download: EOFError, which click calls "Aborted!"
            raise InvalidInput(f"{path}: not a whole gzip file ({exc})") from None
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        text = csv_text(raw)
    except NotUTF8 as exc:
        raise NotUTF8(f"{path}: {exc}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    read = ("prompt_id", "prompt", "task", "quality_", "cost_", "output_tokens_")
    twice = sorted({c for c in header if header.count(c) > 1 and c.startswith(read)})
    if twice:  # the last one's values were read; two quality_a said "model names must be unique"
        raise InvalidInput(f"{path}: the header has the column(s) {twice} more than once")
    found = [c[len("quality_") :] for c in header if c.startswith("quality_")]
    names = list(models) if models is not None else found
    missing = [m for m in names if f"quality_{m}" not in header or f"cost_{m}" not in header]
    if not names:  # a file separated by `;` read as one column: "missing for []" named nothing
        shown = ", ".join(repr(c) for c in header[:6]) + (", …" if len(header) > 6 else "")
        raise InvalidInput(f"{path}: needs quality_<model> and cost_<model> columns, comma-separated; its header "
                           f"read as {len(header)} column(s): {shown or 'none'}")
    if missing:
        raise InvalidInput(f"{path}: needs quality_<model> and cost_<model> columns (missing for {missing})")
    if "prompt" not in header:
        raise InvalidInput(f"{path}: needs a prompt column")
    has_tokens = all(f"output_tokens_{m}" in header for m in names)
    known = {"prompt_id", "prompt", "task"} | {f"{k}_{m}" for m in names for k in ("quality", "cost")}
    extra = [c for c in header if c not in known and not c.startswith(("response_", "quality_", "cost_"))]
    ids, prompts, tasks = [], [], []
    q_rows, c_rows, t_rows = [], [], []
    columns: dict[str, list[str]] = {c: [] for c in extra}
    for i, row in enumerate(reader):
        ids.append(row.get("prompt_id") or str(i))
        prompts.append(row.get("prompt") or "")
        tasks.append(row.get("task") or "")
        q_rows.append([_float(row[f"quality_{m}"]) for m in names])
        c_rows.append([_float(row[f"cost_{m}"]) for m in names])
        if has_tokens:
            t_rows.append([_float(row[f"output_tokens_{m}"]) for m in names])
        for c in extra:
            columns[c].append(row.get(c) or "")
    quality = np.array(q_rows, dtype=np.float64).reshape(len(ids), len(names))
    cost = np.array(c_rows, dtype=np.float64).reshape(len(ids), len(names))
    _refuse_out_of_range(path, ids, names, "quality", (quality < 0) | (quality > 1), quality, "is outside [0, 1]")
    _refuse_out_of_range(path, ids, names, "cost", cost < 0, cost, "is negative")
    return OutcomeTable(
        prompt_ids=tuple(ids),
        prompts=tuple(prompts),
        tasks=tuple(tasks),
        models=tuple(names),
        quality=quality,
        cost_usd=cost,
        output_tokens=np.array(t_rows, dtype=np.float64).reshape(len(ids), len(names)) if has_tokens else None,
        columns={k: tuple(v) for k, v in columns.items()},
    )
