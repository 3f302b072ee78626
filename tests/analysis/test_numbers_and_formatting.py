"""The numeric ablation (tables.study_numbers) is computed before any text, and formatted afterwards by
tables.format_study with the one set of formatters (analysis.formatting)."""

import math

import pytest

from hpcm_tune.analysis import formatting as fmt
from hpcm_tune.analysis.report import build_report
from hpcm_tune.analysis.results import load_experiments
from hpcm_tune.analysis.tables import (
    ANCHOR,
    PAIRED_SEEDS,
    AnalysisOptions,
    BDCell,
    Footnotes,
    Interval,
    LambdaCell,
    format_bd_cell,
    format_lambda_cell,
    format_study,
    numeric_table,
    paired_table,
    study_numbers,
)
from hpcm_tune.files import atomic_write
from hpcm_tune.testing import write_experiment_dir

BD = "BD-rate PSNR (%)"
OPTIONS = AnalysisOptions(reference=False, baseline=("s2 emphasis",))


def _numbers(storage, trials, name="exp", study="scale_weights"):
    write_experiment_dir(storage, name, trials, study=study)
    report = build_report(load_experiments([storage / name]), OPTIONS)
    numbers, _, _ = study_numbers(report.trials, study, OPTIONS)
    return report, numbers


def test_the_numeric_table_holds_numbers_intervals_and_reasons_not_text(storage, scale_weight_trials):
    report, numbers = _numbers(storage, scale_weight_trials(seeds=(0, 1, 2), noise=0.05))
    assert numbers.baseline == "s2 emphasis"
    by_label = {c.label: c for c in numbers.configurations}
    base, s3 = by_label["s2 emphasis"], by_label["s3 emphasis"]
    assert base.is_baseline and base.bd[BD] == BDCell(Interval(0.0, math.nan, math.nan, math.nan, 3), ANCHOR)
    cell = s3.bd[BD]
    assert cell.basis == PAIRED_SEEDS and cell.interval.n == 3 and cell.reasons == ()
    assert cell.interval.mean == pytest.approx(-10.0, abs=0.5)  # s3 emphasis needs 10 % less rate
    assert cell.interval.lo < cell.interval.mean < cell.interval.hi
    at = s3.at_lambda[0]
    assert isinstance(at, LambdaCell) and at.have and at.n == 3 and at.lmbda == pytest.approx(0.0018)
    assert math.isfinite(at.psnr) and math.isfinite(at.rate_std)
    # The DataFrames are the numbers, the same the report holds; the display is their text.
    st = next(s for s in report.studies if s.study == "scale_weights")
    assert numeric_table(numbers).equals(st.ablation)
    assert paired_table(numbers).equals(st.paired)
    row = st.ablation[st.ablation["configuration"] == "s3 emphasis"].iloc[0]
    assert row[BD] == cell.interval.mean and row[f"{BD} n"] == 3
    display, per_lambda, notes = format_study(numbers)
    assert display.equals(st.display) and per_lambda.equals(st.per_lambda) and notes == st.footnotes
    shown = display[display["configuration"] == "s3 emphasis"].iloc[0][BD]
    assert shown.startswith(fmt.signed(cell.interval.mean, 2, cell.interval.std) + " (n=3)")


def test_a_bd_value_that_cannot_be_computed_keeps_its_reason_as_data(storage, trial):
    trials = [trial(lb, lam, 0, config={"scale_weights": w}) for lb, w in (("equal", [0.33, 0.33, 0.34]),
                                                                          ("s2 emphasis", [0.3, 0.4, 0.3]))
              for lam in (0.0018, 0.0067, 0.013, 0.0483)]
    trials += [trial("only one", 0.0067, 0, config={"scale_weights": [0.2, 0.3, 0.5]})]
    _, numbers = _numbers(storage, trials)
    lonely = next(c for c in numbers.configurations if c.label == "only one").bd[BD]
    assert lonely.basis == "" and lonely.interval.n == 0 and math.isnan(lonely.interval.mean)
    assert lonely.reasons and all(isinstance(r, str) for r in lonely.reasons)
    notes = Footnotes()
    assert format_bd_cell(lonely, 2, notes) == "n/a " + " ".join(f"[{i + 1}]" for i in range(len(notes.texts)))
    assert notes.texts == list(dict.fromkeys(lonely.reasons))


