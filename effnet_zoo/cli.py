"""``effnet-zoo``: the command-line front of the package.

This module imports nothing heavy: the parser answers ``--help`` and argument errors without torch or timm, and each
command imports what it runs (``effnet_zoo_cli`` is the entry point that keeps ``import effnet_zoo`` light too).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import signal
import sys
import threading
import warnings
from typing import Any, NoReturn

from . import register
from ._io import Terminated, stop_on_signal
from ._text import printable
from .options import (
    DTYPE_NAMES,
    EXPORT_FORMATS,
    LAYOUTS,
    MAX_INPUT_SIDE,
    MIN_CALIBRATION_IMAGES,
    PREDICT_FORMATS,
    SOURCE_FORMATS,
)


def _say(text: str, block: bool = False) -> None:
    """Print one line of a command's result, escaped whole: paths, file names, labels and sources come from the
    user's files and from config.json, and none may drive the terminal or, with a newline, forge a line of the
    listing. ``block``: a report whose formatter put the line breaks (JSON, tables), each line escaped."""
    print("\n".join(printable(line) for line in str(text).split("\n")) if block else printable(str(text)))


def _fmt_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_summary(s: dict[str, Any]) -> str:
    title = s["model"] + (f" (phi={s['phi']})" if s["phi"] is not None else "")
    lines = [
        f"{title}: width x{s['width_mult']}, depth x{s['depth_mult']}, input {s['input_size'][1]}x{s['input_size'][2]}",
        "",
        f"{'stage':<7}{'input':>11}{'channels':>12}{'repeats':>9}{'kernel':>8}{'stride':>8}{'expand':>8}"
        f"{'params':>10}{'FLOPs':>10}",
    ]

    def row(name: str, res: str, chans: str, rep: str, k: str, st: str, ex: str, params: int, flops: int) -> str:
        return (
            f"{name:<7}{res:>11}{chans:>12}{rep:>9}{k:>8}{st:>8}{ex:>8}{_fmt_count(params):>10}{_fmt_count(flops):>10}"
        )

    r = s["input_size"][1:]
    stem = s["stem"]
    lines.append(row("stem", f"{r[0]}x{r[1]}", f"{s['input_size'][0]}->{stem['out_channels']}", "1", "3", "2", "-",
                     stem["params"], stem["flops"]))  # fmt: skip
    for st in s["stages"]:
        res = "x".join(map(str, st["input_resolution"]))
        lines.append(row(str(st["stage"]), res, f"{st['in_channels']}->{st['out_channels']}", str(st["repeats"]),
                         str(st["kernel_size"]), str(st["stride"]), str(st["expand_ratio"]), st["params"],
                         st["flops"]))  # fmt: skip
    head, cls = s["head"], s["classifier"]
    lines.append(row("head", "", f"{head['in_channels']}->{head['out_channels']}", "1", "1", "1", "-",
                     head["params"], head["flops"]))  # fmt: skip
    lines.append(row("fc", "", f"{head['out_channels']}->{cls['num_classes']}", "", "", "", "", cls["params"],
                     cls["flops"]))  # fmt: skip
    lines += [
        "",
        f"total: {s['total_params']:,} parameters, {s['total_flops'] / 1e9:.3f} GFLOPs "
        f"({s['total_macs'] / 1e9:.3f} G multiply-adds, the paper's 'FLOPs'), counted by torch.utils.flop_counter",
        "",
        "feature pyramid (features_only=True / get_features):",
    ]
    for f in s["features"]:
        side = "x".join(map(str, f["resolution"]))
        lines.append(f"  index {f['index']}: stride {f['reduction']:>2}, {f['channels']:>4} channels, {side:>9}"
                     f"  ({f['module']})")  # fmt: skip
    return "\n".join(lines)


def _summary(args: argparse.Namespace) -> int:
    from .summary import summarize

    s = summarize(args.model, phi=args.phi, img_size=args.img_size)
    _say(json.dumps(s, indent=2) if args.json else format_summary(s), block=True)
    return 0


def _parse_model_args(pairs: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg expects KEY=VALUE (e.g. width_mult=0.5), got {pair!r}")
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            args[key] = value
    return args


def _convert(args: argparse.Namespace) -> int:
    from .weights.convert import convert

    model_args = _parse_model_args(args.model_arg)
    if args.padding:
        model_args["padding"] = args.padding
    if args.bn_eps is not None:
        model_args["bn_eps"] = args.bn_eps
    result = convert(
        args.src, args.fmt, args.model, args.out, args.dtype, model_args, args.force, args.verify, args.layout
    )
    params = sum(p.numel() for p in result.model.parameters())
    _say(f"converted {result.converted.source}")
    _say(f"  -> {result.out}/ ({', '.join(result.files)}): {result.config['architecture']}, {params:,} parameters, "
          f"{result.config['num_classes']} classes, model_args {json.dumps(result.config['model_args'])}")  # fmt: skip
    if args.verify:
        _say(f"  {result.verify_note}")
    after = " after import effnet_zoo" if args.layout == "effnet_zoo" else " (stock timm: no effnet_zoo needed)"
    _say(f'  load it with: timm.create_model("local-dir:{result.out}", pretrained=True){after}')
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    plan = push_to_hub(
        args.folder, args.repo_id, private=args.private, revision=args.revision, dry_run=args.dry_run,
        layout=args.layout,
    )  # fmt: skip
    where = f"{plan.repo_id}" + (f"@{plan.revision}" if plan.revision else "") + (" (private)" if plan.private else "")
    _say(("would upload to " if args.dry_run else "uploaded to ") + where + ":")
    for path, size in plan.files:
        _say(f"  {path}  ({size:,} bytes)")
    for path, why in plan.skipped:
        _say(f"  not uploaded: {path}  ({why})")
    if plan.url:
        _say(plan.url)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .tasks.predict import predict_files, report_skip

    summary = predict_files(
        args.images, args.model, args.topk, args.batch_size, args.workers, args.device, args.out, args.format,
        args.resume, args.force, json_document=args.json, progress=None if args.progress else False,
        on_skip=report_skip, amp=args.amp, compile=args.compile,
    )  # fmt: skip
    if summary is None:  # a torchrun rank other than 0: rank 0 writes and reports
        return 0
    if summary.out is not None:
        before = f", {summary.already_done:,} there before" if args.resume else ""
        print(f"effnet-zoo: {summary.total:,} images -> {printable(summary.out)}: {summary.classified:,} classified, "
              f"{summary.skipped:,} skipped{before}", file=sys.stderr)  # fmt: skip
    return 0 if summary.classified or summary.already_done else 1


def _demo(args: argparse.Namespace) -> int:
    from .tasks.demo import demo

    demo(args.images or None, args.topk)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .tasks.distributed import launched_rank
    from .tasks.predict import report_skip
    from .tasks.validate import format_result, validate

    result = validate(args.data, args.model, args.batch_size, args.amp, args.channels_last, args.device,
                      args.workers, progress=args.progress and not args.json, on_skip=report_skip)  # fmt: skip
    if launched_rank() != 0:  # under torchrun every rank has the summed result; rank 0 prints it
        return 0
    _say(json.dumps(result.to_json(), indent=2) if args.json else format_result(result), block=args.json)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from .tasks.common import count
    from .tasks.finetune import FinetuneConfig, finetune

    fields = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    result = finetune(FinetuneConfig(**fields))
    if "model_dir" in result:
        last = result["history"][-1] if result["history"] else {}
        _say(f"fine-tuned {args.model} on {count(len(result['classes']), 'class', 'classes')} "
              f"({count(result['world_size'], 'process', 'processes')}); "
              f"last epoch: {json.dumps(last)}")  # fmt: skip
        if "rank_param_diff" in result:
            _say(f"  ranks in sync: max param diff {result['rank_param_diff']:g} across {result['world_size']} ranks")
        _say(f"  -> {result['model_dir']}/ : timm.create_model(\"local-dir:{result['model_dir']}\", pretrained=True), "
              f"or effnet-zoo push {result['model_dir']} --repo-id ORG/NAME")  # fmt: skip
    return 0


def _export(args: argparse.Namespace) -> int:
    from .tasks.export import export

    r = export(args.model, args.format, args.out, args.dynamic_batch, args.batch_size, args.img_size, args.force,
               int8=args.int8, calibration_images=args.calibration_images)  # fmt: skip
    kind = f"INT8 {r.fmt}" if r.int8 else r.fmt
    _say(f"exported {args.model} as {kind} -> {r.out} (input {r.input_shape}"
          f"{', dynamic batch' if args.dynamic_batch or r.int8 else ''})")  # fmt: skip
    if r.int8 is None:
        _say(f"  checked against eager PyTorch on a batch of {r.checked_batch}: max abs diff {r.max_abs_diff:.3g} "
              f"(relative {r.max_rel_diff:.3g})")  # fmt: skip
        return 0
    a = r.int8
    if not a.images:
        _say(f"  calibrated on {r.calibrated_on:,} images; none of the images kept back to check it could be read")
        return 0
    unread = f" ({r.calibration_unreadable:,} unreadable, left out)" if r.calibration_unreadable else ""
    _say(f"  calibrated on {r.calibrated_on:,} images{unread}; on {a.images:,} others of the folder the top class "
         f"equals fp32's for {a.top1:.1%} (mean change of its probability {a.mean_prob_change:.3f})")  # fmt: skip
    return 0


def _checked(kind: type, what: str, ok) -> Any:
    """An argparse ``type`` that converts with ``kind`` and refuses values outside the range ``what`` names."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (isinstance(value, float) and not math.isfinite(value)) or not ok(value):  # inf trained to NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")  # escaped by _Parser.error
        return value

    return convert


