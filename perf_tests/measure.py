"""Measurement helpers for the performance suite (perf_tests/): inputs, peak memory,
thread/oneDNN facts and the Jittor/PyTorch ratio summary. Sync, no_grad and gradients are
the port's own (gfocal/ports.py).

Framework imports are lazy so that a Jittor-only environment never imports torch.
"""
import contextlib
import ctypes
import ctypes.util
import gc
import html
import math
import os
import statistics
import zlib

import numpy as np

from gfocal.config import DEFAULTS
from gfocal.device import is_cuda
from gfocal.ports import FRAMEWORKS
from gfocal.tables import html_table, text_table
from tests.factories import pipeline_batch

MB = 1024 * 1024

# ---- benchmark inputs ----------------------------------------------------------------------
CPU_SIZE = (320, 320)      # (h, w): small input so that 2 cores finish in minutes
GPU_SIZE = (800, 1333)     # the paper's test scale
SMOKE_SIZE = (128, 128)    # --benchmark-disable: every case once, only to prove it runs
BOXES_PER_IMAGE = 6
# Classifier bias of the benchmark model: with the init bias (-4.6) no score passes
# score_thr 0.05 and NMS would have nothing to do; at -4.0 about 1900 (anchor, class)
# pairs of the benchmark weights pass at 320x320 (100 kept), a trained detector's load.
INFERENCE_CLS_BIAS = -4.0


def model_config():
    """The paper model: ResNet-50, 80 classes, every default of docs/MODEL.md."""
    return dict(DEFAULTS["model"])


def make_batch(batch_size, img_hw, num_classes=80, size_divisor=32, seed=0):
    """A batch dict in the shared pipeline format (docs/ARCHITECTURE.md, "The batch")."""
    rng = np.random.default_rng([seed, batch_size, *img_hw])
    h, w = img_hw
    pad_h = math.ceil(h / size_divisor) * size_divisor
    pad_w = math.ceil(w / size_divisor) * size_divisor
    imgs = np.zeros((batch_size, 3, pad_h, pad_w), np.float32)
    imgs[:, :, :h, :w] = rng.standard_normal((batch_size, 3, h, w), dtype=np.float32)
    bboxes, labels = [], []
    for _ in range(batch_size):
        side = rng.uniform(0.1, 0.6, size=(BOXES_PER_IMAGE, 2)) * (w, h)
        x1y1 = rng.uniform(0, 1, size=(BOXES_PER_IMAGE, 2)) * ((w, h) - side)
        bboxes.append(np.concatenate([x1y1, x1y1 + side], axis=1).astype(np.float32))
        labels.append(rng.integers(0, num_classes, BOXES_PER_IMAGE).astype(np.int64))
    return pipeline_batch(imgs, bboxes, labels, [(h, w)] * batch_size,
                          [(pad_h, pad_w)] * batch_size, file_name="perf_{}.jpg")


def benchmark_weights(state):
    """Deterministic weights for both ports, from the port's state-dict names and shapes.

    Seeded by the parameter name, so both ports get the same numbers without building the
    other port's model; scaled like the ports' own init (He-normal convs, identity norms).
    """
    out = {}
    for name, value in state.items():
        shape = value.shape
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_var" or (leaf == "weight" and len(shape) == 1) or leaf == "scale":
            arr = np.ones(shape)
        elif leaf in ("running_mean", "bias"):
            arr = np.zeros(shape)
        elif leaf == "project":
            arr = np.arange(shape[0])
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            arr = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
        else:
            raise ValueError(f"benchmark_weights: no rule for parameter {name} {shape}")
        out[name] = np.asarray(arr, np.float32)
    if "bbox_head.gfl_cls.bias" in out:
        out["bbox_head.gfl_cls.bias"][:] = INFERENCE_CLS_BIAS
    return out


# ---- environment facts recorded with every benchmark --------------------------------------
def framework_info(port, device):
    """{framework, device, threads, onednn, version, ...} for a benchmark's extra_info: the
    port's facts on `device` (cpu, cuda, cuda:N)."""
    from gfocal.runtime import num_threads
    info = {"framework": port.FRAMEWORK, "device": device, "threads": num_threads()}
    # NVIDIA's switch over cuBLAS and cuDNN: "0" forbids TF32 whatever a framework asks.
    tf32_override = os.environ.get("NVIDIA_TF32_OVERRIDE")
    info.update(_FACTS[port.FRAMEWORK](is_cuda(device), tf32_override))
    return info


