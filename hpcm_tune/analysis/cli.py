"""``python analyze.py`` / ``hpcm-analyze``: tables, BD-rates and figures from sweep results on disk.

With no path it analyzes the most recent experiment in the default storage (./results), so
``python tune.py && python analyze.py`` is the whole loop. Exit status 2 when there is nothing to analyze.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from hpcm_tune.analysis.bd import BD_METHODS, DEFAULT_MIN_OVERLAP, DEFAULT_MIN_QUALITY_SPAN_DB
from hpcm_tune.analysis.report import build_report, render_markdown, write_outputs
from hpcm_tune.analysis.results import ResultsWarning, load_experiments
from hpcm_tune.analysis.tables import POINTS, RATES, AnalysisOptions, BaselineError
from hpcm_tune.reference import ReferenceWarning

DEFAULT_OUT = "analysis"


def _path(text: str) -> str | Path:
    """A local path, or a URI kept as text (s3://BUCKET/PREFIX/NAME: Path would fold its '//')."""
    return text if "://" in text else Path(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="analyze.py",
        description="Ablation tables, BD-rates and RD curves from Ray Tune experiment directories "
        "(no Ray cluster needed).",
    )
    p.add_argument("paths", nargs="*", type=_path,
                   help="experiment directories (or s3://BUCKET/PREFIX/NAME), or storage directories (all "
                   "experiments inside are merged); "
                   "default: the most recent experiment in --storage")
    p.add_argument("--storage", type=_path, default=None,
                   help="where sweeps are stored (default: ./results); also s3://BUCKET/PREFIX (README.md)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"output directory (default: ./{DEFAULT_OUT}/<experiment name>)")
    p.add_argument("--baseline", action="append", default=[], metavar="LABEL|KEY=VALUE",
                   help="baseline configuration: a label ('s2 emphasis') or key=value (repeat to combine: "
                   "--baseline objective=balanced --baseline w_lr=0.025); default: the standard objective "
                   "if present, else the study's default configuration")
    p.add_argument("--method", choices=BD_METHODS.names(), default="pchip", help="BD-rate fit (default pchip)")
    p.add_argument("--point", choices=POINTS, default="final",
                   help="RD point of a trial: its final evaluation or its best epoch (default final); used by every "
                   "table (BD, paired differences, per-seed, leaderboard)")
    p.add_argument("--rate", choices=tuple(RATES), default="bpp",
                   help="rate axis: estimated bpp or actual bitstream bpp (default bpp); used by every table")
    p.add_argument("--include-partial", action="store_true",
                   help="also use stopped-early, errored and unfinished trials as RD points")
    p.add_argument("--min-overlap", type=float, default=DEFAULT_MIN_OVERLAP,
                   help=f"warn (footnote) below this curve overlap (default {DEFAULT_MIN_OVERLAP})")
    p.add_argument("--min-span", type=float, default=DEFAULT_MIN_QUALITY_SPAN_DB, metavar="DB",
                   help="a curve (per seed or mean over seeds) enters a BD only when rate and quality rise strictly "
                   "with lambda and its quality spans at least DB dB; else n/a with the reason "
                   f"(default {DEFAULT_MIN_QUALITY_SPAN_DB})")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the reference codecs (JPEG, WebP, AVIF via Pillow on the trials' evaluation images; "
                   "computed once per image set and cached in $HPCM_TUNE_CACHE/reference, default "
                   "~/.cache/hpcm-tune/reference)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--quiet", action="store_true", help="do not print the Markdown report")
    p.add_argument("--archive", type=Path, default=None, metavar="DIR",
                   help="write a compact copy of ONE experiment to DIR instead of a report: the per-epoch results, "
                   "configs and trial states that analyze.py reads, without checkpoints (for publishing raw results)")
    return p


# File systems allow 255 bytes per name: longer joined experiment names are shortened, kept unique by a hash.
MAX_OUT_NAME = 120


def default_out_name(names: list[str]) -> str:
    """The default output folder's name: the experiments' names joined by '+', or, when that is too long for a
    file name, the first one, the count of the others and a short hash of them all."""
    import hashlib

    joined = "+".join(names)
    if len(joined.encode()) <= MAX_OUT_NAME:
        return joined
    digest = hashlib.sha256(joined.encode()).hexdigest()[:8]
    return f"{names[0][:60]}+{len(names) - 1}-more-{digest}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = AnalysisOptions(method=args.method, point=args.point, rate=args.rate,
                                  include_partial=args.include_partial, baseline=tuple(args.baseline),
                                  min_overlap=args.min_overlap, reference=not args.no_reference,
                                  min_quality_span_db=args.min_span)
    except ValueError as err:
        print(f"analyze.py: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    if args.archive is not None:
        return _archive(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultsWarning)
        try:
            experiments = load_experiments(args.paths, storage=args.storage)
        except FileNotFoundError as err:
            print(f"analyze.py: {err}", file=sys.stderr)
            return 2
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    try:
        with warnings.catch_warnings(record=True) as ref_caught:
            warnings.simplefilter("always", ReferenceWarning)
            command = ["python", "analyze.py", *(sys.argv[1:] if argv is None else argv)]
            report = build_report(experiments, options, command=command)
        report.warnings = [str(w.message) for w in caught if issubclass(w.category, ResultsWarning)]
    except BaselineError as err:
        print(f"analyze.py: {err}", file=sys.stderr)
        return 2
    for w in ref_caught:
        if issubclass(w.category, ReferenceWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if args.baseline and not any(st.user_baseline_found for st in report.studies):
        labels = sorted({lb for st in report.studies for lb in st.ablation.get("configuration", [])})
        print(f"analyze.py: --baseline {' '.join(args.baseline)} matches no configuration; valid labels: "
              f"{', '.join(labels)}", file=sys.stderr)
        return 2
    out = args.out or Path(DEFAULT_OUT) / default_out_name([e.name for e in experiments])
    try:
        written = write_outputs(report, out, plots=not args.no_plots)
    except OSError as error:  # a path under a regular file, no permission, a full disk: say which path
        print(f"analyze.py: cannot write the report to {out}: {error.strerror or error} "
              f"({error.filename or out}); choose another --out", file=sys.stderr)
        return 2
    if not args.quiet:
        print(render_markdown(report))
    print(f"wrote {len(written)} files to {out} in {time.perf_counter() - start:.1f} s: "
          f"{', '.join(p.name for p in written)}", file=sys.stderr)
    return 0


def _archive(args: argparse.Namespace) -> int:
    from hpcm_tune.analysis.archive import write_archive
    from hpcm_tune.analysis.results import find_experiments

    if len(args.paths) != 1:
        print(f"analyze.py: --archive takes exactly one experiment directory; got {len(args.paths)} paths",
              file=sys.stderr)
        return 2
    try:
        found = find_experiments(args.paths[0])
        if len(found) != 1:
            raise FileNotFoundError(f"{args.paths[0]} holds {len(found)} experiments; name one of them")
        written = write_archive(found[0], args.archive)
    except (FileNotFoundError, FileExistsError) as err:
        print(f"analyze.py: {err}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in written)
    print(f"archived {found[0]} to {args.archive}: {len(written)} files, {size / 1e6:.2f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
