"""Model folders: writing one (weights, config.json, model card) atomically, and publishing one to the Hub."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .._io import disk_full, full_disk_error, remove, signals_deferred, user_mode
from .._text import markdown_code, markdown_text
from ..weights.torch_file import DIGEST_KEY, tensors_digest
from .access import explain_hub_error, hub_deadline
from .config import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, check_pretrained_cfg, export_config, in_layout

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class HubPublishError(RuntimeError):
    """Publishing failed (no token, no network, no permission); the local folder is untouched."""


def _loading(config: dict[str, Any]) -> str:
    """How to load a folder of this layout, in timm and in transformers."""
    transformers = (
        'pipeline = transformers.pipeline("image-classification", model="ORG/NAME")  # or '
        "AutoModelForImageClassification"
    )
    if config["architecture"].startswith("effnet_"):
        return f"""This folder is in effnet_zoo's layout: load it after `import effnet_zoo` (`pip install effnet-zoo`).

```python
import timm
import effnet_zoo  # registers the effnet_* architectures with timm

model = timm.create_model("hf-hub:ORG/NAME", pretrained=True).eval()  # or "local-dir:PATH"
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))

import transformers  # transformers >= 4.47 loads it too, through timm, once effnet_zoo is imported
{transformers}
```

Users with only timm: save it in timm's own layout (`effnet_zoo.save_pretrained(model, DIR, layout="timm")`,
`effnet-zoo push ... --layout timm`)."""
    return f"""This folder is in timm's own layout (`{config["architecture"]}`): stock timm loads it, no effnet_zoo
needed.

```python
import timm

model = timm.create_model("hf-hub:ORG/NAME", pretrained=True).eval()  # or "local-dir:PATH"
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))

import transformers  # transformers >= 4.47, through timm
{transformers}
```"""


def model_card(config: dict[str, Any], title: str, origin: str) -> str:
    """A Hub model card: what the model is, where its weights come from, how to preprocess and load it."""
    cfg = config["pretrained_cfg"]
    check_pretrained_cfg(cfg, "the model's pretrained_cfg")  # the license goes into the YAML header below
    with torch.device("meta"):
        model = timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])
    params = sum(p.numel() for p in model.parameters())
    labels = config.get("label_names")
    shown = [markdown_code(str(label)) for label in (labels or [])[:10]]
    label_line = f"Labels: {', '.join(shown)}{' ...' if len(labels) > 10 else ''}.\n\n" if labels else ""
    return f"""---
tags:
- image-classification
- timm
- effnet_zoo
library_name: timm
license: {json.dumps(cfg.get("license", "apache-2.0"))}
---
# {title}

EfficientNet `{config["architecture"]}` ({params:,} parameters, {config["num_classes"]} classes).

{origin}

Model arguments: `{json.dumps(config["model_args"])}`.

{label_line}Preprocessing: input {cfg["input_size"][1]}x{cfg["input_size"][2]}, center crop {cfg["crop_pct"]},
{cfg["interpolation"]} resize, mean {tuple(cfg["mean"])}, std {tuple(cfg["std"])}.

