"""The benchmark script runs end to end (a smoke run: speed is reported by the script, never asserted here).

In-process and at 64 px to stay cheap; the fresh-process modes (``load``, train peak memory) spawn interpreters
that each spend ~8 s importing torch here, so they are run by hand for docs/performance.md, not in the suite.
"""

import json

from conftest import benchmark_script

import effnet_zoo


def test_bench_smoke_json(capsys):
    bench = benchmark_script("bench")
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
        # ONNX Runtime fp32 and INT8 on our export, and ours in bf16 (where native), are CPU fast paths too;
        # training also times ours with its units off
        bf16 = {"ours_bf16"} if effnet_zoo.native_bf16("cpu") else set()
        extra = {"fast": {"onnxruntime", "onnxruntime_int8"} | bf16, "watched": {"ours_watched"},
                 "train": {"ours_plain"}}.get(row["mode"], set())  # fmt: skip
        assert set(row["ms"]) == {"ours", "timm_tf", "torchvision"} | extra and row["speedup_vs_timm_tf"] > 0
        assert row["size"] == 64
    assert report["results"][1]["onnxruntime_vs_ours"] > 0 and report["results"][3]["watched_vs_ours"] > 0
    assert report["results"][1]["onnxruntime_int8_vs_onnxruntime"] > 0
    assert report["results"][2]["units_speedup_vs_plain"] > 0


def test_bench_saved_bytes_mode(capsys):
    """The saved-for-backward figure of docs/performance.md, for all four libraries, in one run."""
    bench = benchmark_script("bench")
    assert bench.main(["--modes", "saved", "--img-size", "64", "--train-batch", "2", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert set(row["mib_per_image"]) == {f"{lib}_{p}" for lib in ("ours", "timm_tf", "timm", "torchvision")
                                         for p in ("fp32", "bf16")}  # fmt: skip
    assert 0 < row["ours_vs_timm_tf"]["fp32"] <= 0.6 and 0 < row["ours_vs_timm_tf"]["bf16"] <= 0.6
