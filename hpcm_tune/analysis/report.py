"""The whole analysis of one or more experiments: build it, render it as Markdown and LaTeX, write its
files (CSV, LaTeX, Markdown, figures). Files are written to a temporary name and renamed into place
(DESIGN.md §9), so an interrupted run never leaves half a table where a good one was."""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hpcm_tune.analysis.results import LMBDA, STATUSES, STUDY, Experiment
from hpcm_tune.analysis.tables import (
    RATES,
    AnalysisOptions,
    StudyTables,
    curve_points,
    mean_curves,
    status_counts,
    study_tables,
    trial_table,
)


@dataclass
class Report:
    options: AnalysisOptions
    experiments: list[Experiment]
    trials: pd.DataFrame
    curves: pd.DataFrame
    studies: list[StudyTables] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # files skipped or replaced while reading
    references: dict = field(default_factory=dict)  # study -> analysis.references.StudyReference

    @property
    def baselines(self) -> dict[str, str | None]:
        return {s.study: s.baseline for s in self.studies}


def build_report(experiments: list[Experiment], options: AnalysisOptions | None = None) -> Report:
    """Trial table, mean RD curves and one :class:`StudyTables` per study of the given experiments; with
    ``options.reference`` (default) also the reference codec points of each study's evaluation images
    (computed once per image set, then cached; a failure warns and leaves n/a)."""
    options = options or AnalysisOptions()
    trials = trial_table(experiments)
    curves = mean_curves(curve_points(trials, options))
    header_baselines = {}
    for exp in experiments:
        if exp.header.get("study") and exp.header.get("baseline"):
            header_baselines[exp.header["study"]] = exp.header["baseline"]
    studies = []
    references = {}
    if not trials.empty and options.reference:
        from hpcm_tune.analysis.references import load_references

        references = load_references(trials)
    if not trials.empty:
        for study in dict.fromkeys(trials[STUDY]):
            studies.append(study_tables(trials, study, options, header_baselines.get(study),
                                        references.get(str(study))))
    return Report(options=options, experiments=experiments, trials=trials, curves=curves, studies=studies,
                  references=references)


