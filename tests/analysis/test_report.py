import dataclasses
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from hpcm_tune import metrics as m
from hpcm_tune.analysis import provenance as prov
from hpcm_tune.analysis.cli import main
from hpcm_tune.analysis.report import (
    build_report,
    latex_prose,
    markdown_table,
    render_markdown,
    report_tables,
    study_latex,
    write_outputs,
)
from hpcm_tune.analysis.results import load_experiments
from hpcm_tune.analysis.tables import AnalysisOptions
from hpcm_tune.source import code_commit
from hpcm_tune.testing import image_psnr_offset, image_rate_factor, write_experiment_dir

IMAGES = ("kodim01.png", "kodim02.png", "kodim03.png")
LAMBDAS = (0.0018, 0.0067, 0.013, 0.0483)
SPACE_FILE = Path(__file__).resolve().parents[2] / "search_spaces" / "ablation_scale_weights.yaml"


def test_per_image_csv_and_table_at_the_reports_rd_point(storage, tmp_path, scale_weight_trials, trial, capsys):
    trials = scale_weight_trials(seeds=(0, 1), noise=0.05, images=IMAGES)
    trials.append(trial("s1 emphasis", 0.0035, config={"scale_weights": [0.5, 0.3, 0.2]}, error=True, epochs_run=1,
                        images=IMAGES))
    write_experiment_dir(storage, "exp", trials)
    out = tmp_path / "out"
    assert main([str(storage / "exp"), "--out", str(out), "--no-plots", "--no-reference"]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "per_image.csv")
    assert list(table.columns) == ["experiment", "trial_id", "study", "configuration", "lmbda", "seed", "status",
                                   "epoch", "image", "psnr", "bpp"]
    assert len(table) == 32 * 3 and set(table["status"]) == {"finished"}  # the errored trial is no RD point
    assert set(table["image"]) == set(IMAGES) and (table["epoch"] == 4).all()
    # Each trial's images average to its eval/psnr and eval/bpp (the engine averages the same way).
    trials_csv = pd.read_csv(out / "trials.csv").set_index("trial_id")
    per_trial = table.groupby("trial_id")[["psnr", "bpp"]].mean()
    assert per_trial["psnr"].to_numpy() == pytest.approx(trials_csv.loc[per_trial.index, m.EVAL_PSNR].to_numpy())
    assert per_trial["bpp"].to_numpy() == pytest.approx(trials_csv.loc[per_trial.index, m.EVAL_BPP].to_numpy())
    first = table[table["image"] == IMAGES[0]]
    assert (first["psnr"] - trials_csv.loc[first["trial_id"], m.EVAL_PSNR].to_numpy()).to_numpy() == pytest.approx(
        image_psnr_offset(0, 3))
    # The Markdown table: per lambda, images by configuration (baseline first), mean over the two seeds.
    assert "### Per image (`scale_weights`)" in printed
    section = printed.split("### Per image (`scale_weights`)")[1]
    at = table[(table["configuration"] == "s3 emphasis") & (table["lmbda"] == 0.0067) & (table["image"] == IMAGES[2])]
    assert len(at) == 2
    cell = f"{at['psnr'].mean():.2f} / {at['bpp'].mean():.4f}"
    block = section.split("lambda 0.0067:")[1].split("lambda 0.013:")[0]
    header = next(line for line in block.splitlines() if line.startswith("| image"))
    names = [c.strip() for c in header.strip("|").split("|")]
    assert names[1] == "s2 emphasis (baseline) (n=2)" and "s3 emphasis (n=2)" in names
    row = next(line for line in block.splitlines() if line.startswith(f"| {IMAGES[2]}"))
    assert [c.strip() for c in row.strip("|").split("|")][names.index("s3 emphasis (n=2)")] == cell
    assert "mean over images" in block
    # The tables engineer's paired statistics: rendered, and written as CSV with the per-seed points.
    assert "### Paired BD against the baseline (`scale_weights`)" in printed
    paired = pd.read_csv(out / "paired.csv")
    s3 = paired[(paired["configuration"] == "s3 emphasis") & (paired["quantity"] == "BD-rate PSNR (%)")]
    assert len(s3) == 1 and s3["mean"].iloc[0] == pytest.approx(-10.0, abs=1e-6) and s3["n"].iloc[0] == 2
    assert len(pd.read_csv(out / "per_seed.csv")) == 32
    assert image_rate_factor(2, 3) == pytest.approx(0.8)


