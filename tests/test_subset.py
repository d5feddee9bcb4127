"""gfocal-subset: a valid smaller COCO data set, seeded choice, clear errors."""
import json
import os

import pytest

from gfocal.data import synthetic
from gfocal.data.coco import CocoDataset, DatasetError
from gfocal.data.subset import main, make_subset


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("src"))
    synthetic.generate_split(root, "val2017", num_images=8)
    with open(os.path.join(root, "annotations", "instances_val2017.json")) as f:
        data = json.load(f)
    return root, os.path.join(root, "annotations", "instances_val2017.json"), \
        os.path.join(root, "val2017"), data


def read(path):
    with open(path) as f:
        return json.load(f)


def test_subset_is_a_valid_smaller_coco(src, tmp_path):
    root, ann_file, img_dir, data = src
    out_ann = make_subset(ann_file, img_dir, 3, tmp_path / "out", split="val2017", seed=1)
    assert out_ann == str(tmp_path / "out" / "annotations" / "instances_val2017.json")
    sub = read(out_ann)
    ids = [img["id"] for img in sub["images"]]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert ids == [img["id"] for img in data["images"] if img["id"] in ids]  # file order kept
    assert sub["categories"] == data["categories"]
    assert sub["info"] == data["info"]
    assert sub["annotations"] == [a for a in data["annotations"] if a["image_id"] in ids]
    names = sorted(os.listdir(tmp_path / "out" / "val2017"))
    assert names == sorted(img["file_name"] for img in sub["images"])
    for name in names:
        with open(os.path.join(img_dir, name), "rb") as a, \
                open(tmp_path / "out" / "val2017" / name, "rb") as b:
            assert a.read() == b.read()
    ds = CocoDataset(out_ann, tmp_path / "out" / "val2017", test_mode=True)
    assert ds.img_ids == ids and ds.num_classes == len(data["categories"])
    assert ds.load(0)["img"].shape[:2] == (sub["images"][0]["height"], sub["images"][0]["width"])


def test_choice_is_seeded(src, tmp_path):
    _, ann_file, img_dir, _ = src
    chosen = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        sub = read(make_subset(ann_file, img_dir, 4, tmp_path / name, seed=seed))
        chosen[name] = [img["id"] for img in sub["images"]]
    assert chosen["a"] == chosen["b"]
    assert chosen["a"] != chosen["c"]


def test_all_images(src, tmp_path):
    _, ann_file, img_dir, data = src
    sub = read(make_subset(ann_file, img_dir, len(data["images"]), tmp_path / "all"))
    assert sub["images"] == data["images"] and sub["annotations"] == data["annotations"]


def test_cli_with_coco_root_and_with_files(src, tmp_path, capsys):
    root, ann_file, img_dir, _ = src
    assert main([root, "--num-images", "2", "--output-dir", str(tmp_path / "a"),
                 "--split", "val2017"]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    assert main(["--ann-file", ann_file, "--img-dir", img_dir, "--num-images", "2",
                 "--output-dir", str(tmp_path / "b"), "--split", "train2017"]) == 0
    assert len(read(tmp_path / "b" / "annotations" / "instances_train2017.json")["images"]) == 2
    assert len(os.listdir(tmp_path / "b" / "train2017")) == 2


@pytest.mark.parametrize("num, problem", [(0, "--num-images must be >= 1, got 0"),
                                          (9, "asked for 9 images but it has only 8")])
def test_bad_counts(src, tmp_path, capsys, num, problem):
    _, ann_file, img_dir, _ = src
    with pytest.raises(DatasetError, match=problem):
        make_subset(ann_file, img_dir, num, tmp_path / "x")
    assert main(["--ann-file", ann_file, "--img-dir", img_dir, "--num-images", str(num),
                 "--output-dir", str(tmp_path / "x")]) == 2
    assert problem in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


def test_missing_inputs(src, tmp_path, capsys):
    _, ann_file, img_dir, _ = src
    missing_ann = str(tmp_path / "none.json")
    assert main(["--ann-file", missing_ann, "--img-dir", img_dir, "--num-images", "1",
                 "--output-dir", str(tmp_path / "o")]) == 2
    assert f"{missing_ann}: annotation file not found" in capsys.readouterr().err
    missing_dir = str(tmp_path / "no_dir")
    with pytest.raises(DatasetError, match="image folder not found"):
        make_subset(ann_file, missing_dir, 1, tmp_path / "o")
    with pytest.raises(SystemExit):
        main(["--num-images", "1", "--output-dir", str(tmp_path / "o")])  # no source given


def test_missing_image_file_is_named(src, tmp_path):
    _, ann_file, img_dir, data = src
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / data["images"][0]["file_name"]).write_bytes(b"x")
    with pytest.raises(DatasetError, match="image file not found"):
        make_subset(ann_file, str(partial), 8, tmp_path / "o")
    assert not os.path.exists(tmp_path / "o")


def test_refuses_non_empty_output(src, tmp_path):
    _, ann_file, img_dir, _ = src
    (tmp_path / "o" / "val2017").mkdir(parents=True)
    (tmp_path / "o" / "val2017" / "old.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not empty"):
        make_subset(ann_file, img_dir, 1, tmp_path / "o")


def test_an_existing_empty_output_folder_is_used(src, tmp_path):
    """Only a non-empty folder is refused: an empty one (made beforehand, or left by a
    run that failed before copying) takes the subset."""
    _, ann_file, img_dir, _ = src
    (tmp_path / "o" / "val2017").mkdir(parents=True)
    make_subset(ann_file, img_dir, 2, tmp_path / "o")
    assert len(os.listdir(tmp_path / "o" / "val2017")) == 2


@pytest.mark.parametrize("where", ["read-only", "full"])
def test_an_output_that_cannot_be_written_is_one_line(src, tmp_path, capsys, request, where):
    """A read-only place is refused before anything is copied; a disk that fills half way
    names the file it could not write. Before: an OSError traceback."""
    root, ann_file, img_dir, data = src
    if where == "read-only":
        out = request.getfixturevalue("read_only_dir") / "subset"
        said = f"{out}: {out.parent} is not writable"
    else:
        out = request.getfixturevalue("small_disk")
        with open(out / "filler", "wb") as f:  # leave room for about one image
            f.write(bytes(os.statvfs(out).f_bavail * os.statvfs(out).f_frsize
                          - os.path.getsize(os.path.join(img_dir, data["images"][0]["file_name"]))
                          - 8192))
        said = "cannot write (No space left on device)"
    assert main([root, "--num-images", "8", "--output-dir", str(out), "--split", "val2017"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gfocal-subset: error: ") and "\n" not in err and said in err, err
