"""The whole analysis of one or more experiments: build it, render it as Markdown and LaTeX, write its
files (CSV, LaTeX, Markdown, figures). Files are written to a temporary name and renamed into place
(docs/design.md §9), so an interrupted run never leaves half a table where a good one was."""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hpcm_tune import metrics as m
from hpcm_tune.analysis import formatting as fmt
from hpcm_tune.analysis import provenance as prov
from hpcm_tune.analysis.results import FINISHED, LMBDA, SEED, STATUSES, STUDY, Experiment, finite
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
from hpcm_tune.files import atomic_write


@dataclass
class Report:
    options: AnalysisOptions
    experiments: list[Experiment]
    trials: pd.DataFrame
    curves: pd.DataFrame
    studies: list[StudyTables] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # files skipped or replaced while reading
    references: dict = field(default_factory=dict)  # study -> analysis.references.StudyReference
    per_image: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PER_IMAGE_COLUMNS))
    provenance: prov.Provenance | None = None
    command: list[str] | None = None  # the analyze.py command line (argv), for the provenance block
    searches: list = field(default_factory=list)  # analysis.search.SearchSection, one per searched study
    figures: bool = True  # whether the figures are written beside report.md (so the Markdown references them)

    @property
    def baselines(self) -> dict[str, str | None]:
        return {s.study: s.baseline for s in self.studies}


PER_IMAGE_COLUMNS = ["experiment", "trial_id", STUDY, "configuration", LMBDA, SEED, "status", "epoch", "image",
                     "psnr", "bpp"]


def build_report(experiments: list[Experiment], options: AnalysisOptions | None = None,
                 command: list[str] | None = None) -> Report:
    """Trial table, mean RD curves, per-image PSNR and bpp, provenance and one :class:`StudyTables` per study
    of the given experiments; with ``options.reference`` (default) also the reference codec points of each
    study's evaluation images (computed once per image set, then cached; a failure warns and leaves n/a).
    ``command``: the analyze.py command line, shown in the provenance block (also settable afterwards as
    ``report.command``)."""
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
    from hpcm_tune.analysis import search

    searches = search.search_sections(experiments, trials, options, references)
    search_only = search.search_only_studies(experiments)  # a search gets no ablation table
    if not trials.empty:
        for study in (s for s in dict.fromkeys(trials[STUDY]) if s not in search_only):
            studies.append(study_tables(trials, study, options, header_baselines.get(study),
                                        references.get(str(study))))
    return Report(options=options, experiments=experiments, trials=trials, curves=curves, studies=studies,
                  references=references, per_image=per_image_table(experiments, trials, options),
                  provenance=prov.collect(experiments), command=list(command) if command is not None else None,
                  searches=searches)


def per_image_table(experiments: list[Experiment], trials: pd.DataFrame, options: AnalysisOptions) -> pd.DataFrame:
    """Tidy per-image results: one row per trial and evaluation image (PER_IMAGE_COLUMNS), PSNR (dB) and bpp at
    the RD point the report uses (``options.point``: the final evaluation, or the epoch best in the sweep's
    metric), for the trials the RD curves use (finished ones; all with ``include_partial``). The bpp is the
    estimated rate whatever ``options.rate`` says: no per-image bitstream size is reported. Empty (with the
    columns) when no trial reported per-image metrics."""
    if trials.empty or "trial_dir" not in trials.columns:
        return pd.DataFrame(columns=PER_IMAGE_COLUMNS)
    info = {d: row for d, row in zip(trials["trial_dir"], trials.to_dict("records"), strict=True)}
    records = []
    for exp in experiments:
        metric = exp.header.get("metric") or m.DEFAULT_METRIC
        mode = exp.header.get("mode") or m.DEFAULT_MODE
        for trial in exp.trials:
            row = info.get(str(exp.path / trial.dirname))
            if row is None or (not options.include_partial and row["status"] != FINISHED):
                continue
            lam = pd.to_numeric(row.get(LMBDA), errors="coerce")
            if not finite(lam):
                continue
            epoch, images = trial.image_metrics(options.point, metric, mode)
            for image, values in images.items():
                records.append({"experiment": exp.name, "trial_id": row["trial_id"], STUDY: row[STUDY],
                                "configuration": row["configuration"], LMBDA: float(lam), SEED: row.get(SEED, 0),
                                "status": row["status"], "epoch": epoch, "image": image,
                                "psnr": values.get("psnr", math.nan), "bpp": values.get("bpp", math.nan)})
    return pd.DataFrame.from_records(records, columns=PER_IMAGE_COLUMNS)


