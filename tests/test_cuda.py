"""CUDA correctness (marker ``cuda``): skipped where torch sees no GPU, run on a GPU machine with
``tools/gpu_check.sh`` (``PYTHONPATH=. python -m pytest -m cuda tests/test_cuda.py``).

Every comparison is against timm's TF port (``tf_efficientnet_bN``) on the same GPU under the same weights. bf16
results are held to the spread between timm's own fp32 and bf16 outputs, measured in the test and printed.
"""

import pytest
import timm
import torch
from conftest import assert_rel_close, benchmark_script, timm_reference

import effnet_zoo
from effnet_zoo.weights.timm_format import from_timm

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run tools/gpu_check.sh on one)"),
]
NATIVE = {"b0": 224, "b3": 300}


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 means fp32: TF32 matmuls / convolutions would differ from timm's at 1e-3."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _pair(variant: str, seed: int = 0, **kwargs):
    ref = timm_reference(f"tf_efficientnet_{variant}", seed=seed, **kwargs).cuda()
    ours = timm.create_model(f"effnet_v1_{variant}", **kwargs).eval()
    ours.load_state_dict(from_timm(ref.state_dict()))
    return ref, ours.cuda()


def _x(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))).cuda()


@pytest.mark.parametrize("variant", list(NATIVE))
def test_fp32_logits_and_features_match_timm(variant):
    ref, ours = _pair(variant)
    for size in (NATIVE[variant], 225, 161):
        x = _x(2, 3, size, size)
        with torch.no_grad():
            assert_rel_close(ours(x), ref(x), 1e-4)
            for got, want in zip(
                ours.forward_intermediates(x, intermediates_only=True),
                ref.forward_intermediates(x, intermediates_only=True),
                strict=True,
            ):
                assert_rel_close(got, want, 1e-4)


def _bf16(model, x):
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        return model(x).float()


@pytest.mark.parametrize("variant", list(NATIVE))
def test_bf16_channels_last_within_timms_own_bf16_spread(variant):
    ref, ours = _pair(variant, seed=1)
    ref, ours = ref.to(memory_format=torch.channels_last), ours.to(memory_format=torch.channels_last)
    x = _x(8, 3, NATIVE[variant], NATIVE[variant]).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        exact = ref(x)
    spread = (_bf16(ref, x) - exact).abs().max().item()
    ours_err = (_bf16(ours, x) - exact).abs().max().item()
    print(f"{variant}: timm bf16 vs fp32 {spread:.3g}, ours bf16 vs timm fp32 {ours_err:.3g}")
    assert spread > 0
    assert ours_err <= 2 * spread


def _variants_of(ours: torch.nn.Module) -> dict:
    fast = effnet_zoo.optimize_for_inference(ours)
    return {
        "eager": ours,
        "optimize_for_inference": fast,
        "compile": torch.compile(ours),
        "compile-max-autotune-no-cudagraphs": torch.compile(fast, mode="max-autotune-no-cudagraphs"),
        "compile-reduce-overhead (CUDA graphs)": torch.compile(fast, mode="reduce-overhead"),
    }


def test_fast_paths_compile_and_cuda_graphs_match_timm():
    ref, ours = _pair("b0", seed=2)
    x = _x(4, 3, 224, 224)
    with torch.no_grad():
        want = ref(x)
        for module in _variants_of(ours).values():
            for _ in range(3):  # CUDA graphs record on a later call than the first
                got = module(x)
            assert_rel_close(got.clone(), want, 1e-4)


def test_folded_batchnorm_follows_device_dtype_and_new_weights():
    ref, ours = _pair("b0", seed=3)
    x = _x(2, 3, 224, 224)
    cpu = timm.create_model("effnet_v1_b0").eval()
    cpu.load_state_dict(from_timm(ref.state_dict()))
    with torch.no_grad():
        cpu(x.cpu())  # folded on the CPU first
        cpu.cuda()
        assert_rel_close(cpu(x), ref(x), 1e-4)
        for dtype in (torch.float16, torch.bfloat16):
            got = ours.to(dtype)(x.to(dtype)).float()
            assert got.dtype == torch.float32
            assert_rel_close(got, ref(x), 3e-2)
        ours.float()
        assert_rel_close(ours(x), ref(x), 1e-4)
        other = timm_reference("tf_efficientnet_b0", seed=4).cuda()
        ours.load_state_dict(from_timm(other.state_dict()))
        assert_rel_close(ours(x), other(x), 1e-4)


