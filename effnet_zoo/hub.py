"""Hugging Face Hub side: the ``config.json`` our repos carry, saving a model as a Hub-ready folder, publishing.

Downloads go through timm (``hf-hub:``) and uploads through huggingface_hub's ``HfApi``; nothing here talks
HTTP itself.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg
from torch import nn

from ._io import atomic_write_text, remove, user_mode
from .model import ARGUMENT_RANGES, argument_problem
from .weights.torch_file import DIGEST_KEY, tensors_digest

# The pretrained_cfg fields timm's own Hub repos carry (source fields such as hf_hub_id are dropped:
# the repo *is* the source). A fixed list, so the files do not change with timm's dataclass.
PRETRAINED_CFG_KEYS = (
    "tag", "custom_load", "input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode",
    "mean", "std", "num_classes", "pool_size", "first_conv", "classifier", "license",
)  # fmt: skip
WEIGHTS_NAME, CONFIG_NAME, CARD_NAME = "model.safetensors", "config.json", "README.md"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class HubPublishError(RuntimeError):
    """Publishing failed (no token, no network, no permission); the local folder is untouched."""


def explain_hub_error(error: BaseException, what: str) -> str:
    """One sentence on why the Hub could not serve ``what`` and what to do, for each failure users meet."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(error, "response", None), "status_code", None)
    url = getattr(getattr(error, "response", None), "url", None)
    cache = f"the local cache ({constants.HF_HUB_CACHE})"
    if isinstance(error, OfflineModeIsEnabled):
        return f"{what}: HF_HUB_OFFLINE=1 is set, so the Hub is not contacted; unset it to go online"
    if isinstance(error, LocalEntryNotFoundError):
        why = (
            "HF_HUB_OFFLINE=1 is set"
            if constants.HF_HUB_OFFLINE
            else f"the Hub at {constants.ENDPOINT} could not be reached"
        )
        return (
            f"{what}: not in {cache}, and {why}. Connect once (files are cached afterwards), or copy a cache that "
            "holds it and point HF_HUB_CACHE at it"
        )
    if isinstance(error, GatedRepoError):
        return f"{what}: the repo is gated; accept its terms on the Hub and log in with `hf auth login`"
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"{what}: no such repo on the Hub (or it is private and this machine is not logged in); check the "
            "name, or log in with `hf auth login`"
        )
    if isinstance(error, RevisionNotFoundError):
        return f"{what}: the repo has no such branch, tag or commit; check the revision"
    if isinstance(error, EntryNotFoundError):
        return (
            f"{what}: the repo lacks a file it needs ({url or error}); timm reads config.json and model.safetensors "
            "(or pytorch_model.bin): check that the repo holds a model saved for timm"
        )
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return (
            f"{what}: the Hub refused the credentials (HTTP {status}); log in with `hf auth login` or set HF_TOKEN "
            "to a token with write access to the repo"
        )
    if isinstance(error, HfHubHTTPError):
        return f"{what}: the Hub answered HTTP {status} ({str(error).splitlines()[0]}); try again later"
    first = str(error).splitlines()[0] if str(error) else ""
    reason = f"{type(error).__name__}: {first}"
    return f"{what}: could not reach the Hub at {constants.ENDPOINT} ({reason}); check the network"


