"""Input validation in one place: every number, list, choice, spec and path a person gives, checked before
work starts.

The CLI (`cli_args`) and job params (`job_params`, which the app's submissions go through too) call these;
each failure is one MopeError naming the option the way its caller spells it (`--batch-size`, `param
batch_size of a distill job`) and what is allowed. Rules are keyed by the option's name (`RULES`), so `--n` and
a job's `n` obey the same range; `SCOPED` holds the few names that mean something else in one command or job
kind (distill's `--data` is training pairs, score's `--out` a file). The vocabularies (towers, strategies,
schedules, criteria, metrics, export formats) are the library's own, read when first needed, so checking a
`ping` job imports no torch. tests/test_validate.py keeps every CLI option and every job param under a rule.
"""
from __future__ import annotations

import functools
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import MopeError
from .rules import NUMBERS, Number, count_or_fraction, items, name_list
from .settings import user_path
from .specs import DataSpec, ModelSpec

DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


@functools.cache
def vocabulary() -> dict[str, tuple[str, ...]]:
    """The library's names, each from the module that uses it."""
    from . import importance
    from .anytime import SCHEDULES
    from .data.shapes import PLACEMENTS
    from .data.tasks import PROTOCOLS, SHAPES_TEMPLATES
    from .evaluation import metric_names
    from .export import FORMATS
    from .pipeline import STEP_SCHEDULES
    from .planning import MEASURES, STRATEGIES
    from .results import EVAL_FORMATS
    from .units import KINDS, TOWERS

    return {"towers": TOWERS, "units": KINDS, "strategy": STRATEGIES, "measure": MEASURES,
            "step_schedule": STEP_SCHEDULES, "schedule": SCHEDULES, "task": PROTOCOLS, "format": FORMATS,
            "eval_format": EVAL_FORMATS, "criteria": importance.names(), "baselines": importance.baselines(),
            "metric": tuple(dict.fromkeys(m for protocol in PROTOCOLS for m in metric_names(protocol))),
            "shapes_target": tuple(SHAPES_TEMPLATES), "placement": PLACEMENTS}


# --- rules -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Names:
    """A list of names from a vocabulary (aliases mapped), given as a list or as comma-separated text;
    non-empty unless `empty_ok`."""

    vocabulary: str
    aliases: tuple[tuple[str, str], ...] = ()
    empty_ok: bool = False

    def check(self, value, label: str) -> list[str]:
        return name_list(value, vocabulary()[self.vocabulary], label, dict(self.aliases), self.empty_ok)


@dataclass(frozen=True)
class Numbers:
    """A list of numbers, each obeying `each`; non-empty unless `empty_ok`."""

    each: Number
    empty_ok: bool = False

    def check(self, value, label: str) -> list:
        given = items(value, label)
        if not given and not self.empty_ok:
            raise MopeError(f"{label} takes a comma list of {self.each.describe()}s; got {value!r}")
        return [self.each.check(x, f"each of {label}") for x in given]


@dataclass(frozen=True)
class Choice:
    """One name from a vocabulary."""

    vocabulary: str

    def check(self, value, label: str) -> str:
        allowed = vocabulary()[self.vocabulary]
        if value not in allowed:
            raise MopeError(f"{label} must be one of {', '.join(allowed)}, got {value!r}")
        return value


@dataclass(frozen=True)
class Check:
    """A rule that is a function (value, label) → the value checked."""

    fn: Callable[[Any, str], Any]

    def check(self, value, label: str):
        return self.fn(value, label)


# --- specs and paths -------------------------------------------------------------------------------------

def model_spec(text, label: str = "model") -> str:
    """The spec, parsed; a local file or folder it names must exist."""
    if not isinstance(text, str):
        raise MopeError(f"{label} must be a model spec (text), got {text!r}")
    spec = ModelSpec.parse(text)
    if spec.local_path is not None and not spec.local_path.exists():
        raise MopeError(f"{label} {text!r}: no such file or folder {spec.local_path}")
    return text


