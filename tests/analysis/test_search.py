"""The search report (hpcm_tune.analysis.search): search vs study, importances, figures, best configuration and
the command that rebuilds it."""

import json
import math
import shlex

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpcm_tune.analysis import search
from hpcm_tune.analysis.report import build_report, render_markdown, write_outputs
from hpcm_tune.analysis.results import FINISHED, STOPPED, load_experiments, read_experiment
from hpcm_tune.analysis.search_plots import parallel_figure, params_figure, search_gid
from hpcm_tune.analysis.tables import AnalysisOptions
from hpcm_tune.domains import Simplex
from hpcm_tune.testing import write_experiment_dir

LMBDA = 0.0067
STUDY = "gsearch"
SPACE = {"study": STUDY, "searcher": "optuna", "configurations": {},
         "params": {"gamma_s1": {"type": "loguniform", "low": 0.001, "high": 0.02},
                    "w_lr": {"type": "uniform", "low": 0.01, "high": 0.05},
                    "scale_weights": {"type": "simplex", "dim": 3, "min": 0.1}}}
OPTIONS = AnalysisOptions(reference=False)


def _offset(gamma_s1: float) -> float:
    """The PSNR offset (dB) of a trial: a function of gamma_s1 alone (best at 0.005)."""
    return -3.0 * math.log10(gamma_s1 / 0.005) ** 2


def _search_trials(finished: int = 16, stopped: int = 4, seed: int = 0, extra: dict | None = None) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(finished + stopped):
        gamma = float(np.exp(rng.uniform(math.log(0.001), math.log(0.02))))
        weights = rng.dirichlet([1.0, 1.0, 1.0]) * 0.7 + 0.1
        config = {"objective": "hierarchical", "lmbda": LMBDA, "seed": 0, "epochs": 4, "study": STUDY,
                  "label": STUDY, "gamma_s1": gamma, "w_lr": float(rng.uniform(0.01, 0.05)),
                  "scale_weights": [round(float(w), 6) for w in weights], "lr": 1e-05, "preset": "tiny",
                  **{f"_simplex_scale_weights_{k}": 0.5 for k in range(3)}, **(extra or {})}
        spec = {"config": config, "psnr_offset": _offset(gamma)}
        if i >= finished:
            spec["epochs_run"] = 2  # stopped early by ASHA (TERMINATED with fewer epochs than planned)
        out.append(spec)
    return out


def _section(storage, trials, name="exp", space=SPACE, options=OPTIONS):
    write_experiment_dir(storage, name, trials, study=STUDY, search_space=space)
    report = build_report(load_experiments([storage / name]), options)
    return report


def test_the_parameter_the_loss_depends_on_has_the_largest_importance(storage):
    report = _section(storage, _search_trials())
    (section,) = report.searches
    (at,) = section.per_lambda
    assert at.counts[FINISHED] == 16 and at.counts[STOPPED] == 4
    assert section.components == ("gamma_s1", "w_lr", "scale_weights[0]", "scale_weights[1]", "scale_weights[2]")
    assert at.importances, at.importance_note
    assert search.PED_ANOVA in [imp.method for imp in at.importances]
    for imp in at.importances:
        assert max(imp.values, key=imp.values.get) == "gamma_s1", (imp.method, imp.values)
        assert math.isclose(sum(imp.values.values()), 1.0, rel_tol=1e-6)
    # Early-stopped trials are PRUNED in the Optuna study, which its evaluators leave out; the report says so.
    from optuna.trial import TrialState

    components = [(p, i, c) for p in section.params for i, c in enumerate(p.components)]
    study = search.importance_study(at.board, components, section.mode)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 16
    assert len(study.get_trials(states=(TrialState.PRUNED,))) == 4
    assert "4 trials stopped early enter as PRUNED" in at.importance_note
    gamma = [d for d in study.trials[0].distributions.items() if d[0] == "gamma_s1"][0][1]
    assert gamma.log and gamma.low <= 0.001 and gamma.high >= 0.02
    md = render_markdown(report)
    table = md.split("Parameter importances", 1)[1].split("![", 1)[0]
    first_row = [line for line in table.splitlines() if line.startswith("| ")][1]
    assert first_row.split("|")[1].strip() == "gamma_s1"


def test_fanova_agrees_when_scikit_learn_is_installed(storage):
    pytest.importorskip("sklearn")
    (section,) = _section(storage, _search_trials()).searches
    fanova = next(imp for imp in section.per_lambda[0].importances if imp.method == search.FANOVA)
    assert max(fanova.values, key=fanova.values.get) == "gamma_s1"