# One short request decides whether the Hub answers: huggingface_hub retries a refused or dropped connection five
# times with back-off (about 25 s per file, and timm asks for two), so an unreachable Hub cost ~50 s before any error.
HUB_PROBE_TIMEOUT_S = 3.0


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hub endpoint cannot be reached, found within ``timeout`` seconds; None if it answers at all (any
    HTTP status) or offline mode is on (huggingface_hub then answers from the cache itself, at once)."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as e:  # any failure to get an answer: refused, DNS, timeout, TLS, proxy
        first = str(e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {first}" if first else type(e).__name__
    return None


def cached_hub_file(repo_id: str, filenames: tuple[str, ...], revision: str | None = None) -> str | None:
    """The first of ``filenames`` the local Hub cache holds for ``repo_id``, as a path; None if none is cached."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        path = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(path, str):
            return path
    return None


def unreachable_message(what: str, reason: str) -> str:
    """The one sentence for weights the Hub cannot serve because it cannot be reached, with the routes that exist."""
    from huggingface_hub import constants

    return (
        f"{what}: not in the local cache, and the Hub at {constants.ENDPOINT} could not be reached ({reason}); "
        "connect once (files are cached afterwards), point HF_HUB_CACHE at a cache that holds it (HF_HUB_OFFLINE=1 "
        "then skips the network), or convert weights you have with `effnet-zoo convert ... --out DIR` and load "
        "local-dir:DIR (docs/converting.md)"
    )


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# ---- registry configs (hub_configs/) -------------------------------------------------------------------


@functools.cache
def _arch_head(arch: str) -> tuple[int, int, str]:
    """(num_classes, num_features, global_pool) of an architecture, built on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(arch)
    return model.num_classes, model.num_features, model.global_pool.pool_type


def hub_config(model_name: str) -> dict[str, Any]:
    """The ``config.json`` for ``arch.tag``, built from timm's registry."""
    cfg = get_pretrained_cfg(model_name).to_dict()
    num_classes, num_features, global_pool = _arch_head(model_name.split(".", 1)[0])
    return {
        "architecture": cfg["architecture"],
        "num_classes": num_classes,
        "num_features": num_features,
        "global_pool": global_pool,
        "pretrained_cfg": {k: _jsonable(cfg[k]) for k in PRETRAINED_CFG_KEYS if cfg.get(k) is not None},
    }


def check_model_config(path: Path) -> dict[str, Any]:
    """A folder's ``config.json``, checked before timm builds from it: one error naming the file and the key.

    timm reads these fields without checking them, so a wrong type surfaced as a raw TypeError / KeyError /
    AttributeError from deep inside the build.
    """
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read ({e})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); save the model again with effnet_zoo") from e

    def bad(key: str, expected: str, value: Any) -> ValueError:
        return ValueError(f"{path}: {key} should be {expected}, got {json.dumps(value)[:80]}")

    if not isinstance(config, dict):
        raise bad("the file", "a JSON object", config)
    arch = config.get("architecture")
    if not isinstance(arch, str) or arch not in timm.list_models("effnet_*"):
        raise bad(
            "'architecture'",
            f"one of effnet_zoo's models ({', '.join(timm.list_models('effnet_v1_b*')[:3])}, ...)",
            arch,
        )
    for key in ("num_classes", "num_features"):
        if key in config and (not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 0):
            raise bad(f"'{key}'", "a whole number >= 0", config[key])
    for key in ("model_args", "pretrained_cfg"):
        if key in config and not isinstance(config[key], dict):
            raise bad(f"'{key}'", "a JSON object", config[key])
    cfg = config.get("pretrained_cfg", {})
    size = cfg.get("input_size")
    if size is not None and not (
        isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size)
    ):
        raise bad("'pretrained_cfg.input_size'", "[channels, height, width] of positive whole numbers", size)
    model_args = config.get("model_args", {})
    for key in sorted(ARGUMENT_RANGES.keys() & model_args.keys()):
        expected = argument_problem(key, model_args[key])
        if expected:
            raise bad(f"'model_args.{key}'", expected, model_args[key])
    # One value per input channel; timm keeps the RGB triple for in_chans != 3 models, and one value broadcasts.
    lengths = sorted({1, 3, model_args.get("in_chans", 3)})
    for key in ("mean", "std"):
        value = cfg.get(key)
        if value is not None and not (
            isinstance(value, list)
            and len(value) in lengths
            and all(isinstance(v, (int, float)) and math.isfinite(v) and (key == "mean" or v > 0) for v in value)
        ):
            what = "numbers" if key == "mean" else "numbers > 0"
            count = " or ".join(map(str, lengths))
            raise bad(f"'pretrained_cfg.{key}'", f"a list of {count} {what} (one per input channel)", value)
    act = model_args.get("act_layer")
    if act is not None:
        from timm.layers import get_act_layer

        try:
            get_act_layer(act)
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            raise bad("'model_args.act_layer'", "a timm activation name ('silu', 'relu6', ...)", act) from e
    return config


def pretrained_names() -> list[str]:
    """Every ``arch.tag`` of ours that has published weights."""
    return timm.list_pretrained("effnet_*")


def render_hub_config(model_name: str) -> str:
    return json.dumps(hub_config(model_name), indent=2) + "\n"


