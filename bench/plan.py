"""Time mope.plan on a ViT-B-32-sized scores table (both towers, heads / neuron groups of 64 / layers).

    python bench/plan.py
The target is < 50 ms per plan, so that a slider can drive it live.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/plan.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_planning import _vit_b_table  # noqa: E402

from mope.planning import Budget, plan  # noqa: E402


def main() -> None:
    df = _vit_b_table()
    for strategy in ("uniform", "global"):
        budget = Budget(keep=0.5, layers=2, strategy=strategy, towers=("vision", "text"))
        plan(df, budget)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            plan(df, budget)
            times.append(time.perf_counter() - t)
        print(f"{strategy:8s} {len(df)} rows: median {sorted(times)[10] * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