def _grads(model, x, target, run=None):
    """Gradients of a cross-entropy step of ``model`` (through ``run``, e.g. its compiled form, if given)."""
    model.zero_grad()
    torch.nn.functional.cross_entropy((run or model)(x), target).backward()
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}


def test_training_step_gradients_match_timm():
    """fp32 gradients within 1e-4 relative (float64 on the GPU rules out summation order); bf16 within timm's own
    fp32-vs-bf16 gradient spread."""
    ref, ours = _pair("b0", seed=5)
    ref.train(), ours.train()
    ref, ours = ref.double(), ours.double()
    x, target = _x(4, 3, 224, 224).double(), torch.tensor([1, 5, 7, 9], device="cuda")
    want = from_timm(_grads(ref, x, target))
    got = _grads(ours, x, target)
    for name, g in want.items():
        assert_rel_close(got[name], g, 1e-4)

    ref, ours, x = ref.float(), ours.float(), x.float()
    exact = from_timm(_grads(ref, x, target))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        timm_bf16, ours_bf16 = from_timm(_grads(ref, x, target)), _grads(ours, x, target)
    key = "stem.conv.weight"
    spread = (timm_bf16[key] - exact[key]).abs().max().item()
    err = (ours_bf16[key] - exact[key]).abs().max().item()
    print(f"stem grad: timm bf16 vs fp32 {spread:.3g}, ours bf16 vs timm fp32 {err:.3g}")
    assert err <= 2 * spread


def test_compiled_training_step_fullgraph_matches_eager():
    _, ours = _pair("b0", seed=6)
    ours.train()
    x, target = _x(4, 3, 224, 224), torch.tensor([1, 2, 3, 4], device="cuda")
    eager = _grads(ours, x, target)
    got = _grads(ours, x, target, run=torch.compile(ours, fullgraph=True))
    for name, g in eager.items():
        torch.testing.assert_close(got[name], g, rtol=1e-3, atol=1e-5)


def test_finetune_on_cuda_runs_with_the_gpu_defaults_and_reports_throughput(tmp_path):
    """One epoch on a small synthetic folder: the run uses the GPU defaults and writes its img/s."""
    import json

    import numpy as np
    from PIL import Image

    from effnet_zoo.tasks.finetune import FinetuneConfig, finetune

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(16):
                pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / name / f"{i}.png")
    folder = effnet_zoo.save_pretrained(timm.create_model("effnet_v1_b0", num_classes=2), tmp_path / "base")
    cfg = FinetuneConfig(str(tmp_path / "data"), f"local-dir:{folder}", str(tmp_path / "run"), epochs=1,
                         batch_size=8, img_size=96, workers=0, warmup_epochs=0, progress=False)  # fmt: skip
    result = finetune(cfg)
    (epoch,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epoch["train_img_per_s"] > 0 and result["history"][0]["train_img_per_s"] == epoch["train_img_per_s"]


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_training_activation_memory_at_most_0_6_of_timms(bf16):
    """Issue 23 on a GPU: the memory a B0 training step adds on top of the model (peak allocated during forward +
    backward, minus what was allocated before) is at most 0.6x timm's TF port's, and so are the bytes saved for
    backward (what ``benchmarks/bench.py --modes saved`` counts on any device)."""
    bench = benchmark_script("bench")
    ref, ours = _pair("b0", seed=8)
    x, target = _x(32, 3, 224, 224), torch.randint(0, 1000, (32,), device="cuda")

    def step_peak(model):
        model.train().zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    peaks = {name: step_peak(m) for name, m in (("timm", ref), ("ours", ours))}
    saved = {name: bench.saved_activation_bytes(m.train(), x, bf16) for name, m in (("timm", ref), ("ours", ours))}
    print(f"peak over the model: ours {peaks['ours'] / 2**20:.0f} MiB, timm {peaks['timm'] / 2**20:.0f} MiB; "
          f"saved: ours {saved['ours'] / 2**20:.0f} MiB, timm {saved['timm'] / 2**20:.0f} MiB")  # fmt: skip
    assert saved["ours"] <= 0.6 * saved["timm"]
    assert peaks["ours"] <= 0.6 * peaks["timm"]
