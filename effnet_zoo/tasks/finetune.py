"""Fine-tune on an image folder (one process, or many under ``torchrun``) and end with a Hub-ready folder.

Layout of ``--data``: ``train/<class>/<image>`` and ``val/<class>/<image>``. Layout of ``--out`` (the run
folder): ``checkpoint.pt`` (written atomically after every epoch: model, optimizer, scheduler, EMA, epoch),
``metrics.jsonl`` (one line per epoch) and, at the end, ``model/`` (model.safetensors + config.json with the
new class names + README.md) that ``effnet-zoo push`` publishes.

Resuming is exact: every epoch reseeds the RNGs from ``--seed``, the epoch and the rank (shuffling,
augmentation, drop path), so a run resumed from the checkpoint of epoch k continues as the uninterrupted run
would have.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from timm.data import create_loader, resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3, random_seed
from torch import nn
from tqdm import tqdm

from .._io import atomic_write, atomic_write_text, check_output, disk_full, full_disk_error, remove
from .._text import printable
from ..hub import save_pretrained
from ..hub.config import check_layout, model_args_of
from ..inference import native_bf16
from ..weights.common import ConversionError, WeightsBudget, check_fits, require_regular_file, special_file
from ..weights.torch_file import REDO, check_weights_file, torch_load_error
from ..zoo import paper_regularization
from .common import architecture_of, autocast, count, image_folder, load_pretrained
from .distributed import Dist

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
FINAL = "model"


@dataclass
class FinetuneConfig:
    data: str
    model: str
    out: str
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    opt: str = "adamw"
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr: float = 1e-6
    label_smoothing: float = 0.1
    model_ema: bool = False
    ema_decay: float = 0.9998
    amp: bool | None = None  # bfloat16 autocast; None: on for CUDA, off on the CPU
    channels_last: bool | None = None  # NHWC model and batches; None: on for CUDA (the CPU model does it inside)
    grad_checkpointing: bool = False
    drop_path: float | None = None
    drop_rate: float | None = None
    img_size: int | None = None
    workers: int = 2
    seed: int = 42
    device: str | None = None
    resume: bool = False
    force: bool = False
    progress: bool = True
    layout: str = "effnet_zoo"  # of the saved model folder: "timm" for timm's own tf_efficientnet_* layout


def _dataset(root: Path, split: str, classes: list[str] | None = None):
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing; --data must hold train/<class>/<image> and val/<class>/<image>")
    ds = image_folder(folder, {c: i for i, c in enumerate(classes)} if classes else None)
    if len(ds) == 0:
        raise ValueError(f"no images found under {folder}")
    unreadable = ds.reader.unreadable
    if unreadable:  # FIFOs, devices, huge files: never opened (a FIFO hung the run)
        shown = "; ".join(f"{printable(p)}: {why}" for p, why in unreadable[:3])
        warnings.warn(f"{count(len(unreadable), 'file')} in {printable(str(folder))} left out: {shown}", stacklevel=2)
    return ds


def _check_classes(data: Path, classes: list[str], val_classes: list[str]) -> None:
    """Refuse the folder layouts that used to train on silently and meaninglessly.

    One class makes every loss zero; images straight under train/ form a class named ''; a class folder with no
    images vanishes from the label set; validation images of a class training never saw were dropped unseen.
    """
    train = data / "train"
    if "" in classes or "" in val_classes:
        split = "train" if "" in classes else "val"
        raise ValueError(f"images lie directly in {data / split}; each image belongs in a class folder "
                         f"({split}/<class>/<image>)")  # fmt: skip
    if len(classes) < 2:
        raise ValueError(f"{train} holds one class ({classes[0]!r}); fine-tuning a classifier needs at least two "
                         "class folders with images")  # fmt: skip
    empty = sorted(
        p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in classes
    )
    if empty:
        raise ValueError(f"class folder(s) without images in {train}: {', '.join(empty[:5])}; add images (jpg, "
                         "png, ...) or remove the folder")  # fmt: skip
    unseen = sorted(set(val_classes) - set(classes))
    if unseen:
        raise ValueError(f"{data / 'val'} has class(es) that {train} has no images of: {', '.join(unseen[:5])}; "
                         "the model cannot learn them: add training images or remove those val folders")  # fmt: skip
    missing = sorted(set(classes) - set(val_classes))
    if missing:
        warnings.warn(f"{data / 'val'} has no images of: {', '.join(missing[:5])}; accuracy is measured on the "
                      "other classes only", stacklevel=2)  # fmt: skip


# Settings a resumed run must share with the checkpoint's: any other value makes it a different run (the data
# order, schedule, augmentation or numerics change) while it would still be reported as one.
SAME_ON_RESUME = ("model", "epochs", "lr", "batch_size", "opt", "weight_decay", "momentum", "warmup_epochs",
                  "min_lr", "label_smoothing", "model_ema", "ema_decay", "amp", "channels_last", "drop_path",
                  "drop_rate", "img_size", "seed")  # fmt: skip


def _check_same_settings(saved: dict, now: dict, saved_world: int, world: int) -> None:
    changed = [f"--{k.replace('_', '-')} {saved[k]} -> {now[k]}" for k in SAME_ON_RESUME
               if k in saved and saved[k] != now[k]]  # fmt: skip
    if saved_world != world:
        changed.append(f"processes {saved_world} -> {world}")
    if changed:
        raise ValueError(f"--resume: the run was started with other settings ({'; '.join(changed)}); resume with "
                         "the settings it was started with, or start over with --force")  # fmt: skip


def _fitting_batch_size(batch_size: int, images: int, world: int, main: bool = True) -> int:
    """The per-process batch size, lowered (with a warning) when the training set cannot fill one batch.

    Training drops the last incomplete batch, so 24 images at the default 32 made no steps at all and ended
    in a scheduler assertion.
    """
    if images < world:
        raise ValueError(f"{images} training image(s) cannot be shared among {world} processes; add images or "
                         "run fewer processes")  # fmt: skip
    fitting = min(batch_size, images // world)
    if fitting < batch_size and main:  # said once, not by every process
        warnings.warn(
            f"--batch-size {batch_size} is more than the {images} training images allow"
            + (f" across {world} processes" if world > 1 else "")
            + f": using {fitting}",
            stacklevel=2,
        )
    return fitting


METRIC_KEYS = {"epoch", "train_loss", "train_top1", "train_img_per_s"}  # every line of our metrics.jsonl
# What a checkpoint.pt of ours holds; a file without these keys is someone else's (or damaged).
CHECKPOINT_KEYS = ("epoch", "updates", "history", "classes", "config", "model", "optimizer", "scheduler")


def _read_checkpoint(
    path: Path, device: torch.device | str = "cpu", mmap: bool = False, model: nn.Module | None = None
) -> dict:
    """A checkpoint this command wrote, loaded without running code; ValueError if the file is not one.

    Its declared sizes are bounded first (by ``model``: its weights, EMA and two optimizer moments), so a zip
    member inflating to gigabytes is refused unread."""
    redo = "restore it, or start over with --force"
    require_regular_file(path, "--resume: the checkpoint")
    try:
        check_weights_file(path, WeightsBudget.of(model) if model is not None else None)
    except ConversionError as e:  # its advice is for downloaded weights: a run's checkpoint is restored instead
        raise ConversionError(f"{str(e).removesuffix('; ' + REDO)}; {redo}") from e
    try:
        state = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as e:  # damaged by hand or by the disk: checkpoints are written atomically
        raise torch_load_error(path, e, redo) from e
    missing = [k for k in CHECKPOINT_KEYS if k not in state] if isinstance(state, dict) else list(CHECKPOINT_KEYS)
    if missing:
        raise ValueError(
            f"{path} is not a checkpoint effnet-zoo finetune wrote (a {type(state).__name__} without "
            f"{', '.join(missing[:4])}); {redo}"
        )
    return state


def _not_our_run_file(path: Path) -> str | None:
    """Why ``path`` in a run folder is not something a run of ours wrote (so --force must keep it); None if ours."""
    from ..hub.folders import not_our_model_folder

    if path.name == LOCK:
        return None
    if path.name == FINAL:
        return not_our_model_folder(path)
    if path.is_symlink() or not path.is_file():
        return "not a regular file" if path.name in (CHECKPOINT, METRICS) else "not a file a run writes"
    if path.name == CHECKPOINT:
        try:
            _read_checkpoint(path, mmap=True)  # mmap: the header and keys, not the tensors' bytes
        except (ValueError, OSError) as e:
            return f"not a checkpoint a run wrote ({str(e).split('; ')[0]})"
        return None
    if path.name == METRICS:
        try:
            lines = path.read_text().splitlines() if path.stat().st_size < 2**24 else ["x"]
            if lines and all(METRIC_KEYS <= set(json.loads(line)) for line in lines):
                return None
        except (OSError, ValueError, TypeError):  # TypeError: a line that is a number, not an object
            pass
        return "not the metrics a run writes"
    return "not a file a run writes"


def _check_run_dir(out: Path, resume: bool, force: bool) -> None:
    """Decide, before any training, whether the run may write into ``out``: --force replaces only what a run of
    ours wrote (a user's own checkpoint.pt or model/ folder is refused now, not after the last epoch)."""
    ckpt = out / CHECKPOINT
    if resume and not ckpt.exists():
        raise FileNotFoundError(f"--resume: {ckpt} does not exist; start the run without --resume")
    if not resume and out.exists() and any(p.name != LOCK for p in out.iterdir()):
        if not force:
            raise FileExistsError(
                f"{out} already holds a run; continue it with --resume, or pass --force to start over in it"
            )
        foreign = [(p.name, why) for p in sorted(out.iterdir()) if (why := _not_our_run_file(p))]
        if foreign:
            shown = "; ".join(f"{name}: {why}" for name, why in foreign[:3])
            raise FileExistsError(
                f"{out} holds what a finetune run did not write ({shown}); --force replaces only a run's own "
                f"{CHECKPOINT}, {METRICS} and {FINAL}/: move those files, or choose another --out"
            )
    if resume and (out / FINAL).exists() and (why := _not_our_run_file(out / FINAL)):
        raise FileExistsError(f"{out / FINAL} is {why}; the run would replace it at the end: move it")


# Warm-up takes at most this share of the run: with the default --warmup-epochs 1, a 1-epoch run was all warm-up
# and never reached --lr
MAX_WARMUP_SHARE = 0.2


def warmup_steps(cfg: FinetuneConfig, steps_per_epoch: int) -> int:
    """The scheduler's warm-up steps: --warmup-epochs, but at most a fifth of the run."""
    return math.floor(min(cfg.warmup_epochs, MAX_WARMUP_SHARE * cfg.epochs) * steps_per_epoch)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: FinetuneConfig, steps_per_epoch: int) -> CosineLRScheduler:
    """timm's cosine schedule, stepped every update: a linear warm-up from lr / 100 (:func:`warmup_steps`), then
    a cosine from --lr that reaches --min-lr at the run's last update (the cosine spanned the whole run after the
    warm-up, so it ended above --min-lr)."""
    warmup = warmup_steps(cfg, steps_per_epoch)
    with _quiet_logger(CosineLRScheduler.__module__):  # its one message, for a one-step run, is said below instead
        return CosineLRScheduler(
            optimizer, t_initial=cfg.epochs * steps_per_epoch - warmup, lr_min=cfg.min_lr, warmup_t=warmup,
            warmup_lr_init=cfg.lr * 0.01, warmup_prefix=True, t_in_epochs=False,
        )  # fmt: skip


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Drop what logger ``name`` logs inside the block.

    With no logging configured, Python's last-resort handler printed timm's messages to stderr as they were,
    without the ``effnet-zoo:`` prefix and in timm's parameter names; what they say is told in ours instead.
    """
    logger = logging.getLogger(name)

    def drop(record: logging.LogRecord) -> bool:
        return False

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _warn_single_step(lr: float) -> None:
    """Say that a run of one optimizer step has no learning-rate schedule, and the rate its one step takes
    (timm's scheduler said it as 'no effect ... since t_initial = t_mul = eta_mul = 1'). One step has no warm-up:
    that is at most a fifth of the run."""
    warnings.warn(
        f"the run is a single training step (1 epoch of 1 batch), taken at lr {lr:.3g}: add epochs or images, or "
        "lower --batch-size, for a learning-rate schedule",
        stacklevel=3,
    )


def evaluate(model: nn.Module, loader, device: torch.device, amp: bool) -> dict[str, float]:
    model.eval()
    correct = seen = 0
    loss = 0.0
    with torch.inference_mode():
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            with autocast(device, amp):
                logits = model(images)
            logits = logits.float()
            loss += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            correct += (logits.argmax(-1) == targets).sum().item()
            seen += targets.numel()
    return {"val_top1": 100.0 * correct / seen, "val_loss": loss / seen}


def _rank_param_diff(model: nn.Module) -> float:
    """Largest difference between any rank's weights and rank 0's (DDP keeps them equal; this shows it)."""
    flat = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    diff = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return diff.item()


LOCK = ".effnet-zoo.lock"


@contextlib.contextmanager
def _run_lock(out: Path, main: bool):
    """One run per folder: a second run on the same --out fails at once instead of mixing its files in.

    An advisory ``flock`` on ``out/.effnet-zoo.lock``, held by the main process for the whole run; the kernel
    releases it when the process ends, however it ends, so a killed run never leaves a stale lock.
    """
    if not main:
        yield
        return
    import fcntl

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK
    if kind := special_file(lock) or ("a symbolic link" if lock.is_symlink() else None):
        raise FileExistsError(f"{lock} is {kind}, not the lock file a run writes; remove it and run again")
    existed, locked, running = lock.exists(), False, False
    try:
        # never through a link (a link to a user's file was overwritten with the pid), never a FIFO or a device
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        with os.fdopen(fd, "r+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FileExistsError(
                    f"another finetune (pid {_pid_in(f)}) is writing to {out}; wait for it to finish, or choose "
                    "another --out"
                ) from None
            locked = True
            previous = _pid_in(f)
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            if previous != "?":  # the lock file of a run that was killed (SIGKILL, power loss): its lock died with it
                leftovers = _remove_leftovers(out)
                shown = f"; removed the temporary files it left ({', '.join(map(printable, leftovers))})"
                warnings.warn(
                    f"took over {lock} from finetune pid {previous}, which is no longer running"
                    + (shown if leftovers else ""),
                    stacklevel=3,
                )
            running = True
            yield
    except OSError as e:
        if not running and disk_full(e, out):  # the lock itself could not be written
            raise full_disk_error(lock, e) from e
        if not running and not isinstance(e, FileExistsError):
            raise FileExistsError(f"{lock} cannot be used as the run's lock file ({e}); remove it") from e
        raise
    finally:
        if locked or not existed:  # still held, or ours alone: no other run can be between its open and lock
            lock.unlink(missing_ok=True)
        if created and out.exists() and not any(out.iterdir()):  # failed before writing anything: no empty folder
            out.rmdir()


def _pid_in(f) -> str:  # noqa: ANN001  (an open text file)
    """The pid a lock file records (read at most 32 bytes), or '?' if it holds none."""
    f.seek(0)
    text = f.read(32).strip()
    return text if text.isdigit() else "?"


def _remove_leftovers(out: Path) -> list[str]:
    """Delete the temporaries a killed run left in its folder (the names atomic_write / write_model_folder use);
    called only while holding the run lock, so no live run is writing them."""
    patterns = (f".{CHECKPOINT}.*.tmp", f".{METRICS}.*.tmp", f".{FINAL}.tmp-*", f".{FINAL}.old-*")
    found = sorted({p for pattern in patterns for p in out.glob(pattern)})
    for path in found:
        remove(path)
    return [p.name for p in found]


def finetune(cfg: FinetuneConfig) -> dict:
    env = Dist(cfg.device)
    try:
        model_dir = cfg.model.removeprefix("local-dir:")
        inputs = [Path(cfg.data)] + ([Path(model_dir)] if os.path.isdir(model_dir) else [])
        check_output(Path(cfg.out), inputs, "--out")  # the base model's folder too: --force would replace it
        with _run_lock(Path(cfg.out), env.main):
            return _run(cfg, env)
    finally:
        env.close()


def _run(cfg: FinetuneConfig, env: Dist) -> dict:
    out, data = Path(cfg.out), Path(cfg.data)
    _check_run_dir(out, cfg.resume, cfg.force)
    env.barrier()
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
    train_ds = _dataset(data, "train")
    classes = list(train_ds.reader.class_to_idx)
    _check_classes(data, classes, list(_dataset(data, "val").reader.class_to_idx))
    val_ds = _dataset(data, "val", classes)

    # the rates Google trained the variant with, unless asked otherwise (the models themselves default to 0)
    kwargs: dict = {"num_classes": len(classes), **paper_regularization(architecture_of(cfg.model))}
    if cfg.drop_path is not None:
        kwargs["drop_path_rate"] = cfg.drop_path
    if cfg.drop_rate is not None:
        kwargs["drop_rate"] = cfg.drop_rate
    model = load_pretrained(cfg.model, **kwargs).to(env.device)
    check_layout(model.pretrained_cfg["architecture"], cfg.layout, model_args_of(model))  # now, not at the end
    # on a GPU, bf16 autocast (where native: not before Ampere) and NHWC are what EfficientNet trains fastest with;
    # on the CPU, fp32 (the model runs NHWC inside by itself)
    on_gpu = env.device.type == "cuda"
    amp = on_gpu and native_bf16(env.device) if cfg.amp is None else cfg.amp
    if amp:
        autocast(env.device, amp)  # refused where bf16 is not native
    channels_last = on_gpu if cfg.channels_last is None else cfg.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    elif env.enabled and not on_gpu:
        # the CPU model computes NHWC inside, so its conv weight gradients come out channels_last; DDP's buckets
        # follow the parameters' layout, which must match or every process warns and copies
        model = model.to(memory_format=torch.channels_last)
    classifier = model.get_classifier()
    if model.pretrained_cfg.get("num_classes") != len(classes) and isinstance(classifier, nn.Linear):
        # A new head starts at zero logits: TF's uniform(+-1/sqrt(classes)) init is meant for 1000 classes and
        # with a handful gives confident random logits that wreck the first steps of fine-tuning.
        nn.init.zeros_(classifier.weight)
        nn.init.zeros_(classifier.bias)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    data_cfg = resolve_data_config({}, model=model)
    if cfg.img_size:
        data_cfg["input_size"] = (data_cfg["input_size"][0], cfg.img_size, cfg.img_size)

    batch_size = _fitting_batch_size(cfg.batch_size, len(train_ds), env.world, env.main)
    common = dict(input_size=data_cfg["input_size"], batch_size=batch_size, interpolation=data_cfg["interpolation"],
                  mean=data_cfg["mean"], std=data_cfg["std"], num_workers=cfg.workers, use_prefetcher=False,
                  device=env.device, persistent_workers=False)  # fmt: skip
    train_loader = create_loader(train_ds, is_training=True, distributed=env.enabled, **common)
    val_loader = create_loader(val_ds, is_training=False, crop_pct=data_cfg["crop_pct"], **common)

    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum)  # fmt: skip
    steps = len(train_loader)
    scheduler = make_scheduler(optimizer, cfg, steps)
    if cfg.epochs * steps == 1 and env.main and not cfg.resume:
        _warn_single_step(optimizer.param_groups[0]["lr"])
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.model_ema else None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    settings = {**asdict(cfg), "amp": amp, "channels_last": channels_last}  # as resolved for this device
    start_epoch, updates, history = 0, 0, []
    if cfg.resume:
        state = _read_checkpoint(out / CHECKPOINT, env.device, model=model)
        saved = state["config"] if isinstance(state["config"], dict) else {}
        _check_same_settings(saved, settings, state.get("world_size", 1), env.world)
        if state["classes"] != classes:
            raise ValueError(
                f"--resume: the checkpoint was trained on classes {printable(str(state['classes'])[:80])}, the "
                f"data now has {printable(str(classes)[:80])}; resume with the same --data"
            )
        if ema is not None and state.get("ema") is None:
            raise ValueError("--resume with --model-ema, but the checkpoint has no EMA; resume without it")
        try:
            check_fits(model, state["model"], cfg.model)  # the first differences, not torch's 4 KB list
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            start_epoch, updates, history = int(state["epoch"]) + 1, int(state["updates"]), list(state["history"])
        except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"--resume: {out / CHECKPOINT} does not fit the model {cfg.model} now builds ({str(e)[:300]}); the "
                "base model changed since the run started: resume with the model it started from, or start over "
                "with --force"
            ) from e
    train_model = nn.parallel.DistributedDataParallel(model) if env.enabled else model

    for epoch in range(start_epoch, cfg.epochs):
        # torch, numpy and Python's random (timm's crop draws from it): shuffling, augmentation and drop path are
        # the same whether the run was resumed or not. Ranks differ by their rank.
        random_seed(cfg.seed + epoch * 1000, env.rank)
        if env.enabled:
            train_loader.sampler.set_epoch(epoch)
        train_model.train()
        loss_sum, seen, correct = 0.0, 0, 0
        show = cfg.progress and env.main
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not show)
        started = time.perf_counter()
        for images, targets in bar:
            images, targets = images.to(env.device), targets.to(env.device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(env.device, amp):
                logits = train_model(images)
                loss = criterion(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            step_lr = optimizer.param_groups[0]["lr"]  # the rate this step runs at (the bar showed the next one)
            optimizer.step()
            updates += 1
            scheduler.step_update(updates)
            if ema is not None:
                ema.update(model, step=updates)
            loss_sum += loss.item() * targets.numel()
            correct += (logits.argmax(-1) == targets).sum().item()
            seen += targets.numel()
            # loss.item() above waits for the step, so the rate is real on CUDA too; all processes together
            rate = seen * env.world / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100.0 * correct / seen:.1f}%",
                            lr=f"{step_lr:.2e}", img_s=f"{rate:.1f}")  # fmt: skip
        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": 100.0 * correct / seen,
                   "train_img_per_s": round(seen * env.world / (time.perf_counter() - started), 2)}  # fmt: skip
        if env.main:
            metrics.update(evaluate(ema.module if ema is not None else model, val_loader, env.device, amp))
            history.append(metrics)
            state = {
                "epoch": epoch, "updates": updates, "history": history, "classes": classes, "config": settings,
                "world_size": env.world,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            }  # fmt: skip
            atomic_write(out / CHECKPOINT, functools.partial(torch.save, state))  # a kill mid-write keeps the last
            atomic_write_text(out / METRICS, "".join(json.dumps(m) + "\n" for m in history))
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch")
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: {shown}")  # also with --no-progress: the run's record
        env.barrier()

    result = {"run_dir": str(out), "classes": classes, "history": history, "world_size": env.world}
    if env.enabled:
        result["rank_param_diff"] = _rank_param_diff(model)
    if env.main:
        final = ema.module if ema is not None else model
        what = (
            f"{count(cfg.epochs, 'epoch')} on {count(len(train_ds), 'image')} in "
            f"{count(len(classes), 'class', 'classes')}, {cfg.opt} lr {cfg.lr}, "
            f"cosine schedule, label smoothing {cfg.label_smoothing}" + (", EMA weights" if ema else "")
        )
        # the preprocessing the run evaluated with is the model's from now on (validate / predict read it)
        final.pretrained_cfg = {**final.pretrained_cfg, "input_size": tuple(data_cfg["input_size"]),
                                "crop_pct": data_cfg["crop_pct"], "interpolation": data_cfg["interpolation"],
                                "mean": tuple(data_cfg["mean"]), "std": tuple(data_cfg["std"])}  # fmt: skip
        saved = save_pretrained(
            final.eval(), out / FINAL, label_names=classes, training=what, force=True, layout=cfg.layout
        )
        result["model_dir"] = str(saved)
    env.barrier()
    return result
