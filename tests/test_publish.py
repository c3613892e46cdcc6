"""Saving and publishing a fine-tuned model: local-dir and hf-hub round trips, dry-run upload, failures."""

import json
import os

import pytest
import timm
import torch
from conftest import add_hub_repo, cli, timm_reference

import effnet_zoo
from effnet_zoo.hub import HubPublishError
from effnet_zoo.weights.timm_format import from_timm

LABELS = ["apple", "banana", "cherry", "date", "elder", "fig", "grape", "honeydew", "kiwi", "lemon"]


@pytest.fixture(scope="module")
def finetuned():
    """B0 with a new 10-class head, as after fine-tuning: different drop rates, the custom label set."""
    base = timm_reference("tf_efficientnet_b0", seed=8)
    model = timm.create_model("effnet_v1_b0.in1k", drop_rate=0.1, drop_path_rate=0.05)
    model.load_state_dict(from_timm(base.state_dict()))
    model.reset_classifier(10)
    torch.nn.init.normal_(model.classifier.weight, 0, 0.05)
    return model.eval()


def test_round_trip_through_local_dir_and_hf_hub(finetuned, tmp_path):
    out = effnet_zoo.save_pretrained(finetuned, tmp_path / "fruit", label_names=LABELS, training="5 epochs, AdamW")
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == LABELS and config["num_classes"] == 10
    assert config["model_args"]["drop_rate"] == 0.1 and config["model_args"]["padding"] == "same"
    card = (out / "README.md").read_text()
    assert "timm/tf_efficientnet_b0.in1k" in card and "5 epochs, AdamW" in card

    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = finetuned(x)
    local = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert local.pretrained_cfg["label_names"] == LABELS
    assert local.drop_rate == 0.1
    add_hub_repo("acme/effnet-fruit", {p.name: p.read_bytes() for p in out.iterdir()})
    hub = timm.create_model("hf-hub:acme/effnet-fruit", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(local(x), expected) and torch.equal(hub(x), expected)


def test_dry_run_lists_exactly_the_upload(finetuned, tmp_path):
    plan = effnet_zoo.push_to_hub(finetuned, "acme/effnet-fruit", dry_run=True, label_names=LABELS, private=True)
    assert [path for path, _ in plan.files] == ["README.md", "config.json", "model.safetensors"]
    assert dict(plan.files)["model.safetensors"] > 4 * sum(p.numel() for p in finetuned.parameters())
    assert plan.private and plan.url is None


def test_push_failure_is_clear_and_keeps_the_folder(finetuned, tmp_path):
    out = effnet_zoo.save_pretrained(finetuned, tmp_path / "fruit", label_names=LABELS)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(
        HubPublishError,
        match="could not publish to 'acme/effnet-fruit': HF_HUB_OFFLINE=1 is set.*Nothing local was changed",
    ):
        effnet_zoo.push_to_hub(out, "acme/effnet-fruit")  # offline (conftest): no network, no token
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_push_dry_run_and_failure(finetuned, tmp_path):
    out = effnet_zoo.save_pretrained(finetuned, tmp_path / "fruit", label_names=LABELS)
    dry = cli("push", out, "--repo-id", "acme/fruit", "--revision", "v1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would upload to acme/fruit@v1:" in dry.stdout and "model.safetensors" in dry.stdout
    real = cli("push", out, "--repo-id", "acme/fruit")
    assert real.returncode == 2 and "could not publish" in real.stderr and "Traceback" not in real.stderr
    assert (out / "model.safetensors").is_file()


def test_unserialisable_model_args_are_refused_not_dropped(tmp_path):
    """A custom activation class cannot go into config.json: refuse, rather than reload with SiLU silently."""
    model = timm.create_model("effnet_v1_b0", act_layer=torch.nn.GELU, num_classes=10)
    with pytest.raises(ValueError, match="act_layer=.*cannot be written to config.json"):
        effnet_zoo.save_pretrained(model, tmp_path / "gelu")
    assert not (tmp_path / "gelu").exists()


def test_push_uploads_only_the_folders_own_regular_files(finetuned, tmp_path):
    """No link out of the folder (it would publish that file), no hidden path (.git, .secrets/), no FIFO."""
    out = effnet_zoo.save_pretrained(finetuned, tmp_path / "fruit", label_names=LABELS)
    (tmp_path / "private.txt").write_text("not for the Hub")
    (out / "notes.txt").symlink_to(tmp_path / "private.txt")
    (out / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    (out / ".secrets").mkdir()
    (out / ".secrets" / "hf_token").write_text("hf_xxx")
    (out / ".git").mkdir()
    (out / "extra").mkdir()
    (out / "extra" / "eval.json").write_text("{}")
    os.mkfifo(out / "pipe")
    plan = effnet_zoo.push_to_hub(out, "acme/effnet-fruit", dry_run=True)
    assert [p for p, _ in plan.files] == ["README.md", "config.json", "extra/eval.json", "model.safetensors"]
    assert dict(plan.skipped) == {
        ".git/": "hidden", ".secrets/": "hidden", "linked-dir/": "a symbolic link",
        "notes.txt": "a symbolic link", "pipe": "not a regular file",
    }  # fmt: skip
    dry = cli("push", out, "--repo-id", "acme/fruit", "--dry-run")
    assert "not uploaded: notes.txt  (a symbolic link)" in dry.stdout and "hf_token" not in dry.stdout


def test_push_refuses_linked_weights_and_invalid_repo_ids(finetuned, tmp_path):
    out = effnet_zoo.save_pretrained(finetuned, tmp_path / "fruit", label_names=LABELS)
    for bad in ("acme/effnet fruit", "../x", "", "a/" + "x" * 200, "a/b/c"):
        result = cli("push", out, "--repo-id", bad, "--dry-run")
        assert result.returncode == 2 and "is not a Hub repository id" in result.stderr, bad
    (out / "model.safetensors").rename(tmp_path / "weights.safetensors")
    (out / "model.safetensors").symlink_to(tmp_path / "weights.safetensors")
    with pytest.raises(FileNotFoundError, match="has no regular file model.safetensors"):
        effnet_zoo.push_to_hub(out, "acme/effnet-fruit", dry_run=True)


class Unwritable:
    """A config value json cannot write: the folder write fails after model.safetensors is already written."""


@pytest.mark.parametrize("failing", ["config", "card"])
@pytest.mark.parametrize("existing", [False, True])
def test_a_write_that_fails_midway_leaves_the_previous_folder_intact(tmp_path, failing, existing):
    """The folder is written beside its destination and renamed into place only once complete, so a failure
    part way (here after the weights are on disk) leaves the old folder byte for byte, or no folder at all."""
    from effnet_zoo.hub.folders import write_model_folder

    out = tmp_path / "model"
    if existing:
        effnet_zoo.save_pretrained(timm.create_model("effnet_v1_b0", num_classes=3), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()} if existing else None
    other = timm.create_model("effnet_v1_b0", num_classes=5)
    config = {"architecture": "effnet_v1_b0", "num_classes": 5}
    card = "# card\n"
    if failing == "config":
        config["label_names"] = Unwritable()
    else:
        card = Unwritable()
    with pytest.raises((TypeError, AttributeError)):
        write_model_folder(out, other, config, card, force=True)
    if existing:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    else:
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["model"] if existing else [])  # no temporary left behind


def _base_line(card: str) -> str:
    """The card's sentence on what the weights started from."""
    return next(line for line in card.splitlines() if line.startswith("Base weights:"))


def test_the_card_says_a_local_base_folder_was_local_and_what_its_config_records(tmp_path):
    """A base loaded from a folder was recorded as its path (`/home/me/runs/base`, a bare folder name on the Hub,
    a private path): the card now says it was a local folder and what its config.json records about it, escaped."""
    folder = tmp_path / "private_runs" / "base [x](https://evil)"
    effnet_zoo.save_pretrained(timm.create_model("effnet_v1_b0", num_classes=3), folder)
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"]["tag"] = "aa_in1k`](https://evil) <b>"
    (folder / "config.json").write_text(json.dumps(config))
    for name in (f"local-dir:{folder}", str(folder)):
        from effnet_zoo.tasks.common import load_pretrained

        model = load_pretrained(name, num_classes=2)
        out = effnet_zoo.save_pretrained(model, tmp_path / "out", training="1 epoch", force=True)
        card = (out / "README.md").read_text()
        line = _base_line(card)
        assert line == (
            "Base weights: a local model folder (its config.json records architecture "
            "`effnet_v1_b0`, pretrained tag `aa_in1k'](https://evil) <b>`)."
        ), line
        assert str(tmp_path) not in card and "private_runs" not in card and "evil)" not in card.replace(line, "")


def test_the_card_names_a_hub_base_and_a_registered_tag(tmp_path):
    """A Hub repo is linked, a registered tag named with the repo its weights come from."""
    base = effnet_zoo.save_pretrained(timm.create_model("effnet_v1_b0", num_classes=3), tmp_path / "base")
    add_hub_repo("acme/effnet-base", {p.name: p.read_bytes() for p in base.iterdir()})
    hub = timm.create_model("hf-hub:acme/effnet-base", pretrained=True)
    card = (effnet_zoo.save_pretrained(hub, tmp_path / "from_hub") / "README.md").read_text()
    assert _base_line(card) == (
        "Base weights: the Hub repository [acme/effnet-base](https://huggingface.co/acme/effnet-base) "
        "(its config.json records pretrained tag `ns_jft_in1k`)."
    )
    tagged = timm.create_model("effnet_v1_b0.aa_in1k")  # as `finetune --model effnet_v1_b0.aa_in1k` loads it
    card = (effnet_zoo.save_pretrained(tagged, tmp_path / "from_tag") / "README.md").read_text()
    assert _base_line(card) == (
        "Base weights: the pretrained tag `effnet_v1_b0.aa_in1k` (weights: "
        "[timm/tf\\_efficientnet\\_b0.aa\\_in1k](https://huggingface.co/timm/tf_efficientnet_b0.aa_in1k))."
    )
