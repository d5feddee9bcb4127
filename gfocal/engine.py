"""Training and evaluation loops, written once for both ports.

A port supplies the framework-specific pieces (`build_detector`, `train.build_optimizer`,
`train.set_lr`, `train.train_step`, `checkpoint.state_dict_numpy/load_state_dict_numpy`); this
module owns the schedule, the batches, the log, checkpoints and the NaN stop, so both ports
are trained by literally the same loop.
"""
import contextlib
import dataclasses
import os
import sys
import time
from typing import Any, Callable, Optional

from tqdm import tqdm

from gfocal.checkpoint_io import load_any, read_training_state, save_checkpoint
from gfocal.ports import load_port
from gfocal.data.loader import build_dataloader, per_process_batch
from gfocal.device import DeviceError, is_cuda, resolve_device
from gfocal.launch import check_launcher, job_device, job_size, local_rank, show_only_gpu
from gfocal.precision import checked_scale_state, slow_on_cpu
from gfocal.evaluation.coco_eval import evaluate as coco_evaluate
from gfocal.evaluation.coco_eval import results_to_coco
from gfocal.finite import NonFiniteError
from gfocal.interrupt import StopRequest, TrainingInterrupted
from gfocal.runlog import NonFiniteLoss, RunLog, check_finite, console_line
from gfocal.schedule import learning_rate
from gfocal.workdir import claim_for_new_run, own_work_dir


