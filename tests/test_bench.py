"""The benchmark script runs end to end (a smoke run: speed is reported by the script, never asserted here)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


def test_bench_smoke_json():
    args = [sys.executable, str(BENCH), "--modes", "infer,fast,train,load", "--batch-sizes", "1", "--train-batch", "2",
            "--rounds", "1", "--warmup", "0", "--json"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["machine"]["torch"] and [r["mode"] for r in report["results"]] == ["infer", "fast", "train", "load"]
    for row in report["results"]:
        assert set(row["ms"]) == {"ours", "timm_tf", "torchvision"} and row["speedup_vs_timm_tf"] > 0
        if row["mode"] in ("train", "load"):
            assert set(row["peak_mib"]) == set(row["ms"])
