"""Seeded batching: the same seed and epoch give the same numpy batches, whichever
framework consumes them (docs/ARCHITECTURE.md, "The batch").

With `workers` > 0 the batches are prepared in worker processes of the standard library
(spawn), one task per batch, so their bytes do not depend on the worker count. No framework
is imported here: the Jittor port must run without PyTorch.
"""
import collections
import itertools
import multiprocessing
import numbers
import os
import pickle
import signal
import sys
import time
import weakref
from concurrent.futures import Future, ProcessPoolExecutor, TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import connection
from multiprocessing.shared_memory import SharedMemory

import cv2
import numpy as np

from gfocal.data import transforms
from gfocal.data.coco import CocoDataset, DatasetError
from gfocal.device import is_cuda

DEFAULT_MEAN = (123.675, 116.28, 103.53)
DEFAULT_STD = (58.395, 57.12, 57.375)
MAX_AUTO_WORKERS = 8
# No wait on a worker is unbounded: a batch is awaited in polls of WORKER_POLL_S that check the
# workers are alive, for at most the loader's `timeout` (BATCH_TIMEOUT_S: generous, a live
# but slow worker is not a dead one); close() waits JOIN_TIMEOUT_S per step before it
# terminates, then kills, a worker.
WORKER_POLL_S = 0.5
BATCH_TIMEOUT_S = 600.0
JOIN_TIMEOUT_S = 2.0
SPAWN_HINT = ("spawned data workers must be able to import the main module: run the script "
              "from a file (its work under `if __name__ == '__main__':`), or use workers=0 "
              "(config: data.workers = 0)")


