"""Where a report came from: the code that analysed (commit, versions), the machine it ran on, what the trials
recorded about theirs, and the commands that produced the experiment and the report.

Every fact is looked up defensively: a missing git checkout (an installed package), a missing /proc/cpuinfo or
a header without resources gives ``unknown``, never an error. torch is not imported for this (it costs seconds
on a small machine): its version comes from the package metadata, the GPU from torch only when something else
already imported it, else from the NVIDIA driver's /proc entries.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hpcm_tune.analysis import formatting as fmt
from hpcm_tune.source import UNKNOWN, code_commit

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # hpcm_tune/
CPUINFO = Path("/proc/cpuinfo")
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
# The tune.py flags that fold into the parsed search space (SearchSpace field -> flag), as hpcm_tune.sweep.cli
# applies them.
_TUNE_FLAGS = {"samples": "--num-samples", "max_concurrent": "--max-concurrent", "cpus": "--cpus-per-trial",
               "gpus": "--gpus-per-trial", "scheduler": "--scheduler", "searcher": "--searcher", "seed": "--seed",
               "repeats": "--repeats", "max_failures": "--max-failures",
               "checkpoints_to_keep": "--checkpoints-to-keep"}


@dataclass(frozen=True)
class ExperimentProvenance:
    """What one experiment directory records about how and where it ran."""

    name: str
    hosts: dict[str, int]  # "hostname (node_ip)" -> trials that reported from it
    devices: dict[str, int]  # the trials' 'device' config key -> trials
    cpus_per_trial: str  # from hpcm_tune.json's resources, or "unknown"
    gpus_per_trial: str
    torch_threads: str
    command: str  # the tune.py command, reconstructed, or what is recorded
    command_note: str = ""
    created: str = UNKNOWN
    resumed: tuple[str, ...] = ()
    commit: str = UNKNOWN  # the code the trials ran (hpcm_tune.json 'commit'; older sweeps did not record it)


@dataclass(frozen=True)
class Provenance:
    commit: str
    version: str
    torch: str
    python: str
    cpu: str
    gpu: str
    experiments: list[ExperimentProvenance] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- this machine


# The commit of a checkout: one implementation, shared with the sweep (which records it in hpcm_tune.json).
package_commit = code_commit


def _version(dist: str, module: str | None = None) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    loaded = sys.modules.get(module or dist)
    return str(getattr(loaded, "__version__", UNKNOWN)) if loaded is not None else UNKNOWN


def package_version() -> str:
    version = _version("hpcm-tune")
    if version == UNKNOWN:
        from hpcm_tune import __version__

        version = __version__
    return version


def cpu_model(cpuinfo: Path) -> str:
    """The first "model name" of /proc/cpuinfo with the number of logical CPUs, else platform.processor()."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines()
             if line.lower().startswith("model name") and ":" in line]
    if names:
        return f"{names[0]} ({len(names)} logical CPUs)"
    return platform.processor() or platform.machine() or UNKNOWN


def gpu_model(nvidia_gpus: Path) -> str:
    """torch.cuda's device names when torch is already imported; else the NVIDIA driver's Model lines; else
    'none found'."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        except Exception:  # noqa: BLE001 - a broken driver must not stop a report
            pass
    names = []
    try:
        infos = sorted(nvidia_gpus.glob("*/information")) if nvidia_gpus.is_dir() else []
        for info in infos:
            for line in info.read_text(errors="replace").splitlines():
                if line.startswith("Model:"):
                    names.append(line.split(":", 1)[1].strip())
    except OSError:
        return UNKNOWN
    return ", ".join(names) if names else "none found"


# ---------------------------------------------------------------------------------------------- experiments


def _number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return UNKNOWN
    return fmt.plain(float(value))


def _threads(cpus) -> str:
    if isinstance(cpus, bool) or not isinstance(cpus, int | float) or cpus <= 0:
        return UNKNOWN
    return f"{max(1, int(cpus))} (Ray sets OMP_NUM_THREADS, and so torch's threads, to the trial's whole CPUs)"


def tune_command(header: dict, name: str, storage: Path | None = None) -> tuple[str, str]:
    """(the ``python tune.py`` command that started the experiment, a note on how sure it is), from
    hpcm_tune.json: the space file, and the flags that made its parsed space differ from the file's content."""
    space_file = header.get("space_file") or header.get("search_space_file")
    if not space_file:
        return UNKNOWN, "hpcm_tune.json names no search-space file"
    argv = ["python", "tune.py", "--space", str(space_file), "--name", str(header.get("name") or name)]
    if storage is not None and storage.name != "results":
        argv += ["--storage", str(storage)]
    flags, note = _override_flags(header)
    if header.get("engine") and header["engine"] != "hpcm":  # no flag selects it: its program registered it
        note += (f"; its trials ran engine {str(header['engine'])!r}, which tune.py does not offer: a stand-in for "
                 f"tests or benchmarks that the program which started the sweep registered, not the real engine")
    return shlex.join(argv + flags), note


