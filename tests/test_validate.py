"""Input validation: the issue's bad inputs exit 2 with one line, and generated command lines and job params
never give a traceback nor write anything when they are refused."""
import argparse
import functools
import os
import re
import shlex
import string
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mope
from mope import cli, runners, validate
from mope.jobs import JOB_KINDS, Store


class _Reached(Exception):
    """Validation let the command through: the real work (loading a model, training) would start here."""


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A scratch cwd and MOPE_HOME; every entry into real work stops with _Reached."""
    def reached(*a, **k):
        raise _Reached

    monkeypatch.setattr(mope, "load_model", reached)  # first: mope.load_model resolves lazily from mope.models
    for target in ("mope.models.load_model", "mope.jobs.work", "mope.jobs.ensure_worker", "mope.demo.train_demo"):
        monkeypatch.setattr(target, reached)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "afile").write_text("x")
    (cwd / "adir").mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MOPE_HOME", str(tmp_path / "home"))
    return cwd


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse: a malformed command line
        code = e.code
    except _Reached:
        code = 0
    return code, capsys.readouterr().err


def _files(root: Path) -> dict[str, int]:
    """Every file and folder under root (the job store aside: opening it writes), with its size."""
    return {str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1 for p in root.rglob("*")
            if "jobs" not in p.relative_to(root).parts}


BAD = [  # issue 11, items 7 and 8 (and their neighbours): each one line, exit 2, nothing written
    ("eval --n -5", "--n must be a whole number from 1"), ("eval --n 0", "--n must be"), ("score --n 0", "--n must be"),
    ("score --towers , --out s.csv", "--towers takes a comma list"), ("score --units , --out s.csv", "--units takes"),
    ("eval --data shapes:seed=abc", "seed must be"), ("eval --batch-size 0", "--batch-size must be"),
    ("distill --student adir --out d --batch-size 0", "--batch-size must be"), ("bench --batch 0", "each of --batch"),
    ("bench --batch abc", "each of --batch"), ("distill --student adir --out d --checkpoint-every 0", "--checkpoint-every"),
    ("distill --student adir --out d --steps 0", "--steps must be"), ("distill --student adir --out d --steps -3", "--steps"),
    ("score --group-size 0", "--group-size must be"), ("score --out adir", "is a folder"),
    ("score --out afile/s.csv", "lies under the file"), ("prune --out afile --keep 0.5", "is a file"),
    ("prune --out afile/p --keep 0.5", "lies under the file"), ("eval --data folder:nowhere", "no such folder"),
    ("prune --scores nowhere.csv --out p --keep 0.5", "no such file"), ("eval --model ./nowhere", "no such file or folder"),
    ("prune --keep 1.5 --out p", "--keep must be a number in (0, 1]"), ("eval --device gpu7", "--device must be cpu"),
    ("distill --student adir --out d --data cifar10", "unknown training data"), ("eval --seed -1", "--seed must be"),
    ("distill --student adir --out d --lr nan", "--lr must be"), ("eval --out adir --format clip_benchmark", "is a folder"),
    ("score --chunk 0", "--chunk must be"), ("score --max-memory -1", "--max-memory must be"),
    ("score --schedule soon", "--schedule must be one of exact, anytime"), ("score --first-round 0", "--first-round"),
    ("score --first-table-seconds 0", "--first-table-seconds must be"),
    ("score --metric acc7", "--metric must be one of acc1"), ("score --baselines magnitude,nope", "unknown: 'nope'"),
    ("prune --iterative 0 --out p --keep 0.5", "--iterative must be"), ("prune --by '' --out p --keep 0.5", "--by must be"),
    ("distill --student adir --out d --grad-clip 0", "--grad-clip must be"), ("distill --student adir --out d --workers -1",
                                                                               "--workers must be"),
    ("distill --student adir --out d --weight-decay -0.1", "--weight-decay"), ("train-demo --out t --grid-every -1",
                                                                                 "--grid-every"),
    ("train-demo --out t --init nowhere", "--init nowhere: no such folder"), ("train-demo --out t --threads 0", "--threads"),
    ("export --out e --opset 0", "--opset must be"), ("worker --concurrency 0", "--concurrency must be"),
    ("eval --data shapes:target=size", "target must be one of"), ("eval --data shapes:placement=up", "placement must be"),
    ("eval --image-root nowhere", "--image-root nowhere: no such folder"), ("bench --repeats 0", "--repeats must be"),
    ("eval --data folder:~0/x", "no such folder ~0/x"),  # ~0 (no such user) made pathlib raise: found by the fuzzing
]


@pytest.mark.parametrize("args, message", BAD)
def test_the_issues_bad_inputs_exit_2_with_one_line(sandbox, capsys, args, message):
    before = _files(sandbox)
    code, err = _run(shlex.split(args), capsys)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert _files(sandbox) == before


@pytest.mark.parametrize("params, message", [
    ({"model": "demo", "towers": "vision,audio"}, "unknown: 'audio'"), ({"model": "demo", "n": 0}, "param n"),
    ({"model": "demo", "units": []}, "param units"), ({"model": "demo", "data": "shapes:seed=abc"}, "seed must be"),
    ({"model": 7}, "must be a model spec"), ({"model": "demo", "device": "gpu"}, "param device"),
    ({"model": "demo", "schedule": "soon"}, "param schedule of a score job must be one of exact, anytime"),
    ({"model": "demo", "first_table_seconds": -5}, "param first_table_seconds"),
    ({"model": "demo", "metric": "acc7"}, "param metric"), ({"model": "demo", "task": "segment"}, "param task"),
    ({"model": None}, "param model of a score job is required"),
])
def test_bad_job_params_are_refused_at_submit(sandbox, params, message):
    store = Store()
    with pytest.raises(mope.MopeError, match=message):
        store.submit("score", params)
    assert store.jobs() == []


def test_list_params_given_as_text_are_parsed_once_into_lists(sandbox):
    store = Store()
    job = store.get(store.submit("score", {"model": "demo", "towers": "vision", "units": "heads,layers", "n": "8"}))
    assert job["params"]["towers"] == ["vision"] and job["params"]["units"] == ["head", "layer"]
    assert job["params"]["n"] == 8


@pytest.mark.parametrize("kind, params, message", [
    ("prune", {"model": "demo", "out": "p", "step_schedule": "steep"}, "param step_schedule"),
    ("prune", {"model": "demo", "out": "p", "strategy": "random"}, "param strategy"),
    ("prune", {"model": "demo", "out": "p", "iterative": 0}, "param iterative"),
    ("prune", {"model": "demo", "out": "p", "rescore_margin": 0.5}, "param rescore_margin"),
    ("prune", {"model": "demo", "out": "p", "rescore_margin": "all"}, "param rescore_margin"),
    ("prune", {"model": "demo", "out": "p", "rescore_images": 0}, "param rescore_images of a prune job must be a count >= 1"),
    ("prune", {"model": "demo", "out": "p", "rescore_images": 1.5}, "a fraction in (0, 1]"),
    ("prune", {"model": "demo", "out": "p", "rescore_images": "lots"}, "or 'all', got 'lots'"),
    ("prune", {"model": "demo", "out": "p", "rescore_images": True}, "param rescore_images"),
    ("prune", {"model": "demo", "out": "p", "budget": {"keep": 2}}, "param budget of a prune job keep"),
    ("prune", {"model": "demo", "out": "p", "budget": {"towers": "audio"}}, "unknown: 'audio'"),
    ("study", {"model": "demo", "scores": "afile", "iterative": [1, 0]}, "each of param iterative"),
    ("study", {"model": "demo", "scores": "afile", "rankings": ["mope", "vibes"]}, "unknown: 'vibes'"),
    ("study", {"model": "demo", "scores": "afile", "calibration": "wds:x/*.tar"}, "not a task"),
    ("study", {"model": "demo", "scores": "afile", "calibration_n": 0}, "param calibration_n"),
    ("distill", {"teacher": "demo", "student": "adir", "out": "d", "steps": 0}, "param steps"),
    ("distill", {"teacher": "demo", "student": "adir", "out": "d", "workers": -2}, "param workers"),
    ("prune-and-distill", {"model": "demo", "out": "p", "distill_data": "cifar10"}, "unknown training data"),
    ("export", {"model": "demo", "out": "e", "format": "tflite"}, "param format of a export job must be one of onnx"),
    ("ping", {"seconds": -1}, "param seconds"),
])
def test_every_kind_refuses_bad_params_at_submit(sandbox, kind, params, message):
    store = Store()
    with pytest.raises(mope.MopeError, match=re.escape(message)):
        store.submit(kind, params)
    assert store.jobs() == []


def test_every_job_param_has_a_rule():
    """Every param of every job kind (as mope.defaults builds them) is checked by a rule."""
    for kind, (required, optional) in JOB_KINDS.items():
        for name in (*required, *optional):
            assert validate.rule(kind, name) is not None, f"{kind} job param {name} has no rule in mope.validate"


def test_every_cli_option_has_a_rule():
    """Every option of every command is checked: by a rule, by argparse's choices, or (jobs submit --kind /
    --param) by the job's own validation at submit."""
    for command, parser in SUBCOMMANDS.items():
        for action in parser._actions:
            if action.dest == "help" or action.choices or action.dest in validate.CLI_CHECKED_ELSEWHERE:
                continue
            assert validate.rule(command, action.dest) is not None, f"{command} {action.option_strings} has no rule"