def data_spec(text, label: str = "data", training: bool = False) -> str:
    """The spec for a task (or, with training, distillation pairs): parsed, shapes options in range, local
    files present. '' (no data) is left to the caller."""
    if not isinstance(text, str):
        raise MopeError(f"{label} must be a data spec (text), got {text!r}")
    spec = DataSpec.parse(text)
    spec = spec.for_training() if training else spec.for_task()
    options = spec.options
    for key, words in (("target", "shapes_target"), ("placement", "placement")):
        if key in options:
            Choice(words).check(options[key], f"{label} {text!r}: {key}")
    for key in ("seed", "n"):
        if key in options:
            RULES[key].check(options[key], f"{label} {text!r}: {key}")
    if spec.source in ("folder", "pairs") and not spec.local_path.exists():
        raise MopeError(f"{label} {text!r}: no such {'folder' if spec.source == 'folder' else 'file'} {spec.local_path}")
    return text


def output_path(path, label: str = "out", folder: bool = False) -> str:
    """A place a file (or a folder) can be written: not an existing folder (file) there, not under a file,
    and the nearest existing folder above it writable."""
    if not isinstance(path, (str, Path)) or not str(path).strip() or "\0" in str(path):
        raise MopeError(f"{label} must be a path, got {path!r}")
    target = user_path(path)
    if target.is_dir() and not folder:
        raise MopeError(f"{label} {path} is a folder: give a file name")
    if target.exists() and not target.is_dir() and folder:
        raise MopeError(f"{label} {path} is a file: give a new folder name")
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise MopeError(f"{label} {path} lies under the file {parent}: give a path under a folder")
    if not _can_write_in(parent) or (target.exists() and not os.access(target, os.W_OK)):
        raise MopeError(f"{label} {path}: no permission to write in {parent}; choose a folder you can write to")
    return path


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be made in `folder`: asked of the file system itself (a nameless temporary file,
    gone when closed), so a read-only disk or /proc count as unwritable even for root."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def input_file(path, label: str) -> str:
    if not isinstance(path, (str, Path)) or "\0" in str(path) or not user_path(path).is_file():
        raise MopeError(f"{label} {path}: no such file")
    return path


def input_folder(path, label: str) -> str:
    if not isinstance(path, (str, Path)) or "\0" in str(path) or not user_path(path).is_dir():
        raise MopeError(f"{label} {path}: no such folder")
    return path


def device(text, label: str = "device") -> str:
    if not isinstance(text, str) or not DEVICE.match(text):
        raise MopeError(f"{label} must be cpu, cuda or cuda:N, got {text!r}")
    return text


def flag(value, label: str) -> bool:
    if not isinstance(value, bool):
        raise MopeError(f"{label} must be true or false, got {value!r}")
    return value


