"""One validation for everything read from a model's config.json, on every route (issue 20: one line where a
traceback was, and bounds on what a config may ask for).

Through `hf-hub:` (which skipped the folder checks) `interpolation: "foo"`, `label_names: 5`, `num_classes:
"abc"`, `architecture: "resnet50"` and `crop_pct: "x"` gave KeyError / TypeError tracebacks; `crop_pct` -1 marked
every image "skipped"; `input_size` [3, 12000, 12000] took 7.3 GB in predict and `crop_pct` 0.01 3.6 GB.
"""

import copy
import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import add_hub_repo, cli, safetensors_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import effnet_zoo
from effnet_zoo.hub.config import (
    MAX_INPUT_SIDE,
    MIN_CROP_PCT,
    check_model_config,
    export_config,
    read_config_file,
)


def tiny_model() -> torch.nn.Module:
    return timm.create_model("effnet_v1_b0", width_mult=0.25, depth_mult=0.25, num_classes=2).eval()


BASE = export_config(tiny_model())

# (where, value, what the one line must say)
DAMAGE = {
    "interpolation foo": (
        ("pretrained_cfg", "interpolation"),
        "foo",
        "'pretrained_cfg.interpolation' should be one of",
    ),
    "label_names a number": (("label_names",), 5, "'label_names' should be a list of 2 strings"),
    "label_names too few": (("label_names",), ["cat"], "'label_names' should be a list of 2 strings"),
    "num_classes a string": (("num_classes",), "abc", "'num_classes' should be a whole number in [0, 100,000]"),
    "another timm model": (("architecture",), "resnet50", "'architecture' should be one of effnet_zoo's models"),
    "crop_pct a string": (("pretrained_cfg", "crop_pct"), "x", "'pretrained_cfg.crop_pct' should be a number in"),
    "crop_pct negative": (("pretrained_cfg", "crop_pct"), -1, "'pretrained_cfg.crop_pct' should be a number in"),
    "crop_pct tiny": (("pretrained_cfg", "crop_pct"), 0.01, "'pretrained_cfg.crop_pct' should be a number in"),
    "input_size huge": (("pretrained_cfg", "input_size"), [3, 12000, 12000], "sides at most 1600"),
    "crop_mode unknown": (("pretrained_cfg", "crop_mode"), "zoom", "'pretrained_cfg.crop_mode' should be one of"),
    "license injected": (("pretrained_cfg", "license"), "mit\nwidget: x", "'pretrained_cfg.license' should be a Hub"),
    "model_args unknown": (("model_args", "stem_size"), 32, "'model_args' holds \"stem_size\", which effnet_v1_b0"),
    "width too wide": (("model_args", "width_mult"), 1e4, "'model_args' do not build effnet_v1_b0"),
    "act_layer a number": (("model_args", "act_layer"), 3, "'model_args.act_layer' should be a timm activation"),
    # a second attack: keys timm acts on (tracebacks), and values in range one by one that blow up together
    "custom_load": (("pretrained_cfg", "custom_load"), "hf", "'pretrained_cfg.custom_load' should be false"),
    "fixed_input_size": (("pretrained_cfg", "fixed_input_size"), True, "'pretrained_cfg.fixed_input_size' should"),
    "label_offset a string": (("pretrained_cfg", "label_offset"), "x", "'pretrained_cfg.label_offset' should be 0"),
    "hf_hub_filename a number": (("pretrained_cfg", "hf_hub_filename"), 5, "'pretrained_cfg.hf_hub_filename' should"),
    "std tiny": (("pretrained_cfg", "std"), [1e-300] * 3, "'pretrained_cfg.std' should be a list of 1 or 3 numbers in"),
    "mean huge": (("pretrained_cfg", "mean"), [1e308, 0, 0], "'pretrained_cfg.mean' should be a list of 1 or 3"),
    "resize too large": (("pretrained_cfg", "crop_pct"), 0.25, "(the resize before the crop, input / crop_pct"),
    "feature map too large": (("model_args", "output_stride"), 4, "'model_args.output_stride' should be at least"),
}
# the last two are in range alone: with a 1600 px input, a 32x1 image took 5.9 GB and four images 8 GB
LARGE_INPUT = {"resize too large", "feature map too large"}