def _jittor_facts(cuda, tf32_override):
    import jittor as jt
    from jittor import compile_extern

    from gfocal.runtime import jittor_onednn_enabled
    # oneDNN convolutions use OMP_NUM_THREADS; Jittor's generated CPU kernels (every
    # fused element-wise/reduce op) carry no OpenMP pragma, so they run on one thread.
    info = dict(version=jt.__version__, onednn=bool(jittor_onednn_enabled()),
                use_cuda=bool(jt.flags.use_cuda), fused_op_threads=1)
    if cuda:
        # cuDNN off (conv_opt=1): convolutions run as Jittor's own CUDA kernels. Jittor
        # sets no cuDNN math type unless use_tensorcore, and cuDNN's default permits TF32
        # on Ampere and later: TF32 is off only under NVIDIA_TF32_OVERRIDE=0.
        cudnn = compile_extern.cudnn is not None
        tensorcore = int(jt.flags.use_tensorcore)
        info.update(use_tensorcore=tensorcore, cudnn=cudnn,
                    cuda_archs=list(getattr(jt.flags, "cuda_archs", [])),  # CUDA builds
                    nvidia_tf32_override=tf32_override,
                    tf32=bool(tensorcore or (cudnn and tf32_override != "0")))
    return info


def _torch_facts(cuda, tf32_override):
    import torch
    info = dict(version=torch.__version__, framework_threads=torch.get_num_threads(),
                onednn=bool(torch.backends.mkldnn.is_available()
                            and torch.backends.mkldnn.enabled))
    if cuda:
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    tf32=bool(torch.backends.cudnn.allow_tf32) and tf32_override != "0",
                    tf32_matmul=(bool(torch.backends.cuda.matmul.allow_tf32)
                                 and tf32_override != "0"),
                    nvidia_tf32_override=tf32_override,
                    cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
                    cudnn_deterministic=bool(torch.backends.cudnn.deterministic))
    return info


def setting_info(port, setting, device):
    """{setting, tuned_features} for a benchmark's extra_info (gfocal/tuning.py)."""
    from gfocal.tuning import features
    return {"setting": setting, "tuned_features": list(features(port.FRAMEWORK, setting,
                                                                  device))}


# Each framework's facts, read from the framework itself (a port has no version or build
# switches of its own to ask); keyed like gfocal.ports.FRAMEWORKS.
_FACTS = {"torch": _torch_facts, "jittor": _jittor_facts}


# ---- peak memory ---------------------------------------------------------------------------
def _proc_status_kb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss():
    """Linux >= 4.0 resets VmHWM (the process's peak RSS) on '5' > /proc/self/clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_supported():
    return _proc_status_kb("VmHWM") is not None and _reset_peak_rss()


def _release_free_heap():
    # glibc keeps freed heap pages: without a trim the baseline RSS hides the step's growth.
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def release_caches(port):
    """Return cached blocks to the system so that the next step's peak is its own."""
    gc.collect()
    port.release_caches()
    _release_free_heap()


def measure_peak_memory(port, device, fn):
    """Run fn() once (the port on `device`) and return {name: MB} of its peak memory.

    CPU: process peak RSS (VmHWM after a reset) and its growth over the RSS before the call.
    CUDA: the port's allocator peak (port.peak_device_memory: PyTorch's allocated and
    reserved; Jittor's allocator size after a cache flush).
    """
    release_caches(port)
    if is_cuda(device):
        fn()
        port.sync()
        return {f"gpu_peak_{kind}_mb": size / MB
                for kind, size in port.peak_device_memory().items()}
    before = _proc_status_kb("VmRSS")
    if before is None or not _reset_peak_rss():  # not Linux: no per-call peak available
        fn()
        port.sync()
        return {"cpu_peak_rss_mb": None, "cpu_peak_rss_growth_mb": None}
    fn()
    port.sync()
    peak = _proc_status_kb("VmHWM")
    return {"cpu_peak_rss_mb": peak / 1024, "cpu_peak_rss_growth_mb": (peak - before) / 1024}