def test_formatting_bd_cells_numbers_reasons_before_the_basis_note():
    notes = Footnotes()
    one = BDCell(Interval(-1.234, math.nan, math.nan, math.nan, 1), PAIRED_SEEDS, ("curves overlap little",))
    assert format_bd_cell(one, 2, notes) == "-1.23 (n=1) [2] [1]"
    assert notes.texts[0] == "curves overlap little"
    within = BDCell(Interval(0.1, 0.2, -0.3, 0.5, 3), PAIRED_SEEDS)
    assert format_bd_cell(within, 3, notes) == "+0.100 ± 0.200 (n=3) ~ [3]"
    apart = BDCell(Interval(2.0, 0.1, 1.8, 2.2, 3), PAIRED_SEEDS)
    assert format_bd_cell(apart, 2, notes) == "+2.00 ± 0.10 (n=3) [3]"
    assert format_bd_cell(BDCell(basis=ANCHOR), 2, notes) == "0 (anchor)"
    assert format_bd_cell(BDCell(), 2, notes) == "n/a"


def test_formatting_lambda_cells_with_collapse_counts():
    notes = Footnotes()
    cell = LambdaCell(0.0067, True, 3, 31.2, 0.1, 0.41234, 0.01, collapsed=(1, 3))
    assert format_lambda_cell(cell, notes) == "31.20 ± 0.10 dB / 0.4123 ± 0.0100 (n=3) [1] † 1/3"
    assert format_lambda_cell(LambdaCell(0.0067, False), notes) == "n/a [2]"
    assert notes.texts[1] == "no finished trial at this lambda"


@pytest.mark.parametrize("call, expected", [
    ((fmt.cell, 0.5), "0.5"), ((fmt.cell, 1e-5), "1e-05"), ((fmt.cell, math.nan), ""), ((fmt.cell, None), ""),
    ((fmt.cell, 3), "3"), ((fmt.plain, (0.3, 0.4)), "[0.3, 0.4]"), ((fmt.plain, 0.0067), "0.0067"),
    ((fmt.number, 1.234, 2), "1.23"), ((fmt.number, math.nan, 2), ""), ((fmt.number, 1.0, 1, 0.25), "1.0 ± 0.2"),
    ((fmt.signed, 1.5, 2), "+1.50"), ((fmt.fixed, 1.5, 3), "1.500"), ((fmt.fixed, math.nan, 3), "n/a"),
    ((fmt.fixed, 2, 3), "n/a"), ((fmt.significant, 0.012345, 3), "0.0123"), ((fmt.compact, 0.0), "0.0000"),
    ((fmt.compact, 1e-4), "0.0001"), ((fmt.compact, None), "n/a"), ((fmt.compact, True), "True"),
    ((fmt.joined, [20.4, 30.6, 49.0], 0), "20/31/49"), ((fmt.interval, -0.1, 0.2, 2), "[-0.10, +0.20]"),
    ((fmt.interval, math.nan, 0.2, 2), ""), ((fmt.psnr_bpp, 31.234, 0.5), "31.23 / 0.5000"),
    ((fmt.count_range, [3, 2, 0]), "2–3 seeds"), ((fmt.count_range, [3, 3], "trials"), "3 trials"),
])
def test_formatters(call, expected):
    fn, *args = call
    assert fn(*args) == expected


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write(path, "old")
    atomic_write(path, "névé")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    assert path.read_text(encoding="utf-8") == "névé" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]
    with pytest.raises(TypeError):
        atomic_write(path, 12)  # neither text nor bytes: the old file stays, no temporary is left
    assert path.read_text(encoding="utf-8") == "névé" and sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]
