"""The app's fixed choices: calibration and benchmark data, metrics, devices.

Kept apart from handlers.py so the page can be built and served before torch and open_clip are imported.
"""
from __future__ import annotations

CALIBRATION = {"shapes: colour × shape (64 classes)": ("shapes:seed=2000", "zeroshot"),
               "shapes: retrieval (5 captions per image)": ("shapes:seed=2000", "retrieval"),
               "uploaded zip of an image folder": (None, "zeroshot"),
               "server folder": (None, "zeroshot")}
EVALUATION = {"shapes: colour × shape (held out)": ("shapes", "zeroshot"),
              "shapes: colour × shape anywhere, any size (held out)": ("shapes:placement=free", "zeroshot"),
              "shapes: retrieval (held out)": ("shapes", "retrieval")}
SHOWN_METRICS = {"zeroshot": ("acc1", "acc5", "mean_per_class_recall"),
                 "retrieval": ("text_retrieval_recall@1", "text_retrieval_recall@5", "image_retrieval_recall@1",
                               "image_retrieval_recall@5")}
PRESET_MODELS = ["demo", "ViT-B-32:openai", "ViT-B-16:laion2b_s34b_b88k"]
DEVICES = ["auto", "cpu", "cuda"]
# The importance criteria mope registers (mope.importance.names(): MoPE first, then the baselines). Written out
# because the page is built before torch, which mope.importance needs, is imported; tests/test_app.py keeps
# them equal to the registry, so a newly registered criterion fails that test until it is listed here.
CRITERIA = ("mope", "magnitude", "random", "taylor")
BASELINES = CRITERIA[1:]
STEP_SCHEDULES = ("even", "geometric")  # mope.pipeline.STEP_SCHEDULES (tests/test_app.py keeps them equal)
# The controls' defaults: the library's (mope.defaults), written out for the same reason; tests/test_defaults.py
# keeps each equal to the value in mope.defaults named beside it.
CONTROL_DEFAULTS = {"calibration_n": 256,            # defaults.CALIBRATION_N
                    "eval_n": 500,                   # defaults.EVAL_N
                    "towers": ["vision", "text"],    # defaults.score()["towers"]
                    "data": "shapes",                # defaults.DATA
                    "distill_steps": 300,            # defaults.QUICK_DISTILL_STEPS
                    "batch_size": 64,                # defaults.distill()["batch_size"]
                    "strategy": "uniform",           # defaults.prune()["strategy"]
                    "measure": "params",             # defaults.prune()["measure"]
                    "by": "mope",                    # defaults.prune()["by"]
                    "iterative": 1,                  # defaults.prune()["steps"]
                    "step_schedule": "even",         # defaults.prune()["step_schedule"]
                    "keep": 0.5}                     # defaults.KEEP
