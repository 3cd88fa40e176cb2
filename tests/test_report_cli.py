"""`sdm report` on the protocol-1 reproduction (results/reproduce-protocol1: two cells files): the figures as PNG, SVG
and PDF, the summary as a booktabs table and a figure environment per figure; bad input is one line, exit 2, nothing
written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import ROOT, sdm_command

PUBLISHED = [ROOT / "results" / "reproduce-protocol1" / "cells.parquet",
             ROOT / "results" / "reproduce-protocol1" / "cells-peers.parquet"]
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "svg": b"<?xml", "pdf": b"%PDF-"}


def sdm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*sdm_command(), *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_report_on_the_published_reproduction(tmp_path: Path):
    out = tmp_path / "paper"
    result = sdm("report", *map(str, PUBLISHED), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for role in ("harmful", "desired"):
        for fmt, magic in MAGIC.items():
            path = out / f"{role}.{fmt}"
            assert f"figure ({role}, {fmt}): {path}" in result.stdout
            assert path.read_bytes().startswith(magic) and path.stat().st_size > 5_000
    table = (out / "summary.tex").read_text()
    assert f"table (LaTeX): {out / 'summary.tex'}" in result.stdout
    spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", table).group(1)
    body = table.split("\\midrule\n")[1].split("\\bottomrule")[0].strip().splitlines()
    defenses = [r["defense"] for r in pq.read_table(PUBLISHED[0]).to_pylist()]
    defenses += [r["defense"] for r in pq.read_table(PUBLISHED[1]).to_pylist()]
    assert [line.split(" & ")[0] for line in body] == list(dict.fromkeys(
        ["random-init", "bert", *sorted(set(defenses) - {"random-init", "bert"})]))
    budget_header = [x for x in table.splitlines() if x.startswith(" & 20 & 50 & 100 & 200 &")]
    assert len(budget_header) == 1 and r"\multicolumn{4}{c}{harmful accuracy at budget}" in table
    for line in (*body, *budget_header):
        assert len(re.findall(r"(?<!\\)&", line)) == len(spec) - 1, line  # every row fills every column
    assert all(line.endswith(r"\\") for line in body)
    assert table.index(r"\toprule") < table.index(r"\midrule") < table.index(r"\bottomrule")
    assert r"$\pm$" in table and "±" not in table and "over 3 seeds" in table
    figures = (out / "figures.tex").read_text()
    assert figures.count(r"\begin{figure}") == 2 and r"\includegraphics[width=\linewidth]{harmful.pdf}" in figures
    assert "mean over 3 seeds; bands: 95\\% Student t-interval" in figures
    assert "error bars: 95\\% Student t-interval" in figures  # the desired task has one budget


def test_report_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path: Path):
    out = tmp_path / "paper"
    missing = sdm("report", str(tmp_path / "missing"), "--out", str(out))
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: run '{tmp_path / 'missing'}': not a directory (nor a cells .parquet file)"]
    assert not out.exists()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    taken = sdm("report", str(PUBLISHED[0]), "--out", str(blocked))
    assert taken.returncode == 2 and "exists and is not a directory" in taken.stderr
    assert len(taken.stderr.strip().splitlines()) == 1 and blocked.read_text() == ""
    threshold = sdm("report", str(PUBLISHED[0]), "--out", str(out), "--threshold", "2")
    assert threshold.returncode == 2 and "threshold 2.0: an accuracy in (0, 1]" in threshold.stderr
    assert not out.exists()
