"""`gfocal-subset`: write a valid smaller COCO data set drawn from a larger one.

    gfocal-subset --ann-file A --img-dir D --num-images N --output-dir OUT [--split val2017]
    gfocal-subset SRC --num-images N --output-dir OUT [--split val2017]   (COCO 2017 layout)

writes OUT/annotations/instances_<split>.json and OUT/<split>/ (copies of the chosen
images), keeping every category and only the chosen images' annotations.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

from gfocal.atomic import OutputError, atomic_path, check_output_dir, output_error
from gfocal.data.coco import DatasetError, read_annotation_json


def make_subset(ann_file, img_dir, num_images, output_dir, split="val2017", seed=0):
    """Pick `num_images` images (seeded, kept in file order); returns the new annotation file."""
    ann_file, img_dir, output_dir = (os.fspath(p) for p in (ann_file, img_dir, output_dir))
    data = read_annotation_json(ann_file)
    if not os.path.isdir(img_dir):
        raise DatasetError(f"{img_dir}: image folder not found")
    images = data["images"]
    if num_images < 1:
        raise DatasetError(f"--num-images must be >= 1, got {num_images}")
    if num_images > len(images):
        raise DatasetError(f"{ann_file}: asked for {num_images} images but it has only "
                           f"{len(images)}")
    out_img_dir = os.path.join(output_dir, split)
    if os.path.isdir(out_img_dir) and os.listdir(out_img_dir):
        raise DatasetError(f"{out_img_dir}: already exists and is not empty "
                           "(choose a new --output-dir)")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(images), size=num_images, replace=False))
    kept = [images[i] for i in chosen]
    for img in kept:
        src = os.path.join(img_dir, img["file_name"])
        if not os.path.isfile(src):
            raise DatasetError(f"{src}: image file not found (listed in {ann_file})")
    check_output_dir(output_dir)
    for img in kept:
        dst = os.path.join(out_img_dir, img["file_name"])
        try:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(os.path.join(img_dir, img["file_name"]), dst)
        except OSError as exc:  # a full disk half way: name the file
            raise output_error(dst, exc) from None
    kept_ids = {img["id"] for img in kept}
    subset = {key: value for key, value in data.items()
              if key not in ("images", "annotations")}
    subset["images"] = kept
    subset["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept_ids]
    out_ann = os.path.join(output_dir, "annotations", f"instances_{split}.json")
    with atomic_path(out_ann) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(subset, f)
    return out_ann


def _parser():
    p = argparse.ArgumentParser(prog="gfocal-subset", description=__doc__.split("\n")[0])
    p.add_argument("src", nargs="?", help="COCO root with annotations/instances_<split>.json "
                                          "and <split>/ (instead of --ann-file/--img-dir)")
    p.add_argument("--ann-file", help="source annotation JSON")
    p.add_argument("--img-dir", help="source image folder")
    p.add_argument("--num-images", type=int, required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--split", default="val2017", help="split name of the output (and of SRC)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    ann_file, img_dir = args.ann_file, args.img_dir
    if args.src:
        ann_file = ann_file or os.path.join(args.src, "annotations", f"instances_{args.split}.json")
        img_dir = img_dir or os.path.join(args.src, args.split)
    if not ann_file or not img_dir:
        parser.error("give SRC or both --ann-file and --img-dir")
    try:
        out = make_subset(ann_file, img_dir, args.num_images, args.output_dir,
                          split=args.split, seed=args.seed)
    except (DatasetError, OutputError) as exc:
        print(f"gfocal-subset: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.num_images} images to {os.path.join(args.output_dir, args.split)} "
          f"and {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