POSITIVE_INT = _checked(int, "a positive integer", lambda v: v > 0)
CALIBRATION_IMAGES = _checked(int, f"an integer >= {MIN_CALIBRATION_IMAGES}", lambda v: v >= MIN_CALIBRATION_IMAGES)
COUNT = _checked(int, "an integer >= 0", lambda v: v >= 0)
POSITIVE = _checked(float, "a number > 0", lambda v: v > 0)
NON_NEGATIVE = _checked(float, "a number >= 0", lambda v: v >= 0)
FINITE = _checked(float, "a number", lambda v: True)  # nan and inf are refused by _checked
FRACTION = _checked(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
IMG_SIZE = _checked(int, f"an integer from 32 to {MAX_INPUT_SIDE}", lambda v: 32 <= v <= MAX_INPUT_SIDE)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with its error line escaped: it repeats what was typed (an argument holding an escape
    sequence or a newline went to the terminal raw)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {printable(message)}\n")


class _DefaultsShown(argparse.HelpFormatter):
    """--help shows each option's default where it has a real one (not for flags or unset options)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            default in (None, False, argparse.SUPPRESS)
            or action.nargs == 0  # a flag: --no-progress showed "(default: True)"
            or default == []
            or "default" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


AMP_HELP = "bfloat16 autocast; refused on a CPU or GPU without native bf16 (it would be slower than fp32)"
LAYOUT_HELP = (
    "effnet_zoo: loads after `import effnet_zoo`; timm: timm's own tf_efficientnet_* layout, which stock timm (and "
    "transformers) load without effnet_zoo (published variants only)"
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="effnet-zoo", description="EfficientNet-V1, TF-exact, as a timm plugin.")
    parser.add_argument("--version", action="version", version=f"effnet-zoo {__version__}")
    subcommand = functools.partial(_Parser, formatter_class=_DefaultsShown)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=subcommand)
    p = sub.add_parser("summary", help="print a model's compound-scaled design (offline)")
    p.add_argument("model", nargs="?", default="effnet_v1_b0", help="e.g. effnet_v1_b3, effnet_v1_b3.aa_in1k or b3")
    p.add_argument("--phi", type=FINITE, help="a custom compound coefficient instead of a named variant, e.g. 2.5")
    p.add_argument("--img-size", type=POSITIVE_INT, help="input resolution (default: the variant's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_summary)

    p = sub.add_parser("convert", help="convert EfficientNet weights of another format to a Hub-ready folder")
    p.add_argument("src", help="checkpoint file, TF checkpoint prefix, or folder")
    p.add_argument("--from", dest="fmt", required=True, choices=SOURCE_FORMATS, help="the source format")
    p.add_argument(
        "--model", required=True, help="target, e.g. effnet_v1_b0 or effnet_v1_b0.ap_in1k (sets preprocessing)"
    )
    p.add_argument("--out", required=True, help="output folder (model.safetensors, config.json, README.md)")
    p.add_argument("--dtype", default="fp32", choices=DTYPE_NAMES, help="stored precision")
    p.add_argument("--verify", action="store_true", help="compare with the source library's model, when importable")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--padding", choices=["same", "symmetric"], help="override the padding the source implies")
    p.add_argument("--bn-eps", type=POSITIVE, help="override the BatchNorm eps the source implies")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model argument, e.g. width_mult=0.5 (repeatable)")  # fmt: skip
    p.add_argument("--layout", choices=LAYOUTS, default="effnet_zoo", help=LAYOUT_HELP)
    p.set_defaults(func=_convert)

    p = sub.add_parser("push", help="publish a saved / converted model folder to the Hugging Face Hub")
    p.add_argument("folder", help="a folder written by convert, finetune or effnet_zoo.save_pretrained")
    p.add_argument("--repo-id", required=True, help="org/name on the Hub")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to commit to (created if missing)")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded; needs no token or network")
    p.add_argument("--layout", choices=["timm"], help="publish an effnet_zoo folder converted to timm's own layout "
                   "(tf_efficientnet_* names), which stock timm loads; the folder itself is not changed")  # fmt: skip
    p.set_defaults(func=_push)

    model_help = "a pretrained tag (effnet_v1_b0.aa_in1k), local-dir:DIR, a folder, or hf-hub:ORG/NAME"
    p = sub.add_parser("demo", help="the main job in a minute: pretrained weights, photos classified, a pyramid")
    p.add_argument("images", nargs="*", help="your own images (default: the photographs shipped with effnet_zoo)")
    p.add_argument("--topk", type=POSITIVE_INT, default=5, help="how many classes to show per image")
    p.set_defaults(func=_demo)

    p = sub.add_parser("predict", help="classify images (files, folders, globs); streams; runs under torchrun")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--model", default="effnet_v1_b0.aa_in1k", help=model_help)
    p.add_argument("--topk", type=POSITIVE_INT, default=5, help="how many classes to show per image")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16, help="images per forward pass")
    p.add_argument("--workers", type=COUNT, default=2, help="image-decoding processes (0: decode in this one)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available; torchrun: the local rank's GPU)")
    p.add_argument("--out", help="write one record per image to this .jsonl or .csv file as batches finish")
    p.add_argument("--format", choices=PREDICT_FORMATS, help="of --out (default: from its suffix)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --out: classify only what it lacks")
    p.add_argument("--force", action="store_true", help="replace an --out that holds earlier results")
    p.add_argument("--json", action="store_true", help="without --out: one JSON document on stdout")
    p.add_argument("--amp", action="store_true", help=AMP_HELP)
    p.add_argument("--compile", action="store_true", help="compile the model (torch.compile, weights frozen): "
                   "seconds to start, then faster, most of all with --amp; needs a C++ compiler")  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (shown on a terminal when results go to --out or a pipe)")  # fmt: skip
    p.set_defaults(func=_predict)

    p = sub.add_parser("validate", help="top-1 / top-5 over an image folder (DIR/<class>/<image>)")
    p.add_argument("--data", required=True, help="ImageFolder root; class folders named like the model's classes")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--batch-size", type=POSITIVE_INT, default=64, help="images per forward pass")
    p.add_argument("--amp", action="store_true", help=AMP_HELP)
    p.add_argument("--channels-last", action="store_true", help="NHWC model and batches")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--workers", type=COUNT, default=2, help="data loader processes")
    p.add_argument("--json", action="store_true", help="machine-readable output (no progress bar)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_validate)

    p = sub.add_parser("finetune", help="fine-tune on DIR/train, DIR/val; runs unchanged under torchrun")
    p.add_argument("--data", required=True, help="folder with train/<class>/<image> and val/<class>/<image>")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, metrics.jsonl, and model/ at the end")
    p.add_argument("--epochs", type=POSITIVE_INT, default=10, help="passes over the training images")
    p.add_argument("--lr", type=POSITIVE, default=1e-3, help="peak learning rate (after warmup)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="per process")
    p.add_argument("--opt", default="adamw", help="any timm optimizer name: adamw, sgd, lamb, ...")
    p.add_argument("--weight-decay", type=NON_NEGATIVE, default=0.05, help="not applied to BatchNorm and biases")
    p.add_argument("--momentum", type=FRACTION, default=0.9, help="for sgd")
    p.add_argument("--warmup-epochs", type=NON_NEGATIVE, default=1.0,
                   help="linear warmup from lr / 100, at most a fifth of the run")  # fmt: skip
    p.add_argument("--min-lr", type=NON_NEGATIVE, default=1e-6, help="where the cosine schedule ends")
    p.add_argument("--label-smoothing", type=FRACTION, default=0.1, help="of the cross-entropy targets")
    p.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights; evaluate and save it")
    p.add_argument("--ema-decay", type=FRACTION, default=0.9998, help="per update, with --model-ema")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction,
                   help=AMP_HELP + " (default: on for a CUDA GPU with native bf16)")  # fmt: skip
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="NHWC model and batches (default: on for CUDA; the CPU model is NHWC inside)")  # fmt: skip
    p.add_argument("--grad-checkpointing", action="store_true", help="trade speed for activation memory")
    p.add_argument("--drop-path", type=FRACTION, help="stochastic depth rate (default: 0.2, as Google trained)")
    p.add_argument(
        "--drop-rate", type=FRACTION, help="dropout before the classifier (default: the variant's, 0.2 for B0 to 0.5)"
    )
    p.add_argument("--img-size", type=IMG_SIZE, help="train/eval resolution (default: the weights')")
    p.add_argument("--workers", type=COUNT, default=2, help="data loader processes per process")
    p.add_argument("--seed", type=int, default=42, help="shuffling, augmentation and drop path; per epoch")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available; torchrun: the local rank's GPU)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="start over in an --out that holds a run")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--layout", choices=LAYOUTS, default="effnet_zoo", help="of the saved model/: " + LAYOUT_HELP)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("export", help="export to ONNX / TorchScript / torch.export, checked against eager")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("--out", required=True, help="output file (.onnx, .pt, .pt2)")
    p.add_argument("--dynamic-batch", action="store_true", help="a batch dimension of any size")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=1, help="example batch for export")
    p.add_argument("--img-size", type=IMG_SIZE, help="input resolution (default: the weights')")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--int8", metavar="DIR", help="quantize the ONNX file to INT8 (ONNX Runtime, static), calibrated "
                   "on images of DIR like the ones the model will see; checked on others of them")  # fmt: skip
    p.add_argument("--calibration-images", type=CALIBRATION_IMAGES,
                   help="with --int8: at most this many images calibrate (default: 200)")  # fmt: skip
    p.set_defaults(func=_export)
    return parser


def _warning_line(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001  (warnings' signature)
    return f"effnet-zoo: warning: {printable(str(message))}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _warning_line  # one line a user can read, not a source location
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:  # SIGTERM stops like Ctrl-C, and neither splits a write (effnet_zoo._io.signals_deferred)
        previous = {s: signal.signal(s, stop_on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        register()  # what `import effnet_zoo` does in a program; the command line waits until a command runs
        code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return code
    except BrokenPipeError:  # `effnet-zoo summary --json | head`: the reader left; stop quietly, as cat does
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141  # 128 + SIGPIPE, what a shell reports for a program the pipe ended
    except (ValueError, OSError, RuntimeError) as e:  # OSError: missing files, permissions, the Hub's HTTP errors
        message = printable(str(getattr(e, "cli_message", e)))  # without Python-only routes; one line, escaped
        print(f"effnet-zoo: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outputs are written atomically, so an interrupt leaves nothing half-written
        print("effnet-zoo: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("effnet-zoo: terminated (SIGTERM); temporary files removed", file=sys.stderr)
        return 143  # 128 + SIGTERM
    finally:
        if main_thread:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