# ---------------------------------------------------------------------------------------------- rendering


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table, readable as plain text in a terminal (columns padded)."""
    if df.empty:
        return "_(empty)_"
    header = [str(c) for c in df.columns]
    body = [[_cell(v).replace("|", "\\|") for v in row] for row in df.itertuples(index=False)]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
                  "†": r"\textdagger{}", "–": "--"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex_table(df: pd.DataFrame, caption: str, footnotes: list[str] | None = None) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); footnotes as a list under it."""
    cols = "l" + "r" * (len(df.columns) - 1)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(caption)}}}",
             rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
             " & ".join(_latex_escape(str(c)) for c in df.columns) + r" \\", r"\midrule"]
    for row in df.itertuples(index=False):
        lines.append(" & ".join(_latex_escape(_cell(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    for i, text in enumerate(footnotes or [], start=1):
        lines.append(rf"\par\footnotesize [{i}] {_latex_escape(text)}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _describe_points(options: AnalysisOptions) -> str:
    which = "best epoch (in the sweep's metric)" if options.point == "best" else "final evaluation"
    who = "all trials with eval results" if options.include_partial else "finished trials"
    refs = "" if options.reference else "; reference codecs off (--no-reference)"
    return (f"RD points: {which} of {who}, mean over seeds; rate = {RATES[options.rate]}; "
            f"BD method {options.method} on log10 rate{refs}")


def render_markdown(report: Report) -> str:
    out = ["# HPCM sweep analysis", ""]
    for exp in report.experiments:
        out.append(f"- experiment `{exp.name}` ({exp.path}): {len(exp.trials)} trials")
    counts = report.trials["status"].value_counts() if not report.trials.empty else pd.Series(dtype=int)
    out += ["", "Trials: " + ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATUSES) + ".",
            _describe_points(report.options) + ".", ""]
    if report.warnings:
        out += [f"Skipped or replaced while reading ({len(report.warnings)}):", ""]
        out += [f"- {w}" for w in report.warnings[:20]]
        if len(report.warnings) > 20:
            out.append(f"- ... and {len(report.warnings) - 20} more")
        out.append("")
    if report.trials.empty:
        out.append("No trial found.")
        return "\n".join(out) + "\n"
    for st in report.studies:
        out += [f"## Study `{st.study}`", ""]
        out.append(f"Baseline: **{st.baseline}** ({st.baseline_reason}).")
        out += ["", markdown_table(st.display), ""]
        if not st.per_lambda.empty and len(st.per_lambda.columns) > 1:
            out += ["PSNR / bpp at each lambda (mean ± std over seeds):", "", markdown_table(st.per_lambda), ""]
        for i, text in enumerate(st.footnotes, start=1):
            out.append(f"[{i}] {text}  ")
        if st.footnotes:
            out.append("")
        if st.reference_notes:
            out += [" ".join(st.reference_notes), ""]
        out += [f"### Leaderboard per lambda (`{st.study}`, by eval R-D loss, lower is better)", "",
                markdown_table(_leaderboard_display(st.leaderboard)), ""]
        errored = report.trials[(report.trials[STUDY] == st.study) & report.trials["error"].notna()]
        if not errored.empty:
            out += ["Errored trials:", ""]
            for row in errored.itertuples(index=False):
                lam = getattr(row, LMBDA, None)
                out.append(f"- `{row.trial_id}` ({row.configuration}, lambda {_cell(lam)}): {row.error}")
            out.append("")
    return "\n".join(out) + "\n"


def _leaderboard_display(board: pd.DataFrame) -> pd.DataFrame:
    shown = board.copy()
    if shown.empty:
        return shown
    shown[LMBDA] = [f"{v:g}" if first else "" for v, first in zip(shown[LMBDA], shown["rank"] == 1, strict=True)]
    for col, digits in (("loss", 4), ("psnr", 2), ("bpp", 4), ("lambda_eff", 5)):
        if col not in shown.columns:
            continue
        shown[col] = [f"{v:.{digits}f}" if isinstance(v, float) and math.isfinite(v) else "n/a" for v in shown[col]]
    return shown


# ---------------------------------------------------------------------------------------------- files


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "study"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False)


def write_outputs(report: Report, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write report.md, trials.csv, curves.csv, status.csv, ablation.csv, leaderboard.csv, one
    tables_<study>.tex per study, reference.csv and reference_images.csv (the reference codec points, when
    computed) and, with ``plots``, rd_curves.png, weights.png and gammas.png."""
    out = Path(out_dir)
    written: list[Path] = []

    def put(name: str, data: str | bytes) -> None:
        atomic_write(out / name, data)
        written.append(out / name)

    put("report.md", render_markdown(report))
    put("trials.csv", _csv(report.trials))
    put("curves.csv", _csv(report.curves))
    put("status.csv", _csv(status_counts(report.trials)))
    ablations, boards = [], []
    for st in report.studies:
        ablations.append(st.ablation.assign(**{STUDY: st.study}).assign(
            notes=" ".join(f"[{i}] {t}" for i, t in enumerate(st.footnotes, start=1))))
        boards.append(st.leaderboard.assign(**{STUDY: st.study}))
        tex = latex_table(st.display, f"Ablation {st.study}: BD against {st.baseline}", st.footnotes)
        if len(st.per_lambda.columns) > 1:
            tex += latex_table(st.per_lambda, f"{st.study}: PSNR (dB) / bpp at each lambda")
        tex += latex_table(_leaderboard_display(st.leaderboard), f"{st.study}: leaderboard per lambda")
        put(f"tables_{_slug(st.study)}.tex", tex)
    put("ablation.csv", _csv(pd.concat(ablations, ignore_index=True) if ablations else pd.DataFrame()))
    put("leaderboard.csv", _csv(pd.concat(boards, ignore_index=True) if boards else pd.DataFrame()))
    if report.references:
        from hpcm_tune.analysis.references import reference_table

        points, per_image = reference_table(report.references)
        if not points.empty:
            put("reference.csv", _csv(points))
            put("reference_images.csv", _csv(per_image))
    if plots:
        from hpcm_tune.analysis import plots as figures  # matplotlib only when figures are wanted

        for name, draw in (("rd_curves.png", figures.rd_curves), ("weights.png", figures.weights),
                           ("gammas.png", figures.gammas)):
            put(name, draw(report))
    return written