def _file_settings(raw: dict) -> dict:
    """The settings a search-space file's content gives, laid out as SearchSpace.to_json (fixed, parent, cpus,
    gpus, scheduler, searcher, seed, samples...), read the way sweep.space.parse_space reads them but without
    validating (validation imports the training code: seconds, for a provenance line)."""
    from hpcm_tune.sweep_settings import SPACE_DEFAULTS

    defaults = dict(SPACE_DEFAULTS)  # SearchSpace's defaults, declared once (plain Python: no sweep, no Ray)
    fixed = dict(raw.get("fixed") or {})
    for key, value in (raw.get("params") or {}).items():
        if isinstance(value, dict) and value.get("type") == "fixed" and "value" in value:
            fixed[key] = value["value"]
    resources = raw.get("resources") or {}
    parent = dict(raw["parent"]) if isinstance(raw.get("parent"), dict) else None
    if parent is not None:
        parent.pop("resources", None)
    out = {**defaults, "fixed": fixed, "parent": parent, "seed": fixed.pop("seed", defaults.get("seed", 0)),
           "cpus": resources.get("cpus", defaults.get("cpus")), "gpus": resources.get("gpus", defaults.get("gpus"))}
    for name in ("scheduler", "searcher"):
        value = raw.get(name, defaults.get(name))
        out[name] = value.get("name") if isinstance(value, dict) else value
    for name in ("samples", "repeats", "max_concurrent", "max_failures", "checkpoints_to_keep",
                 "delete_stopped_checkpoints"):
        if name in raw:
            out[name] = raw[name]
    return out


def _same(a, b) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _override_flags(header: dict) -> tuple[list[str], str]:
    """Flags that turn the file's content (space_raw) into the recorded parsed space; empty with a note when the
    header holds no raw content to compare with."""
    recorded, raw = header.get("space"), header.get("space_raw")
    if not isinstance(recorded, dict) or not isinstance(raw, dict) or not raw:
        return [], "flags other than --space are not recorded (no parsed space and file content to compare)"
    import yaml

    try:
        from_file = _file_settings(raw)
    except (AttributeError, TypeError, ValueError) as err:
        return [], f"flags not reconstructed: the recorded file content is malformed ({type(err).__name__})"
    flags: list[str] = []
    fixed_rec, fixed_file = dict(recorded.get("fixed") or {}), dict(from_file.get("fixed") or {})
    if "epochs" in fixed_rec and not _same(fixed_rec["epochs"], fixed_file.get("epochs")):
        flags += ["--epochs", _number(fixed_rec["epochs"])]
    for key, flag in _TUNE_FLAGS.items():
        if key in recorded and not _same(recorded[key], from_file.get(key)):
            value = recorded[key]
            flags += [flag, _number(value) if isinstance(value, int | float) else str(value)]
    if recorded.get("delete_stopped_checkpoints") and not from_file.get("delete_stopped_checkpoints"):
        flags.append("--delete-stopped-checkpoints")
    dump = lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()  # noqa: E731
    for key in sorted(set(fixed_rec) - {"epochs"}):
        if key not in fixed_file or not _same(fixed_file[key], fixed_rec[key]):
            flags += ["--set", f"{key}={dump(fixed_rec[key])}"]
    parent_rec, parent_file = recorded.get("parent") or {}, from_file.get("parent") or {}
    for key in sorted(parent_rec):
        if not _same(parent_file.get(key), parent_rec[key]):
            flags += ["--set", f"parent.{key}={dump(parent_rec[key])}"]
    return flags, "reconstructed from hpcm_tune.json: the file's recorded content against the parsed space"