{_loading(config)}
"""


HUB_URL = "https://huggingface.co/"
# A repo id that is safe in a link's address as it is (huggingface_hub's own rule, without its length limit)
PLAIN_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def hub_link(hub_id: str) -> str:
    """A Hub repo (``org/name``, ``org/name@revision``) for a card: a link to its page, or a code span when the id
    is not a plain one (no address is built from it)."""
    repo, at, revision = hub_id.partition("@")
    plain = PLAIN_REPO_ID.fullmatch(repo) and ".." not in repo
    shown = f"[{markdown_text(repo)}]({HUB_URL}{repo})" if plain else markdown_code(repo)
    return shown + (f" (revision {markdown_code(revision)})" if at else "")


def base_weights(cfg: dict[str, Any]) -> str:
    """What a card says a model's weights started from, read from its ``pretrained_cfg``.

    A registered tag and a Hub repo are named (a reader can fetch them); a local folder or file is said to be one,
    with what its config.json recorded, never its path: meaningless on the Hub, and the user's private layout.
    """
    tag, hub_id, source = cfg.get("tag"), cfg.get("hf_hub_id"), cfg.get("source")
    if source == "hf-hub" and hub_id:
        recorded = f" (its config.json records pretrained tag {markdown_code(str(tag))})" if tag else ""
        return f"the Hub repository {hub_link(str(hub_id))}{recorded}"
    if source == "local-dir":
        return f"a local model folder{recorded_in_config(cfg)}"
    if cfg.get("file") and not hub_id:
        return f"a local weights file{recorded_in_config(cfg, 'the model records')}"
    if hub_id:  # a registered tag: timm's pretrained_cfg for it names the repo its weights come from
        name = f"{cfg.get('architecture')}.{tag}" if tag else str(cfg.get("architecture"))
        return f"the pretrained tag {markdown_code(name)} (weights: {hub_link(str(hub_id))})"
    if cfg.get("url"):
        return f"the weights at {markdown_code(str(cfg['url']))}"
    return "randomly initialised weights"


def recorded_in_config(cfg: dict[str, Any], who: str = "its config.json records") -> str:
    """' (its config.json records architecture `a`, pretrained tag `t`)': what is known of local weights."""
    arch, tag, hub_id = cfg.get("architecture"), cfg.get("tag"), cfg.get("hf_hub_id")
    recorded = [f"architecture {markdown_code(str(arch))}"] if arch else []
    recorded += [f"pretrained tag {markdown_code(str(tag))}"] if tag else []
    recorded += [f"Hub source {hub_link(str(hub_id))}"] if hub_id else []
    return f" ({who} {', '.join(recorded)})" if recorded else ""


OWN = {WEIGHTS_NAME, CONFIG_NAME, CARD_NAME}  # what a model folder of ours holds
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".pickle")


def not_our_model_folder(folder: Path) -> str | None:
    """Why ``folder`` is not a model folder effnet_zoo wrote (so ``--force`` must not replace it); None if it is.

    Ours holds only model.safetensors, config.json and README.md, and its weights carry our checksum in their
    metadata: a timm or transformers folder of the same three names is someone else's.
    """
    if folder.is_symlink():
        return "a symbolic link"
    if not folder.is_dir():
        return "a file" if folder.is_file() else "not a regular file or folder"
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in OWN or p.is_symlink() or not p.is_file())
    if foreign:  # a README.md that is a folder of the user's files is not ours either
        return f"a folder holding files effnet-zoo did not write ({', '.join(foreign[:5])})"
    weights = folder / WEIGHTS_NAME
    if not (weights.exists() or weights.is_symlink()):
        return f"a folder effnet-zoo did not write (no {WEIGHTS_NAME})" if any(folder.iterdir()) else None
    try:
        if weights.is_symlink() or not weights.is_file():
            raise OSError("not a regular file")
        with safe_open(str(weights), "pt") as f:
            ours = DIGEST_KEY in (f.metadata() or {})
    except (OSError, SafetensorError):
        ours = False
    return None if ours else f"a model folder effnet-zoo did not write (its {WEIGHTS_NAME} carries no {DIGEST_KEY})"


def check_replaceable_folder(out: Path) -> None:
    """``--force`` replaces only a model folder effnet_zoo wrote: refuse anything else, naming what it is."""
    if (out.exists() or out.is_symlink()) and (why := not_our_model_folder(out)):
        raise FileExistsError(
            f"{out} is {why}; --force replaces only a model folder effnet-zoo wrote ({', '.join(sorted(OWN))}): "
            "choose another location"
        )


def write_model_folder(
    out: str | Path,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    card: str,
    dtype: str = "fp32",
    force: bool = False,
) -> Path:
    """Write model.safetensors + config.json + README.md into a temporary folder, then rename it into place."""
    out = Path(out)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if (out.exists() or out.is_symlink()) and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    check_replaceable_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        with signals_deferred():  # a stop signal is raised only once `tmp` names the folder, inside this `try`
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        tmp.chmod(user_mode(directory=True))
        tensors = {
            k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in state_dict.items()
        }
        metadata = {"format": "pt", DIGEST_KEY: tensors_digest(tensors)}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=metadata)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(card)
        for file in tmp.iterdir():  # whatever each writer chose (safetensors': 0600)
            file.chmod(user_mode())
        with signals_deferred():  # stopped between the two renames, there would be no folder at `out`
            if out.exists():
                old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
                old.rmdir()
                out.rename(old)
                tmp.rename(out)
                remove(old)  # the previous folder of ours
            else:
                tmp.rename(out)
    except Exception as e:
        full = disk_full(e, out.parent)  # asked before the partial folder goes, while the disk is still full
        if full:
            raise full_disk_error(out, e) from e
        raise
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def save_pretrained(
    model: nn.Module,
    out: str | Path,
    label_names: list[str] | None = None,
    training: str | None = None,
    dtype: str = "fp32",
    force: bool = False,
    layout: str = "effnet_zoo",
) -> Path:
    """Save a (fine-tuned) model as a folder that ``local-dir:`` / ``hf-hub:`` rebuilds exactly.

    ``training`` is a sentence for the model card on how it was fine-tuned; the base weights it started
    from are read from ``model.pretrained_cfg``. ``layout="timm"`` writes timm's own ``tf_efficientnet_*``
    architecture and key names, for users with only timm (and transformers); a variant timm cannot build
    (a custom compound coefficient, SE or stem changed) is refused with the reason.
    """
    state, config = in_layout(model, export_config(model, label_names), layout)
    cfg = model.pretrained_cfg
    origin = f"Base weights: {base_weights(cfg)}." + (f"\n\nFine-tuning: {markdown_text(training)}" if training else "")
    card = model_card(config, f"{cfg['architecture']} fine-tuned", origin)
    return write_model_folder(out, state, config, card, dtype, force)


# ---- publishing ------------------------------------------------------------------------------------------


@dataclass
class PushPlan:
    repo_id: str
    revision: str | None
    private: bool
    files: list[tuple[str, int]]  # (path in repo, bytes)
    url: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path in the folder, why it is not uploaded)


def upload_files(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """What a push of ``folder`` uploads: its regular files, and (path, reason) for everything left out.

    Links are never followed (one to a file outside the folder would publish that file), and hidden paths
    (``.git``, ``.cache``, a ``.secrets/`` folder, dot-files) stay private. The weights and config themselves
    must be regular files.
    """
    files, skipped = [], []
    for root, dirs, names in os.walk(folder, followlinks=False):
        here = Path(root)
        for d in sorted(dirs):
            rel = (here / d).relative_to(folder).as_posix()
            if d.startswith("."):
                skipped.append((rel + "/", "hidden"))
            elif (here / d).is_symlink():
                skipped.append((rel + "/", "a symbolic link"))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here / d).is_symlink())
        for name in sorted(names):
            path = here / name
            rel = path.relative_to(folder).as_posix()
            mode = path.lstat().st_mode
            if name.startswith("."):
                skipped.append((rel, "hidden"))
            elif stat.S_ISLNK(mode):
                skipped.append((rel, "a symbolic link"))
            elif not stat.S_ISREG(mode):
                skipped.append((rel, "not a regular file"))
            else:
                files.append(path)
    required = {WEIGHTS_NAME, CONFIG_NAME} - {p.relative_to(folder).as_posix() for p in files}
    if required:
        raise FileNotFoundError(
            f"{folder} has no regular file {' or '.join(sorted(required))} (a link or special file is not "
            "uploaded): save the model with effnet_zoo first"
        )
    return sorted(files), skipped


def check_publishable(folder: Path) -> None:
    """Load ``folder`` as a user of the published repo would, before anything leaves the machine: its config
    checked, its weights complete, matching their checksum, finite, and fitting the architecture the config
    names. ValueError saying what is wrong (garbage passed ``--dry-run`` and a real push created the repo)."""
    from .config import check_model_config

    files, _ = upload_files(folder)  # weights and config are regular files of the folder's own, or it says which not
    unchecked = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
    if unchecked:  # timm loads model.safetensors; a pickle beside it would be published unchecked (and may run code)
        raise ValueError(
            f"{folder} holds weights in pickle format ({', '.join(unchecked[:3])}) beside {WEIGHTS_NAME}: they would "
            "be published unchecked, and loading them can run code; remove them, so nothing was published"
        )
    try:
        check_model_config(folder / CONFIG_NAME)
        # as a user loads it: within the model's budget, checksum, finite values, every key and shape (strict)
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    except (ValueError, OSError, RuntimeError, KeyError, TypeError) as e:
        detail = str(e) if len(str(e)) <= 600 else str(e)[:600] + " ..."  # torch's key lists run to 20,000 chars
        raise ValueError(f"{folder} is not a model folder that loads, so nothing was published: {detail}") from e


def _timm_layout_copy(folder: Path, out: Path) -> Path:
    """``folder`` in timm's own layout, written to ``out``; ``folder`` itself if it already is."""
    config = json.loads((folder / CONFIG_NAME).read_text())
    if not str(config.get("architecture", "")).startswith("effnet_"):
        return folder
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    state, config = in_layout(model, export_config(model), "timm")
    recorded = recorded_in_config(model.pretrained_cfg)
    origin = f"Converted to timm's layout by effnet_zoo from an effnet_zoo model folder{recorded}."
    card = model_card(config, f"{config['architecture']} (timm layout)", origin)
    return write_model_folder(out, state, config, card)


