"""COCO evaluation: result conversion, AP of perfect vs perturbed detections, files."""
import json
import os

import numpy as np
import pytest
from pycocotools.coco import COCO

from gfocal.evaluation import coco_eval
from gfocal.evaluation.coco_eval import STAT_NAMES, evaluate, results_to_coco, save_results

LABEL_TO_CAT = [4, 9]   # label 0 -> category 4, label 1 -> category 9
# x1y1x2y2 per image: small (< 32^2), medium and large (> 96^2) boxes, both categories
GT = {
    1: ([[10, 10, 30, 30], [50, 40, 110, 100]], [0, 1]),
    2: ([[0, 0, 150, 120], [160, 20, 180, 35]], [1, 0]),
    3: ([[30, 60, 90, 130]], [0]),
}


@pytest.fixture(scope="module")
def gt_file(tmp_path_factory):
    images, annotations = [], []
    for img_id, (boxes, labels) in GT.items():
        images.append({"id": img_id, "file_name": f"{img_id}.png", "width": 200, "height": 150})
        for (x1, y1, x2, y2), label in zip(boxes, labels):
            annotations.append({"id": len(annotations) + 1, "image_id": img_id,
                                "category_id": LABEL_TO_CAT[label], "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1)})
    path = tmp_path_factory.mktemp("eval") / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]}))
    return str(path)


@pytest.fixture(scope="module")
def coco_gt(gt_file):
    return COCO(gt_file)


def predictions(shift=0.0, extra=None):
    preds = []
    for img_id, (boxes, labels) in GT.items():
        b = np.array(boxes, np.float32) + shift
        s = np.linspace(0.9, 0.5, len(b)).astype(np.float32)
        lab = np.array(labels, np.int64)
        if extra and img_id in extra:
            eb, es, el = extra[img_id]
            b, s, lab = np.vstack([b, eb]), np.append(s, es), np.append(lab, el)
        preds.append({"boxes": b, "scores": s, "labels": lab})
    return preds


def test_results_to_coco_hand_case():
    out = results_to_coco([{"boxes": np.array([[10, 20, 30, 60]], np.float32),
                            "scores": np.array([0.75], np.float32),
                            "labels": np.array([1])},
                           {"boxes": np.zeros((0, 4)), "scores": np.zeros(0),
                            "labels": np.zeros(0, np.int64)}],
                          img_ids=[42, 43], label_to_cat_id=LABEL_TO_CAT)
    assert out == [{"image_id": 42, "category_id": 9, "bbox": [10.0, 20.0, 20.0, 40.0],
                    "score": 0.75}]
    assert all(type(v) in (int, float) for v in out[0]["bbox"] + [out[0]["score"]])


def test_results_to_coco_rejects_mismatches():
    pred = {"boxes": np.zeros((1, 4)), "scores": np.ones(1), "labels": np.array([2])}
    with pytest.raises(ValueError, match="label 2 outside 0..1"):
        results_to_coco([pred], [1], LABEL_TO_CAT)
    with pytest.raises(ValueError, match="2 predictions for 1 image ids"):
        results_to_coco([pred, pred], [1], LABEL_TO_CAT)
    with pytest.raises(ValueError, match="1 boxes, 2 scores"):
        results_to_coco([{**pred, "scores": np.ones(2)}], [1], LABEL_TO_CAT)


def test_perfect_detections_score_one(coco_gt, capsys):
    stats = evaluate(coco_gt, results_to_coco(predictions(), list(GT), LABEL_TO_CAT))
    assert capsys.readouterr().err == ""  # ground truth with boxes: no warning
    assert tuple(stats) == STAT_NAMES
    for name in STAT_NAMES:  # AR1 too: COCOeval caps detections per image and category
        assert stats[name] == pytest.approx(1.0), name


def test_perturbed_detections_score_less(coco_gt):
    perfect = evaluate(coco_gt, results_to_coco(predictions(), list(GT), LABEL_TO_CAT))
    shifted = evaluate(coco_gt, results_to_coco(predictions(shift=4.0), list(GT), LABEL_TO_CAT))
    assert 0 < shifted["AP"] < perfect["AP"]
    assert shifted["APs"] < 1.0  # a 4 px shift hurts the 20 px box most
    false_positive = {1: (np.array([[100, 100, 140, 140]], np.float32), 0.99, 0)}
    with_fp = evaluate(coco_gt, results_to_coco(predictions(extra=false_positive), list(GT),
                                                LABEL_TO_CAT))
    assert with_fp["AP"] < perfect["AP"] and with_fp["AR100"] == pytest.approx(1.0)
    wrong = predictions()
    wrong[2]["labels"] = 1 - wrong[2]["labels"]
    wrong_stats = evaluate(coco_gt, results_to_coco(wrong, list(GT), LABEL_TO_CAT))
    assert wrong_stats["AP"] < perfect["AP"]


def test_empty_results_give_zeros(coco_gt):
    assert evaluate(coco_gt, []) == {name: 0.0 for name in STAT_NAMES}


def test_img_ids_restrict_evaluation(coco_gt):
    preds = predictions()
    preds[0]["boxes"] = preds[0]["boxes"] + 50          # image 1 wrong, others right
    results = results_to_coco(preds, list(GT), LABEL_TO_CAT)
    assert evaluate(coco_gt, results)["AP"] < 1.0
    assert evaluate(coco_gt, results, img_ids=[2, 3])["AP"] == pytest.approx(1.0)