# ---------------------------------------------------------------------------------------------- rendering


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table, readable as plain text in a terminal (columns padded)."""
    if df.empty:
        return "_(empty)_"
    header = [str(c) for c in df.columns]
    body = [[fmt.cell(v).replace("|", "\\|") for v in row] for row in df.itertuples(index=False)]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


# Text-mode characters that break or print wrongly in OT1 (pdflatex's default font encoding), and the
# non-ASCII characters our tables use, as escapes or math. Anything else non-ASCII falls back to its ASCII
# decomposition (e.g. an accented letter loses its accent), never a raw byte that a paper's preamble may reject.
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"$\sim$", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$",
                  "|": r"$|$", '"': "''", "±": r"$\pm$", "†": r"$\dagger$", "‡": r"$\ddagger$", "−": r"$-$",
                  "λ": r"$\lambda$", "Δ": r"$\Delta$", "δ": r"$\delta$", "γ": r"$\gamma$", "μ": r"$\mu$",
                  "µ": r"$\mu$", "·": r"$\cdot$", "×": r"$\times$", "≤": r"$\leq$", "≥": r"$\geq$",
                  "≈": r"$\approx$", "→": r"$\rightarrow$", "°": r"$^\circ$", "–": "--", "—": "---", "…": r"\ldots{}",
                  "‘": "`", "’": "'", "“": "``", "”": "''", "\u00a0": "~",
                  "§": r"\S{}"}
# A sign in front of a number is a minus (or plus), not a hyphen.
_SIGNED_NUMBER = re.compile(r"(^|[\s(/\[])([+-])(?=\d)")


def _latex_char(ch: str) -> str:
    if ch in _LATEX_SPECIAL:
        return _LATEX_SPECIAL[ch]
    if ch.isascii():
        return ch
    ascii_ = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
    return "".join(_LATEX_SPECIAL.get(c, c) for c in ascii_) or "?"


def _latex_escape(text: str) -> str:
    """Plain text (a cell, a caption, a footnote) as LaTeX text that compiles with pdflatex in OT1 or T1 and
    contains only ASCII."""
    text = _SIGNED_NUMBER.sub(lambda mt: f"{mt.group(1)}\x00{mt.group(2)}\x01", str(text))
    out = "".join(_latex_char(ch) for ch in text)
    return out.replace("\x00-\x01", "$-$").replace("\x00+\x01", "$+$")


# Column names of our tables in words (a header is a label, not a variable name).
_LATEX_HEADERS = {LMBDA: r"$\lambda$", "psnr": "PSNR (dB)", "bpp": "bpp", "loss": "R-D loss", "n": "$n$",
                  "lambda_eff": r"$\lambda_{\mathrm{eff}}$", "lambda_eff/lambda": r"$\lambda_{\mathrm{eff}}/\lambda$",
                  "trials": "trials (finished/all)", "ms_ssim_db": "MS-SSIM (dB)", "rate": "rate (bpp)"}
_LAMBDA_HEADER = re.compile(r"^(.*?)\blambda (\S+)$")  # 'lambda 0.0067', 'Δ lambda 0.0067'


def latex_header(name: str) -> str:
    """A column name as a LaTeX header in words: lmbda -> $\\lambda$, 'lambda 0.0067' -> $\\lambda = 0.0067$,
    psnr -> PSNR (dB), anything else escaped."""
    name = str(name)
    if name in _LATEX_HEADERS:
        return _LATEX_HEADERS[name]
    lam = _LAMBDA_HEADER.match(name)
    if lam:
        value = rf"$\lambda = {_latex_escape(lam.group(2))}$"
        return f"{_latex_escape(lam.group(1).strip())} ({value})" if lam.group(1).strip() else value
    return _latex_escape(name).replace("lambda\\_eff", r"$\lambda_{\mathrm{eff}}$")


def latex_label(*parts: str) -> str:
    """A \\label key from a study name and a table kind: lower case letters, digits and hyphens."""
    slug = "-".join(re.sub(r"[^a-z0-9]+", "-", str(p).lower()).strip("-") for p in parts)
    return "tab:" + (re.sub(r"-+", "-", slug).strip("-") or "table")


LATEX_PREAMBLE_NOTE = (r"% Needs \usepackage{booktabs} (rules) and \usepackage{graphicx} (\resizebox) in the preamble."
                       "\n% Tables are table* floats: they span both columns of a two-column paper and shrink to "
                       r"\textwidth when wider." + "\n")


# Prose of a title, caption or note in LaTeX: a code span (`study`) reads as plain text in a paper, and the word
# lambda as the symbol (as the headers 'lambda 0.0067' -> $\lambda = 0.0067$); 'lambda_eff' is no whole word.
_CODE_SPAN = re.compile(r"`([^`]*)`")
_LAMBDA_WORD = re.compile(r"\blambda\b")


def latex_prose(text: str) -> str:
    """A title, caption or note (written once for both formats, Markdown code spans included) as LaTeX text:
    code spans as plain text, the word lambda as $\\lambda$, then escaped as :func:`_latex_escape` does."""
    return _latex_escape(_LAMBDA_WORD.sub("λ", _CODE_SPAN.sub(r"\1", str(text))))


def latex_table(table: ReportTable) -> str:
    """One :class:`ReportTable` as a booktabs table* (needs \\usepackage{booktabs} and graphicx): caption (the
    title, then the caption) and \\label above, headers in words, shrunk to \\textwidth when wider (never
    enlarged), the footnotes as a numbered list under it, then the notes."""
    df = table.frame
    cols = "".join("l" if i == 0 or str(c) in ("configuration", "note", "image") else "r"
                   for i, c in enumerate(df.columns))
    caption = latex_prose(f"{table.title}. {table.caption}" if table.caption else table.title)
    lines = [r"\begin{table*}[t]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{table.label}}}",
             r"\resizebox{\ifdim\width>\textwidth\textwidth\else\width\fi}{!}{%",
             rf"\begin{{tabular}}{{{cols or 'l'}}}", r"\toprule",
             " & ".join(latex_header(c) for c in df.columns) + r" \\", r"\midrule"]
    for row in df.itertuples(index=False):
        lines.append(" & ".join(_latex_escape(fmt.cell(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if table.footnotes or table.notes:
        lines.append(r"\par\smallskip\begin{minipage}{\textwidth}\footnotesize\raggedright")
        lines += [rf"[{i}] {latex_prose(text)}\par" for i, text in enumerate(table.footnotes, start=1)]
        if table.notes:
            lines.append(latex_prose(" ".join(table.notes)) + r"\par")
        lines.append(r"\end{minipage}")
    lines.append(r"\end{table*}")
    return "\n".join(lines) + "\n"


def latex_comment(text: str) -> str:
    """One line of text as a LaTeX comment, ASCII only (a comment ends at the line's end)."""
    ascii_ = "".join(c if c.isascii() else (unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode()
                                            or "?") for c in " ".join(str(text).split()))
    return "% " + ascii_


def _describe_points(options: AnalysisOptions, code: bool = False) -> str:
    """The settings every number of the report depends on, flags first (in code spans with ``code``)."""
    q = "`" if code else ""
    which = "best epoch (in the sweep's metric)" if options.point == "best" else "final evaluation"
    who = "all trials with eval results" if options.include_partial else "finished trials"
    partial = f"; {q}--include-partial{q}" if options.include_partial else ""
    refs = "" if options.reference else f"; reference codecs off ({q}--no-reference{q})"
    return (f"Settings: {q}--point {options.point}{q} (RD point of a trial: its {which}, of {who}, mean over "
            f"seeds); {q}--rate {options.rate}{q} (rate axis: {RATES[options.rate]}){partial}; "
            f"{q}--method {options.method}{q} (BD fit on log10 rate){refs}")


def _provenance(report: Report) -> prov.Provenance:
    return report.provenance or prov.collect(report.experiments)


def _seeds_text(st: StudyTables) -> str:
    """'mean ± std over 3 seeds', '... over 1-3 seeds per configuration', 'one seed (no spread)' or 'no
    finished seed', from the seeds of the configurations with RD points."""
    seeds = (sorted({int(v) for v in st.ablation["seeds"] if finite(v) and v > 0})
             if "seeds" in st.ablation.columns else [])
    if not seeds:
        return "no seed with an RD point"
    if seeds == [1]:
        return "one seed (no spread)"
    if len(seeds) == 1:
        return f"mean ± std over {seeds[0]} seeds"
    return f"mean ± std over {seeds[0]}-{seeds[-1]} seeds per configuration"


# ---------------------------------------------------------------------------------------------- the tables


@dataclass(frozen=True, eq=False)  # eq=False: a DataFrame has no truth value, so two tables compare by identity
class ReportTable:
    """One table of a study as both formats print it. report.md (hence report.html) and tables_<study>.tex
    iterate the one list :func:`report_tables` makes, so which tables a study has, their order, titles, captions
    and notes are decided there once; a renderer only lays them out.

    ``title``: the Markdown heading, and the LaTeX caption's first sentence. ``caption``: what a reader of this
    table alone needs (what the cells are; the seeds, baseline, RD point and rate), under the heading / the rest of
    the LaTeX caption. Both are written with Markdown code spans (`study`), which LaTeX prints as plain text.
    ``footnotes``: the texts of the marks [1], [2], ... numbered in order, printed under this table (a table whose
    marks share the numbering of a later one leaves them to it). ``notes``: plain sentences after the footnotes.
    ``label``: the LaTeX \\label, tab:<study>-<key>."""

    key: str  # ablation, per-lambda, leaderboard, paired
    title: str
    caption: str
    frame: pd.DataFrame  # the cells as printed
    label: str
    footnotes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def report_tables(report: Report, st: StudyTables, label_slug: str | None = None) -> list[ReportTable]:
    """The tables of study ``st``, in the order both formats print them (the order readers of docs/results
    know): the ablation (BD against the baseline), PSNR / bpp at each lambda (when there is a lambda), the
    leaderboard per lambda, the paired BD against the baseline (when a configuration has one). ``label_slug``:
    the name the LaTeX labels are made from (default the study's; write_outputs makes two studies whose names
    give one label distinct)."""
    slug = label_slug or st.study
    point = "best epoch" if report.options.point == "best" else "final evaluation"
    rate, name = RATES[report.options.rate], f"`{st.study}`"

    def context(reason: bool = False) -> str:  # what every table of the study depends on, as a sentence
        baseline = f"baseline {st.baseline}" + (f" ({st.baseline_reason})" if reason else "")
        text = f"{_seeds_text(st)}; {baseline}; RD point of each trial: its {point}; rate: {rate}."
        return text[:1].upper() + text[1:]

    has_lambdas = not st.per_lambda.empty and len(st.per_lambda.columns) > 1
    # The ablation and the per-lambda table share one footnote numbering: the notes go under the later of them.
    notes = {"footnotes": tuple(st.footnotes), "notes": tuple(st.reference_notes)}
    below = ("" if not (has_lambdas and st.footnotes) else " Note [1] is under the next table."
             if len(st.footnotes) == 1 else f" Notes [1]–[{len(st.footnotes)}] are under the next table.")
    tables = [ReportTable("ablation", f"Ablation ({name}): BD-rate and BD-PSNR against the baseline",
                          f"Negative BD-rate is better. {context(reason=True)}{below}", st.display,
                          latex_label(slug, "ablation"), **({} if has_lambdas else notes))]
    if has_lambdas:
        deltas = any(str(c).startswith("Δ ") for c in st.per_lambda.columns)
        what = "PSNR (dB) / bpp" + ("; Δ: the paired difference against the baseline, PSNR (dB) / rate (%)"
                                    if deltas else "")
        tables.append(ReportTable("per-lambda", f"PSNR / bpp at each lambda ({name})", f"{what}. {context()}",
                                  st.per_lambda, latex_label(slug, "per-lambda"), **notes))
    tables.append(ReportTable("leaderboard", f"Leaderboard per lambda ({name}, by eval R-D loss, lower is better)",
                              f"Configurations ranked at each lambda. {context()}",
                              _leaderboard_display(st.leaderboard), latex_label(slug, "leaderboard")))
    paired = paired_bd_display(st)
    if not paired.empty:
        tables.append(ReportTable(
            "paired", f"Paired BD against the baseline ({name}): per-seed differences, 95 % t-interval",
            "Mean of the per-seed BD values (each seed against the baseline's same seed), their 95 % t-interval "
            f"(n − 1 degrees of freedom) and n; within noise when the interval contains 0. {context()}",
            paired, latex_label(slug, "paired")))
    return tables


def _markdown_block(table: ReportTable) -> list[str]:
    """One :class:`ReportTable` in Markdown: heading, caption, table, footnotes (one line each), notes."""
    out = [f"### {table.title}", "", table.caption, "", markdown_table(table.frame), ""]
    if table.footnotes:
        out += [f"[{i}] {text}  " for i, text in enumerate(table.footnotes, start=1)] + [""]
    if table.notes:
        out += [" ".join(table.notes), ""]
    return out


def render_markdown(report: Report) -> str:
    out = ["# HPCM sweep analysis", "", _describe_points(report.options, code=True) + ".", "",
           "Provenance:", "", *prov.markdown(_provenance(report), report.command), "", "Experiments:", ""]
    for exp in report.experiments:
        out.append(f"- experiment `{exp.name}` ({exp.path}): {len(exp.trials)} trials")
    counts = report.trials["status"].value_counts() if not report.trials.empty else pd.Series(dtype=int)
    out += ["", "Trials: " + ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATUSES) + ".", ""]
    if report.warnings:
        out += [f"Skipped or replaced while reading ({len(report.warnings)}):", ""]
        out += [f"- {w}" for w in report.warnings[:20]]
        if len(report.warnings) > 20:
            out.append(f"- ... and {len(report.warnings) - 20} more")
        out.append("")
    if report.trials.empty:
        out.append("No trial found.")
        return "\n".join(out) + "\n"
    from hpcm_tune.analysis.search import markdown as search_markdown

    out += search_markdown(report.searches, figures=report.figures)
    for st in report.studies:
        out += [f"## Study `{st.study}`", "", f"Baseline: **{st.baseline}** ({st.baseline_reason}).", ""]
        for table in report_tables(report, st):
            out += _markdown_block(table)
        out += _per_image_markdown(report, st)
        errored = report.trials[(report.trials[STUDY] == st.study) & report.trials["error"].notna()]
        if not errored.empty:
            out += ["Errored trials:", ""]
            for row in errored.itertuples(index=False):
                lam = getattr(row, LMBDA, None)
                out.append(f"- `{row.trial_id}` ({row.configuration}, lambda {fmt.cell(lam)}): {row.error}")
            out.append("")
    return "\n".join(out) + "\n"


