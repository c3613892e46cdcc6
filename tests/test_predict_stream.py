"""``effnet-zoo predict`` at scale: streamed results, --out files that survive a kill and resume, and predict /
validate under torchrun (2 processes, and 2 nodes x 1 over the loopback rendezvous) equal to one process."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
from conftest import cli, console_script
from PIL import Image

from effnet_zoo.tasks.distributed import Dist
from effnet_zoo.tasks.predict import classify_stream, predict_files


def _photos(folder: Path, n: int, seed: int = 0, side: int = 96) -> Path:
    """``n`` JPEGs of smooth random colour fields (a classifier is confident on some, unsure on others)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side + i % 7, side), Image.BILINEAR).save(folder / f"img{i:04d}.jpg")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = _photos(tmp_path_factory.mktemp("photos") / "p", 21)
    (folder / "zz_broken.jpg").write_bytes(b"not a jpeg")  # reported and recorded, not fatal
    return folder


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_results(a: list[dict], b: list[dict]) -> None:
    """Same images in the same order, same classes; probabilities equal to float rounding of a batch."""
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x.get("skipped") == y.get("skipped")
        if "top" in x:
            assert [t["index"] for t in x["top"]] == [t["index"] for t in y["top"]], x["path"]
            assert np.allclose([t["probability"] for t in x["top"]], [t["probability"] for t in y["top"]], atol=2e-6)


def test_results_stream_per_batch_in_listing_order(lite0_dir, photos):
    """The first batch's results come out before the rest is read: nothing is held until the end."""
    model = timm.create_model(f"local-dir:{lite0_dir}", pretrained=True).eval()
    paths = sorted(photos.iterdir())
    stream = classify_stream(model, paths, 3, 4, 0, Dist.single())
    first = next(stream)
    assert [r.path for r in first] == [str(p) for p in paths[:4]]
    rest = [r for records in stream for r in records]
    assert [r.path for r in rest] == [str(p) for p in paths[4:]]
    assert rest[-1].reason == "not an image file PIL can read"


def test_out_files_hold_one_record_per_image_and_match_the_terminal(lite0_dir, photos, tmp_path):
    model = f"local-dir:{lite0_dir}"
    shown = cli("predict", photos, "--model", model, "--topk", "3", "--json", "--workers", "0")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert "skipped zz_broken.jpg" not in shown.stdout and "zz_broken.jpg" in shown.stderr
    out = tmp_path / "r.jsonl"
    done = cli("predict", photos, "--model", model, "--topk", "3", "--out", out, "--workers", "2", "--batch-size", "5")
    assert done.returncode == 0, done.stderr
    assert f"22 images -> {out}: 21 classified, 1 skipped" in done.stderr
    records = _jsonl(out)
    assert not out.with_name("r.jsonl.partial").exists()
    assert records[-1] == {"path": str(photos / "zz_broken.jpg"), "model": model,
                           "skipped": "not an image file PIL can read"}  # fmt: skip
    _same_results(records[:-1], document["predictions"])
    assert document["skipped"] == [{"path": str(photos / "zz_broken.jpg"), "reason": "not an image file PIL can read"}]
    table = tmp_path / "r.csv"
    assert cli("predict", photos, "--model", model, "--topk", "3", "--out", table).returncode == 0
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["path", "model", "top1_index", "top1_label", "top1_probability"]
    assert [r["path"] for r in rows] == [r["path"] for r in records]
    assert [int(r["top2_index"]) for r in rows[:-1]] == [r["top"][1]["index"] for r in records[:-1]]
    assert rows[-1]["skipped"] and not rows[-1]["top1_label"]