def test_the_vocabularies_are_the_librarys():
    from mope import importance
    from mope.anytime import SCHEDULES
    from mope.planning import STRATEGIES

    words = validate.vocabulary()
    assert words["strategy"] is STRATEGIES and words["schedule"] is SCHEDULES
    assert words["criteria"] == importance.names() and "recall_mean" in words["metric"]


# --- generated command lines ----------------------------------------------------------------------------

def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBCOMMANDS = _subcommands()
NUMBERS = st.sampled_from(["0", "-1", "-5", "1", "2", "3", "8", "0.5", "1.5", "1e9", "nan", "inf", "abc", "", "2.5"])
TEXT = st.sampled_from(["", ",", " , ", "vision", "text", "vision,text", "heads,layers", "neurons", "audio", "1,8",
                        "0", "abc", "shapes", "shapes:seed=abc", "shapes:target=shape,seed=3", "shapes:n=0",
                        "shapes:bogus", "folder:nowhere", "pairs:nowhere.csv", "wds:nowhere/*.tar", "cifar10", "demo",
                        "adir", "afile", "afile/x", "new.csv", "newdir", "/", "hf-hub:", "local-dir:nowhere",
                        "ViT-B-32:/nowhere.pt", "cpu", "cuda:x", "../up", "ping", "seconds=1", "n=-1", "towers=vision",
                        "towers=[]", "model=demo"]) | st.text(string.printable, max_size=8)