def name(value, label: str) -> str:
    """A non-empty word (a column to rank by, a job id)."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise MopeError(f"{label} must be a name, got {value!r}")
    return value.strip()


def rescore_images(value, label: str) -> int | float | str:
    """Iterative pruning's re-scoring images: 'auto', a count, a fraction (mope.rules.count_or_fraction) or 'all'
    (kept as 'all': in a job None means the default)."""
    if isinstance(value, str) and value.strip().lower() in ("all", "auto"):
        return value.strip().lower()
    return count_or_fraction(value, label, also=", 'auto' or 'all'")


def budget(value, label: str) -> dict:
    """A budget given as a dict of plan.Budget's fields: known fields, each by its rule (a number, or a
    {tower: number} dict, for the counts and fractions), towers a list."""
    from dataclasses import fields

    from .planning import Budget

    known = [f.name for f in fields(Budget)]
    if not isinstance(value, dict):
        raise MopeError(f"{label} must be a dict of budget fields ({', '.join(known)}), got {value!r}")
    unknown = [str(k) for k in value if k not in known]
    if unknown:
        raise MopeError(f"{label}: unknown budget fields {unknown}; use {', '.join(known)}")
    checked = dict(value)
    for field, v in value.items():
        if isinstance(v, dict) and field not in ("towers",):  # per tower
            checked[field] = {RULES["towers"].check([t], f"{label} {field}")[0]: RULES[field].check(x, f"{label} {field}[{t}]")
                              for t, x in v.items()}
        elif v is not None:
            checked[field] = RULES[field].check(v, f"{label} {field}")
    return checked


FLAG, FOLDER, FILE = Check(flag), Check(input_folder), Check(input_file)
MODEL, TASK, TRAINING = Check(model_spec), Check(data_spec), Check(lambda v, label: data_spec(v, label, training=True))
OUT_FOLDER, OUT_FILE = Check(lambda v, label: output_path(v, label, folder=True)), Check(output_path)

RULES: dict[str, Number | Names | Numbers | Choice | Check] = {
    **NUMBERS,  # counts, sizes, fractions, rates, weights, times: mope.rules, which the library's calls obey too
    "rescore_images": Check(rescore_images),  # "auto", a count, a fraction or "all"
    # lists
    "towers": Names("towers"), "units": Names("units", (("heads", "head"), ("layers", "layer"))),
    "baselines": Names("baselines", empty_ok=True), "rankings": Names("criteria"),
    "batch": Numbers(NUMBERS["batch"]), "removed": Numbers(NUMBERS["removed"]),
    # choices and names
    "strategy": Choice("strategy"), "measure": Choice("measure"), "step_schedule": Choice("step_schedule"),
    "schedule": Choice("schedule"), "task": Choice("task"), "metric": Choice("metric"), "format": Choice("format"),
    "by": Check(name), "id": Check(name), "device": Check(device), "budget": Check(budget),
    # specs and paths
    "model": MODEL, "teacher": MODEL, "student": MODEL, "init": FOLDER, "data": TASK, "eval_data": TASK,
    "calibration": TASK, "distill_data": TRAINING, "scores": FILE, "image_root": FOLDER, "out": OUT_FOLDER,
    # switches
    "resume": FLAG, "quiet": FLAG, "json": FLAG, "no_cache": FLAG, "no_worker": FLAG, "freeze_text": FLAG,
}
SCOPED: dict[tuple[str, str], Number | Names | Numbers | Choice | Check] = {
    ("distill", "data"): TRAINING,  # distillation's --data is training pairs
    ("eval", "format"): Choice("eval_format"),
    ("eval", "out"): OUT_FILE, ("score", "out"): OUT_FILE,  # a JSON / CSV file; every other --out is a folder
    ("study", "iterative"): Numbers(NUMBERS["iterative"], empty_ok=True),  # K values; prune's is one K
}
NO_DATA = ("eval_data",)  # '' means none
# checked elsewhere before any work: argparse (options with choices), jobs.validate (--kind and --param of
# `jobs submit`, the same checks as a submission)
CLI_CHECKED_ELSEWHERE = ("kind", "param")


def rule(scope: str, name: str):
    """The rule for option / param `name` in a command or job kind (`scope`); None when there is none."""
    return SCOPED.get((scope, name)) or RULES.get(name)


# --- the CLI ---------------------------------------------------------------------------------------------

def cli_args(args) -> None:
    """Check a parsed command line before any work: numbers in range, lists non-empty, specs parsed, paths
    usable. Raises MopeError naming the option."""
    for dest, value in vars(args).items():
        found = rule(args.command, dest)
        if value is None or found is None or (dest in NO_DATA and value == ""):
            continue
        found.check(value, "--" + dest.replace("_", "-"))


# --- job params ------------------------------------------------------------------------------------------

def job_params(kind: str, params: dict, required: tuple[str, ...] = ()) -> dict:
    """A job's params (defaults filled in) checked by the same rules, lists normalised, numbers as numbers;
    raises MopeError. A required param may not be None; an optional None means 'the default'."""
    checked = dict(params)
    for name, value in params.items():
        label = f"param {name} of a {kind} job"
        if value is None and name in required:
            raise MopeError(f"{label} is required")
        found = rule(kind, name)
        if value is None or found is None or (name in NO_DATA and value == ""):
            continue
        checked[name] = found.check(value, label)
    return checked