def test_per_image_metrics_follow_point_best(storage, trial):
    path = write_experiment_dir(storage, "exp", [trial("a", lam, images=IMAGES) for lam in LAMBDAS])
    name = m.eval_image_metric(IMAGES[1], "psnr")
    for result in path.glob("*/result.json"):  # epoch 2 becomes the best of every trial, and says so per image
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        rows[1][m.EVAL_LOSS], rows[1][name] = 0.0, 50.0
        result.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exps = load_experiments([path])
    best = build_report(exps, AnalysisOptions(point="best", reference=False))
    final = build_report(exps, AnalysisOptions(reference=False))
    picked = best.per_image[best.per_image["image"] == IMAGES[1]]
    assert (best.per_image["epoch"] == 2).all() and (picked["psnr"] == 50.0).all()
    assert (final.per_image["epoch"] == 4).all() and (final.per_image["psnr"] < 50.0).all()
    text = render_markdown(best)
    assert "`--point best` (RD point of a trial: its best epoch" in text
    assert text.index("`--point best`") < text.index("Provenance:") < text.index("## Study")
    assert "| 50.00 / " in text.split("### Per image")[1]


def test_experiments_without_per_image_metrics_say_so(storage, tmp_path, scale_weight_trials):
    write_experiment_dir(storage, "exp", scale_weight_trials(lambdas=LAMBDAS[:2]))
    report = build_report(load_experiments([storage / "exp"]), AnalysisOptions(reference=False))
    assert report.per_image.empty and "image" in report.per_image.columns
    assert "No trial of this study reported per-image metrics" in render_markdown(report)
    write_outputs(report, tmp_path / "out", plots=False)
    assert pd.read_csv(tmp_path / "out" / "per_image.csv").empty


# ---------------------------------------------------------------------------------------------- LaTeX

_UNESCAPED_AMP = re.compile(r"(?<!\\)&")
TWO_COLUMN = ("\\documentclass[twocolumn]{article}\n\\usepackage{booktabs,graphicx,amsmath}\n\\begin{document}\n"
              "Text.\n\\input{%s}\nSee Tables~\\ref{%s}.\n\\end{document}\n")


def _latex_outputs(storage, tmp_path, scale_weight_trials, trial):
    # A study name full of characters that break LaTeX text, seeds (± and ~ marks), an errored trial, a
    # collapsed-looking failure of one cell (footnotes), the reference columns.
    study = "gamma & λ_1 #2 ~50% Δ−†"
    trials = scale_weight_trials(seeds=(0, 1), noise=0.05, lambdas=LAMBDAS, study=study, images=IMAGES)
    trials.append(trial("late", 0.0067, study=study, config={"scale_weights": [0.1, 0.1, 0.8]}, epochs_run=1))
    write_experiment_dir(storage, "exp", trials, study=study)
    out = tmp_path / "out"
    report = build_report(load_experiments([storage / "exp"]), AnalysisOptions(),
                          command=["analyze.py", str(storage / "exp"), "--out", str(out)])
    write_outputs(report, out, plots=False)
    (tex,) = out.glob("tables_*.tex")
    return report, tex


