"""The summary as a LaTeX table for a paper (summary.tex, booktabs): one row per defense, the worst-case harmful
accuracy at each budget, then the summary columns the terminal table shows (`columns.TERMINAL` views: the decisive
gap, the verdict, the desired accuracy, the data cost), with a caption saying how to read it and over how many seeds.

Needs `\\usepackage{booktabs}` in the preamble; the cells are escaped, so defense names and variants print as they
are.
"""

from __future__ import annotations

from harness.config import REFERENCE_DEFENSE
from harness.report import columns
from harness.report.columns import TERMINAL
from harness.report.render.plots import caption, seeds_text
from harness.report.render.sections import OutputFormat, harmful_budget_cells, majority_note
from harness.report.tables import WORST_CASE, LeaderboardTables

# Characters LaTeX reads as markup, and the symbols the text cells use, as LaTeX writes them.
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "≤": r"$\leq$",
          "≥": r"$\geq$", "—": "---", "†": r"\dag{}", "<": r"$<$", ">": r"$>$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def table_caption(tables: LeaderboardTables) -> str:
    rows = [r for r in tables.leaderboard.to_pylist() if r["task_role"] == "harmful" and r["attack"] == WORST_CASE]
    task = rows[0]["task"] if rows else "—"
    return (f"Harmful task ({task}): test accuracy of the attacker's validation-best attack per training budget, "
            f"mean ± half-width of the 95% Student t-interval over {seeds_text(r['n_seeds'] for r in rows)}. The gap "
            f"to {REFERENCE_DEFENSE} is paired by seed at the budget that decides the verdict (n: paired seeds). "
            + majority_note(tables))


def render_latex(tables: LeaderboardTables, plots: dict[str, bytes] | None = None) -> str:
    """The summary as a booktabs table; the figures are separate files, so `plots` is not read."""
    summary = tables.summary.to_pylist()
    first = summary[0] if summary else {}
    budgets, cells = harmful_budget_cells(tables)
    head, *rest = columns.shown(TERMINAL)
    titles = [latex_escape(" ".join(v.title(first).split())) for v in rest]
    spec = "l" + "r" * len(budgets) + "".join("l" if v.justify == "left" else "r" for v in rest)
    top = [latex_escape(head.title(first))]
    if budgets:
        top.append(rf"\multicolumn{{{len(budgets)}}}{{c}}{{harmful accuracy at budget}}")
    lines = [
        "% sdm-bench summary table: needs \\usepackage{booktabs}",
        r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
        " & ".join(top + titles) + r" \\",
    ]
    if budgets:
        lines += [rf"\cmidrule(lr){{2-{len(budgets) + 1}}}",
                  " & ".join(["", *map(str, budgets), *[""] * len(rest)]) + r" \\"]
    lines.append(r"\midrule")
    for r in summary:
        texts = [head.text(r), *cells.get(r["defense"], ["—"] * len(budgets)), *(v.text(r) for v in rest)]
        lines.append(" & ".join(map(latex_escape, texts)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_escape(table_caption(tables).strip())}}}",
              r"\label{tab:sdm-summary}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_figures_latex(tables: LeaderboardTables, roles: list[str]) -> str:
    """A figure environment per figure (`roles`: task roles or COMPUTE_PLOT), including its PDF beside this file,
    with its caption (`plots.caption`: what it shows, over how many seeds)."""
    blocks = ["% sdm-bench figures: needs \\usepackage{graphicx}; the PDFs lie beside this file"]
    for role in roles:
        blocks += [r"\begin{figure}[t]", r"\centering", rf"\includegraphics[width=\linewidth]{{{role}.pdf}}",
                   rf"\caption{{{latex_escape(caption(tables, role))}}}", rf"\label{{fig:sdm-{role}}}",
                   r"\end{figure}", ""]
    return "\n".join(blocks)


FORMAT = OutputFormat("latex", "summary.tex", render_latex)
