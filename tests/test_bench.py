"""The benchmark script runs end to end (a smoke run: speed is reported by the script, never asserted here).

In-process and at 64 px to stay cheap; the fresh-process modes (``load``, train peak memory) spawn interpreters
that each spend ~8 s importing torch here, so they are run by hand for docs/performance.md, not in the suite.
"""

import importlib.util
import json
from pathlib import Path

import effnet_zoo

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


def test_bench_smoke_json(capsys):
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    code = bench.main(["--modes", "infer,fast,train,watched", "--batch-sizes", "1", "--train-batch", "2",
                       "--img-size", "64", "--no-memory", "--rounds", "1", "--warmup", "0", "--json"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["machine"]["torch"] and [r["mode"] for r in report["results"]] == [
        "infer",
        "fast",
        "train",
        "watched",
    ]
    for row in report["results"]:
        # ONNX Runtime on our ONNX export is one of the CPU fast paths
        # ONNX Runtime fp32 and INT8 and ours in bf16 (where native) are CPU fast paths too
        bf16 = {"ours_bf16"} if effnet_zoo.native_bf16("cpu") else set()
        extra = {"fast": {"onnxruntime", "onnxruntime_int8"} | bf16, "watched": {"ours_watched"}}.get(
            row["mode"], set()
        )
        assert set(row["ms"]) == {"ours", "timm_tf", "torchvision"} | extra and row["speedup_vs_timm_tf"] > 0
        assert row["size"] == 64
    assert report["results"][1]["onnxruntime_vs_ours"] > 0 and report["results"][3]["watched_vs_ours"] > 0
    assert report["results"][1]["onnxruntime_int8_vs_onnxruntime"] > 0
