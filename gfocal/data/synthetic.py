"""The bundled mini COCO: a deterministic synthetic shape-detection data set.

Every pixel comes from `np.random.default_rng([SEED, split, index])` and plain IEEE
arithmetic (+, -, *, /, floor; no sin/cos/exp whose last bit may differ between libm
builds), so the images and JSON are byte-identical on every run and machine (PNG bytes
also depend on the zlib inside the OpenCV wheel; the compression settings are fixed).

Scenes: a textured, noisy background, 1-8 shapes of 6 categories (distinct shape and colour
family, textured fill), sizes ~8 px to most of the image, occlusion capped per pair; plus
images without objects, `iscrowd` clusters of tiny shapes and degenerate (w or h < 1)
annotations that loading must drop.
"""
import json
import os
import shutil
import tempfile

import cv2
import numpy as np

from gfocal.data.coco import DatasetError

GENERATOR_VERSION = 1
SEED = 20210602
DESCRIPTION = "gfocal-parity synthetic mini COCO"
SPLITS = {"train2017": (0, 256, 1), "val2017": (1, 64, 100001)}  # code, images, first id
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3, cv2.IMWRITE_PNG_STRATEGY,
              cv2.IMWRITE_PNG_STRATEGY_DEFAULT]

# (id, name, BGR base colour): one colour family per shape
CATEGORIES = [
    (1, "circle", (40, 40, 215)),       # red
    (2, "rectangle", (210, 80, 30)),    # blue
    (3, "triangle", (40, 185, 40)),     # green
    (4, "ellipse", (30, 205, 225)),     # yellow
    (5, "cross", (195, 40, 190)),       # magenta
    (6, "ring", (215, 205, 40)),        # cyan
]
MAX_OBJECTS = 8
MAX_PAIR_OVERLAP = 0.45  # intersection / smaller box area: keeps occlusion moderate

DEFAULT_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "fixtures", "mini_coco")


def _value_noise(rng, height, width, cell, amplitude):
    """Smooth random field: a coarse random grid, bilinearly interpolated (float64)."""
    gh, gw = height // cell + 2, width // cell + 2
    grid = rng.uniform(-amplitude, amplitude, size=(gh, gw))
    fy = np.arange(height, dtype=np.float64) / cell
    fx = np.arange(width, dtype=np.float64) / cell
    iy, ix = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    ty, tx = (fy - iy)[:, None], (fx - ix)[None, :]
    rows = grid[iy] * (1.0 - ty) + grid[iy + 1] * ty            # (H, gw)
    return rows[:, ix] * (1.0 - tx) + rows[:, ix + 1] * tx      # (H, W)