def write_hub_configs(out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/<arch.tag>/config.json`` for every pretrained tag (atomically, one by one)."""
    out = Path(out_dir)
    return [atomic_write_text(out / name / CONFIG_NAME, render_hub_config(name)) for name in pretrained_names()]


# ---- any model instance -> Hub folder -----------------------------------------------------------------


def model_args_of(model: nn.Module) -> dict[str, Any]:
    """The arguments that rebuild ``model`` with ``timm.create_model(architecture, **args)``."""
    args = {k: v for k, v in model.model_args.items() if v is not None}
    args.update(num_classes=model.num_classes, global_pool=model.global_pool.pool_type)
    for key, value in args.items():
        if not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"model argument {key}={value!r} cannot be written to config.json; use a timm name")
    return args


def export_config(
    model: nn.Module,
    label_names: list[str] | None = None,
    data_config: dict[str, Any] | None = None,
    keep_tag: bool = True,
) -> dict[str, Any]:
    """timm's Hub config for this model: architecture, sizes, ``model_args``, preprocessing, labels."""
    cfg = model.pretrained_cfg
    pretrained_cfg = {k: _jsonable(cfg[k]) for k in PRETRAINED_CFG_KEYS if cfg.get(k) is not None}
    pretrained_cfg.update({k: _jsonable(v) for k, v in (data_config or {}).items()})
    pretrained_cfg["num_classes"] = model.num_classes
    pretrained_cfg["input_size"] = [model.in_chans, *pretrained_cfg["input_size"][1:]]
    if not keep_tag:
        pretrained_cfg.pop("tag", None)
    config = {
        "architecture": cfg["architecture"],
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "global_pool": model.global_pool.pool_type,
        "model_args": model_args_of(model),
        "pretrained_cfg": pretrained_cfg,
    }
    if label_names is None and model.num_classes == 1000:
        label_names = timm.data.ImageNetInfo().label_names()  # ImageNet-1k synsets, in the originals' order
    if label_names is not None:
        if len(label_names) != model.num_classes:
            raise ValueError(f"{len(label_names)} label names for a {model.num_classes}-class model")
        config["label_names"] = list(label_names)
    return config


def model_card(config: dict[str, Any], title: str, origin: str) -> str:
    """A Hub model card: what the model is, where its weights come from, how to preprocess and load it."""
    cfg = config["pretrained_cfg"]
    with torch.device("meta"):
        params = sum(p.numel() for p in timm.create_model(config["architecture"], **config["model_args"]).parameters())
    labels = config.get("label_names")
    label_line = (
        f"Labels: {', '.join(map(str, labels[:10]))}{' ...' if len(labels) > 10 else ''}.\n\n" if labels else ""
    )
    return f"""---
tags:
- image-classification
- timm
- effnet_zoo
library_name: timm
license: {cfg.get("license", "apache-2.0")}
---
# {title}

EfficientNet `{config["architecture"]}` ({params:,} parameters, {config["num_classes"]} classes).

{origin}

Model arguments: `{json.dumps(config["model_args"])}`.

{label_line}Preprocessing: input {cfg["input_size"][1]}x{cfg["input_size"][2]}, center crop {cfg["crop_pct"]},
{cfg["interpolation"]} resize, mean {tuple(cfg["mean"])}, std {tuple(cfg["std"])}.

```python
import timm
import effnet_zoo  # registers the effnet_* architectures with timm

model = timm.create_model("hf-hub:ORG/NAME", pretrained=True).eval()  # or "local-dir:PATH"
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
```
"""


OWN = {WEIGHTS_NAME, CONFIG_NAME, CARD_NAME}  # what a model folder of ours holds


def write_model_folder(
    out: str | Path, model: nn.Module, config: dict[str, Any], card: str, dtype: str = "fp32", force: bool = False
) -> Path:
    """Write model.safetensors + config.json + README.md into a temporary folder, then rename it into place."""
    out = Path(out)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    if (
        out.is_dir()
        and not out.is_symlink()
        and (foreign := sorted(p.name for p in out.iterdir() if p.name not in OWN))
    ):
        raise FileExistsError(
            f"{out} holds files effnet-zoo did not write ({', '.join(foreign[:5])}); --force replaces only a model "
            f"folder ({', '.join(sorted(OWN))}): choose another location"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    tmp.chmod(user_mode(directory=True))
    try:
        tensors = {
            k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in model.state_dict().items()
        }
        metadata = {"format": "pt", DIGEST_KEY: tensors_digest(tensors)}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=metadata)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(card)
        for file in tmp.iterdir():  # whatever each writer chose (safetensors': 0600)
            file.chmod(user_mode())
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            old.rmdir()
            out.rename(old)
            tmp.rename(out)
            remove(old)  # the previous folder, or a file / link that stood there
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def save_pretrained(
    model: nn.Module,
    out: str | Path,
    label_names: list[str] | None = None,
    training: str | None = None,
    dtype: str = "fp32",
    force: bool = False,
) -> Path:
    """Save a (fine-tuned) model as a folder that ``local-dir:`` / ``hf-hub:`` rebuilds exactly.

    ``training`` is a sentence for the model card on how it was fine-tuned; the base weights it started
    from are read from ``model.pretrained_cfg``.
    """
    config = export_config(model, label_names)
    cfg = model.pretrained_cfg
    base = cfg.get("hf_hub_id") or cfg.get("file") or "randomly initialised weights"
    tag = f" (`{cfg['architecture']}.{cfg['tag']}`)" if cfg.get("tag") else ""
    origin = f"Base weights: `{base}`{tag}." + (f"\n\nFine-tuning: {training}" if training else "")
    return write_model_folder(out, model, config, model_card(config, f"{cfg['architecture']} fine-tuned", origin),
                              dtype, force)  # fmt: skip


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
) -> PushPlan:
    """Publish a model (saved first, to a temporary folder) or a saved folder to ``repo_id``.

    ``dry_run`` needs no token or network: it returns the exact files the commit would upload.
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
            folder = save_pretrained(model_or_folder, Path(tmp) / "model", label_names, training)
        else:
            folder = Path(model_or_folder)
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} is not a folder: push a folder saved with effnet_zoo")
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
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)
        except Exception as e:  # huggingface_hub raises many types (auth, offline, HTTP, network)
            what = f"could not publish to {repo_id!r}"
            raise HubPublishError(f"{explain_hub_error(e, what)}. Nothing local was changed") from e
        plan.url = info.commit_url
        return plan