def test_loss_figure_plots_each_trial_against_its_parameter_on_log_axes(storage, tmp_path):
    report = _section(storage, _search_trials())
    (section,) = report.searches
    (at,) = section.per_lambda
    fig = params_figure(section, at)
    axes = {ax.get_xlabel().split(" (")[0]: ax for ax in fig.axes if ax.get_xlabel()}
    assert set(axes) == set(section.components)
    assert axes["gamma_s1"].get_xscale() == "log" and axes["w_lr"].get_xscale() == "linear"
    dots = next(c for c in axes["gamma_s1"].collections if c.get_gid() == search_gid("gamma_s1", FINISHED))
    x, y = dots.get_offsets().T
    done = at.board[at.board["status"] == FINISHED]
    assert np.allclose(sorted(x), sorted(done["gamma_s1"])) and len(x) == 16
    # The loss is a function of gamma_s1 alone: the plotted points follow the PSNR offset exactly.
    assert np.corrcoef([_offset(g) for g in x], y)[0, 1] < -0.99
    hollow = next(c for c in axes["gamma_s1"].collections if c.get_gid() == search_gid("gamma_s1", STOPPED))
    assert len(hollow.get_offsets()) == 4
    best = next(c for c in axes["gamma_s1"].collections if c.get_gid() == search_gid("gamma_s1", "best"))
    assert np.allclose(best.get_offsets()[0], [at.best.config["gamma_s1"], at.best.value])
    lines = [ln for ln in parallel_figure(section, at).axes[0].lines if (ln.get_gid() or "").startswith("search")]
    assert len(lines) == 20
    # Written beside report.md and referenced with Markdown image syntax, which report.html embeds.
    out = tmp_path / "out"
    names = [p.name for p in write_outputs(report, out)]
    figs = search.figure_names(section, at)
    assert figs["params"] in names and figs["parallel"] in names
    md = (out / "report.md").read_text()
    assert f"]({figs['params']})" in md and f"]({figs['parallel']})" in md and "![" in md
    assert "search_leaderboard.csv" in names and "search_importance.csv" in names
    write_outputs(report, tmp_path / "noplots", plots=False)
    assert "](search_" not in (tmp_path / "noplots" / "report.md").read_text()


def test_search_only_sweep_has_no_ablation_table(storage):
    md = render_markdown(_section(storage, _search_trials()))
    assert "## Search `gsearch`" in md
    assert "## Study" not in md and "Baseline:" not in md and "BD-rate" not in md and "n/a" not in md
    # Short trial names, one column per searched parameter, never the parameter list as a label.
    header = next(line for line in md.splitlines() if line.startswith("| rank"))
    assert [c.strip() for c in header.strip("|").split("|")][-3:] == ["gamma_s1", "w_lr", "scale_weights"]
    assert not any("gamma_s1=" in line for line in md.splitlines() if line.startswith("|"))


def test_study_only_sweep_has_no_search_section(storage, scale_weight_trials):
    write_experiment_dir(storage, "abl", scale_weight_trials(), study="scale_weights")
    report = build_report(load_experiments([storage / "abl"]), OPTIONS)
    md = render_markdown(report)
    assert report.searches == [] and "## Search" not in md
    assert "## Study `scale_weights`" in md and "Baseline:" in md


def test_configurations_crossed_with_sampled_parameters_get_both_sections(storage):
    trials = _search_trials(finished=12, stopped=0)
    for i, spec in enumerate(trials):
        spec["config"]["label"] = "a" if i % 2 else "b"
    space = {**SPACE, "searcher": "random", "configurations": {"a": {"w_lr": 0.01}, "b": {"w_lr": 0.02}}}
    report = _section(storage, trials, space=space)
    md = render_markdown(report)
    assert "## Search `gsearch`" in md and "## Study `gsearch`" in md
    (section,) = report.searches
    assert section.params[-1].name == search.CONFIGURATION_PARAM
    assert set(section.per_lambda[0].board[search.CONFIGURATION_PARAM]) == {"a", "b"}


def test_below_the_threshold_importances_are_not_computed(storage):
    report = _section(storage, _search_trials(finished=search.MIN_TRIALS_FOR_IMPORTANCE - 1, stopped=3))
    (at,) = report.searches[0].per_lambda
    assert at.importances == ()
    assert f"fewer than {search.MIN_TRIALS_FOR_IMPORTANCE}" in at.importance_note
    md = render_markdown(report)
    assert "Importances not computed: 9 finished trial(s)" in md
    assert "| parameter" not in md
    with pytest.raises(ValueError, match="min_trials=1"):
        search.importances(at.board, report.searches[0].params, "min", min_trials=1)