def test_latex_tables_are_table_star_booktabs_with_labels_captions_and_only_ascii(
        storage, tmp_path, scale_weight_trials, trial):
    report, tex = _latex_outputs(storage, tmp_path, scale_weight_trials, trial)
    text = tex.read_text()
    assert text.isascii()
    comments = [line for line in text.splitlines() if line.startswith("%")]
    body = "\n".join(line for line in text.splitlines() if not line.startswith("%"))
    assert any("\\usepackage{booktabs}" in line for line in comments)
    assert any("--point final" in line and "--rate bpp" in line for line in comments)
    assert any(line.startswith("% analysed by: hpcm-tune") for line in comments)
    n = body.count("\\begin{table*}")
    assert n == 4 and body.count("\\end{table*}") == n and "\\begin{table}" not in body
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\caption{", "\\resizebox{"):
        assert body.count(rule) == n, rule
    labels = re.findall(r"\\label\{([^}]*)\}", body)
    assert labels == ["tab:gamma-1-2-50-ablation", "tab:gamma-1-2-50-per-lambda", "tab:gamma-1-2-50-leaderboard",
                      "tab:gamma-1-2-50-paired"]  # the Markdown's order
    captions = re.findall(r"\\caption\{(.*)\}", body)
    st = report.studies[0]
    assert all("2 seeds" in c and f"baseline {st.baseline}" in c for c in captions)
    assert "gamma \\& $\\lambda$\\_1 \\#2 $\\sim$50\\% $\\Delta$$-$$\\dagger$" in captions[0]
    # Headers in words; every row of every tabular has as many cells as its column spec.
    assert "$\\lambda = 0.0067$" in body and "PSNR (dB)" in body and "$\\lambda$ & rank" in body
    assert "BD-rate PSNR (\\%)" in body and "$\\pm$" in body
    for spec, rows in re.findall(r"\\begin\{tabular\}\{([lr]+)\}\n(.*?)\\end\{tabular\}", body, flags=re.S):
        for line in rows.splitlines():
            if line.endswith("\\\\"):
                assert len(_UNESCAPED_AMP.findall(line)) == len(spec) - 1, line
    # No raw text-mode specials outside math and escapes (& is counted above).
    stripped = re.sub(r"\$[^$]*\$", "", body)
    stripped = stripped.replace("\\ifdim\\width>\\textwidth", "").replace("{%\n", "{\n")
    stripped = re.sub(r"\\[\\_%#&{}$]", "", stripped)
    for ch in "_%#~<>|":
        assert ch not in stripped, ch


def test_latex_tables_compile_in_a_two_column_paper(storage, tmp_path, scale_weight_trials, trial):
    _, tex = _latex_outputs(storage, tmp_path, scale_weight_trials, trial)
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        print("pdflatex not installed: the LaTeX structure is checked, its compilation is not")
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    label = re.search(r"\\label\{([^}]*ablation)\}", tex.read_text()).group(1)
    doc = tex.parent / "paper.tex"
    doc.write_text(TWO_COLUMN % (tex.name, label))
    run = [pdflatex, "-interaction=nonstopmode", "-halt-on-error", doc.name]
    for _ in range(2):  # the second run resolves \ref
        done = subprocess.run(run, cwd=tex.parent, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout[-3000:]
    log = (tex.parent / "paper.log").read_text(errors="replace")
    assert "Missing character" not in log and "undefined" not in log.lower(), log[-3000:]
    assert (tex.parent / "paper.pdf").read_bytes().startswith(b"%PDF")


def _blocks(text: str, starts: list[str], end: str) -> list[str]:
    """The pieces of ``text`` from each of ``starts`` (in that order) to the next one, the last to ``end``."""
    at = [text.index(start) for start in starts]
    assert at == sorted(at), starts
    return [text[a:b] for a, b in zip(at, [*at[1:], text.index(end, at[-1])], strict=True)]


def test_markdown_and_latex_print_the_one_list_of_tables_in_one_order(storage, tmp_path, scale_weight_trials, trial):
    report, tex = _latex_outputs(storage, tmp_path, scale_weight_trials, trial)
    (st,) = report.studies
    tables = report_tables(report, st)
    assert [t.key for t in tables] == ["ablation", "per-lambda", "leaderboard", "paired"]
    # The list carries the study's printed tables as they are (the numbers are tables.py's, not re-made here).
    assert tables[0].frame.equals(st.display) and tables[1].frame.equals(st.per_lambda)
    md = (tex.parent / "report.md").read_text()
    section = md.split(f"## Study `{st.study}`", 1)[1]
    headings = [h for h in re.findall(r"^### (.*)$", section, flags=re.M) if not h.startswith("Per image")]
    assert headings == [t.title for t in tables]
    for t in tables:  # heading, caption, the table itself, in this order
        assert f"### {t.title}\n\n{t.caption}\n\n{markdown_table(t.frame)}\n" in section
    text = tex.read_text()
    assert re.findall(r"^\\caption\{(.*)\}$", text, flags=re.M) == [latex_prose(f"{t.title}. {t.caption}")
                                                                    for t in tables]
    assert re.findall(r"\\label\{([^}]*)\}", text) == [t.label for t in tables]
    for t, chunk in zip(tables, text.split("\\begin{table*}")[1:], strict=True):
        rows = chunk.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0].splitlines()
        assert len(rows) == len(t.frame) > 0
    # The ablation and the per-lambda table share one footnote numbering: both formats print the notes once,
    # under the per-lambda table (the ablation's caption says so), then the reference codecs' sentences.
    assert st.footnotes and st.reference_notes
    assert tables[0].footnotes == () and tables[1].footnotes == tuple(st.footnotes)
    assert tables[1].notes == tuple(st.reference_notes) and "under the next table" in tables[0].caption
    md_blocks = _blocks(section, [f"### {t.title}" for t in tables], "### Per image")
    tex_blocks = text.split("\\begin{table*}")[1:]
    for t, md_block, tex_block in zip(tables, md_blocks, tex_blocks, strict=True):
        for i, note in enumerate(st.footnotes, start=1):
            assert (f"[{i}] {note}  \n" in md_block) == (t.key == "per-lambda")
            assert (f"[{i}] {latex_prose(note)}\\par" in tex_block) == (t.key == "per-lambda")
        assert (" ".join(st.reference_notes) in md_block) == (t.key == "per-lambda")
        assert (latex_prose(" ".join(st.reference_notes)) in tex_block) == (t.key == "per-lambda")


def test_without_a_per_lambda_table_the_footnotes_go_under_the_ablation_in_both_formats(
        storage, tmp_path, scale_weight_trials, trial):
    report, _ = _latex_outputs(storage, tmp_path, scale_weight_trials, trial)
    one = report_tables(report, dataclasses.replace(report.studies[0], footnotes=["the only note"]))
    assert one[0].caption.endswith(". Note [1] is under the next table.") and one[1].footnotes == ("the only note",)
    st = dataclasses.replace(report.studies[0], per_lambda=pd.DataFrame({"configuration": ["a"]}))
    report = dataclasses.replace(report, studies=[st])
    tables = report_tables(report, st)
    assert [t.key for t in tables] == ["ablation", "leaderboard", "paired"]
    assert tables[0].footnotes == tuple(st.footnotes) and tables[0].notes == tuple(st.reference_notes)
    assert "under the next table" not in tables[0].caption
    md = render_markdown(report)
    ablation = _blocks(md, [f"### {tables[0].title}", f"### {tables[1].title}"], "### Per image")[0]
    assert "PSNR / bpp at each lambda" not in md and f"[{len(st.footnotes)}] {st.footnotes[-1]}  " in ablation
    tex = study_latex(report, st).split("\\end{table*}")
    assert len(tex) == 4 and f"[1] {latex_prose(st.footnotes[0])}\\par" in tex[0]


def test_latex_prose_prints_code_spans_plainly_and_the_word_lambda_as_the_symbol():
    assert latex_prose("Leaderboard per lambda (`a_b`)") == r"Leaderboard per $\lambda$ (a\_b)"
    assert latex_prose("lambda_eff, lambdas, lambda·D") == r"lambda\_eff, lambdas, $\lambda$$\cdot$D"


# ---------------------------------------------------------------------------------------------- provenance


def _sweep_header(storage, name):
    """hpcm_tune.json as the sweep writes it (experiment_meta), for a space file run with overrides."""
    from hpcm_tune.sweep.launcher import SweepOptions, experiment_meta
    from hpcm_tune.sweep.space import load_space

    space = load_space(SPACE_FILE)
    space = dataclasses.replace(space, fixed={**space.fixed, "steps_per_epoch": 7}).with_overrides(
        epochs=4, samples=2, cpus=2.0)
    meta = experiment_meta(space, SweepOptions(engine="fake"), name)
    meta["resumed"] = ["2026-01-02T00:00:00+00:00"]
    path = storage / name / "hpcm_tune.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **meta}, default=str))


def test_provenance_names_commit_versions_machine_hosts_and_both_commands(storage, scale_weight_trials):
    write_experiment_dir(storage, "exp", scale_weight_trials(lambdas=LAMBDAS[:2]))
    _sweep_header(storage, "exp")
    command = ["analyze.py", str(storage / "exp"), "--point", "best", "--no-reference"]
    report = build_report(load_experiments([storage / "exp"]), AnalysisOptions(point="best", reference=False),
                          command=command)
    text = render_markdown(report)
    block = text.split("Provenance:")[1].split("Experiments:")[0]
    commit = re.search(r"commit (\S+);", block).group(1)
    assert commit == prov.package_commit(prov.PACKAGE_DIR)
    if (prov.PACKAGE_DIR.parent / ".git").exists():  # run from the project's checkout (not an unpacked copy)
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit)
    assert f"hpcm-tune {prov.package_version()}" in block
    assert f"torch {importlib.metadata.version('torch')}" in block
    assert f"CPU {prov.cpu_model(prov.CPUINFO)}" in block and "GPU " in block
    assert "report command: `analyze.py " + str(storage / "exp") + " --point best --no-reference`" in block
    assert "hosts node (127.0.0.1) (8 trials)" in block
    assert "CPUs per trial 2, GPUs per trial 0" in block and "torch threads per trial 2 (" in block
    tune = re.search(r"experiment exp command: `([^`]*)`", block).group(1)
    assert tune == (f"python tune.py --space {shlex.quote(str(SPACE_FILE))} --name exp "
                    "--epochs 4 --num-samples 2 --cpus-per-trial 2 --set steps_per_epoch=7")
    assert "its trials ran engine 'fake', which tune.py does not offer" in block  # no flag selects a stand-in
    assert "resumed 2026-01-02T00:00:00+00:00" in block
    assert f"trials ran commit {code_commit()})" in block  # recorded by the sweep when it started
    assert text.index("`--point best`") < text.index("Provenance:")


def test_provenance_without_git_cpuinfo_or_recorded_resources_says_unknown(storage, trial, tmp_path, monkeypatch):
    write_experiment_dir(storage, "exp", [trial("a", lam) for lam in LAMBDAS[:2]])
    package = tmp_path / "site-packages" / "hpcm_tune"  # an installed copy: no git checkout
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.setattr(prov, "PACKAGE_DIR", package)
    monkeypatch.setattr(prov, "CPUINFO", tmp_path / "no-cpuinfo")
    monkeypatch.setattr(prov, "NVIDIA_GPUS", tmp_path / "no-nvidia")
    monkeypatch.setattr(prov.platform, "processor", lambda: "")
    monkeypatch.setattr(prov.platform, "machine", lambda: "")
    report = build_report(load_experiments([storage / "exp"]), AnalysisOptions(reference=False))
    text = render_markdown(report)
    assert "commit unknown;" in text and "CPU unknown; GPU none found" in text
    assert "report command: unknown (not passed by the caller)" in text
    assert "CPUs per trial unknown, GPUs per trial unknown; torch threads per trial unknown" in text
    assert "experiment exp command: `python tune.py --space search_spaces/study.yaml --name exp`" in text
    assert "trials ran commit unknown (not recorded by this sweep)" in text