def _count(value, what, low, high=None):
    """`value` as an int when it is an integer in [low, high]; else a ValueError saying
    `what` it must be."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low
            or (high is not None and value > high)):
        raise ValueError(f"{what}, got {value!r}")
    return int(value)


def resolve_workers(setting, device):
    """Worker processes for config `data.workers` (`"auto"` or an int >= 0) on `device`.

    `"auto"` is 0 on the CPU, where the model needs the same cores, and otherwise half the
    cores (at least 1, at most MAX_AUTO_WORKERS).
    """
    if setting != "auto":
        return _count(setting, "workers must be 'auto' or an integer >= 0", 0)
    if not is_cuda(str(device)):
        return 0
    return min(MAX_AUTO_WORKERS, max(1, (os.cpu_count() or 1) // 2))


class DataLoader:
    """Iterates Batch dicts over a CocoDataset-like `dataset` (len() and load(idx)).

    Per epoch, `np.random.default_rng([seed, epoch])` draws first the permutation (when
    shuffling) and then one uniform number per sample in iteration order; a sample is
    flipped when its number is < flip_prob. Nothing else consumes that generator.

    Data-parallel training: process `rank` of `world_size` gets, of each global batch of
    `batch_size * world_size` samples (the batch one process with that batch size would
    get, same order and flips), samples rank * batch_size .. (rank + 1) * batch_size - 1.
    An incomplete last global batch is kept when it gives every process a sample, else
    dropped by all (so every process takes the same number of steps).

    `workers` = 0 prepares the batches in this process; `workers` = N > 0 in N spawned
    processes with at most `prefetch` batches in flight (default 2 per worker), yielded in
    plan order. The pool starts on first use and lives across epochs until `close()` (or
    the end of `with loader:`, or garbage collection). It works on a copy of the loader
    taken when it starts: settings changed later need a `close()` first. The dataset must
    then be picklable. A worker that dies, or no batch for `timeout` seconds while all are
    alive, ends the iteration with a one-line DatasetError.
    """

    def __init__(self, dataset, batch_size, img_scale, flip_prob=0.5, shuffle=True, seed=0,
                 mean=DEFAULT_MEAN, std=DEFAULT_STD, to_rgb=True, size_divisor=32,
                 drop_last=False, workers=0, prefetch=None, rank=0, world_size=1,
                 timeout=BATCH_TIMEOUT_S):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.img_scale = tuple(img_scale)
        self.flip_prob = float(flip_prob)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.mean, self.std, self.to_rgb = mean, std, to_rgb
        self.size_divisor = int(size_divisor)
        self.drop_last = drop_last
        self.workers = _count(workers, "workers must be an integer >= 0", 0)
        self.prefetch = (2 * self.workers if prefetch is None
                         else _count(prefetch, "prefetch must be an integer >= 1", 1))
        self.world_size = _count(world_size, "world_size must be an integer >= 1", 1)
        self.rank = _count(rank, f"rank must be an integer in [0, {self.world_size - 1}]", 0,
                           self.world_size - 1)
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.epoch = 0
        self._pool = self._finalizer = None
        self._delivered = 0  # batches the current pool has returned

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        n, size = len(self.dataset), self.batch_size * self.world_size
        full, rest = divmod(n, size)
        # the last process needs a sample of an incomplete last batch
        keep_rest = not self.drop_last and rest > (self.world_size - 1) * self.batch_size
        return full + int(keep_rest)

    def plan(self):
        """(order, flips) of this epoch: dataset indices and per-sample flip decisions."""
        n = len(self.dataset)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        flips = rng.random(n) < self.flip_prob
        return order, flips

    def __iter__(self):
        return self.batches(0)

    def batches(self, skip=0):
        """This epoch's batches from batch index `skip` on (a mid-epoch resume); the
        skipped batches are not prepared."""
        skip = _count(skip, f"skip must be an integer in [0, {len(self)}] (the batches of an "
                      "epoch)", 0, len(self))
        return self._prepared(self._batch_tasks(skip))

    def shard(self, rank, world):
        """Batches rank, rank + world, ... of this (one-process) loader's epoch: a
        data-parallel evaluation, where process `rank` of `world` predicts every world-th
        batch, each padded as in one process; the other batches are not prepared."""
        return self._prepared(self._batch_tasks(0)[rank::world])

    def _prepared(self, tasks):
        if self.workers and tasks:
            return self._pooled(tasks)
        return (self.prepare_batch(batch) for batch in tasks)

    def _batch_tasks(self, skip):
        """[(dataset index, flip), ...] of this process's part of each global batch from
        batch `skip` on, in plan order."""
        order, flips = self.plan()
        size, n = self.batch_size * self.world_size, len(order)
        mine = self.rank * self.batch_size
        return [[(int(order[i]), bool(flips[i]))
                 for i in range(start + mine, min(start + mine + self.batch_size, n))]
                for start in range(skip * size, len(self) * size, size)]

    def prepare_batch(self, tasks):
        """The collated batch of `tasks` ((idx, do_flip) pairs). A sample that raises
        becomes a DatasetError naming its image file, here and in a worker alike."""
        samples = []
        for idx, do_flip in tasks:
            try:
                samples.append(self.prepare(idx, do_flip))
            except Exception as exc:
                error = _sample_error(self.dataset, idx, exc)
                if error is exc:
                    raise
                raise error from exc
        return collate(samples)

    def prepare(self, idx, do_flip):
        """One sample through resize -> flip -> normalise -> pad."""
        data = self.dataset.load(idx)
        img, gt_bboxes, scale_factor = transforms.resize(data["img"], data["gt_bboxes"],
                                                         self.img_scale)
        img_shape = img.shape[:2]
        ignore = transforms.scale_boxes(data["gt_bboxes_ignore"], scale_factor, img_shape)
        if do_flip:
            img, gt_bboxes = transforms.flip(img, gt_bboxes)
            ignore = transforms.flip_boxes(ignore, img_shape[1])
        img = transforms.normalize(img, self.mean, self.std, self.to_rgb)
        img = transforms.pad(img, self.size_divisor)
        meta = {"img_id": int(data["img_id"]), "file_name": data["file_name"],
                "ori_shape": tuple(int(s) for s in data["ori_shape"]),
                "img_shape": tuple(int(s) for s in img_shape),
                "pad_shape": tuple(int(s) for s in img.shape[:2]),
                "scale_factor": scale_factor, "flip": bool(do_flip)}
        return {"img": img, "gt_bboxes": gt_bboxes, "gt_labels": data["gt_labels"],
                "gt_bboxes_ignore": ignore, "img_meta": meta}

    # ---- worker processes ----------------------------------------------------------------
    def _pooled(self, tasks):
        """The batches of `tasks` from the pool, in order, at most `prefetch` in flight."""
        pool = self._start_pool()
        todo, in_flight = iter(tasks), collections.deque()

        def refill():
            for items in itertools.islice(todo, self.prefetch - len(in_flight)):
                in_flight.append((items, _submit(pool, items)))

        try:
            refill()
            while in_flight:
                items, future = in_flight.popleft()
                batch = self._collect(future, items, len(in_flight))
                refill()
                yield batch
        finally:  # also on close() or garbage collection of an unfinished iterator
            for _, future in in_flight:
                future.cancel()

    def _collect(self, future, tasks, ahead):
        """The batch of `future`, awaited in short polls that check the workers are alive.
        Any failure shuts the pool down (after a crash its processes are gone or in doubt);
        a dead worker or a batch overdue by `timeout` becomes a DatasetError."""
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    batch = future.result(timeout=WORKER_POLL_S)
                    self._delivered += 1
                    return batch
                except FutureTimeout:
                    ended = self._ended_workers()
                    if ended:
                        raise DatasetError(self._death_message(ended, tasks, ahead)) from None
                    if time.monotonic() > deadline:
                        raise DatasetError(
                            f"no batch from the {self.workers} data workers in "
                            f"{self.timeout:g} s although they are alive (a sample that "
                            "slow, or a worker stuck reading it?), awaiting the batch with "
                            f"files {_file_list(self.dataset, tasks)}") from None
        except BrokenProcessPool as exc:
            message = self._death_message(self._ended_workers(), tasks, ahead)
            self.close()
            raise DatasetError(message) from exc
        except BaseException:
            self.close()
            raise

    def _ended_workers(self):
        """[(number, pid, exit code)] of the pool's workers that have ended."""
        workers = _pool_processes(self._pool) if self._pool is not None else []
        processes = list(enumerate(workers, 1))
        ready = set(connection.wait([p.sentinel for _, p in processes], timeout=0))
        ended = []
        for number, process in processes:
            if process.sentinel in ready:
                ended.append((number, process.pid, _exit_code(process)))
        # a broken pool terminates the other workers (SIGTERM): name the one that began it
        first = [e for e in ended if e[2] != -signal.SIGTERM]
        return first or ended

    def _death_message(self, ended, tasks, ahead):
        """One line: which worker ended how, the awaited batch's files, and (when no batch
        came back yet: most likely a death at start-up) the hint on the main module."""
        if ended:
            number, pid, code = ended[0]
            how = (f"was killed by signal {-code} ({signal.Signals(-code).name})"
                   if code is not None and code < 0 else f"exited with code {code}")
            who = f"data worker {number} of {self.workers} (pid {pid}) {how}"
        else:
            who = f"a data worker of {self.workers} exited abruptly (BrokenProcessPool)"
        # the pool fails every pending batch at once: the crash may be in a later one
        later = (f" (or one of the {ahead} batch{'es' * (ahead > 1)} prefetched after it)"
                 if ahead else "")
        hint = "" if self._delivered else f"; no batch had come back yet: {SPAWN_HINT}"
        return (f"{who} while the batch with files {_file_list(self.dataset, tasks)}{later} "
                f"was awaited{hint}")

    def _start_pool(self):
        """The worker pool, started on first use (spawn: no fork of a process that may hold
        framework threads or a GPU context)."""
        if self._pool is None:
            _check_main_importable()
            # The workers get the loader from shared memory, not as initargs: spawn writes
            # those into the new process's pipe while it still holds the pipe's read end, so
            # a payload over the pipe's buffer blocks for ever when the process dies at
            # start-up. A copy taken now: a reference to self would keep the loader alive
            # and its finalizer from ever running.
            payload = pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)
            memory = SharedMemory(create=True, size=len(payload))
            memory.buf[:len(payload)] = payload
            pool = ProcessPoolExecutor(self.workers,
                                       mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker,
                                       initargs=(memory.name, len(payload)))
            self._finalizer = weakref.finalize(self, _stop_pool, pool, memory)
            self._pool, self._delivered = pool, 0
        return self._pool

    def close(self):
        """Stop the worker processes (idempotent, bounded); a later iteration starts new
        ones."""
        if self._finalizer is not None:
            self._finalizer()  # _stop_pool, at most once
        self._pool = self._finalizer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __getstate__(self):
        # what a worker needs: the dataset and the settings, not this process's pool
        return {**self.__dict__, "_pool": None, "_finalizer": None}


