"""Classify images with any pretrained model, preprocessing exactly as its ``pretrained_cfg`` says.

It streams: images are decoded in loader workers and batched, and each batch's results are written as soon as it
finishes (to the terminal, or to ``--out`` as JSON Lines or CSV), so memory stays flat in the number of images and
an interrupted run keeps what it did (``--resume`` continues it). Under ``torchrun`` the ranks split the images,
each image handled once, and rank 0 writes the merged results in the order of the listing, as one process would.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .._io import check_output, check_replaceable_file, disk_full, full_disk_error, signals_deferred
from .._text import first_line, printable
from ..inference import compile_for_inference, optimize_for_inference
from ..options import PREDICT_FORMATS
from ..weights.common import special_file
from .common import (
    ImagePaths,
    autocast,
    class_names,
    count,
    decoded_loader,
    expand_image_paths,
    load_pretrained,
)
from .distributed import Dist, shard

OnSkip = Callable[[Path, Exception], None]


@dataclass
class Prediction:
    path: str
    top: list[tuple[int, str, float]]  # (class index, name, probability)


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class PredictResult:
    model: str
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "predictions": [_prediction_json(p) for p in self.predictions],
            "skipped": [{"path": p, "reason": why} for p, why in self.skipped],
        }


def _prediction_json(p: Prediction) -> dict:
    return {"path": p.path, "top": [{"index": i, "label": n, "probability": round(pr, 6)} for i, n, pr in p.top]}


def classify_stream(
    model: torch.nn.Module, paths: list[Path], topk: int, batch_size: int, workers: int, env: Dist, amp: bool = False,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[list[Prediction | Skipped]]:  # fmt: skip
    """Each batch step's results, in listing order. Under torchrun every rank classifies its :func:`shard` and
    rank 0 gets the step's results of all ranks merged (together one contiguous run of the listing); the other
    ranks get empty lists. ``forward``: what runs ``model`` (its compiled form); ``model`` itself by default."""
    dev = next(model.parameters()).device
    names = class_names(model)
    k = min(topk, model.num_classes)
    shard_of_rank = shard(len(paths), env.rank, env.world)
    batches = iter(decoded_loader(ImagePaths(paths), shard_of_rank, model, batch_size, workers, dev))
    steps = math.ceil(len(shard(len(paths), 0, env.world)) / batch_size)  # rank 0's share is the largest
    for _ in range(steps):
        batch = next(batches, None)  # a rank whose share ran out still takes part in the gather
        done = (
            []
            if batch is None
            else _classify_batch(model if forward is None else forward, batch, paths, names, k, dev, amp)
        )
        parts = env.gather(done)
        yield [record for _, record in sorted(r for part in parts for r in part)] if env.main else []


def _classify_batch(
    forward: Callable[[torch.Tensor], torch.Tensor], batch: tuple, paths: list[Path], names: list[str], k: int,
    dev: torch.device, amp: bool,
) -> list[tuple[int, Prediction | Skipped]]:  # fmt: skip
    images, _, indices, reasons = batch
    indices = indices.tolist()
    records: list[tuple[int, Prediction | Skipped]] = [
        (i, Skipped(str(paths[i]), why)) for i, why in zip(indices, reasons, strict=True) if why
    ]
    readable = [n for n, why in enumerate(reasons) if not why]
    if readable:
        with torch.inference_mode(), autocast(dev, amp):
            logits = forward(images[readable].to(dev))
        probs = logits.float().softmax(-1)
        values, classes = probs.topk(k, dim=-1)
        for n, v, c in zip(readable, values.tolist(), classes.tolist(), strict=True):
            top = [(ci, names[ci], p) for ci, p in zip(c, v, strict=True)]
            records.append((indices[n], Prediction(str(paths[indices[n]]), top)))
    return sorted(records, key=lambda r: r[0])


def classify(
    model: torch.nn.Module, model_name: str, paths: list[Path], topk: int = 5, batch_size: int = 16,
    on_skip: OnSkip | None = None, workers: int = 0,
) -> PredictResult:  # fmt: skip
    """Top-k classes of each image with a loaded model, collected in memory (for a few images; a folder of any
    size streams through :func:`predict_files`)."""
    if topk < 1:
        raise ValueError(f"--topk must be at least 1, got {topk}")
    result = PredictResult(model=model_name)
    for records in classify_stream(model, paths, topk, batch_size, workers, Dist.single()):
        for r in records:
            if isinstance(r, Prediction):
                result.predictions.append(r)
            else:
                result.skipped.append((r.path, r.reason))
                if on_skip:
                    on_skip(Path(r.path), ValueError(r.reason))
    return result


def predict(
    inputs: list[str], model_name: str = "effnet_v1_b0.aa_in1k", topk: int = 5, batch_size: int = 16,
    device: str | None = None, on_skip: OnSkip | None = None,
) -> PredictResult:  # fmt: skip
    """Top-k classes of every image in ``inputs`` (files, folders, globs), in memory; unreadable files are
    skipped. For large folders, :func:`predict_files` streams to a file."""
    if topk < 1:
        raise ValueError(f"--topk must be at least 1, got {topk}")
    paths = _listing(inputs)
    model = load_pretrained(model_name).eval().to(Dist.single(device).device)
    return classify(model, model_name, paths, topk, batch_size, on_skip)


def _listing(inputs: list[str]) -> list[Path]:
    paths = expand_image_paths(inputs)
    if not paths:
        raise FileNotFoundError(f"no image files found in {inputs}")
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Output: the terminal (text, or one JSON document) or a file of one record per image, written as batches finish


class _Text:
    """What a person reads: each image's path, then its classes."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.stream = stream

    def write(self, records: list[Prediction | Skipped]) -> None:
        lines = []
        for r in records:
            if isinstance(r, Prediction):
                lines.append(printable(r.path))
                lines += [f"  {prob:7.2%}  {printable(name)}  ({idx})" for idx, name, prob in r.top]
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def close(self) -> None:
        pass


