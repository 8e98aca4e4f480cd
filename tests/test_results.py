import csv
import json
from pathlib import Path

import pytest

from mope.cli import main
from mope.errors import MopeError
from mope.results import clip_benchmark_record, model_and_pretrained, write_clip_benchmark


def clip_benchmark_build(paths: list[Path], output: Path) -> list[dict]:
    """What `clip_benchmark build` does with result files (LAION-AI/CLIP_benchmark, cli.py main_build):
    metrics flattened into the row, `model_fullname` = model + ' ' + pretrained, one CSV row per file."""
    rows, fieldnames = [], set()
    for path in paths:
        data = json.loads(Path(path).read_text())
        row = {}
        row.update(data["metrics"])
        row.update(data)
        del row["metrics"]
        row["model_fullname"] = row["model"] + " " + row["pretrained"]
        fieldnames.update(row)
        rows.append(row)
    with open(output, "w") as f:
        writer = csv.DictWriter(f, fieldnames=sorted(fieldnames))
        writer.writeheader()
        writer.writerows(rows)
    with open(output) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("spec, expected", [
    ("ViT-B-32:laion2b_s34b_b79k", ("ViT-B-32", "laion2b_s34b_b79k")),
    ("ViT-B-32:/ckpt/model.safetensors", ("ViT-B-32", "/ckpt/model.safetensors")),
    ("demo", ("demo", "")), ("hf-hub:org/repo", ("hf-hub:org/repo", "")), ("/models/pruned", ("/models/pruned", "")),
])
def test_model_and_pretrained(spec, expected):
    assert model_and_pretrained(spec) == expected


def test_record_layout_and_build(tmp_path):
    zs = clip_benchmark_record("ViT-B-32:openai", "cifar10", "zeroshot", {"acc1": 0.5, "acc5": 0.75,
                                                                          "mean_per_class_recall": 0.5})
    assert list(zs) == ["dataset", "model", "pretrained", "task", "metrics", "language"]
    assert zs["task"] == "zeroshot_classification" and zs["language"] == "en"
    rt = clip_benchmark_record("demo", "shapes", "retrieval", {"image_retrieval_recall@5": 0.9})
    paths = [write_clip_benchmark(zs, tmp_path / "a.json"), write_clip_benchmark(rt, tmp_path / "b.json")]
    rows = clip_benchmark_build(paths, tmp_path / "benchmark.csv")
    assert rows[0]["model_fullname"] == "ViT-B-32 openai" and float(rows[0]["acc1"]) == 0.5
    assert rows[1]["task"] == "zeroshot_retrieval" and float(rows[1]["image_retrieval_recall@5"]) == 0.9
    with pytest.raises(MopeError, match="already exists"):
        write_clip_benchmark(zs, paths[0])


def test_cli_eval_writes_clip_benchmark_json(tiny_dir, tmp_path, capsys):
    def run(*args):
        return main(["eval", "--model", str(tiny_dir), "--n", "16", *args])

    out = tmp_path / "results.json"
    assert run("--format", "clip_benchmark", "--out", str(out)) == 0
    record = json.loads(out.read_text())
    assert record["model"] == str(tiny_dir) and record["dataset"] == "shapes"
    assert set(record["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert clip_benchmark_build([out], tmp_path / "b.csv")[0]["task"] == "zeroshot_classification"
    capsys.readouterr()
    assert run("--format", "clip_benchmark", "--out", str(out)) == 2
    assert "already exists" in capsys.readouterr().err
    assert run("--out", str(tmp_path / "r.json")) == 2 and "--format clip_benchmark" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("--format", "tflite")
    assert "invalid choice" in capsys.readouterr().err