def test_reproduce_command_rebuilds_the_same_configuration(storage, tmp_path, capsys):
    from hpcm_tune.config import RunConfig
    from hpcm_tune.experiment import PARENTS_KEY, parent_key
    from hpcm_tune.train import main as train_main

    parent = tmp_path / "parents" / "tiny-lmbda0.0067"
    parent.mkdir(parents=True)
    # The sweep's parents table, as tune.py puts it in every trial's config (the trial resolves its init_from).
    table = json.dumps({parent_key({"lmbda": LMBDA, "preset": "tiny"}): str(parent)})
    report = _section(storage, _search_trials(extra={PARENTS_KEY: table, "data": "my images/set"}))
    best = report.searches[0].per_lambda[0].best
    assert best is not None and best.parent == str(parent)
    done = report.searches[0].per_lambda[0].board
    assert best.trial_id == done.iloc[0]["trial"] and done.iloc[0]["status"] == FINISHED
    assert best.value == done[done["status"] == FINISHED]["value"].min()
    argv = shlex.split(best.command.replace("\\\n", " "))
    assert argv[:3] == ["hpcm-train", "--init-from", str(parent)]
    assert train_main([*argv[1:], "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    record = next(t for t in read_experiment(storage / "exp").trials if t.trial_id == best.trial_id)
    expected = dict(record.params, init_from=str(parent))
    expected = {k: v for k, v in expected.items() if not k.startswith("_")}
    want = RunConfig.from_dict(expected).to_dict()
    for key in search.METADATA_KEYS:  # metadata, ignored by training: not part of the command
        printed.pop(key, None)
        want.pop(key, None)
    assert printed == want
    assert printed["lr"] == 1e-05 and printed["gamma_s1"] == record.params["gamma_s1"]  # full precision
    md = render_markdown(report)
    assert best.command in md and "fixed:\n  gamma_s1: " in md


def test_figure_names_and_the_reproduction_folder_name_the_study_by_its_file_slug(storage):
    # One rule (formatting.file_slug) for every file name made from a study name: the figures, the reproduction
    # command's output folder and tables_<study>.tex (test_report.py) agree on the same study.
    study = "g search/λ #1 †"
    write_experiment_dir(storage, "exp", _search_trials(extra={"study": study, "label": study}), study=study,
                         search_space={**SPACE, "study": study})
    (section,) = build_report(load_experiments([storage / "exp"]), OPTIONS).searches
    (at,) = section.per_lambda
    assert section.study == study
    assert search.figure_names(section, at) == {"params": "search_g_search_1_lmbda0.0067_params.png",
                                                "parallel": "search_g_search_1_lmbda0.0067_parallel.png"}
    assert " runs/g_search_1-best-lmbda0.0067" in at.best.command


def test_classification_from_the_recorded_space_or_the_trials():
    assert search.parse_param("w", {"type": "choice", "values": [1, 2]}, "grid") is None
    assert search.parse_param("w", {"type": "choice", "values": [1, 2]}, "random").values == (1, 2)
    assert search.parse_param("lmbda", {"type": "grid", "values": [0.1]}, "random") is None
    log = search.parse_param("g", {"type": "loguniform", "low": 0.001, "high": 0.02}, "optuna")
    assert log.log and log.components == ("g",)
    with pytest.raises(ValueError, match=r"params\.g = .*'low'"):
        search.parse_param("g", {"type": "uniform", "high": 1.0}, "optuna")
    with pytest.raises(ValueError, match=r"params\.sw = .*'dim'"):
        search.parse_param("sw", {"type": "simplex"}, "optuna")
    with pytest.raises(ValueError, match=r"params\.q = .*'q'"):
        search.parse_param("q", {"type": "quniform", "low": 0.0, "high": 1.0}, "optuna")
    # Not sampled: a bare value, fixed, a grid, an unknown or malformed type.
    for spec in (0.1, {"type": "fixed", "value": 1}, {"type": "grid", "values": [1, 2]}, {"type": "gauss"},
                 {"type": ["uniform"]}):
        assert search.parse_param("k", spec, "random") is None, spec
    # Each domain as the report reads it: components, description, the Optuna distribution of importances.
    ints = search.parse_param("b", {"type": "randint", "low": 2, "high": 9}, "optuna")
    assert ints.describe() == "`b` randint [2, 9)" and not ints.categorical
    assert ints.distribution(0, [3.0, 11.0]) == IntDistribution(2, 11)  # widened to an observed value
    sw = search.parse_param("sw", {"type": "simplex", "dim": 3, "min": 0.1}, "optuna")
    assert sw.component_values([0.2, 0.3, 0.5]) == (0.2, 0.3, 0.5) and sw.component_values([0.5, 0.5]) is None
    assert sw.distribution(1, [0.3]) == FloatDistribution(0.1, 0.8)
    lists = search.parse_param("w", {"type": "choice", "values": [[1, 2], "a"]}, "optuna")
    assert lists.values == ("[1, 2]", "a") and lists.component_values([1, 2]) == ("[1, 2]",)
    assert lists.distribution(0, ["b"]) == CategoricalDistribution(["[1, 2]", "a", "b"])
    assert lists.describe() == "`w` choice of [1, 2], a"


def test_without_a_recorded_space_the_simplex_draws_mark_a_search(storage):
    trials = _search_trials(finished=3, stopped=0)
    root = write_experiment_dir(storage, "old", trials, study=STUDY)
    header = json.loads((root / "hpcm_tune.json").read_text())
    header.pop("search_space")
    (root / "hpcm_tune.json").write_text(json.dumps(header))
    parts = search.classify(read_experiment(root))
    assert parts.is_search and [p.name for p in parts.params] == ["scale_weights"]
    assert parts.params[0].domain == Simplex(3) and parts.params[0].components[-1] == "scale_weights[2]"
    assert "simplex draws" in parts.source
