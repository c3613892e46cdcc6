"""bf16 and INT8 inference on real weights: what they change, measured against fp32 (issue 22).

EfficientNet-Lite0's ImageNet weights (the demo extra) on 240 random crops of 11 real photographs, INT8 calibrated
on crops of four other photographs through ``export --int8``, exactly as ``benchmarks/accuracy.py`` measures for
docs/performance.md. The bounds below are the measured figures, rounded down: neither route reaches the issue's
99% (bf16) and 98% (INT8) overall, and the test says so rather than asserting a wish; where fp32 itself is at least
50% sure, both keep its answer on every crop.
"""

import io
import json
import logging
from pathlib import Path

import pytest
from conftest import benchmark_script

import effnet_zoo
from effnet_zoo import inference


@pytest.mark.skipif(not effnet_zoo.native_bf16("cpu"), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_bf16_and_int8_agreement_with_fp32_on_real_photographs(tmp_path):
    routes = benchmark_script("accuracy").measure("lite0", tmp_path)["routes"]
    exact, bf16, int8 = routes["fp32 fast path"], routes["bf16 autocast"], routes["int8 onnx"]
    assert exact["images"] == bf16["images"] == int8["images"] == 240
    assert exact["top1_agreement"] == 1.0 and exact["mean_prob_change"] < 1e-4
    # measured 94.6% / 0.018 (bf16) and 92.5% / 0.066 (INT8): below the 99% / 98% issue 22 asked for
    assert 0.93 <= bf16["top1_agreement"] < 0.99 and bf16["mean_prob_change"] < 0.03
    assert 0.90 <= int8["top1_agreement"] < 0.98 and int8["mean_prob_change"] < 0.09
    assert int8["calibrated_on"] == 52  # 64 crops, every 5th kept back to check
    # the changes are near ties: where fp32 is at least 50% sure (94 crops), both keep its answer
    assert bf16["sure_images"] >= 90 and bf16["sure_top1_agreement"] == 1.0
    assert int8["sure_top1_agreement"] == 1.0


def test_amp_is_refused_where_bf16_is_not_native(monkeypatch, tmp_path, capsys):
    """Emulated bf16 is several times slower than fp32: the commands say so before any model loads."""
    from effnet_zoo.cli import main

    monkeypatch.setattr(inference, "native_bf16", lambda device="cpu": False)
    with pytest.raises(RuntimeError, match="neither AVX512-BF16 nor AMX"):
        effnet_zoo.bf16_autocast("cpu")
    (tmp_path / "a.jpg").write_bytes(b"not loaded")
    (tmp_path / "data" / "cat").mkdir(parents=True)
    for argv in (["predict", str(tmp_path / "a.jpg"), "--amp", "--model", "effnet_v1_b99"],
                 ["validate", "--data", str(tmp_path / "data"), "--model", "effnet_v1_b99", "--amp"]):  # fmt: skip
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert "bf16 was asked for, but this CPU has neither AVX512-BF16 nor AMX" in err and "drop --amp" in err
        assert "b99" not in err  # refused before the (unknown) model was looked up


@pytest.mark.skipif(not effnet_zoo.native_bf16("cpu"), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_predict_amp_classifies_in_bf16(lite0_dir):
    """``predict --amp`` runs under bf16 autocast: the probabilities move by bf16's rounding, the shipped
    photographs keep their top class."""
    from effnet_zoo.tasks.predict import predict_files

    photos = sorted(str(p) for p in (Path(effnet_zoo.__file__).parent / "demo_photos").glob("*.jpg"))
    top = {}
    for amp in (False, True):
        buf = io.StringIO()
        predict_files(photos, f"local-dir:{lite0_dir}", topk=1, workers=0, json_document=True, stdout=buf, amp=amp)
        top[amp] = [
            (p["top"][0]["index"], p["top"][0]["probability"]) for p in json.loads(buf.getvalue())["predictions"]
        ]
    assert len(top[True]) == len(photos) == 3
    assert [c for c, _ in top[True]] == [c for c, _ in top[False]]
    changes = [abs(a[1] - b[1]) for a, b in zip(top[True], top[False], strict=True)]
    assert 0 < max(changes) < 0.05, changes  # bf16 did run (fp32 twice gives the same bits), and changed little


def test_int8_export_refusals_come_before_the_model_loads(tmp_path, capsys):
    """Wrong format, no folder, too few images: each refused with what to do, before the (unknown) model loads."""
    from effnet_zoo.cli import main

    few = tmp_path / "few"
    few.mkdir()
    for i in range(11):  # 11 images: 9 calibrate, 2 are kept back; 12 would do
        (few / f"{i}.jpg").write_bytes(b"never read")
    cases = {
        ("--format", "torchscript", "--out", str(tmp_path / "m.pt"), "--int8", str(few)): "--int8 quantizes an ONNX",
        ("--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--int8", str(tmp_path / "nope")): "is not a folder",
        ("--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--int8", str(few)): "has 11 image files; "
        "calibration needs at least 12 (every 5th is kept back",
    }
    for args, message in cases.items():
        assert main(["export", "--model", "effnet_v1_b99", *args]) != 0
        err = capsys.readouterr().err
        assert message in err and "b99" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few"]  # nothing written


def test_padding_a_compiled_batch_changes_no_image_s_logits():
    """``predict --compile`` pads a smaller batch to the compiled size: each image's logits stay its own."""
    import timm
    import torch

    from effnet_zoo.tasks.predict import _padded

    fast = effnet_zoo.optimize_for_inference(timm.create_model("effnet_v1_b0").eval())
    x = torch.randn(3, 3, 96, 96)
    seen = []

    def compiled(batch):
        seen.append(tuple(batch.shape))
        return fast(batch)

    with torch.inference_mode():
        torch.testing.assert_close(_padded(compiled, 5)(x), fast(x), rtol=1e-5, atol=1e-5)
        assert _padded(compiled, 3)(x).shape == (3, 1000)
    assert seen == [(5, 3, 96, 96), (3, 3, 96, 96)]


def test_calibration_image_counts_and_unreadable_folders_are_explained(tmp_path, capsys, lite0_dir):
    """--calibration-images below 10 or without --int8 is refused at once; a folder none of whose images can be
    read says so (ONNX Runtime alone said "No data is collected.")."""
    from effnet_zoo.cli import main

    out = str(tmp_path / "m.onnx")
    with pytest.raises(SystemExit):
        main(["export", "--model", "effnet_v1_b99", "--format", "onnx", "--out", out, "--int8", ".",
              "--calibration-images", "5"])  # fmt: skip
    assert "an integer >= 10" in capsys.readouterr().err
    assert main(["export", "--model", "effnet_v1_b99", "--format", "onnx", "--out", out, "--calibration-images",
                 "50"]) != 0  # fmt: skip
    assert "--calibration-images goes with --int8" in capsys.readouterr().err
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(12):
        (junk / f"{i}.jpg").write_bytes(b"not a JPEG")
    assert main(["export", "--model", f"local-dir:{lite0_dir}", "--format", "onnx", "--out", out, "--int8",
                 str(junk)]) != 0  # fmt: skip
    assert "none of the calibration images could be read" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk"]  # no temporary file left


def test_compile_refusals_and_failures_say_what_to_do(tmp_path, monkeypatch, capsys, lite0_dir):
    """compile_for_inference refuses a model in train mode (its BatchNorm would use batch statistics); a compiler
    that fails is one line naming the way out, and a run that kept nothing leaves no .partial behind."""
    import timm
    import torch._inductor.config

    from effnet_zoo.cli import main

    with pytest.raises(ValueError, match="needs a model in eval mode"):
        effnet_zoo.compile_for_inference(timm.create_model("effnet_v1_b0"))
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, "/nonexistent/g++"))
    photos = str(Path(effnet_zoo.__file__).parent / "demo_photos")
    out = tmp_path / "labels.jsonl"
    inductor_log = logging.getLogger("torch._inductor")
    level = inductor_log.level
    assert main(["predict", photos, "--model", f"local-dir:{lite0_dir}", "--compile", "--out", str(out)]) != 0
    assert inductor_log.level == level  # quieted for the run only: a program's own logging is left as it was
    err = capsys.readouterr().err
    assert "--compile could not compile the model" in err and "run without --compile" in err
    assert len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