@st.composite
def command_lines(draw) -> list[str]:
    name = draw(st.sampled_from(sorted(SUBCOMMANDS)))
    argv = [name]
    for action in SUBCOMMANDS[name]._actions:
        if not action.option_strings or action.dest == "help":
            if not action.option_strings and draw(st.booleans()):  # positionals (jobs ACTION ID)
                argv.append(draw(st.sampled_from(list(action.choices or ["abc", "0"]))))
            continue
        if not draw(st.integers(0, 3)) == 0:
            continue
        flag = action.option_strings[-1]
        if action.nargs == 0:
            argv.append(flag)
        elif action.choices:
            argv += [flag, draw(st.sampled_from([*map(str, action.choices), "bogus"]))]
        else:
            argv += [flag, draw(NUMBERS if action.type in (int, float) else TEXT)]
    return argv


def test_generated_command_lines_exit_0_or_2_and_write_nothing_when_refused(sandbox, capsys, monkeypatch):
    """≥ 1,000 generated command lines across every command, run in this process (the parser built once):
    exit 0 (validation let it through to the real work, which is stubbed) or 2, never a traceback, and a
    refused one changes no file in the working folder or MOPE_HOME and stores no job."""
    monkeypatch.setattr(cli, "build_parser", functools.cache(cli.build_parser))
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)  # train-demo sets it before training
    seen = []

    @settings(max_examples=1200, deadline=None, database=None)
    @given(argv=command_lines())
    def run(argv):
        seen.append(argv)
        jobs_before = len(Store().jobs()) if argv[0] == "jobs" else None
        before = _files(sandbox.parent)
        code, err = _run(argv, capsys)
        assert code in (0, 2), (argv, code, err)
        assert "Traceback" not in err, (argv, err)
        if code == 2:
            assert _files(sandbox.parent) == before, argv
            assert jobs_before is None or len(Store().jobs()) == jobs_before, argv

    run()
    assert len(seen) >= 1000 and {argv[0] for argv in seen} == set(SUBCOMMANDS), len(seen)