def paired_bd_display(st: StudyTables) -> pd.DataFrame:
    """The BD rows of ``st.paired`` (over the whole curve) as a table: mean, 95 % t-interval, n, within noise
    (the interval contains 0) and the basis (paired seeds or the mean curve). Empty when there are none."""
    paired = getattr(st, "paired", None)
    if paired is None or paired.empty or "quantity" not in paired.columns:
        return pd.DataFrame()
    rows = paired[paired[LMBDA].isna()] if LMBDA in paired.columns else paired
    out = []
    for r in rows.to_dict("records"):
        d = fmt.BD_PSNR_DIGITS if "dB" in str(r["quantity"]) else fmt.BD_RATE_DIGITS
        noise = r.get("within_noise")
        out.append({"configuration": r["configuration"], "quantity": r["quantity"],
                    "mean": fmt.signed(r.get("mean"), d) or fmt.NA,
                    "95 % interval": fmt.interval(r.get("lo"), r.get("hi"), d),
                    "n": int(r["n"]) if finite(r.get("n")) else 0,
                    "within noise": "" if noise is None or pd.isna(noise) else ("yes" if noise else "no"),
                    "basis": r.get("basis") or "", "note": r.get("note") or ""})
    return pd.DataFrame(out)


# At most this many configurations side by side in a per-image table (the baseline, then the best by the
# leaderboard); the rest are in per_image.csv.
MAX_IMAGE_COLUMNS = 6