@dataclasses.dataclass(frozen=True)
class TrainRun:
    """One training run: a validated config and the choices that belong to this run only
    (the one argument of `train`). Seed, epochs, evaluation interval and the rest come from
    `cfg`."""
    cfg: dict
    framework: str                   # "torch" or "jittor"
    work_dir: str                    # the log and checkpoints go here (process 0 only)
    resume: Optional[str] = None     # a checkpoint of either port: weights and momentum
    init_weights: Optional[str] = None  # default cfg's train.init_weights (any format)
    max_iters: Optional[int] = None  # stop early (a checkpoint `latest` is still written)
    device: Optional[str] = None     # default cfg's train.device
    launcher: str = "none"           # "pytorch" (torchrun) / "mpi" (mpirun): data-parallel
    progress: bool = True            # the progress bar (process 0 only)
    on_iter_end: Optional[Callable] = None  # (iteration, model, port), process 0 only
    keep_model: bool = False         # return the trained model and its port
    overwrite: bool = False          # a work_dir holding a run: move its files aside
                                     # (work_dir/previous/<time>/) and start a new one


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What `train` did. Only plain values, unless the run asked for `keep_model`."""
    log: Optional[str]     # the JSON-lines log; None in processes other than 0, or when
                           # nothing was trained
    checkpoint: str        # `latest` in work_dir, or the resumed file when complete
    evals: list            # [{'epoch': n, 'stats': {12 COCO statistics}}] (process 0)
    iters: int             # iterations done, resumed ones included
    total: int             # iterations the run was to reach (epochs, or max_iters)
    complete: bool         # the resumed checkpoint had done them all: nothing trained
    rank: int              # this process in a data-parallel job (0 alone)
    model: Any = None      # the trained detector (keep_model only)
    port: Any = None       # its port (keep_model only)


def use_port(cfg, framework, device):
    """The port of `framework`, with `device` (already resolved) made its device and cfg's
    numerics switches (TF32, the precision train.amp) and speed setting (train.tuning)
    applied."""
    port = load_port(framework)
    port.use_device(device, tf32=cfg["train"]["tf32"])
    port.precision.use_precision(cfg["train"]["amp"], device)
    port.tuning.use_setting(cfg["train"]["tuning"], device)
    return port


def select_device(cfg, framework, device=None):
    """(port, device name): `device` (default cfg's train.device) resolved and made the
    port's device, with cfg's numerics switches."""
    name = resolve_device(device or cfg["train"]["device"])
    return use_port(cfg, framework, name), name


def build_model(cfg, framework, init_weights=None, device=None):
    """A detector of `framework` on `device` (default cfg's), with weights from
    `init_weights` (a checkpoint) if given."""
    port, _ = select_device(cfg, framework, device)
    return port, new_detector(port, cfg, init_weights)


def new_detector(port, cfg, init_weights=None):
    """cfg's detector on the port's device, initialised from cfg's train.seed, with weights
    from `init_weights` (default cfg's train.init_weights; a checkpoint of any format) if
    given."""
    # The initialisation is the only random draw of a run (the data plan has its own
    # generator, seeded from the same train.seed): seeding here makes every run of a seed
    # start alike, whatever was drawn before in this process.
    port.seed(cfg["train"]["seed"])
    model = port.build_detector(cfg["model"])
    init_weights = init_weights or cfg["train"]["init_weights"]
    if init_weights:
        load_weights(port, model, init_weights, cfg)
    return model


def load_weights(port, model, path, cfg):
    """Weights of any format the converter reads (either port's checkpoint, an official
    GFocalV2 / mmdetection one, converted in memory) into `model`, strictly."""
    state = load_any(path, num_classes=cfg["model"]["num_classes"])
    port.checkpoint.load_state_dict_numpy(model, state, source=path)


def resume_training(port, model, optimizer, path, cfg):
    """Weights and momentum from a checkpoint of either port; returns its meta dict."""
    saved = read_training_state(path, num_classes=cfg["model"]["num_classes"])
    port.checkpoint.load_state_dict_numpy(model, saved["state_dict"], source=path)
    port.checkpoint.load_optimizer_state_numpy(model, optimizer, saved["momentum"])
    return saved["meta"]


@contextlib.contextmanager
def memory_guard(port, what):
    """An out-of-memory error of the port becomes one line naming the device and the cure."""
    try:
        yield
    except Exception as exc:
        if not port.is_out_of_memory(exc):
            raise
        raise DeviceError(f"out of memory on {port.current_device()} during {what}: lower "
                          "data.batch_size or data.img_scale (files written so far are kept)"
                          ) from None


def checkpoint_path(work_dir, port, name):
    return os.path.join(work_dir, name + port.checkpoint.EXTENSION)


def join_job(run):
    """(port, device name, rank, world size): this process's place in a data-parallel job
    started by `run.launcher` ("none": a job of one), with the port on its device (on a GPU
    machine process r of a node takes GPU r)."""
    cfg, parallel = run.cfg, run.launcher != "none"
    check_launcher(run.launcher, run.framework)
    if parallel:
        per_process_batch(cfg, job_size())  # a bad split stops before the job starts
    device = resolve_device(run.device or cfg["train"]["device"])  # the run's one resolution
    if parallel and is_cuda(device):
        device, gpu = job_device(run.framework, local_rank(),
                                 os.environ.get("CUDA_VISIBLE_DEVICES"))
        if gpu is not None:
            show_only_gpu(gpu)
    port = use_port(cfg, run.framework, device)
    rank, world = (port.distributed.start(device, cfg["train"]["dist_timeout_s"])
                   if parallel else (0, 1))
    return port, device, rank, world


def train(run):
    """Train per `run` (a TrainRun); returns a TrainResult.

    With a launcher this process is one of a data-parallel job: each takes its part of every
    global batch (data.batch_size), the framework averages the gradients, process 0 alone
    writes the log (losses averaged over the processes), the checkpoints and evaluates.
    Resuming a run that has already done every iteration trains nothing and writes nothing:
    the result is then `complete`, its checkpoint the resumed file and its log None.

    Process 0 owns work_dir for the run (gfocal/workdir.py): another run there is refused,
    and so is a dir holding an earlier run, unless the run resumes or `overwrite`s.
    SIGTERM / SIGINT (outside data-parallel jobs) end the current step, save `latest` and
    raise TrainingInterrupted (gfocal/interrupt.py). Non-finite losses, outputs or weights
    raise NonFiniteLoss naming the iteration and the checkpoint kept: no checkpoint of
    non-finite weights is written.
    """
    if run.resume and run.overwrite:
        raise ValueError("a run either resumes or overwrites, not both")
    port, device, rank, world = join_job(run)
    try:
        with own_work_dir(run.work_dir) if rank == 0 else contextlib.nullcontext():
            if rank == 0:
                claim_for_new_run(run.work_dir, bool(run.resume), run.overwrite)
            with StopRequest().handling(enabled=world == 1) as stop:
                return _train(run, port, device, rank, world, stop)
    finally:
        port.distributed.stop()


def _result(run, port, model, **values):
    kept = {"model": model, "port": port} if run.keep_model else {}
    return TrainResult(**values, **kept)


@dataclasses.dataclass
class Kept:
    """The last checkpoint of the run's progress: written by it, or the one it resumed."""
    path: Optional[str] = None
    iteration: int = 0

    def __str__(self):
        if self.path is None:
            return "no checkpoint written"
        return f"the last checkpoint, {self.path} (iteration {self.iteration}), is kept"


def _stopped(stop, kept, it):
    """The one line said when a signal stops training."""
    if kept.iteration == it and kept.path:
        return (f"gfocal: {stop.signal_name}: training stopped after iteration {it}; the "
                f"progress is saved in {kept.path}")
    return (f"gfocal: {stop.signal_name} (a second signal): training stopped at once, "
            f"iteration {it} not saved; {kept}")


def _train(run, port, device, rank, world, stop):
    cfg, work_dir, resume, max_iters = run.cfg, run.work_dir, run.resume, run.max_iters
    framework, lead = port.FRAMEWORK, rank == 0
    model = new_detector(port, cfg, run.init_weights)
    optim_cfg = cfg["optim"]
    optimizer = port.train.build_optimizer(model, optim_cfg)
    loader = build_dataloader(cfg, "train", device=device, rank=rank, world_size=world)
    iters_per_epoch = len(loader)
    start_epoch, skip, it, resumed = 0, 0, 0, {}
    if resume:
        resumed = resume_training(port, model, optimizer, resume, cfg)
        it = resumed.get("iter", 0)
        start_epoch, skip = divmod(it, iters_per_epoch)
    kept = Kept(resume, it) if resume else Kept()
    slow = slow_on_cpu(framework, cfg["train"]["amp"])
    if slow and not is_cuda(device) and lead:
        print(f"gfocal: warning: --amp {cfg['train']['amp']}: {slow} (docs/MODEL.md "
              f"section 13)", file=sys.stderr)
    # fp16: the loss scale, carried on from the checkpoint (gfocal/precision.py)
    scaler = port.precision.loss_scaler(
        cfg["train"]["amp"], device, checked_scale_state(resumed.get("loss_scale"), resume))
    total = optim_cfg["epochs"] * iters_per_epoch
    if max_iters is not None:
        total = min(total, max_iters)
    if resume and it >= total:
        loader.close()
        return _result(run, port, model, log=None, checkpoint=resume, evals=[], iters=it,
                       total=total, complete=True, rank=rank)
    stepper = port.distributed.wrap(model) if world > 1 else model
    classes = loader.dataset.class_names
    log = None
    if lead:
        log = RunLog(os.path.join(work_dir, f"log_{framework}.jsonl"),
                     resume_from=it if resume else None)
    eval_every = cfg["train"]["eval_interval"]
    evals = []
    bar = tqdm(total=total, initial=it, desc=f"train[{framework}]",
               disable=not (run.progress and lead), dynamic_ncols=True)
    model.train()
    try:
        for epoch in range(start_epoch, optim_cfg["epochs"]):
            loader.set_epoch(epoch)
            t_data = time.perf_counter()
            for batch in loader.batches(skip if epoch == start_epoch else 0):
                if it >= total:
                    break
                data_time = time.perf_counter() - t_data
                lr = learning_rate(optim_cfg, it, epoch)
                port.train.set_lr(optimizer, lr)
                it += 1  # the iteration this step does (named if it fails)
                t0 = time.perf_counter()
                with memory_guard(port, f"training iteration {it} (batch size "
                                        f"{len(batch['img_metas'])})"):
                    losses = port.train.train_step(stepper, optimizer, batch, scaler)
                if world > 1:  # the log shows the losses averaged over the processes
                    port.distributed.finish_step()
                    losses = dict(zip(losses, port.distributed.reduce_mean(list(losses.values()))))
                check_finite(losses)
                record = dict(losses, iter=it, epoch=epoch + 1, lr=lr,
                              time=time.perf_counter() - t0, data_time=data_time)
                if scaler is not None:
                    record.update(loss_scale=scaler.state()["scale"],
                                  skipped_steps=scaler.skipped)
                if lead:
                    log.write(record)
                    if run.on_iter_end:
                        run.on_iter_end(it, model, port)
                bar.update(1)
                bar.set_postfix_str(console_line(record), refresh=False)
                if stop.signum:
                    break  # to the save below
                t_data = time.perf_counter()
            epoch_done = it % iters_per_epoch == 0 and it > 0
            meta = {"iter": it, "epoch": epoch + 1 if epoch_done else epoch, "classes": classes,
                    "amp": cfg["train"]["amp"], "tuning": cfg["train"]["tuning"],
                    "model": cfg["model"]}  # what `pytest parity_tests --weights` builds
            if scaler is not None:
                meta["loss_scale"] = scaler.state()
            if lead:
                save_checkpoint(checkpoint_path(work_dir, port, "latest"), port, model,
                                optimizer, meta)
                kept = Kept(checkpoint_path(work_dir, port, "latest"), it)
            if (lead and epoch_done
                    and (epoch + 1) % cfg["train"]["checkpoint_interval"] == 0):
                save_checkpoint(checkpoint_path(work_dir, port, f"epoch_{epoch + 1}"), port,
                                model, optimizer, meta)
            if stop.signum:
                raise stop.interrupted()
            if not epoch_done:
                break
            last = epoch + 1 == optim_cfg["epochs"] or it >= total
            if last or (eval_every and (epoch + 1) % eval_every == 0):  # 0: at the end only
                # every process predicts its share of the val split; process 0 gathers the
                # detections and computes the statistics while the others wait at the barrier
                stats = evaluate(cfg, port, model, progress=False, rank=rank, world=world)
                if lead:
                    evals.append({"epoch": epoch + 1, "stats": stats})
                port.distributed.barrier()
                model.train()
            if stop.signum:  # during the evaluation: `latest` holds the progress already
                raise stop.interrupted()
            if it >= total:
                break
    except NonFiniteError as exc:
        # the network, the loss or the weights of this iteration are not finite: stop before
        # anything crashes on them (no checkpoint of them is written)
        raise NonFiniteLoss(f"[{framework}] training stopped at iteration {it}: {exc}; "
                            f"{kept}") from None
    except TrainingInterrupted as exc:
        if lead:
            bar.close()  # first: the line goes below the progress bar, not into it
            print(_stopped(exc, kept, it), file=sys.stderr)
        raise
    finally:
        loader.close()
        bar.close()
        if log:
            log.close()
    return _result(run, port, model, log=log.path if log else None,
                   checkpoint=checkpoint_path(work_dir, port, "latest"), evals=evals,
                   iters=it, total=total, complete=False, rank=rank)


def predict_dataset(port, model, loader, progress=False, latencies=None, rank=0, world=1):
    """Detections for every image of `loader`, in its order, with per-batch timing. In a
    data-parallel job (`world` > 1) this process predicts only batch b of the loader's
    batches with b % world == rank: every image once over the job, each batch padded as
    in one process, so the detections are those of a 1-process evaluation."""
    model.eval()
    predictions, img_ids = [], []
    batches = loader if world == 1 else loader.shard(rank, world)
    for batch in tqdm(batches, desc="predict", disable=not progress, dynamic_ncols=True):
        t0 = time.perf_counter()
        with memory_guard(port, "inference"):
            out = model.predict(batch)
        if latencies is not None:
            latencies.append((time.perf_counter() - t0) / len(out))
        predictions.extend(out)
        img_ids.extend(meta["img_id"] for meta in batch["img_metas"])
    return predictions, img_ids


def evaluate(cfg, port, model, progress=False, results_out=None, latencies=None, rank=0,
             world=1):
    """The 12 COCO statistics of `model` (of `port`, on its device) on cfg's val split;
    `results_out`, a list, receives the COCO result dicts (`gfocal test --out` writes them
    after printing the statistics).

    In a data-parallel job (process `rank` of `world`, called in every process) the
    processes share the images (predict_dataset), process 0 gathers the detections
    (port.distributed.gather_predictions), puts them in the val split's order and returns
    the statistics; the others return None."""
    with build_dataloader(cfg, "val", device=str(port.current_device())) as loader:
        predictions, img_ids = predict_dataset(port, model, loader, progress, latencies,
                                               rank, world)
    dataset = loader.dataset
    if world > 1:
        position = {img_id: i for i, img_id in enumerate(dataset.img_ids)}
        gathered = port.distributed.gather_predictions(
            [(position[img_id], _numpy_prediction(pred))
             for img_id, pred in zip(img_ids, predictions)])
        if gathered is None:
            return None
        if [p for p, _ in gathered] != list(range(len(dataset.img_ids))):
            raise RuntimeError(f"the processes predicted images {[p for p, _ in gathered]} "
                               f"of the {len(dataset.img_ids)} of the val split")
        predictions = [pred for _, pred in gathered]
        img_ids = list(dataset.img_ids)
    results = results_to_coco(predictions, img_ids, dataset.label_to_cat_id)
    if results_out is not None:
        results_out.extend(results)
    return coco_evaluate(dataset.coco, results, img_ids=img_ids, source=dataset.ann_file)


def _numpy_prediction(pred):
    import numpy as np
    return {key: np.asarray(pred[key]) for key in ("boxes", "scores", "labels")}