# ---- Jittor / PyTorch ratio summary --------------------------------------------------------
def ratio_rows(benchmarks):
    """Per group, both ports' min/median (s) and the Jittor/PyTorch ratios.

    `benchmarks`: pytest-benchmark's records (objects with `.group`, `.extra_info` holding
    'framework', and `.stats` with `.data`, `.min`, `.median`). Records without timings
    (a disabled or failed benchmark) are ignored; a group where one port has no timing
    gets ratio None.
    """
    by_group = {}
    for bench in benchmarks:
        framework = (getattr(bench, "extra_info", None) or {}).get("framework")
        stats = getattr(bench, "stats", None)
        if framework not in FRAMEWORKS or stats is None or not getattr(stats, "data", None):
            continue
        by_group.setdefault(bench.group or "", {})[framework] = (stats.min, stats.median)
    rows = []
    for group in by_group:  # first-seen order = test order
        times = by_group[group]
        row = {"group": group}
        for fw in FRAMEWORKS:
            row[f"{fw}_min"], row[f"{fw}_median"] = times.get(fw, (None, None))
        for stat in ("min", "median"):
            t, j = row[f"torch_{stat}"], row[f"jittor_{stat}"]
            row[f"ratio_{stat}"] = j / t if t and j is not None else None
        rows.append(row)
    return rows


def setting_rows(benchmarks):
    """Per case timed in more than one speed setting (extra_info 'setting'; gfocal/tuning.py):
    each port's median (s) and first call (s) per setting, its tuned/default ratio, and the
    Jittor/PyTorch ratio in each setting. Rows only where a case has a tuned timing."""
    cases = {}
    for bench in benchmarks:
        info = getattr(bench, "extra_info", None) or {}
        stats = getattr(bench, "stats", None)
        framework, setting = info.get("framework"), info.get("setting", "default")
        if framework not in FRAMEWORKS or stats is None or not getattr(stats, "data", None):
            continue
        case = (bench.group or "").replace(f"-{setting}", "", 1)  # label_of's suffix
        cases.setdefault(case, {})[(framework, setting)] = (stats.median,
                                                             info.get("first_call_s"))
    rows = []
    for case, times in cases.items():
        if not any(setting == "tuned" for _, setting in times):
            continue
        row = {"case": case}
        for fw in FRAMEWORKS:
            for setting in ("default", "tuned"):
                row[f"{fw}_{setting}"], row[f"{fw}_{setting}_first"] = times.get(
                    (fw, setting), (None, None))
            d, t = row[f"{fw}_default"], row[f"{fw}_tuned"]
            row[f"{fw}_gain"] = t / d if d and t is not None else None
        for setting in ("default", "tuned"):
            t, j = row[f"torch_{setting}"], row[f"jittor_{setting}"]
            row[f"ratio_{setting}"] = j / t if t and j is not None else None
        rows.append(row)
    return rows


SETTING_HEAD = ("case", "torch default ms", "torch tuned ms", "torch T/D", "jittor default ms",
                "jittor tuned ms", "jittor T/D", "J/T default", "J/T tuned",
                "torch tuned 1st s", "jittor tuned 1st s")


def _setting_cells(r):
    first = ["-" if r[f"{fw}_tuned_first"] is None else f"{r[f'{fw}_tuned_first']:.1f}"
             for fw in FRAMEWORKS]
    return (r["case"], _fmt_time(r["torch_default"]), _fmt_time(r["torch_tuned"]),
            _fmt_ratio(r["torch_gain"]), _fmt_time(r["jittor_default"]),
            _fmt_time(r["jittor_tuned"]), _fmt_ratio(r["jittor_gain"]),
            _fmt_ratio(r["ratio_default"]), _fmt_ratio(r["ratio_tuned"]), *first)


def setting_table_text(rows):
    return _text_table(SETTING_HEAD, [_setting_cells(r) for r in rows])


def setting_table_html(rows):
    return _titled_table("<h2>Default and tuned speed settings</h2>",
                         "Medians; T/D = tuned time / default time (below 1: tuned faster); "
                         "J/T = Jittor / PyTorch in each setting; 1st = the tuned setting's "
                         "first call (compilation, caches), timed apart. The features each "
                         "setting used: extra_info tuned_features, gfocal/tuning.py.",
                         SETTING_HEAD, [_setting_cells(r) for r in rows])


def paired_ratios(torch_times, jittor_times):
    """Jittor/PyTorch ratio of each interleaved pair, and their median and minimum."""
    ratios = [j / t for t, j in zip(torch_times, jittor_times)]
    return {"pair_ratios": ratios, "ratio_median": statistics.median(ratios),
            "ratio_of_mins": min(jittor_times) / min(torch_times)}


