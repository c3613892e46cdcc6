"""The predict benchmark runs end to end (a smoke run: speed is reported by the script, never asserted here).

A subprocess, as a user runs it: the script writes its images and model folder to a temporary folder of its own.
Tiny settings (24 images, Lite0, one round) keep it to ~10 s here, most of it importing torch.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "predict.py"


def test_bench_predict_smoke_json(tmp_path: Path) -> None:
    # one torch thread, as under `make test`'s two workers; the Hub offline (conftest's settings, inherited)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    args = ["--images", "24", "--rounds", "1", "--workers", "0,1", "--batch-size", "8", "--model", "effnet_lite0"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args, "--json"], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["images"] == 24 and report["machine"]["torch_threads"] == 1
    assert [r["workers"] for r in report["results"]] == [0, 1]
    for row in report["results"]:
        for impl in ("ours", "timm_loop"):
            assert row[impl]["images"] == 24 and row[impl]["img_per_s"] > 0 and len(row[impl]["seconds"]) == 1
        assert row["ours_vs_timm_loop"] > 0
    assert set(report["speedup_from_workers"]) == {"ours", "timm_loop"}
    assert report["speedup_from_workers"]["ours"]["0"] == 1.0
    assert not list(tmp_path.glob("bench_predict_*")), "the script left its temporary folder behind"