def per_image_means(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per study, configuration, lambda and image: mean PSNR and bpp over seeds, and the seeds (trials) counted."""
    if per_image.empty:
        return pd.DataFrame(columns=[STUDY, "configuration", LMBDA, "image", "psnr", "bpp", "n"])
    grouped = per_image.groupby([STUDY, "configuration", LMBDA, "image"], sort=False)
    out = grouped[["psnr", "bpp"]].mean()
    out["n"] = grouped.size()
    return out.reset_index()


def _per_image_markdown(report: Report, st: StudyTables) -> list[str]:
    """Per lambda, a table of images by configurations: PSNR (dB) / bpp, mean over seeds; a sentence when no
    trial of the study reported per-image metrics."""
    head = f"### Per image (`{st.study}`): PSNR (dB) / bpp at each lambda, mean over seeds"
    means = per_image_means(report.per_image[report.per_image[STUDY] == st.study])
    if means.empty:
        return [head, "", "No trial of this study reported per-image metrics (eval_image/<image>/psnr and /bpp; "
                "engines before them did not), so there is no per-image table.", ""]
    out = [head, ""]
    if report.options.rate != "bpp":
        out += [f"The bpp here is the estimated rate ({m.EVAL_BPP} per image): no per-image bitstream size is "
                f"reported, so it is not --rate {report.options.rate}.", ""]
    board = st.leaderboard
    for lam in sorted(means[LMBDA].unique()):
        at = means[means[LMBDA] == lam]
        labels = list(dict.fromkeys(at["configuration"]))
        ranked = (list(board.loc[board[LMBDA] == lam].sort_values("rank")["configuration"])
                  if not board.empty and LMBDA in board.columns else [])
        order = sorted(labels, key=lambda lb: (lb != st.baseline, ranked.index(lb) if lb in ranked else len(ranked)))
        shown = order[:MAX_IMAGE_COLUMNS]
        table = pd.DataFrame({"image": list(dict.fromkeys(at["image"]))})
        for label in shown:
            own = at[at["configuration"] == label].set_index("image")
            n = int(own["n"].max())
            name = f"{label}{' (baseline)' if label == st.baseline else ''} (n={n})"
            table[name] = [fmt.psnr_bpp(own.at[i, "psnr"], own.at[i, "bpp"]) if i in own.index else fmt.NA
                           for i in table["image"]]
        mean_row = {"image": "mean over images"}
        for label, name in zip(shown, table.columns[1:], strict=True):
            own = at[at["configuration"] == label]
            mean_row[name] = fmt.psnr_bpp(own["psnr"].mean(), own["bpp"].mean())
        table = pd.concat([table, pd.DataFrame([mean_row])], ignore_index=True)
        out += [f"lambda {lam:g}:", "", markdown_table(table), ""]
        if len(order) > len(shown):
            out += [f"{len(order) - len(shown)} more configuration(s) at lambda {lam:g} in per_image.csv.", ""]
    return out


def _leaderboard_display(board: pd.DataFrame) -> pd.DataFrame:
    shown = board.copy()
    if shown.empty:
        return shown
    shown[LMBDA] = [f"{v:g}" if first else "" for v, first in zip(shown[LMBDA], shown["rank"] == 1, strict=True)]
    for col, digits in (("loss", 4), ("psnr", fmt.PSNR_DIGITS), ("bpp", fmt.BPP_DIGITS), ("lambda_eff", 5)):
        if col not in shown.columns:
            continue
        shown[col] = [fmt.fixed(v, digits) for v in shown[col]]
    return shown


# ---------------------------------------------------------------------------------------------- files


def _csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False)


def latex_header_comment(report: Report, what: str) -> str:
    """The comment block at the top of a .tex file: what it holds, what it needs, the settings and the
    provenance (ASCII comments: they never reach the page)."""
    lines = [latex_comment(f"hpcm-tune analysis: {what}"), LATEX_PREAMBLE_NOTE.rstrip("\n"),
             latex_comment(_describe_points(report.options))]
    lines += [latex_comment(text) for text in prov.lines(_provenance(report), report.command)]
    return "\n".join(lines) + "\n\n"


def study_latex(report: Report, st: StudyTables, label_slug: str | None = None) -> str:
    """The LaTeX tables of one study, :func:`report_tables` in its order, each a table* with its caption and
    \\label tab:<study>-<key>, under a comment block naming the settings and the provenance."""
    tex = latex_header_comment(report, f"tables of study {st.study}")
    return tex + "\n".join(latex_table(table) for table in report_tables(report, st, label_slug))


def write_outputs(report: Report, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write report.md, trials.csv, curves.csv, status.csv, ablation.csv, leaderboard.csv, per_image.csv (PSNR
    and bpp per trial and evaluation image at the report's RD point; only the header when no trial reported
    them), paired.csv and per_seed.csv (each study's paired statistics against its baseline and every trial's RD
    point, from analysis.tables.StudyTables), one tables_<study>.tex per study, reference.csv and
    reference_images.csv (the reference codec points, when computed), with ``plots``, rd_curves.png,
    weights.png and gammas.png, and report.html (report.md with every figure embedded, analysis.html)."""
    out = Path(out_dir)
    written: list[Path] = []
    report.figures = plots  # report.md references the search figures only when they are written
    page: dict[str, str | bytes] = {}  # report.md and the figures, as written: what report.html shows

    def put(name: str, data: str | bytes) -> None:
        atomic_write(out / name, data)
        written.append(out / name)
        if name == "report.md" or name.endswith(".png"):
            page[name] = data

    put("report.md", render_markdown(report))
    put("trials.csv", _csv(report.trials))
    put("curves.csv", _csv(report.curves))
    put("status.csv", _csv(status_counts(report.trials)))
    put("per_image.csv", _csv(report.per_image))
    ablations, boards, paired, per_seed = [], [], [], []
    slugs: dict[str, int] = {}
    for st in report.studies:
        ablations.append(st.ablation.assign(**{STUDY: st.study}).assign(
            notes=" ".join(f"[{i}] {t}" for i, t in enumerate(st.footnotes, start=1))))
        boards.append(st.leaderboard.assign(**{STUDY: st.study}))
        for frames, name in ((paired, "paired"), (per_seed, "per_seed")):
            table = getattr(st, name, None)
            if isinstance(table, pd.DataFrame) and not table.empty:
                frames.append(table.assign(**{STUDY: st.study}))
        # Two study names with one slug ('a b', 'a_b') still get distinct files and labels.
        slug = latex_label(st.study)
        slugs[slug] = slugs.get(slug, 0) + 1
        suffix = f"-{slugs[slug]}" if slugs[slug] > 1 else ""
        put(f"tables_{fmt.file_slug(st.study)}{suffix}.tex", study_latex(report, st, st.study + suffix))
    put("ablation.csv", _csv(pd.concat(ablations, ignore_index=True) if ablations else pd.DataFrame()))
    put("leaderboard.csv", _csv(pd.concat(boards, ignore_index=True) if boards else pd.DataFrame()))
    put("paired.csv", _csv(pd.concat(paired, ignore_index=True) if paired else pd.DataFrame()))
    put("per_seed.csv", _csv(pd.concat(per_seed, ignore_index=True) if per_seed else pd.DataFrame()))
    from hpcm_tune.analysis.search import csv_outputs

    for name, text in csv_outputs(report.searches).items():
        put(name, text)
    if report.references:
        from hpcm_tune.analysis.references import reference_table

        points, per_image = reference_table(report.references)
        if not points.empty:
            put("reference.csv", _csv(points))
            put("reference_images.csv", _csv(per_image))
    if plots:
        from hpcm_tune.analysis import plots as figures  # matplotlib only when figures are wanted

        for name, png in figures.render_all(report).items():
            put(name, png)
        from hpcm_tune.analysis.search_plots import render as search_figures

        for name, png in search_figures(report.searches).items():
            put(name, png)
    from hpcm_tune.analysis.html import render_html  # last: every figure written above is embedded

    put("report.html", render_html(page.pop("report.md"), page))
    return written