def experiment_provenance(experiment) -> ExperimentProvenance:
    """Hosts the trials reported from (Ray's ``hostname`` and ``node_ip`` result fields), their ``device``
    key, the resources per trial and the tune.py command, from one analysis.results.Experiment."""
    hosts: Counter = Counter()
    devices: Counter = Counter()
    for trial in experiment.trials:
        seen = {(str(r["hostname"]), str(r.get("node_ip") or "")) for r in trial.rows if r.get("hostname")}
        for host, ip in seen:
            hosts[f"{host} ({ip})" if ip else host] += 1
        if trial.params.get("device") is not None:
            devices[str(trial.params["device"])] += 1
    header = experiment.header or {}
    resources = header.get("resources") if isinstance(header.get("resources"), dict) else {}
    command, note = tune_command(header, experiment.name, Path(experiment.path).parent)
    resumed = header.get("resumed") if isinstance(header.get("resumed"), list) else []
    return ExperimentProvenance(
        name=experiment.name, hosts=dict(hosts), devices=dict(devices),
        cpus_per_trial=_number(resources.get("cpus")), gpus_per_trial=_number(resources.get("gpus")),
        torch_threads=_threads(resources.get("cpus")), command=command, command_note=note,
        created=str(header.get("created") or UNKNOWN), resumed=tuple(str(t) for t in resumed),
        commit=str(header.get("commit") or f"{UNKNOWN} (not recorded by this sweep)"))


def collect(experiments: list) -> Provenance:
    """The provenance of an analysis of ``experiments`` (analysis.results.Experiment) on this machine."""
    return Provenance(commit=package_commit(PACKAGE_DIR), version=package_version(), torch=_version("torch"),
                      python=platform.python_version(), cpu=cpu_model(CPUINFO), gpu=gpu_model(NVIDIA_GPUS),
                      experiments=[experiment_provenance(e) for e in experiments])


# ---------------------------------------------------------------------------------------------- rendering


def _counts(counts: dict[str, int], what: str) -> str:
    if not counts:
        return f"{UNKNOWN} (no trial recorded its {what})"
    return ", ".join(f"{k} ({n} trial{'s' if n != 1 else ''})" for k, n in counts.items())


def _entries(prov: Provenance, command: list[str] | None) -> list[tuple[str, str, str, str]]:
    """(what, text before, command or "", text after) per fact: commands kept apart so Markdown can quote them."""
    report_cmd = shlex.join(command) if command else ""
    out = [("analysed by", f"hpcm-tune {prov.version}, commit {prov.commit}; torch {prov.torch}; Python "
                           f"{prov.python}", "", ""),
           ("analysis machine", f"CPU {prov.cpu}; GPU {prov.gpu}", "", ""),
           ("report command", "" if report_cmd else f"{UNKNOWN} (not passed by the caller)", report_cmd, "")]
    for exp in prov.experiments:
        out.append((f"experiment {exp.name}", f"hosts {_counts(exp.hosts, 'hostname')}; device "
                    f"{_counts(exp.devices, 'device')}; CPUs per trial {exp.cpus_per_trial}, GPUs per trial "
                    f"{exp.gpus_per_trial}; torch threads per trial {exp.torch_threads}", "", ""))
        when = f"created {exp.created}" + (f", resumed {', '.join(exp.resumed)}" if exp.resumed else "")
        when += f"; trials ran commit {exp.commit}"
        cmd = "" if exp.command == UNKNOWN else exp.command
        out.append((f"experiment {exp.name} command", "" if cmd else UNKNOWN, cmd, f" ({exp.command_note}; {when})"))
    return out


def lines(prov: Provenance, command: list[str] | None) -> list[str]:
    """The provenance as plain sentences, one fact each (for LaTeX comments and logs)."""
    return [f"{what}: {before}{cmd}{after}" for what, before, cmd, after in _entries(prov, command)]


def markdown(prov: Provenance, command: list[str] | None) -> list[str]:
    """The provenance as Markdown list items, commands in code spans."""
    out = []
    for what, before, cmd, after in _entries(prov, command):
        code = "" if not cmd else f"`{cmd}`" if "`" not in cmd else f"`` {cmd} ``"
        out.append(f"- {what}: {before}{code}{after}")
    return out