def test_a_killed_run_keeps_its_results_and_resume_finishes_it(lite0_dir, tmp_path):
    """SIGKILL mid-run: the finished batches are in OUT.partial; --resume classifies only the rest, cuts a torn
    record, and the file it ends with equals an uninterrupted run's."""
    photos = _photos(tmp_path / "many", 64, seed=1)
    model = f"local-dir:{lite0_dir}"
    whole = tmp_path / "whole.jsonl"
    assert cli("predict", photos, "--model", model, "--out", whole, "--workers", "0").returncode == 0
    out = tmp_path / "run.jsonl"
    partial = tmp_path / "run.jsonl.partial"
    args = ["predict", str(photos), "--model", model, "--out", str(out), "--batch-size", "4", "--workers", "1"]
    proc = subprocess.Popen(
        [console_script(), *args], stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.read_text().count("\n") >= 8) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = partial.read_text().count("\n")
    assert 8 <= kept < 64 and not out.exists()
    with open(partial, "a") as f:
        f.write('{"path": "torn by the kil')  # a record the kill cut in half
    refused = cli(*args)
    assert refused.returncode == 2 and "exists (left by an interrupted run): --resume continues" in refused.stderr
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"64 images -> {out}: {64 - kept} classified, 0 skipped, {kept} there before" in resumed.stderr
    _same_results(_jsonl(out), _jsonl(whole))
    assert not partial.exists()
    # a finished file gains the images added since; the 64 already there are not classified again
    _photos(tmp_path / "many" / "later", 3, seed=2)
    more = cli(*args, "--resume")
    assert "67 images -> " in more.stderr and "3 classified, 0 skipped, 64 there before" in more.stderr
    assert len(_jsonl(out)) == 67


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--resume"], "--resume continues an --out file"),
        (["--out", "x.txt"], "name a .jsonl or .csv file, or say which with --format"),
        (["--out", "{foreign}", "--force"], "not a record predict writes (no path)"),
        (["--out", "{other_model}", "--resume"], "classified by --model effnet_v1_b0.aa_in1k, not local-dir:"),
        (["--out", "{fifo}", "--format", "jsonl"], "not a regular file"),
    ],
)
def test_out_refusals_name_the_problem_and_keep_the_file(lite0_dir, photos, tmp_path, extra, message):
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text('{"mine": 1}\n')
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"path": "a.jpg", "model": "effnet_v1_b0.aa_in1k", "top": []}) + "\n")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    names = {"{foreign}": str(foreign), "{other_model}": str(other), "{fifo}": str(fifo)}
    extra = [names.get(a, a) for a in extra]
    before = {p: p.read_bytes() for p in (foreign, other)}
    done = cli("predict", photos, "--model", f"local-dir:{lite0_dir}", *extra)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_progress_bar_on_stderr_when_asked(lite0_dir, photos, tmp_path, capsys):
    summary = predict_files([str(photos)], f"local-dir:{lite0_dir}", out=str(tmp_path / "r.jsonl"), workers=0,
                            progress=True)  # fmt: skip
    assert (summary.total, summary.classified, summary.skipped) == (22, 21, 1)
    err = capsys.readouterr().err
    assert "22/22" in err and "img/s" in err