_worker_loader = None


def _init_worker(name, size):
    global _worker_loader
    memory = SharedMemory(name)
    try:
        # trusted: the parent process pickled this loader into memory it created a moment
        # ago (no file, nothing a user supplies); spawn itself unpickles the same way
        _worker_loader = pickle.loads(memory.buf[:size])
    finally:
        memory.close()
    cv2.setNumThreads(1)  # N workers share the cores: OpenCV's own threads would oversubscribe
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it shuts us down


def _worker_batch(tasks):
    return _worker_loader.prepare_batch(tasks)


def _stop_pool(pool, memory):
    """Shut `pool` down without an unbounded wait: each worker gets JOIN_TIMEOUT_S to end,
    then is terminated, then killed; then the loader's shared copy is freed."""
    processes = _pool_processes(pool)  # shutdown drops the pool's reference to them
    pool.shutdown(wait=False, cancel_futures=True)
    for stop in (None, "terminate", "kill"):
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for process in processes:
            if stop and process.is_alive():
                getattr(process, stop)()
            process.join(max(0.0, deadline - time.monotonic()))
        processes = [p for p in processes if p.exitcode is None]
    memory.close()
    memory.unlink()


def _pool_processes(pool):
    """The worker processes (multiprocessing.Process) of ProcessPoolExecutor `pool`, which
    alone tell a dead worker and its exit code and can be stopped within a bound; [] once
    the pool is shut down."""
    # private: the executor has no public accessor for them (tests/test_dependency_apis.py)
    return list((pool._processes or {}).values())