def damaged(where: tuple[str, ...], value) -> dict:
    config = copy.deepcopy(BASE)
    target = config
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    return config


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> bytes:
    return safetensors_bytes(tiny_model().state_dict(), tmp_path_factory.mktemp("w"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.new("RGB", (64, 64), (120, 80, 40)).save(path)
    return path


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_route_refuses_a_bad_config_with_one_line_naming_the_key(damage, weights, photo, tmp_path):
    where, value, message = DAMAGE[damage]
    config = damaged(where, value)
    if damage in LARGE_INPUT:
        config["pretrained_cfg"]["input_size"] = [3, 1600, 1600]
    files = {"config.json": json.dumps(config).encode(), "model.safetensors": weights}
    repo = f"org/{damage.replace(' ', '-')}"
    add_hub_repo(repo, files)  # the suite's offline Hub cache: huggingface_hub's real client reads it
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    for name in (f"hf-hub:{repo}", f"local-dir:{folder}"):
        result = cli("predict", photo, "--model", name)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (name, result.stderr[-1500:])
        assert message in lines[0] and "config.json" in lines[0], (name, lines[0])
    # Python: timm reads the file itself, and the values reach effnet_zoo's builder, which refuses them by name
    # (an architecture that is not ours is timm's to build; model_args timm passes as arguments)
    if where[0] in ("pretrained_cfg", "label_names", "num_classes") and damage not in LARGE_INPUT:
        for name in (f"hf-hub:{repo}", f"local-dir:{folder}"):
            with pytest.raises(ValueError, match=where[-1]):
                timm.create_model(name, pretrained=True)


def test_a_huge_config_json_is_refused_before_it_is_read(tmp_path):
    """An hf-hub: repo with a 2 GB config.json took 4.8 GB of memory."""
    path = tmp_path / "config.json"
    with open(path, "wb") as f:
        f.truncate(2 * 2**30)  # sparse: 2 GB on paper, nothing on disk
    with pytest.raises(ValueError, match="is 2,147,483,648 bytes, over the 8,388,608 a model config can need") as e:
        read_config_file(path)
    assert "not valid JSON" not in str(e.value)  # it was wrapped as one


def test_the_converters_config_reader_is_the_same_bounded_one(tmp_path):
    """convert's reader of a folder's config.json had its own 16 MiB bound, read the file whole, and let Python's
    4300-digit error through raw: it is now read_config_file, its errors as ConversionError."""
    from effnet_zoo.weights.common import ConversionError
    from effnet_zoo.weights.torch_file import read_config

    (tmp_path / "config.json").write_text('{"num_classes": ' + "7" * 5000 + "}")
    with pytest.raises(ConversionError, match="config.json is not valid JSON"):
        read_config(tmp_path / "model.safetensors")
    with open(tmp_path / "config.json", "wb") as f:
        f.truncate(12 * 2**20)
    with pytest.raises(ConversionError, match="is 12,582,912 bytes, over the 8,388,608"):
        read_config(tmp_path / "model.safetensors")


def test_an_error_without_a_message_is_explained_not_crashed_on():
    """``str(e).splitlines()[0]`` raised IndexError inside the handlers for KeyError() / ValueError()."""
    from effnet_zoo._text import first_line

    assert first_line(KeyError()) == "" and first_line(ValueError("a\nb")) == "a"


def test_an_integer_of_thousands_of_digits_is_named_with_its_file(tmp_path):
    """num_classes written with 5000 digits gave Python's "Exceeds the limit (4300 digits)", naming no file."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(BASE).replace('"num_classes": 2', '"num_classes": ' + "9" * 5000, 1))
    with pytest.raises(ValueError, match=f"{path} is not valid JSON .*4300"):
        check_model_config(path)


def test_the_saved_configs_of_every_layout_pass(tmp_path):
    """The validation refuses nothing effnet_zoo itself writes: both layouts, labels, Lite and phi variants."""
    for arch, kwargs in (("effnet_v1_b0", {}), ("effnet_lite0", {}), ("effnet_v1_phi", {"phi": 0.5})):
        model = timm.create_model(arch, num_classes=3, **kwargs)
        for layout in ("effnet_zoo", "timm") if arch != "effnet_v1_phi" else ("effnet_zoo",):
            out = effnet_zoo.save_pretrained(model, tmp_path / f"{arch}-{layout}", ["a", "b", "c"], layout=layout)
            check_model_config(out / "config.json")


# ---- property: any value at any key is refused by name, or builds a model and an eval transform in bounds ----

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
PLAUSIBLE = st.one_of(
    st.integers(-3, 3000),
    st.floats(-2, 2),
    st.lists(st.integers(-1, 2000), min_size=1, max_size=4),
    st.lists(st.floats(-1, 2), min_size=1, max_size=4),
    st.sampled_from(
        [
            "bicubic",
            "bilinear",
            "foo",
            "same",
            "symmetric",
            "silu",
            "relu6",
            "avg",
            "max",
            "center",
            "squash",
            "apache-2.0",
            "effnet_v1_b0",
            "effnet_lite0",
            "tf_efficientnet_b0",
            "",
        ]
    ),  # fmt: skip
)
KEYS = (
    [("architecture",), ("num_classes",), ("num_features",), ("global_pool",), ("model_args",), ("pretrained_cfg",),
     ("label_names",), ("label_descriptions",), ("extra",)]
    + [("model_args", k) for k in ("width_mult", "depth_mult", "in_chans", "drop_rate", "drop_path_rate", "padding",
                                   "bn_eps", "bn_momentum", "act_layer", "fix_stem_head", "fix_first_last",
                                   "se_ratio", "output_stride", "global_pool", "stem_channels", "head_channels")]
    + [("pretrained_cfg", k) for k in ("input_size", "crop_pct", "interpolation", "mean", "std", "crop_mode",
                                       "num_classes", "pool_size", "first_conv", "classifier", "license",
                                       "test_input_size", "test_crop_pct", "tag")]
)  # fmt: skip


# values that are right for their key, so that accepted configs are drawn often enough to test the other half
GOOD = {
    "input_size": [[3, 224, 224], [3, 32, 32], [3, 1600, 1600], [3, 300, 200], [1, 64, 64]],
    "test_input_size": [[3, 256, 256]], "crop_pct": [0.25, 0.875, 1, 1.0], "test_crop_pct": [0.95],
    "interpolation": ["bicubic", "bilinear", "nearest", "lanczos"], "mean": [[0.5, 0.5, 0.5], [0.5], [0, 0, 0]],
    "std": [[0.5, 0.5, 0.5], [0.25], [1, 2, 3]], "crop_mode": ["center", "squash", "border"],
    "num_classes": [0, 1, 2, 1000, 21843], "width_mult": [0.25, 0.5, 1], "depth_mult": [0.25, 0.5],
    "drop_rate": [0, 0.5], "drop_path_rate": [0.2], "padding": ["same", "symmetric"], "in_chans": [1, 3, 4],
    "act_layer": ["relu6", "silu", "gelu"], "output_stride": [8, 16, 32], "global_pool": ["avg", "max", ""],
    "se_ratio": [0, 0.25], "license": ["mit", "cc-by-nc-4.0"], "label_names": [["a", "b"]],
    "bn_eps": [1e-5], "bn_momentum": [0.1], "fix_stem_head": [True], "fix_first_last": [True],
    "pool_size": [[7, 7]], "tag": ["mine"], "label_descriptions": [{"a": "an a"}],
}  # fmt: skip


@st.composite
def config_edit(draw) -> tuple[tuple[str, ...], object]:
    where = draw(st.sampled_from(KEYS))
    good = st.sampled_from(GOOD.get(where[-1], [None]))
    return where, draw(st.one_of(good, good, good, PLAUSIBLE, JSON))


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(config_edit(), min_size=1, max_size=3))
def test_any_config_is_refused_by_name_or_builds_within_bounds(edits, tmp_path):
    config = copy.deepcopy(BASE)
    for where, value in edits:
        target = config
        for key in where[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[where[-1]] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    try:
        check_model_config(path)
    except ValueError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    # accepted: timm builds it from the file (local-dir:, no weights) and its eval transform, in bounds
    with torch.device("meta"):
        model = timm.create_model(f"local-dir:{tmp_path}")
    data = timm.data.resolve_data_config({}, model=model)
    timm.data.create_transform(**data)
    assert max(data["input_size"][1:]) <= MAX_INPUT_SIDE and MIN_CROP_PCT <= data["crop_pct"] <= 1
