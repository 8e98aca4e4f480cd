"""The CLI's options and the job kinds' params take the library's defaults (mope.defaults)."""
import inspect

from mope import defaults, jobs
from mope.cli import build_parser
from mope.distill import DistillConfig
from mope.evaluation import evaluate as mope_evaluate
from mope.pipeline import prune_model
from mope.planning import Budget
from mope.scoring import score
from mope.study import DEFAULT_RANKINGS, compression_curve


def _cli(*argv):
    return vars(build_parser().parse_args(list(argv)))


def _signature(fn):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()}


def test_defaults_are_the_library_s():
    assert defaults.distill() == vars(DistillConfig())
    assert defaults.distill()["hidden"] == 0.1
    assert defaults.score()["towers"] == _signature(score)["towers"]
    assert defaults.prune()["by"] == _signature(prune_model)["by"] and defaults.prune()["towers"] == Budget().towers
    assert defaults.study()["removed"] == _signature(compression_curve)["removed"]
    assert defaults.study()["rankings"] == DEFAULT_RANKINGS


def test_cli_options_agree_with_the_library():
    distill = _cli("distill", "--student", "s", "--out", "o")
    for name, value in vars(DistillConfig()).items():
        assert distill[name] == value, name
    assert distill["eval_n"] == defaults.EVAL_N and distill["data"] == defaults.DATA
    scored = _cli("score")
    lib = defaults.score()
    assert scored["towers"].split(",") == list(lib["towers"]) and scored["units"].split(",") == list(lib["units"])
    assert (scored["impl"], scored["precision"], scored["metric"], scored["group_size"]) == \
        (lib["impl"], lib["precision"], lib["metric"], lib["group_size"])
    assert scored["n"] == defaults.CALIBRATION_N
    pruned = _cli("prune", "--out", "o")
    lib = defaults.prune()
    assert (pruned["by"], pruned["iterative"], pruned["step_schedule"], pruned["strategy"], pruned["measure"]) == \
        (lib["by"], lib["steps"], lib["step_schedule"], lib["strategy"], lib["measure"])
    assert tuple(pruned["towers"].split(",")) == lib["towers"] and pruned["n"] == defaults.CALIBRATION_N


def test_job_params_agree_with_the_library():
    distill, lib = jobs.JOB_KINDS["distill"][1], defaults.distill()
    for kind in ("distill", "prune-and-distill"):
        params = jobs.JOB_KINDS[kind][1]
        assert all(params[k] == lib[k] for k in ("steps", "batch_size", "lr", "eval_every")), kind
        assert params["eval_n"] == defaults.EVAL_N
    assert distill["data"] == defaults.DATA
    for kind in ("prune", "prune-and-distill"):
        params, lib = jobs.JOB_KINDS[kind][1], defaults.prune()
        assert (params["by"], params["iterative"], params["step_schedule"], params["strategy"]) == \
            (lib["by"], lib["steps"], lib["step_schedule"], lib["strategy"])
        assert tuple(params["towers"]) == lib["towers"] and params["n"] == defaults.CALIBRATION_N
    params, lib = jobs.JOB_KINDS["score"][1], defaults.score()
    assert tuple(params["towers"]) == lib["towers"] and tuple(params["units"]) == lib["units"]
    assert params["metric"] == lib["metric"] and params["n"] == defaults.CALIBRATION_N
    params, lib = jobs.JOB_KINDS["study"][1], defaults.study()
    assert tuple(params["removed"]) == lib["removed"] and tuple(params["rankings"]) == lib["rankings"]
    assert tuple(params["towers"]) == lib["towers"] and params["calibration_n"] == defaults.CALIBRATION_N
    assert jobs.JOB_KINDS["evaluate"][1]["n"] == defaults.EVAL_N


def test_app_controls_start_at_the_library_s_defaults():
    """app/choices.py writes the controls' defaults out (the page is built before torch is imported): each
    equals the value in mope.defaults it stands for, and the tabs build their controls from them."""
    import ast
    from pathlib import Path

    from app.choices import CONTROL_DEFAULTS

    library = {"calibration_n": defaults.CALIBRATION_N, "eval_n": defaults.EVAL_N, "data": defaults.DATA,
               "towers": list(defaults.score()["towers"]), "distill_steps": defaults.QUICK_DISTILL_STEPS,
               "batch_size": defaults.distill()["batch_size"], "strategy": defaults.prune()["strategy"],
               "measure": defaults.prune()["measure"], "by": defaults.prune()["by"], "keep": defaults.KEEP,
               "iterative": defaults.prune()["steps"], "step_schedule": defaults.prune()["step_schedule"]}
    assert CONTROL_DEFAULTS == library
    tabs = Path(__file__).resolve().parents[1] / "app" / "tabs"
    used = {node.slice.value for path in tabs.glob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "CONTROL_DEFAULTS"}
    assert used == set(CONTROL_DEFAULTS)  # every default is a control's, every control's default is here


def test_cli_eval_and_prune_job_defaults():
    assert _cli("eval")["batch_size"] == defaults.evaluate()["batch_size"] == _signature(mope_evaluate)["batch_size"]
    assert _cli("eval")["data"] == defaults.DATA
    assert jobs.JOB_KINDS["prune"][1]["keep"] == defaults.KEEP