def test_unknown_image_ids_are_rejected(coco_gt):
    with pytest.raises(ValueError, match=r"not in the ground truth: \[77\]"):
        evaluate(coco_gt, [{"image_id": 77, "category_id": 4, "bbox": [0, 0, 5, 5],
                            "score": 0.5}])


def test_save_results_round_trip_and_paths(gt_file, tmp_path, capsys):
    results = results_to_coco(predictions(), list(GT), LABEL_TO_CAT)
    path = tmp_path / "out" / "results.json"
    save_results(path, results)
    assert json.loads(path.read_text()) == results
    assert os.listdir(tmp_path / "out") == ["results.json"]   # no temp file left
    stats = evaluate(gt_file, str(path))                         # both given as files
    assert stats["AP"] == pytest.approx(1.0)
    assert "Average Precision" not in capsys.readouterr().out
    evaluate(gt_file, str(path), verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_evaluate_does_not_modify_the_results(coco_gt):
    results = results_to_coco(predictions(), list(GT), LABEL_TO_CAT)
    before = json.dumps(results)
    coco_eval.evaluate(coco_gt, results)
    assert json.dumps(results) == before


def write_gt_without_boxes(path):
    """Two images; the only annotation is a crowd box (a region to ignore, not a box)."""
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.png", "width": 50, "height": 50} for i in (1, 2)],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [0, 0, 20, 20],
                         "area": 400, "iscrowd": 1}],
        "categories": [{"id": 4, "name": "a"}]}))
    return str(path)


def warnings_in(err):
    return [line for line in err.splitlines() if line.startswith("gfocal: warning:")]


@pytest.mark.parametrize("results", [[], [{"image_id": 2, "category_id": 4,
                                           "bbox": [5, 5, 10, 10], "score": 0.9}]])
def test_ground_truth_without_boxes_warns_naming_the_annotation_file(tmp_path, capsys, results):
    """Without a ground-truth box COCOeval's 0 / -1 measure nothing: one warning line."""
    gt = write_gt_without_boxes(tmp_path / "empty_val.json")
    evaluate(gt, results)
    (line,) = warnings_in(capsys.readouterr().err)
    assert gt in line and "no ground-truth box in the 2 evaluated images" in line
    evaluate(COCO(gt), results, img_ids=[2], source="my_val.json")  # a COCO: named by source
    (line,) = warnings_in(capsys.readouterr().err)
    assert line.startswith("gfocal: warning: my_val.json: no ground-truth box in the 1 ")


def test_an_empty_val_split_warns_through_the_engine(torch_port, tiny_config, tiny_coco,
                                                      tmp_path, capsys):
    """engine.evaluate (what train and test call) names the val split's annotation file."""
    import shutil
    from gfocal import engine
    from gfocal.config import load_config
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    ann_file = root / "annotations" / "instances_val2017.json"
    data = json.loads(ann_file.read_text())
    ann_file.write_text(json.dumps(dict(data, annotations=[])))
    cfg = load_config(tiny_config, {"data": {"root": str(root)}})
    port, model = engine.build_model(cfg, torch_port.FRAMEWORK, device="cpu")
    stats = engine.evaluate(cfg, port, model)
    assert len(stats) == len(STAT_NAMES)
    (line,) = warnings_in(capsys.readouterr().err)
    assert str(ann_file) in line and f"in the {len(data['images'])} evaluated images" in line


def test_cocoeval_gives_the_statistics_numpy_2_gave():
    """The 12 COCO statistics of fixed detections as the GPU machine's numpy 2.5 and
    pycocotools computed them (in the `scripts/gpu.py image` environment), bit for bit."""
    import contextlib
    import io

    from gfocal.data.synthetic import ensure_mini_coco
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(ensure_mini_coco(), "annotations", "instances_val2017.json"))
    rng = np.random.default_rng(7)
    img_ids = sorted(gt.getImgIds())[:16]
    results = []
    for img_id in img_ids:  # every box moved by up to 15 % of its size, random scores
        for ann in gt.loadAnns(gt.getAnnIds(imgIds=img_id, iscrowd=False)):
            x, y, w, h = ann["bbox"]
            dx, dy, dw, dh = rng.uniform(-0.15, 0.15, 4) * [w, h, w, h]
            results.append({"image_id": img_id, "category_id": ann["category_id"],
                            "bbox": [float(x + dx), float(y + dy), float(w + dw), float(h + dh)],
                            "score": float(rng.uniform(0.05, 1.0))})
    stats = coco_eval.evaluate(gt, results, img_ids=img_ids)
    assert [v.hex() for v in stats.values()] == [
        "0x1.a05ba16b70f7dp-2", "0x1.fa20c81192d74p-1", "0x1.8de64bc35b94dp-3",
        "0x1.b585ffa97bdc3p-2", "0x1.9ecb56fec5eebp-2", "0x1.7fb67614c017cp-2",
        "0x1.260b401f0fe7bp-2", "0x1.e70003650f874p-2", "0x1.e70003650f874p-2",
        "0x1.c9c413b8b302bp-2", "0x1.01b32c43d54e6p-1", "0x1.ce81b4e81b4e9p-2"], stats