def _background(rng, height, width):
    grey = rng.uniform(70.0, 180.0)
    tint = rng.uniform(-15.0, 15.0, size=3)
    ys = np.arange(height, dtype=np.float64)[:, None] / height
    xs = np.arange(width, dtype=np.float64)[None, :] / width
    gx, gy = rng.uniform(-30.0, 30.0, size=2)
    field = grey + gx * (xs - 0.5) + gy * (ys - 0.5)
    field = field + _value_noise(rng, height, width, int(rng.integers(12, 48)), 18.0)
    if rng.random() < 0.4:  # faint stripes
        period = int(rng.integers(6, 24))
        a, b = int(rng.integers(0, 3)), int(rng.integers(0, 3)) or 1
        yy, xx = np.mgrid[0:height, 0:width]
        field = field + np.where(((a * xx + b * yy) // period) % 2 == 0, 5.0, -5.0)
    img = np.repeat(field[:, :, None], 3, axis=2) + tint
    # grey sensor-like noise; in 2x2 blocks on most images (keeps the PNGs small)
    if rng.random() < 0.6:
        noise = rng.integers(-6, 7, size=((height + 1) // 2, (width + 1) // 2, 1))
        noise = np.repeat(np.repeat(noise, 2, axis=0), 2, axis=1)[:height, :width]
    else:
        noise = rng.integers(-4, 5, size=(height, width, 1))
    return img + noise


def _clutter(rng, img):
    """A few faint grey blobs: background structure that is not an object."""
    height, width = img.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        w, h = rng.uniform(10, width / 3), rng.uniform(10, height / 3)
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        x1, y1 = int(x0), int(y0)
        x2, y2 = int(x0 + w) + 1, int(y0 + h) + 1
        ys = (np.arange(y1, y2) + 0.5 - (y0 + h / 2)) / (h / 2)
        xs = (np.arange(x1, x2) + 0.5 - (x0 + w / 2)) / (w / 2)
        mask = ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0
        img[y1:y2, x1:x2][mask] += rng.uniform(-20, 20)


def _shape_mask(name, u, v, rng):
    """Mask of a shape in its box, given pixel-centre coords u, v in [0, 1] (broadcast)."""
    if name == "rectangle":
        return (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if name in ("circle", "ellipse"):
        return (2 * u - 1) ** 2 + (2 * v - 1) ** 2 <= 1.0
    if name == "ring":
        r2 = (2 * u - 1) ** 2 + (2 * v - 1) ** 2
        inner = rng.uniform(0.45, 0.7)
        return (r2 <= 1.0) & (r2 >= inner * inner)
    if name == "cross":
        half = rng.uniform(0.13, 0.2)
        cu, cv = rng.uniform(0.4, 0.6, size=2)
        return (np.abs(u - cu) <= half) | (np.abs(v - cv) <= half)
    if name == "triangle":
        apex = rng.uniform(0.0, 1.0)
        pts = [(apex, 0.0), (1.0, 1.0), (0.0, 1.0)]    # pointing up, apex anywhere on top
        if rng.random() < 0.5:
            pts = [(x, 1.0 - y) for x, y in pts]       # pointing down
        if rng.random() < 0.5:
            pts = [(y, x) for x, y in pts]             # pointing left/right
        # inside = the point is on the same side of all three edges (either winding)
        sides = [(bx - ax) * (v - ay) - (by - ay) * (u - ax)
                 for (ax, ay), (bx, by) in zip(pts, pts[1:] + pts[:1])]
        pos = (sides[0] >= 0) & (sides[1] >= 0) & (sides[2] >= 0)
        neg = (sides[0] <= 0) & (sides[1] <= 0) & (sides[2] <= 0)
        return pos | neg
    raise ValueError(f"unknown shape {name!r}")


def _texture(rng, height, width):
    """Brightness modulation of an object's fill (moderate: the colour family stays)."""
    kind = int(rng.integers(0, 5))
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == 0:                                   # solid
        return np.zeros((height, width))
    if kind == 1:                                   # stripes
        period = int(rng.integers(3, 10))
        a, b = int(rng.integers(0, 2)), int(rng.integers(0, 2)) or 1
        return np.where(((a * xx + b * yy) // period) % 2 == 0, 22.0, -22.0)
    if kind == 2:                                   # checker
        period = int(rng.integers(3, 9))
        return np.where((xx // period + yy // period) % 2 == 0, 20.0, -20.0)
    if kind == 3:                                   # speckle
        return rng.uniform(-25.0, 25.0, size=(height, width))
    gx, gy = rng.uniform(-40.0, 40.0, size=2)       # gradient
    return gx * (xx / max(width, 1) - 0.5) + gy * (yy / max(height, 1) - 0.5)


def _paint(rng, img, cat_index, box):
    """Draw one shape with box (x0, y0, w, h) (floats); returns its clipped mask bbox."""
    _, name, colour = CATEGORIES[cat_index]
    height, width = img.shape[:2]
    x0, y0, w, h = box
    x1, y1 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    x2, y2 = min(int(np.ceil(x0 + w)), width), min(int(np.ceil(y0 + h)), height)
    if x2 <= x1 or y2 <= y1:
        return None
    u = ((np.arange(x1, x2) + 0.5 - x0) / w)[None, :]
    v = ((np.arange(y1, y2) + 0.5 - y0) / h)[:, None]
    mask = _shape_mask(name, u, v, rng) & (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if not mask.any():
        return None
    base = np.asarray(colour, dtype=np.float64) + rng.uniform(-25.0, 25.0, size=3)
    fill = base[None, None, :] + _texture(rng, y2 - y1, x2 - x1)[:, :, None]
    region = img[y1:y2, x1:x2]
    region[mask] = fill[mask]
    rows, cols = np.nonzero(mask)
    bx1, by1 = x1 + int(cols.min()), y1 + int(rows.min())
    bx2, by2 = x1 + int(cols.max()) + 1, y1 + int(rows.max()) + 1
    return [bx1, by1, bx2 - bx1, by2 - by1], int(mask.sum())


def _object_box(rng, cat_index, height, width):
    """Box (x0, y0, w, h) of a new object: sizes mostly 16-200 px, a few tiny or huge."""
    name = CATEGORIES[cat_index][1]
    short = min(height, width)
    u = rng.random()
    if u < 0.07:
        size = rng.uniform(8.0, 16.0)
    elif u > 0.95 and short * 0.9 > 200:
        size = rng.uniform(200.0, short * 0.9)
    else:
        # skewed to small sizes (like a log-uniform) with arithmetic only, no log/exp
        size = 18.0 + (min(220.0, short * 0.75) - 18.0) * rng.random() * np.sqrt(rng.random())
    if name in ("circle", "ring"):
        aspect = 1.0
    elif name == "ellipse":  # clearly elongated, so it does not read as a circle
        aspect = rng.uniform(1.6, 2.8)
        aspect = aspect if rng.random() < 0.5 else 1.0 / aspect
    else:
        aspect = rng.uniform(1.0, 2.5)
        aspect = aspect if rng.random() < 0.5 else 1.0 / aspect
    ratio = float(np.sqrt(aspect))
    w, h = min(size * ratio, width - 2.0), min(size / ratio, height - 2.0)
    # mostly inside; some cut by the image border (truncated objects)
    x0 = rng.uniform(-0.15 * w, width - 0.85 * w)
    y0 = rng.uniform(-0.15 * h, height - 0.85 * h)
    return x0, y0, w, h


def _overlap_ok(box, boxes):
    x0, y0, w, h = box
    for bx, by, bw, bh in boxes:
        iw = min(x0 + w, bx + bw) - max(x0, bx)
        ih = min(y0 + h, by + bh) - max(y0, by)
        if iw > 0 and ih > 0 and iw * ih > MAX_PAIR_OVERLAP * min(w * h, bw * bh):
            return False
    return True


def _crowd(rng, img, boxes):
    """A cluster of tiny same-category shapes, annotated as one iscrowd box."""
    height, width = img.shape[:2]
    cat_index = int(rng.integers(0, len(CATEGORIES)))
    side = rng.uniform(50.0, min(160.0, 0.6 * min(height, width)))
    region = (rng.uniform(0, width - side), rng.uniform(0, height - side), side, side)
    if not _overlap_ok(region, boxes):
        return None
    painted = []
    for _ in range(int(rng.integers(8, 21))):
        s = rng.uniform(4.0, 9.0)
        box = (region[0] + rng.uniform(0, side - s), region[1] + rng.uniform(0, side - s), s, s)
        drawn = _paint(rng, img, cat_index, box)
        if drawn is not None:
            painted.append(drawn)
    if not painted:
        return None
    x1 = min(b[0] for b, _ in painted)
    y1 = min(b[1] for b, _ in painted)
    x2 = max(b[0] + b[2] for b, _ in painted)
    y2 = max(b[1] + b[3] for b, _ in painted)
    area = sum(a for _, a in painted)
    return cat_index, [x1, y1, x2 - x1, y2 - y1], area, region


def _scene(rng):
    """One image (uint8 BGR) and its annotations (without ids)."""
    width = int(rng.integers(160, 641))
    height = int(rng.integers(160, 641))
    img = _background(rng, height, width)
    _clutter(rng, img)
    anns, boxes = [], []
    kind = rng.random()
    if kind >= 0.06:  # 6 % of the images stay empty
        if rng.random() < 0.12:
            crowd = _crowd(rng, img, boxes)
            if crowd is not None:
                cat_index, bbox, area, region = crowd
                boxes.append(region)
                anns.append((cat_index, bbox, area, 1))
        for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
            cat_index = int(rng.integers(0, len(CATEGORIES)))
            for _attempt in range(20):
                box = _object_box(rng, cat_index, height, width)
                if _overlap_ok(box, boxes):
                    break
            else:
                continue
            drawn = _paint(rng, img, cat_index, box)
            if drawn is None:
                continue
            boxes.append(box)
            anns.append((cat_index, drawn[0], drawn[1], 0))
        if rng.random() < 0.06:  # annotation noise: a box with w or h below one pixel
            cat_index = int(rng.integers(0, len(CATEGORIES)))
            thin = float(rng.choice([0.0, 0.25, 0.5, 0.75]))
            long = float(rng.integers(5, 40))
            x, y = float(rng.integers(0, width - 40)), float(rng.integers(0, height - 40))
            bbox = [x, y, thin, long] if rng.random() < 0.5 else [x, y, long, thin]
            anns.append((cat_index, bbox, bbox[2] * bbox[3], 0))
    img = np.clip(np.floor(img + 0.5), 0, 255).astype(np.uint8)
    return img, anns


def _split_json(split, images, annotations):
    return {
        "info": {"description": DESCRIPTION, "version": GENERATOR_VERSION, "split": split,
                 "seed": SEED},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"}
                       for cid, name, _ in CATEGORIES],
    }


def generate_split(out_dir, split, num_images=None):
    """Write `out_dir/<split>/*.png` and `out_dir/annotations/instances_<split>.json`."""
    code, default_count, first_id = SPLITS[split]
    count = default_count if num_images is None else num_images
    img_dir = os.path.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([SEED, code, index])
        img, anns = _scene(rng)
        img_id = first_id + index
        file_name = f"{img_id:012d}.png"
        ok, encoded = cv2.imencode(".png", img, PNG_PARAMS)
        if not ok:
            raise DatasetError(f"{file_name}: PNG encoding failed")
        with open(os.path.join(img_dir, file_name), "wb") as f:
            f.write(encoded.tobytes())
        images.append({"id": img_id, "file_name": file_name,
                       "height": int(img.shape[0]), "width": int(img.shape[1])})
        for cat_index, bbox, area, iscrowd in anns:
            x, y, w, h = (float(c) for c in bbox)
            annotations.append({
                "id": len(annotations) + 1, "image_id": img_id,
                "category_id": CATEGORIES[cat_index][0],
                "bbox": [x, y, w, h], "area": float(area), "iscrowd": iscrowd,
                # a box polygon: the data set is for box detection only
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            })
    text = json.dumps(_split_json(split, images, annotations), separators=(",", ":"))
    with open(os.path.join(out_dir, "annotations", f"instances_{split}.json"), "w",
              encoding="utf-8", newline="\n") as f:
        f.write(text)


def generate(out_dir):
    """Generate every split into `out_dir` (which should be new or empty)."""
    for split in SPLITS:
        generate_split(out_dir, split)


def _state(root):
    """'complete', 'missing', 'empty', 'ours' (outdated or partial) or 'foreign'."""
    if not os.path.exists(root):
        return "missing"
    if not os.path.isdir(root):
        return "foreign"
    if not os.listdir(root):
        return "empty"
    ours = False
    for split, (_, count, _) in SPLITS.items():
        ann = os.path.join(root, "annotations", f"instances_{split}.json")
        try:
            with open(ann, encoding="utf-8") as f:
                info = json.load(f).get("info", {})
        except (OSError, ValueError, AttributeError):
            return "ours" if ours else "foreign"
        if info.get("description") != DESCRIPTION:
            return "foreign"
        ours = True
        img_dir = os.path.join(root, split)
        if (info.get("version") != GENERATOR_VERSION or not os.path.isdir(img_dir)
                or len([n for n in os.listdir(img_dir) if n.endswith(".png")]) != count):
            return "ours"
    return "complete"


def default_root():
    return os.environ.get("GFOCAL_MINI_COCO") or DEFAULT_ROOT


def ensure_mini_coco(root=None, force=False):
    """Path of the bundled mini COCO, generating it first when needed.

    Generation writes into a temporary folder next to `root` and renames it into place, so
    an interrupted run never leaves half a data set, and concurrent callers end with one
    complete copy. An existing complete copy of the current generator version is reused.
    """
    root = os.path.abspath(os.fspath(root or default_root()))
    state = _state(root)
    if state == "complete" and not force:
        return root
    if state == "foreign":
        raise DatasetError(f"{root}: exists but is not a generated mini COCO; remove it or "
                           "choose another folder (GFOCAL_MINI_COCO)")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the data set is not
        generate(tmp)
        if os.path.exists(root):
            if _state(root) == "complete" and not force:  # a concurrent run finished first
                return root
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.old-", dir=parent)
            os.rename(root, os.path.join(old, "data"))
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            if _state(root) != "complete":
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def manifest_sha256(root, decode_images=False):
    """sha256 over (relative path, content) of every file under `root`, in sorted order.

    Content is the file's bytes, or with `decode_images` a PNG's decoded pixels (shape and
    values): what the pipeline reads, independent of the PNG encoder's version.
    """
    import hashlib
    digest = hashlib.sha256()
    paths = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            paths.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    for rel in sorted(paths):
        digest.update(rel.encode("utf-8") + b"\0")
        path = os.path.join(root, rel)
        if decode_images and rel.endswith(".png"):
            pixels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            digest.update(repr(pixels.shape).encode("ascii") + pixels.tobytes())
            continue
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()