class _JsonDocument(_Text):
    """``--json`` without ``--out``: one JSON document, written a prediction at a time (valid once complete)."""

    def __init__(self, stream: io.TextIOBase, model_name: str) -> None:
        super().__init__(stream)
        self.skipped: list[dict] = []
        self.first = True
        stream.write('{"model": ' + json.dumps(model_name) + ', "predictions": [')  # ASCII: json escapes the rest

    def write(self, records: list[Prediction | Skipped]) -> None:
        for r in records:
            if isinstance(r, Skipped):
                self.skipped.append({"path": r.path, "reason": r.reason})
                continue
            self.stream.write(("\n  " if self.first else ",\n  ") + json.dumps(_prediction_json(r)))
            self.first = False
        self.stream.flush()

    def close(self) -> None:
        self.stream.write('\n], "skipped": ' + json.dumps(self.skipped) + "}\n")
        self.stream.flush()


def _csv_header(k: int) -> list[str]:
    return (
        ["path", "model"]
        + [f"top{n}_{col}" for n in range(1, k + 1) for col in ("index", "label", "probability")]
        + ["skipped"]
    )


def _record_row(r: Prediction | Skipped, model_name: str, k: int) -> list[str]:
    if isinstance(r, Skipped):
        return [r.path, model_name] + [""] * (3 * k) + [r.reason]
    return [r.path, model_name] + [str(v) for i, n, p in r.top for v in (i, n, round(p, 6))] + [""]


def _record_json(r: Prediction | Skipped, model_name: str) -> dict:
    if isinstance(r, Skipped):
        return {"path": r.path, "model": model_name, "skipped": r.reason}
    return {"path": r.path, "model": model_name, **{k: v for k, v in _prediction_json(r).items() if k != "path"}}


# A record longer than this is not one predict wrote (a top-k of 10,000 ImageNet-22k labels is about 1 MB)
MAX_RECORD_BYTES = 16 * 2**20