# --- torchrun ---------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(launch: list[str], args: list, cwd: Path) -> subprocess.Popen:
    torchrun = Path(sys.executable).parent / "torchrun"
    exe = str(torchrun) if torchrun.exists() else shutil.which("torchrun")
    cmd = [exe, *launch, "--no-python", console_script(), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def _finish(*procs: subprocess.Popen) -> list[tuple[str, str]]:
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return outs


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """An ImageNet-class folder (two synsets, 9 + 8 images: shares that do not divide evenly) with a broken file."""
    root = tmp_path_factory.mktemp("val")
    _photos(root / "n01440764", 9, seed=3)
    _photos(root / "n01443537", 8, seed=4)
    (root / "n01443537" / "broken.png").write_bytes(b"\x89PNG broken")
    return root


@pytest.fixture(scope="module")
def one_process(lite0_dir, photos, labelled, tmp_path_factory) -> tuple[Path, dict]:
    """predict's records and validate's report from one process: what the ranks together must give."""
    single = tmp_path_factory.mktemp("single") / "single.jsonl"
    model = f"local-dir:{lite0_dir}"
    assert cli("predict", photos, "--model", model, "--out", single, "--workers", "0").returncode == 0
    return single, json.loads(cli("validate", "--data", labelled, "--model", model, "--json", "--workers", "0").stdout)


@pytest.mark.parametrize("nodes", [1, 2], ids=["2-processes", "2-nodes-x-1"])
def test_predict_and_validate_under_torchrun_equal_one_process(lite0_dir, photos, labelled, one_process, tmp_path,
                                                                nodes):  # fmt: skip
    """Every image handled once, one merged output in listing order written by rank 0, metrics summed over the
    ranks: the results of one process. Two nodes are two torchrun agents meeting at a c10d rendezvous."""
    model = f"local-dir:{lite0_dir}"
    single, alone = one_process
    out = tmp_path / "ranks.jsonl"
    predict = ["predict", photos, "--model", model, "--out", out, "--batch-size", "4", "--workers", "1"]
    validate = ["validate", "--data", labelled, "--model", model, "--json", "--batch-size", "4", "--workers", "1"]
    for args in (predict, validate):
        if nodes == 1:
            results = _finish(_torchrun(["--standalone", "--nproc_per_node", "2"], args, tmp_path))
        else:
            port = _free_port()
            launch = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                      "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"t{port}"]  # fmt: skip
            procs = [_torchrun([*launch, "--node_rank", str(n)], args, tmp_path) for n in (0, 1)]
            results = _finish(*procs)
        if args is predict:
            _same_results(_jsonl(out), _jsonl(single))
            assert not out.with_name("ranks.jsonl.partial").exists()
            assert sum("22 images -> " in err for _, err in results) == 1  # reported once, by rank 0
        else:
            reports = [json.loads(o) for o, _ in results if o.strip()]
            assert len(reports) == 1  # printed once
            got = reports[0]
            assert got["num_images"] == alone["num_images"] == 17
            assert got["top1"] == alone["top1"] and got["top5"] == alone["top5"]
            assert abs(got["loss"] - alone["loss"]) < 1e-5
            assert [p for p, _ in got["skipped"]] == [str(labelled / "n01443537" / "broken.png")]


def test_force_replaces_any_models_results_and_resume_handles_a_bare_header(lite0_dir, photos, tmp_path):
    model = f"local-dir:{lite0_dir}"
    table = tmp_path / "r.csv"
    assert cli("predict", photos, "--model", model, "--topk", "2", "--out", table).returncode == 0
    again = cli("predict", photos, "--model", model, "--topk", "3", "--out", table, "--force")
    assert again.returncode == 0, again.stderr
    header = table.read_text().splitlines()[0]
    assert header.endswith('"top3_probability","skipped"') and table.read_text().count(header) == 1
    complete = table.read_text()
    # killed right after the header: the resumed file has it once, then every image
    partial = tmp_path / "r.csv.partial"
    table.rename(partial)
    partial.write_text(header + "\n")
    resumed = cli("predict", photos, "--model", model, "--topk", "3", "--out", table, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert table.read_text().splitlines()[0] == header and table.read_text().count(header) == 1
    assert len(table.read_text().splitlines()) == len(complete.splitlines()) == 23
    # --force checks every file it would replace: a foreign FILE is kept even when FILE.partial is ours
    shutil.copy(table, partial)
    table.write_text("my,own,table\n")
    refused = cli("predict", photos, "--model", model, "--out", table, "--force")
    assert refused.returncode == 2 and "does not start with predict's CSV header" in refused.stderr
    assert table.read_text() == "my,own,table\n"


def test_nodes_that_see_different_files_stop_before_any_work(lite0_dir, tmp_path):
    """Two nodes whose `photos/` differ (a copy still in progress) would split two listings: some images twice,
    others never. Every rank refuses, naming the counts; nothing is written."""
    where = [tmp_path / "node0", tmp_path / "node1"]
    _photos(where[0] / "photos", 5)
    _photos(where[1] / "photos", 6)
    port = _free_port()
    launch = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
              "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"t{port}"]  # fmt: skip
    args = ["predict", "photos", "--model", f"local-dir:{lite0_dir}", "--out", "labels.jsonl"]
    procs = [_torchrun([*launch, "--node_rank", str(n)], args, where[n]) for n in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode != 0 for p in procs)
    assert any("the ranks do not see the same image files (rank 0: 5 files, rank 1: 6)" in err for _, err in outs), (
        outs[0][1][-2000:]
    )
    assert not any(p.name.startswith("labels") for w in where for p in w.iterdir())


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_one_line_of_the_users_text_is_not_taken_for_a_torn_record(lite0_dir, photos, tmp_path, fmt):
    """A file holding one line without a newline looked like a run killed mid-record: --force and --resume
    replaced the user's notes."""
    for flag, name in (("--force", f"notes.{fmt}"), ("--resume", f"notes.{fmt}"), ("--resume", f"n.{fmt}.partial")):
        target = tmp_path / name
        target.write_text("my precious notes, no newline")
        out = tmp_path / name.removesuffix(".partial")
        done = cli("predict", photos, "--model", f"local-dir:{lite0_dir}", "--out", out, flag)
        assert done.returncode == 2 and "is not one predict writes" in done.stderr, done.stderr
        assert target.read_text() == "my precious notes, no newline"
        target.unlink()


def _names(path: Path, fmt: str) -> list[bytes]:
    """The file names a results file records, as bytes, sorted; every CSV row as wide as the header."""
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            rows = list(csv.reader(f))
        assert {len(r) for r in rows} == {len(rows[0])}
        paths = [r[0] for r in rows[1:]]
    else:
        paths = [r["path"] for r in _jsonl(path)]
    return sorted(os.fsencode(p.rsplit("/", 1)[-1]) for p in paths)


def test_any_file_name_round_trips_through_csv_and_jsonl_and_resume(lite0_dir, tmp_path):
    """A bare CR split a CSV row (and resuming it ended in a traceback); a name that is not UTF-8 stopped the
    CSV outright; the same folder spelled another way (absolute, ./) was classified a second time on resume."""
    folder = _photos(tmp_path / "names", 5)
    names = [b"cr\rret.jpg", b"new\nline.jpg", b'comma, "quoted".jpg', b"bad\xff\xfeutf8.jpg", b"=cmd|calc.jpg"]
    for i, raw in enumerate(names):
        os.rename(bytes(folder / f"img{i:04d}.jpg"), os.path.join(bytes(folder), raw))
    listed = sorted(os.listdir(bytes(folder)))
    assert len(listed) == 5
    model = f"local-dir:{lite0_dir}"
    for fmt in ("csv", "jsonl"):
        whole = tmp_path / f"whole.{fmt}"
        assert cli("predict", folder, "--model", model, "--out", whole, "--batch-size", "2").returncode == 0
        assert _names(whole, fmt) == listed
        # resume from two records, with the folder spelled absolute: the other three are added, none twice
        lines = whole.read_bytes().split(b"\n")  # the first records are on single lines (sorted names)
        keep = 3 if fmt == "csv" else 2  # the CSV's header and two rows
        partial = tmp_path / f"r.{fmt}.partial"
        partial.write_bytes(b"\n".join(lines[:keep]) + b"\n")
        resumed = cli(
            "predict", str(folder.resolve()) + "/", "--model", model, "--out", tmp_path / f"r.{fmt}", "--resume"
        )
        assert resumed.returncode == 0, resumed.stderr
        assert "3 classified, 0 skipped, 2 there before" in resumed.stderr
        assert _names(tmp_path / f"r.{fmt}", fmt) == listed  # each image once


def test_a_resume_from_another_working_directory_is_refused_not_doubled(lite0_dir, photos, tmp_path, monkeypatch):
    """Records say 'p/img0000.jpg' (relative to where the run started); resumed one folder up as 'PARENT/p',
    every image was classified again and the file held each twice."""
    out = tmp_path / "r.jsonl"
    monkeypatch.chdir(photos.parent)
    assert cli("predict", photos.name, "--model", f"local-dir:{lite0_dir}", "--out", out).returncode == 0
    monkeypatch.chdir(photos.parent.parent)
    before = out.read_bytes()
    done = cli("predict", f"{photos.parent.name}/{photos.name}", "--model", f"local-dir:{lite0_dir}", "--out", out,
               "--resume")  # fmt: skip
    assert done.returncode == 2 and "none of the 22 records in" in done.stderr, done.stderr
    assert "resume from the same working directory" in done.stderr
    assert out.read_bytes() == before and not (tmp_path / "r.jsonl.partial").exists()


def test_out_is_refused_before_the_model_loads(photos, tmp_path):
    """An --out that is refused anyway was only refused after the model loaded (a Hub model downloads first)."""
    out = tmp_path / "r.jsonl"
    out.write_text("")
    done = cli("predict", photos, "--model", "hf-hub:nobody/no-such-model", "--out", out)
    assert done.returncode == 2 and f"{out} exists: --resume continues the results in it" in done.stderr


def test_a_programs_own_process_group_survives_a_task(monkeypatch):
    """validate() / predict_files() called inside a program's own DDP job ended that job's process group on
    return (the task destroyed whatever group was initialised); a task ends only a group it started."""
    import torch.distributed as dist

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun says; the group above is the program's
        env = Dist("cpu")
        assert env.enabled and env.rank == 0 and not env.owned
        env.close()
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