def push_to_hub(
    model_or_folder: nn.Module | str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload EfficientNet (effnet_zoo)",
    token: str | None = None,
    dry_run: bool = False,
    label_names: list[str] | None = None,
    training: str | None = None,
    layout: str | None = None,
) -> PushPlan:
    """Publish a model (saved first, to a temporary folder) or a saved folder to ``repo_id``.

    ``dry_run`` needs no token or network: it returns the exact files the commit would upload. ``layout="timm"``
    publishes timm's own layout (stock timm loads it): a model is saved so, an effnet_zoo folder is converted on
    the way (the folder itself is left as it is). By default a model is saved in effnet_zoo's layout and a folder
    is published as it is.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"--repo-id {repo_id!r} is not a Hub repository id ({e}); expected 'org/name'") from e
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model_or_folder, nn.Module):
            folder = save_pretrained(
                model_or_folder, Path(tmp) / "model", label_names, training, layout=layout or "effnet_zoo"
            )
        else:
            folder = Path(model_or_folder)
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} is not a folder: push a folder saved with effnet_zoo")
            check_publishable(folder)
            if layout == "timm":
                folder = _timm_layout_copy(folder, Path(tmp) / "model")
        files, skipped = upload_files(folder)
        plan = PushPlan(
            repo_id, revision, private, [(p.relative_to(folder).as_posix(), p.stat().st_size) for p in files],
            skipped=skipped,
        )  # fmt: skip
        if dry_run:
            return plan
        operations = [
            CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files
        ]
        api = HfApi(token=token, library_name="effnet_zoo")
        try:
            with hub_deadline():  # a Hub that takes the request and never answers held a push for minutes
                repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
                if revision:
                    api.create_branch(repo_id, branch=revision, exist_ok=True)
                info = api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)
        except Exception as e:  # huggingface_hub raises many types (auth, offline, HTTP, network)
            what = f"could not publish to {repo_id!r}"
            raise HubPublishError(f"{explain_hub_error(e, what)}. Nothing local was changed") from e
        plan.url = info.commit_url
        return plan