def partial_of(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def check_out_path(out: Path, resume: bool, force: bool) -> Path | None:
    """What can be said of ``--out`` before the model loads: a path predict may write, and whether it must be
    resumed or forced. Returns the file a resumed run continues (``FILE.partial``, else ``FILE``), or None."""
    partial = partial_of(out)
    for path in (out, partial):
        check_replaceable_file(path)
        if path.is_symlink():
            raise FileExistsError(f"{path} is a link; --out writes a file of its own: choose another path")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: the folder {out.parent} does not exist")
    source = partial if partial.exists() else out if out.exists() else None
    if source is not None and not resume and not force:
        what = " (left by an interrupted run)" if source == partial else ""
        raise FileExistsError(f"{source} exists{what}: --resume continues the results in it, --force starts over")
    return source


def image_key(path: str) -> str:
    """One spelling of an image's path (absolute, normalised): a resumed run lists 'photos/a.jpg' where the
    records say '/data/photos/a.jpg' or './photos/a.jpg', and must know them for the same image."""
    return os.path.normpath(os.path.abspath(path))


class ResultsFile:
    """``--out FILE``: one record per image (JSON Lines or CSV), appended to ``FILE.partial`` as each batch
    finishes and flushed, so a killed run keeps every finished batch; renamed to ``FILE`` when the run ends.

    ``--resume`` continues ``FILE.partial`` (or adds to a finished ``FILE``): the records already there are kept,
    a torn last record is cut off, and their images are not classified again. ``--force`` replaces only a file
    that holds predict's records. Every record names the model, and a resumed run must use the same ``--model``
    and ``--topk``, or the file would mix two models' answers.
    """

    def __init__(self, out: Path, fmt: str, model_name: str, k: int, resume: bool, force: bool) -> None:
        self.out, self.fmt, self.model_name, self.k = out, fmt, model_name, k
        self.partial = partial_of(out)
        self.done: set[str] = set()  # the images of the records kept, as absolute paths (see :func:`image_key`)
        source = check_out_path(out, resume, force)
        if source is not None and not resume:
            for existing in (self.partial, out):  # --force replaces predict's own results only, of any model
                if existing.exists():
                    self._read(existing, first_only=True)
            source = None
        end = 0
        self.copied = False  # FILE.partial made here from a finished FILE
        if source is not None:
            end = self._read(source)
            self.copied = source == out
            if source == out:  # a finished file gains the images added since; it stays whole until the rename
                with open(out, "rb") as src, open(self.partial, "wb") as dst:
                    _copy(src, dst, end)
            else:
                os.truncate(self.partial, end)  # a record torn by the kill is cut off
        self.kept = len(self.done)
        fresh = end == 0  # nothing kept, not even a CSV header
        self.started_empty = fresh
        # surrogateescape: a file name that is not UTF-8 is written as its own bytes, and read back the same way
        self.file = open(self.partial, "w" if fresh else "a", encoding="utf-8", errors="surrogateescape", newline="")
        # every field quoted: a bare CR in a file name split the row for every CSV reader
        self.writer = csv.writer(self.file, lineterminator="\n", quoting=csv.QUOTE_ALL) if fmt == "csv" else None
        if fresh and self.writer:
            self.writer.writerow(_csv_header(k))
            self.file.flush()

    def _read(self, path: Path, first_only: bool = False) -> int:
        """Check ``path`` holds predict's records for this model and top-k (``first_only``: that its first record
        is one of predict's, of any model), collect their images, and return the byte offset after the last whole
        record (or after the CSV header)."""
        if kind := special_file(path):  # a FIFO would block
            raise ValueError(f"{path} is {kind}, not a results file predict wrote")
        end = 0
        with open(path, "rb") as f:
            for number, (record, offset) in enumerate(_records(f, self.fmt, path), 1):
                end = offset
                if record is None:  # the CSV header
                    continue
                if problem := self._problem(record, same_run=not first_only):
                    raise ValueError(f"{path} record {number}: {problem}")
                if first_only:
                    break
                self.done.add(image_key(record["path"]))
        return end

    def _problem(self, record: dict, same_run: bool) -> str | None:
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            return "not a record predict writes (no path); --out must name predict's own results"
        if not isinstance(record.get("model"), str):
            return "not a record predict writes (no model); --out must name predict's own results"
        if not same_run:
            return None
        if record["model"] != self.model_name:
            return (f"classified by --model {printable(record['model'])}, not {printable(self.model_name)}: "
                    "resume with the same model, or write to another --out")  # fmt: skip
        if record.get("skipped"):
            return None
        top = record.get("top")
        if not isinstance(top, list) or len(top) != self.k:
            n = len(top) if isinstance(top, list) else "no"
            return f"{n} classes per image, not --topk {self.k}: resume with the same --topk"
        return None

    def write(self, records: list[Prediction | Skipped]) -> None:
        try:
            if self.writer:
                self.writer.writerows(_record_row(r, self.model_name, self.k) for r in records)
            else:
                self.file.write("".join(json.dumps(_record_json(r, self.model_name)) + "\n" for r in records))
            self.file.flush()
        except OSError as e:
            raise (full_disk_error(self.partial, e) if disk_full(e, self.partial.parent) else e) from e

    def finish(self) -> None:
        """All images done: the file takes its name."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        with signals_deferred():
            os.replace(self.partial, self.out)

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()

    def discard(self) -> None:
        """Nothing was written: leave the files as they were found (a ``.partial`` this run made goes)."""
        self.close()
        if self.copied or self.started_empty:
            self.partial.unlink(missing_ok=True)


def _copy(src: io.BufferedReader, dst: io.BufferedWriter, size: int) -> None:
    while size > 0:
        chunk = src.read(min(size, 2**20))
        if not chunk:
            break
        dst.write(chunk)
        size -= len(chunk)


# How every line predict writes begins: a JSON record, or a quoted CSV field
LINE_STARTS = {"jsonl": b'{"path": ', "csv": b'"'}


def _lines(f: io.BufferedReader, path: Path, fmt: str) -> Iterator[tuple[str, int]]:
    """Each whole line of ``f`` (ending in a newline) with the byte offset after it. A last line without its
    newline is a record torn by a kill, left out, if it begins as predict's lines do; otherwise the file is not
    one predict wrote (a one-line note without a newline was taken for a torn record and replaced). Lines are
    read up to :data:`MAX_RECORD_BYTES`."""
    offset = 0
    start = LINE_STARTS[fmt]
    while line := f.readline(MAX_RECORD_BYTES + 1):
        if len(line) > MAX_RECORD_BYTES:
            raise ValueError(f"{path} has a line of over {MAX_RECORD_BYTES:,} bytes: not a file predict wrote")
        if not line.endswith(b"\n"):
            if not (line.startswith(start) or start.startswith(line)):
                raise ValueError(f"{path} ends in a line that is not one predict writes: --out must name its results")
            return
        offset += len(line)
        yield line.decode("utf-8", "surrogateescape"), offset


def _records(f: io.BufferedReader, fmt: str, path: Path) -> Iterator[tuple[dict | None, int]]:
    """The records of a results file, each with the byte offset after it (a CSV header comes as None)."""
    lines = _lines(f, path, fmt)
    if fmt == "jsonl":
        for line, offset in lines:
            try:
                yield json.loads(line), offset
            except json.JSONDecodeError:
                yield {}, offset  # named by the caller's check
        return
    ends: list[int] = []

    def text() -> Iterator[str]:  # the csv reader takes lines; remember where each ends
        for line, offset in lines:
            ends.append(offset)
            yield line

    try:
        yield from _csv_records(csv.reader(text()), ends, path)
    except csv.Error as e:  # a bare CR outside quotes, a stray quote: not a CSV predict wrote
        raise ValueError(f"{path} is not a CSV predict wrote ({e})") from None


def _csv_records(rows: Iterator[list[str]], ends: list[int], path: Path) -> Iterator[tuple[dict | None, int]]:
    header = next(rows, None)
    if header is None:
        return
    if not header or header[:2] != ["path", "model"] or header[-1] != "skipped" or (len(header) - 3) % 3:
        raise ValueError(f"{path} does not start with predict's CSV header (path,model,top1_index,...,skipped)")
    yield None, ends[-1]
    k = (len(header) - 3) // 3
    for row in rows:
        if len(row) != len(header):
            yield {}, ends[-1]
            continue
        record: dict = {"path": row[0], "model": row[1]}
        if row[-1]:
            record["skipped"] = row[-1]
        else:
            record["top"] = [row[2 + 3 * n : 5 + 3 * n] for n in range(k)]
        yield record, ends[-1]


def output_format(out: str, fmt: str | None) -> str:
    """``--format``, or what ``--out``'s suffix says."""
    if fmt is not None:
        if fmt not in PREDICT_FORMATS:
            raise ValueError(f"--format must be one of {', '.join(PREDICT_FORMATS)}, got {fmt!r}")
        return fmt
    suffix = Path(out).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv",):
        return "csv"
    raise ValueError(
        f"--out {out!r}: name a .jsonl or .csv file, or say which with --format ({', '.join(PREDICT_FORMATS)})"
    )


@dataclass
class PredictSummary:
    total: int  # images listed
    classified: int  # by this run
    skipped: int  # unreadable, by this run
    already_done: int  # found in --out by --resume
    out: str | None


def predict_files(
    inputs: list[str],
    model_name: str = "effnet_v1_b0.aa_in1k",
    topk: int = 5,
    batch_size: int = 16,
    workers: int = 2,
    device: str | None = None,
    out: str | None = None,
    fmt: str | None = None,
    resume: bool = False,
    force: bool = False,
    json_document: bool = False,
    progress: bool | None = None,
    on_skip: OnSkip | None = None,
    stdout: io.TextIOBase | None = None,
    amp: bool = False,
    compile: bool = False,
) -> PredictSummary | None:
    """``effnet-zoo predict``: classify every image in ``inputs``, streaming results to ``out`` (JSON Lines or
    CSV) or to ``stdout`` as batches finish. Under torchrun, rank 0 writes and returns the summary; the other
    ranks return None. ``progress``: a bar on stderr; None shows one where results do not go to the terminal.
    ``amp``: bfloat16 autocast, refused where bf16 is not native; ``compile``: the model compiled by inductor with
    its weights frozen (:func:`~effnet_zoo.inference.compile_for_inference`). docs/performance.md measures both."""
    if topk < 1:
        raise ValueError(f"--topk must be at least 1, got {topk}")
    if resume and out is None:
        raise ValueError("--resume continues an --out file; give the --out of the interrupted run")
    if json_document and out is not None:
        raise ValueError(
            "--json prints one document on stdout; --out writes one record per line (.jsonl) or row (.csv)"
        )
    fmt = output_format(out, fmt) if out is not None else None
    paths = _listing(inputs)
    if out is not None:
        check_output(Path(out), [Path(p) for p in inputs])
    env = Dist(device)
    try:
        if amp:
            autocast(env.device, amp)  # refused where bf16 is not native, before the model loads
        with _quiet_compiler() if compile else contextlib.nullcontext():
            return _predict_files(paths, model_name, topk, batch_size, workers, env, out, fmt, resume, force,
                                  json_document, progress, on_skip, stdout or sys.stdout, amp, compile)  # fmt: skip
    finally:
        env.close()


def _predict_files(
    paths: list[Path], model_name: str, topk: int, batch_size: int, workers: int, env: Dist, out: str | None,
    fmt: str | None, resume: bool, force: bool, json_document: bool, progress: bool | None, on_skip: OnSkip | None,
    stdout: io.TextIOBase, amp: bool, compile: bool,
) -> PredictSummary | None:  # fmt: skip
    env.check_same_files([str(p) for p in paths], "image files")
    if out is not None:  # refusals that need no model come before it loads (a Hub model downloads first)
        _on_rank_0(env, lambda: check_out_path(Path(out), resume, force))
    # the inference copy (BatchNorm folded, static padding): equal to eager up to float rounding, about 1.2x faster
    # on this project's CPU (B0, batch 16), and nothing in a command can watch the modules
    model = optimize_for_inference(load_pretrained(model_name).eval()).to(env.device)
    forward = _padded(compile_for_inference(model), batch_size) if compile else model
    k = min(topk, model.num_classes)

    def open_output() -> _Text | ResultsFile:
        if out is None:
            return _JsonDocument(stdout, model_name) if json_document else _Text(stdout)
        results = ResultsFile(Path(out), fmt, model_name, k, resume, force)
        if results.done and not any(image_key(str(p)) in results.done for p in paths):
            results.discard()  # resumed from another folder or working directory
            raise ValueError(
                f"none of the {len(results.done):,} records in {printable(str(results.partial))} names an image "
                "this run lists; resume from the same working directory with the same inputs, or use another --out"
            )
        return results

    writer = _on_rank_0(env, open_output)  # only rank 0 touches the output; its refusal stops every rank
    done = writer.done if isinstance(writer, ResultsFile) else set()
    todo_mask = env.broadcast(bytes(image_key(str(p)) not in done for p in paths) if env.main else None)
    todo = [p for p, keep in zip(paths, todo_mask, strict=True) if keep]
    already = len(paths) - len(todo)
    show = progress if progress is not None else (out is not None or not stdout.isatty()) and sys.stderr.isatty()
    bar = tqdm(total=len(todo), unit="img", desc=f"predict {printable(model_name)}", file=sys.stderr,
               disable=not (show and env.main and todo), dynamic_ncols=True)  # fmt: skip
    classified = skipped = 0
    try:
        for records in classify_stream(model, todo, k, batch_size, workers, env, amp, forward) if todo else ():
            if not env.main:
                continue
            for r in records:
                if isinstance(r, Skipped):
                    skipped += 1
                    if on_skip:
                        on_skip(Path(r.path), ValueError(r.reason))
            writer.write(records)
            classified += len(records)
            bar.update(len(records))
        if env.main:
            bar.close()
            (writer.finish if isinstance(writer, ResultsFile) else writer.close)()
    except BaseException:
        bar.close()
        if isinstance(writer, ResultsFile):
            writer.close()
            if not classified and writer.started_empty:  # stopped before a result: no .partial to block the next run
                writer.discard()
            elif classified or writer.kept:
                kept = count(classified + writer.kept, "result")
                tqdm.write(f"effnet-zoo: {kept} kept in {printable(str(writer.partial))}; the same command with "
                           "--resume classifies the rest", file=sys.stderr)  # fmt: skip
        raise
    if not env.main:
        return None
    return PredictSummary(len(paths), classified - skipped, skipped, already, out)


@contextlib.contextmanager
def _quiet_compiler() -> Iterator[None]:
    """Compiler logs are torch's, not the user's concern: a CUDA warning on every CPU compile, and a dump of a
    failing kernel before the one-line error :func:`_padded` gives. Quieted for the run, unless TORCH_LOGS asks."""
    if os.environ.get("TORCH_LOGS"):
        yield
        return
    loggers = {logging.getLogger("torch.utils.cpp_extension"): logging.ERROR,
               logging.getLogger("torch._inductor"): logging.CRITICAL + 1}  # fmt: skip
    before = {log: log.level for log in loggers}
    for log, level in loggers.items():
        log.setLevel(level)
    try:
        yield
    finally:
        for log, level in before.items():
            log.setLevel(level)


def _padded(compiled: Callable[[torch.Tensor], torch.Tensor], size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``compiled`` on batches of one size: a smaller one (the last, or one with unreadable images left out) is
    padded with zeros, not compiled again. Each image's logits depend on that image alone (BatchNorm is folded).
    A compiler failure (no C++ compiler, say) is one line that names the way out."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        try:
            return compiled(torch.cat([x, x.new_zeros(size - n, *x.shape[1:])]) if n < size else x)[:n]
        except torch._dynamo.exc.TorchDynamoException as e:
            raise RuntimeError(f"--compile could not compile the model ({first_line(str(e))}); run without "
                               "--compile") from e  # fmt: skip

    return forward


def _on_rank_0(env: Dist, action: Callable[[], object]) -> object:
    """``action()`` on rank 0; its refusal (OSError, ValueError) raised on every rank, so that none waits."""
    result, problem = None, None
    if env.main:
        try:
            result = action()
        except (OSError, ValueError) as e:
            problem = e
    if (message := env.broadcast(str(problem) if problem else None)) is not None:
        raise problem if problem else RuntimeError(f"rank 0 stopped: {message}")
    return result


def format_result(result: PredictResult) -> str:
    stream = io.StringIO()
    _Text(stream).write(result.predictions)
    return stream.getvalue().rstrip("\n")


def report_skip(path: Path, error: Exception) -> None:
    """One line on stderr, above any progress bar rather than onto it."""
    tqdm.write(f"effnet-zoo: skipped {printable(str(path))}: {printable(str(error))}", file=sys.stderr)
