"""Fixtures shared by the unit tests: a tiny COCO-format data set and a tiny config; file
systems that refuse writes for real (a read-only one, a small one to fill)."""
import os

import pytest

from gfocal.data.subset import make_subset
from gfocal.data.synthetic import ensure_mini_coco
from tests.factories import TINY_MODEL, config_text, tiny_sections
from tests.tmpfs import mounted_tmpfs


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """8 train and 4 val images of the bundled data, written by the subset tool."""
    src = ensure_mini_coco()
    out = tmp_path_factory.mktemp("tiny_coco")
    for split, n in (("train2017", 8), ("val2017", 4)):
        make_subset(os.path.join(src, "annotations", f"instances_{split}.json"),
                    os.path.join(src, split), n, out, split=split)
    return str(out)


@pytest.fixture(scope="session")
def tiny_model():
    return dict(TINY_MODEL)


@pytest.fixture
def tiny_config(tiny_coco, tmp_path):
    """A config file: tiny ResNet-18 detector at 96 px on `tiny_coco`, one short epoch."""
    path = tmp_path / "tiny.py"
    path.write_text(config_text(tiny_sections(tiny_coco)))
    return str(path)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory on a read-only file system (we run as root, whom permission bits do not
    stop)."""
    with mounted_tmpfs(tmp_path / "read_only", "ro,size=64k") as path:
        yield path


@pytest.fixture
def small_disk(tmp_path):
    """A file system of its own (tmpfs, 512 MiB) at tmp_path/disk, to fill."""
    with mounted_tmpfs(tmp_path / "disk", "size=512m") as path:
        yield path