def paired_rows(benchmarks):
    """Rows of the interleaved cases (extra_info framework 'paired'), in test order."""
    rows = []
    for bench in benchmarks:
        info = getattr(bench, "extra_info", None) or {}
        if info.get("framework") == "paired" and info.get("pair_ratios"):
            rows.append({"group": bench.group or "", "pairs": len(info["pair_ratios"]),
                         "torch_median": statistics.median(info["torch_times"]),
                         "jittor_median": statistics.median(info["jittor_times"]),
                         "ratio_median": info["ratio_median"],
                         "ratio_of_mins": info["ratio_of_mins"]})
    return rows


def paired_table_text(rows):
    if not rows:
        return "no interleaved timings"
    head = ("case (interleaved)", "pairs", "torch med ms", "jittor med ms",
            "median pair J/T", "J/T of mins")
    body = [(r["group"], str(r["pairs"]), _fmt_time(r["torch_median"]),
             _fmt_time(r["jittor_median"]), _fmt_ratio(r["ratio_median"]),
             _fmt_ratio(r["ratio_of_mins"])) for r in rows]
    return _text_table(head, body)


def paired_table_html(rows):
    title = "<h2>Interleaved (paired) Jittor / PyTorch ratio</h2>"
    if not rows:
        return title + "<p>no interleaved timings</p>"
    head = ("case", "pairs", "torch median (ms)", "jittor median (ms)", "median pair ratio",
            "ratio of minima")
    body = [(r["group"], r["pairs"], _fmt_time(r["torch_median"]),
             _fmt_time(r["jittor_median"]), _fmt_ratio(r["ratio_median"]),
             _fmt_ratio(r["ratio_of_mins"])) for r in rows]
    return _titled_table(title, "One PyTorch call and one Jittor call per round, alternating "
                         "which goes first: load that drifts over minutes hits both alike.",
                         head, body)


def geometric_mean(values):
    values = [v for v in values if v]
    if not values:
        return None
    return statistics.geometric_mean(values)


def _fmt_time(seconds):
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _fmt_ratio(ratio):
    return "-" if ratio is None else f"{ratio:.2f}"


def ratio_table_text(rows):
    """Plain-text table for the terminal; says so when there are no timings."""
    if not rows:
        return ("no timings (benchmarks disabled, e.g. --benchmark-disable smoke mode, "
                "or none collected)")
    head = ("case", "torch min ms", "torch med ms", "jittor min ms", "jittor med ms",
            "J/T min", "J/T med")
    body = [(r["group"], _fmt_time(r["torch_min"]), _fmt_time(r["torch_median"]),
             _fmt_time(r["jittor_min"]), _fmt_time(r["jittor_median"]),
             _fmt_ratio(r["ratio_min"]), _fmt_ratio(r["ratio_median"])) for r in rows]
    gm = (geometric_mean(r["ratio_min"] for r in rows),
          geometric_mean(r["ratio_median"] for r in rows))
    body.append(("geometric mean", "", "", "", "", _fmt_ratio(gm[0]), _fmt_ratio(gm[1])))
    return _text_table(head, body)


def _text_table(head, body):
    # case names left, numbers right, so that their digits line up
    return text_table(head, body, align="l" + "r" * (len(head) - 1), rule=True)


def ratio_table_html(rows):
    """The same table as an HTML fragment for pytest-html's summary."""
    title = "<h2>Jittor / PyTorch time ratio per case</h2>"
    if not rows:
        return title + "<p>" + html.escape(ratio_table_text(rows)) + "</p>"
    head = ("case", "torch min (ms)", "torch median (ms)", "jittor min (ms)",
            "jittor median (ms)", "ratio min", "ratio median")
    body = [(r["group"], _fmt_time(r["torch_min"]), _fmt_time(r["torch_median"]),
             _fmt_time(r["jittor_min"]), _fmt_time(r["jittor_median"]),
             _fmt_ratio(r["ratio_min"]), _fmt_ratio(r["ratio_median"])) for r in rows]
    slow = [r["ratio_median"] is not None and r["ratio_median"] > 1.0 for r in rows]
    return _titled_table(title, "ratio = Jittor time / PyTorch time (below 1: Jittor faster).",
                         head, body, slow)


def _titled_table(title, intro, head, body, slow=None):
    """Title, one intro paragraph, a bordered table; rows flagged in `slow` in red."""
    red = [" style='color:#b00'" if is_slow else "" for is_slow in slow] if slow else None
    return (f"{title}<p>{intro}</p>"
            + html_table(head, body, attrs=" border='1' cellpadding='3'", cell_attrs=red))