@pytest.mark.parametrize("args", ["eval --n 0", "distill --student adir --out d --steps -3", "score --out afile/s.csv"])
def test_a_real_process_prints_one_error_line(tmp_path, args):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    before = _files(tmp_path)
    run = subprocess.run([sys.executable, "-m", "mope", *shlex.split(args)], cwd=tmp_path, capture_output=True,
                         text=True, env=subprocess_env(home=tmp_path / "home"), timeout=300)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
    assert _files(tmp_path) == before


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True) |
                    st.sampled_from(["", "vision", "text,vision", "demo", "shapes", "shapes:seed=x", "adir", "afile",
                                     "cpu", "heads", ",", "newdir"]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["keep", "heads", "x"]),
                                                                                inner, max_size=2), max_leaves=4)


@st.composite
def job_requests(draw) -> tuple[str, dict]:
    kind = draw(st.sampled_from(sorted(JOB_KINDS)))
    required, optional = JOB_KINDS[kind]
    names = draw(st.lists(st.sampled_from([*required, *optional, "bogus"]), unique=True, max_size=6))
    params = {n: draw(JSON) for n in names}
    if draw(st.booleans()):  # mostly well-formed requests with one generated value
        params = {**{n: "demo" if n in ("model", "teacher", "student") else "newdir" for n in required}, **params}
    return kind, params


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=job_requests())
def test_generated_job_params_are_stored_checked_or_refused(sandbox, request):
    kind, params = request
    store = Store()
    before = len(store.jobs())
    try:
        job = store.get(store.submit(kind, params))
    except mope.MopeError:
        assert len(store.jobs()) == before
        return
    for name, value in job["params"].items():  # what was accepted obeys the rules, normalised once
        rule = validate.rule(kind, name)
        if value is None or (name in validate.NO_DATA and value == ""):
            continue
        assert rule.check(value, name) == value, (kind, name, value)
        if isinstance(rule, validate.Number):
            assert not isinstance(value, str) and not isinstance(value, bool)
        if isinstance(rule, (validate.Names, validate.Numbers)):
            assert isinstance(value, list)


def test_output_paths(tmp_path):
    (tmp_path / "f").write_text("x")
    assert validate.output_path(tmp_path / "new" / "deeper" / "s.csv") == tmp_path / "new" / "deeper" / "s.csv"
    for path, folder, message in [(tmp_path, False, "is a folder"), (tmp_path / "f", True, "is a file"),
                                  (tmp_path / "f" / "x", False, "under the file")]:
        with pytest.raises(mope.MopeError, match=message):
            validate.output_path(path, folder=folder)
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(mope.MopeError, match="no permission"):
            validate.output_path(tmp_path / "ro" / "s.csv")


def test_rescore_images_is_auto_a_count_a_fraction_or_all(sandbox):
    store = Store()
    for value, kept in {"all": "all", " ALL ": "all", "auto": "auto", " Auto": "auto", "32": 32, 0.25: 0.25, "0.5": 0.5,
                        8: 8, None: None}.items():
        job = store.get(store.submit("prune", {"model": "demo", "out": "p", "rescore_images": value}))
        assert job["params"]["rescore_images"] == kept and type(job["params"]["rescore_images"]) is type(kept)
    assert runners._rescore_images("all") == {"rescore_images": None}  # every image
    assert runners._rescore_images(None) == {} and runners._rescore_images(8) == {"rescore_images": 8}
    assert runners._rescore_images("auto") == {"rescore_images": "auto"}
