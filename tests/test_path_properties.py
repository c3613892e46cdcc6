"""Properties of path and name handling (issue 20), beside the config validation's in test_config_validation.py.

- Any text printed is one line without control characters.
- Any folder tree, with links anywhere (loops included), is searched to the end; each real folder is read once,
  and only regular files are ever handed out as images.
- ``--force`` replaces a folder only if effnet_zoo wrote it, and an export only if it is one of the same format,
  whatever the path holds.
"""

import os
import shutil
import stat
from pathlib import Path

import pytest
import timm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import effnet_zoo
from effnet_zoo._text import printable
from effnet_zoo.hub.folders import not_our_model_folder
from effnet_zoo.tasks.common import ImageFolderReader, expand_image_paths
from effnet_zoo.tasks.export import check_replaceable_export

FIXTURE = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@given(st.text())
def test_printable_text_is_one_line_without_control_characters(text):
    shown = printable(text)
    assert shown.isprintable() and "\n" not in shown
    if text.isprintable():
        assert shown == text  # ordinary names are left alone


NAMES = st.sampled_from(["a", "b", "c", "d"])
# (kind, parent index, name, target index): folders, images, links to an earlier folder, FIFOs
NODES = st.lists(
    st.tuples(st.sampled_from(["dir", "png", "link", "fifo"]), st.integers(0, 20), NAMES, st.integers(0, 20)),
    max_size=14,
)


def build_tree(root: Path, nodes) -> list[Path]:
    folders = [root]
    for kind, parent, name, target in nodes:
        where = folders[parent % len(folders)] / (name + (".png" if kind in ("png", "fifo") else ""))
        if os.path.lexists(where):
            continue
        if kind == "dir":
            where.mkdir()
            folders.append(where)
        elif kind == "png":
            where.write_bytes(b"\x89PNG")
        elif kind == "fifo":
            os.mkfifo(where)
        else:
            where.symlink_to(folders[target % len(folders)], target_is_directory=True)
    return folders


@FIXTURE
@given(nodes=NODES)
def test_any_tree_with_links_is_searched_once_and_yields_only_regular_files(nodes, tmp_path):
    root = tmp_path / "tree"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    folders = build_tree(root, nodes)
    reader = ImageFolderReader(root)
    found = [Path(p) for p, _ in reader.samples]
    assert all(stat.S_ISREG(p.stat().st_mode) for p in found)
    real = [p.resolve() for p in found]
    assert len(real) == len(set(real))  # no image counted twice, however many names lead to it
    # every real image is found once, under one of its names
    images = {p.resolve() for f in folders for p in f.iterdir() if p.suffix == ".png" and p.is_file()}
    assert set(real) == images
    assert {Path(p).resolve() for p, _ in reader.unreadable} == {
        p.resolve() for f in folders for p in f.iterdir() if p.suffix == ".png" and stat.S_ISFIFO(p.stat().st_mode)
    }
    assert set(expand_image_paths([str(root)])) <= {p for p in found} | {Path(p) for p, _ in reader.unreadable}


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> Path:
    model = timm.create_model("effnet_v1_b0", width_mult=0.25, depth_mult=0.25, num_classes=2)
    return effnet_zoo.save_pretrained(model, tmp_path_factory.mktemp("ours") / "m")


EXTRA = st.sampled_from(["notes.txt", ".hidden", "model.safetensors", "config.json", "README.md", "sub/"])


@FIXTURE
@given(extra=st.lists(EXTRA, max_size=3), replace_weights=st.booleans(), as_link=st.booleans())
def test_force_replaces_a_folder_only_if_effnet_zoo_wrote_it(extra, replace_weights, as_link, ours, tmp_path):
    target = tmp_path / "out"
    for path in (target, tmp_path / "real"):
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
    folder = tmp_path / "real" if as_link else target
    shutil.copytree(ours, folder)
    changed = False
    for name in extra:
        if name.endswith("/"):
            (folder / name).mkdir(exist_ok=True)
            changed = True
        elif name not in ("model.safetensors", "config.json", "README.md"):
            (folder / name).write_text("user data")
            changed = True
    if replace_weights:  # someone else's weights under our name: no effnet_zoo checksum
        from safetensors.torch import load_file, save_file

        save_file(load_file(str(folder / "model.safetensors")), str(folder / "model.safetensors"))
        changed = True
    if as_link:
        target.symlink_to(folder, target_is_directory=True)
    verdict = not_our_model_folder(target)
    assert (verdict is None) == (not changed and not as_link), (extra, replace_weights, as_link, verdict)


@FIXTURE
@given(content=st.binary(max_size=256), fmt=st.sampled_from(["onnx", "torchscript", "torch-export"]))
def test_export_force_refuses_any_bytes_that_are_not_an_export(content, fmt, tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(content)
    with pytest.raises(FileExistsError, match="--force replaces only a previous"):
        check_replaceable_export(path, fmt)