def _exit_code(process):
    """The exit code of a process whose sentinel is ready: it may lag a moment (the pool's
    own thread may be reaping the process at the same time)."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while process.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return process.exitcode


def _check_main_importable():
    """A DatasetError now, before workers that would die at start-up: spawn starts each by
    running the main module's file (a script read from stdin has none)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(getattr(main, "__spec__", None), "name", None) is None and path \
            and not os.path.isfile(path):
        raise DatasetError(f"data workers cannot start: the main module {path!r} is not a "
                           f"file; {SPAWN_HINT}")


def _submit(pool, tasks):
    """pool.submit, or a future holding the error of a pool that already broke, so that
    the failure surfaces in batch order like the others."""
    try:
        return pool.submit(_worker_batch, tasks)
    except BrokenProcessPool as exc:
        failed = Future()
        failed.set_exception(exc)
        return failed


def _file_list(dataset, tasks):
    """"a.png, b.png in <folder>": the image files of `tasks`."""
    names = ", ".join(_image_file(dataset, idx)[1] for idx, _ in tasks)
    folder = _image_file(dataset, tasks[0][0])[0]
    return f"{names} in {folder}" if folder else names


def _image_file(dataset, idx):
    """(folder, file name) of sample `idx`'s image without reading it: CocoDataset's layout,
    or ("", "sample <idx>") for a dataset without one."""
    try:
        return dataset.img_dir, dataset.coco.imgs[dataset.img_ids[idx]]["file_name"]
    except (AttributeError, KeyError, IndexError, TypeError):
        return "", f"sample {idx}"


def _sample_error(dataset, idx, exc):
    """`exc` of preparing sample `idx` as a one-line DatasetError naming the image file;
    `exc` itself when it is a DatasetError that already does."""
    path = os.path.join(*_image_file(dataset, idx))
    if isinstance(exc, DatasetError) and path in str(exc):
        return exc
    text = " ".join(str(exc).split())  # e.g. OpenCV's messages span lines
    return DatasetError(f"{path}: preparing the sample failed: {type(exc).__name__}: {text}")


def collate(samples):
    """Stack padded HxWx3 images into (B, 3, H_max, W_max), zero filled; lists for the rest."""
    height = max(s["img"].shape[0] for s in samples)
    width = max(s["img"].shape[1] for s in samples)
    imgs = np.zeros((len(samples), 3, height, width), dtype=np.float32)
    for i, s in enumerate(samples):
        h, w = s["img"].shape[:2]
        imgs[i, :, :h, :w] = s["img"].transpose(2, 0, 1)
    return {"imgs": imgs,
            "gt_bboxes": [s["gt_bboxes"] for s in samples],
            "gt_labels": [s["gt_labels"] for s in samples],
            "gt_bboxes_ignore": [s["gt_bboxes_ignore"] for s in samples],
            "img_metas": [s["img_meta"] for s in samples]}


def per_process_batch(cfg, world_size, key="batch_size"):
    """cfg's global batch `data.<key>` split over `world_size` processes (ConfigError, one
    line, when it does not divide)."""
    size = cfg["data"][key]
    if size % world_size:
        from gfocal.config import ConfigError
        raise ConfigError(f"{cfg.get('source', 'config')}: 'data.{key}' = {size} is not "
                          f"divisible by the {world_size} processes (it is the global batch)")
    return size // world_size


def build_dataloader(cfg, split, device="cpu", rank=0, world_size=1):
    """DataLoader for split 'train' or 'val' from a config of `gfocal.config`; `device`
    (cpu, cuda, cuda:N: where the model runs) decides what `data.workers = "auto"` means.
    `data.batch_size` is the global batch: `world_size` processes get an equal part each."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    data = cfg["data"]
    key = "batch_size" if split == "train" else "val_batch_size"
    batch_size = per_process_batch(cfg, world_size, key)
    root = data["root"]
    if not root:
        from gfocal.data.synthetic import ensure_mini_coco
        root = ensure_mini_coco()
    train = split == "train"
    dataset = CocoDataset(os.path.join(root, data[f"{split}_ann"]),
                          os.path.join(root, data[f"{split}_img"]), test_mode=not train)
    num_classes = cfg.get("model", {}).get("num_classes")
    if num_classes is not None and num_classes != dataset.num_classes:
        raise DatasetError(f"{dataset.ann_file}: has {dataset.num_classes} categories but "
                           f"'model.num_classes' = {num_classes} in {cfg.get('source', 'config')}")
    return DataLoader(dataset, batch_size=batch_size, rank=rank,
                      world_size=world_size,
                      img_scale=data["img_scale"],
                      flip_prob=data["flip_prob"] if train else 0.0,
                      shuffle=train, seed=cfg.get("train", {}).get("seed", 0),
                      mean=data["mean"], std=data["std"], to_rgb=data["to_rgb"],
                      size_divisor=data["size_divisor"], drop_last=False,
                      workers=resolve_workers(data["workers"], device))
