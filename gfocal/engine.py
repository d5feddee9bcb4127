"""Training and evaluation loops, written once for both ports.

A port supplies the framework-specific pieces (`build_detector`, `train.build_optimizer`,
`train.set_lr`, `train.train_step`, `checkpoint.state_dict_numpy/load_state_dict_numpy`); this
module owns the schedule, the batches, the log, checkpoints and the NaN stop, so both ports
are trained by literally the same loop.
"""
import contextlib
import os
import time

from tqdm import tqdm

from gfocal.checkpoint_io import load_any, read_training_state, save_checkpoint
from gfocal.ports import load_port
from gfocal.data.loader import build_dataloader, per_process_batch
from gfocal.device import DeviceError, is_cuda, resolve_device
from gfocal.launch import check_launcher, job_size, local_rank
from gfocal.evaluation.coco_eval import evaluate as coco_evaluate
from gfocal.evaluation.coco_eval import results_to_coco
from gfocal.runlog import RunLog, check_finite, console_line
from gfocal.schedule import learning_rate

def select_device(cfg, framework, device=None):
    """(port, device name): `device` (default cfg's train.device) resolved and made the
    port's device, with cfg's numerics switches."""
    port = load_port(framework)
    name = resolve_device(device or cfg["train"]["device"])
    port.use_device(name, tf32=cfg["train"]["tf32"])
    return port, name


def build_model(cfg, framework, init_weights=None, device=None):
    """A detector of `framework` on `device` (default cfg's), with weights from
    `init_weights` (a checkpoint) if given."""
    port, _ = select_device(cfg, framework, device)
    return port, new_detector(port, cfg, init_weights)


def new_detector(port, cfg, init_weights=None):
    """cfg's detector on the port's device, with weights from `init_weights` (default
    cfg's train.init_weights; a checkpoint of any format) if given."""
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


def join_job(cfg, framework, device, launcher):
    """(port, device name, rank, world size): this process's place in a data-parallel job
    started by `launcher` ("none": a job of one), with the port on its device (on a GPU
    machine process r of a node takes GPU r)."""
    check_launcher(launcher, framework)
    if launcher != "none":
        per_process_batch(cfg, job_size())  # a bad split stops before the job starts
    device = resolve_device(device or cfg["train"]["device"])
    if launcher != "none" and is_cuda(device):
        device = f"cuda:{local_rank()}"
    port, device = select_device(cfg, framework, device)
    rank, world = port.distributed.start(device) if launcher != "none" else (0, 1)
    return port, device, rank, world


def train(cfg, framework, work_dir, resume=None, max_iters=None, init_weights=None,
          evaluate_every_epoch=None, progress=True, on_epoch_end=None, on_iter_end=None,
          device=None, launcher="none"):
    """Train per cfg; returns {'log': path, 'checkpoint': path, 'evals': [...], 'iters': n,
    'complete': bool}.

    `max_iters` stops early (a checkpoint `latest` is still written). `resume` is a
    checkpoint of either port (weights and momentum are converted). `device` overrides
    cfg's train.device. `launcher` ("pytorch": torchrun, "mpi": mpirun) makes this process
    one of a data-parallel job: each takes its part of every global batch (data.batch_size),
    the framework averages the gradients, process 0 alone writes the log (losses averaged
    over the processes), the checkpoints and evaluates. Resuming a run that has already done
    every iteration trains nothing and writes nothing: 'complete' is then True,
    'checkpoint' the resumed file and 'log' None. `on_epoch_end(epoch, stats)` is called
    after each evaluation, `on_iter_end(iteration, model, port)` after each iteration (both
    in process 0 only).
    """
    port, device, rank, world = join_job(cfg, framework, device, launcher)
    try:
        return _train(cfg, port, device, rank, world, work_dir, resume, max_iters,
                      init_weights, evaluate_every_epoch, progress, on_epoch_end, on_iter_end)
    finally:
        port.distributed.stop()


def _train(cfg, port, device, rank, world, work_dir, resume, max_iters, init_weights,
           evaluate_every_epoch, progress, on_epoch_end, on_iter_end):
    framework, lead = port.FRAMEWORK, rank == 0
    model = new_detector(port, cfg, init_weights)
    optim_cfg = cfg["optim"]
    optimizer = port.train.build_optimizer(model, optim_cfg)
    loader = build_dataloader(cfg, "train", device=device, rank=rank, world_size=world)
    iters_per_epoch = len(loader)
    start_epoch, skip, it = 0, 0, 0
    if resume:
        it = resume_training(port, model, optimizer, resume, cfg).get("iter", 0)
        start_epoch, skip = divmod(it, iters_per_epoch)
    total = optim_cfg["epochs"] * iters_per_epoch
    if max_iters is not None:
        total = min(total, max_iters)
    if resume and it >= total:
        loader.close()
        return {"log": None, "checkpoint": resume, "evals": [], "iters": it, "total": total,
                "complete": True, "model": model, "port": port, "rank": rank}
    stepper = port.distributed.wrap(model) if world > 1 else model
    classes = loader.dataset.class_names
    log = None
    if lead:
        os.makedirs(work_dir, exist_ok=True)
        log = RunLog(os.path.join(work_dir, f"log_{framework}.jsonl"), resume=bool(resume))
    eval_every = evaluate_every_epoch if evaluate_every_epoch is not None \
        else cfg["train"]["eval_interval"]
    evals = []
    bar = tqdm(total=total, initial=it, desc=f"train[{framework}]",
               disable=not (progress and lead), dynamic_ncols=True)
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
                t0 = time.perf_counter()
                with memory_guard(port, f"training iteration {it + 1} (batch size "
                                        f"{len(batch['img_metas'])})"):
                    losses = port.train.train_step(stepper, optimizer, batch)
                if world > 1:  # the log shows the losses averaged over the processes
                    port.distributed.finish_step()
                    losses = dict(zip(losses, port.distributed.reduce_mean(list(losses.values()))))
                it += 1
                check_finite(losses, it, framework)
                record = dict(losses, iter=it, epoch=epoch + 1, lr=lr,
                              time=time.perf_counter() - t0, data_time=data_time)
                if lead:
                    log.write(record)
                    if on_iter_end:
                        on_iter_end(it, model, port)
                bar.update(1)
                bar.set_postfix_str(console_line(record), refresh=False)
                t_data = time.perf_counter()
            epoch_done = it % iters_per_epoch == 0 and it > 0
            meta = {"iter": it, "epoch": epoch + 1 if epoch_done else epoch, "classes": classes}
            if lead:
                save_checkpoint(checkpoint_path(work_dir, port, "latest"), port, model,
                                optimizer, meta)
            if not epoch_done:
                break
            if lead and (epoch + 1) % cfg["train"]["checkpoint_interval"] == 0:
                save_checkpoint(checkpoint_path(work_dir, port, f"epoch_{epoch + 1}"), port,
                                model, optimizer, meta)
            last = epoch + 1 == optim_cfg["epochs"] or it >= total
            if eval_every and ((epoch + 1) % eval_every == 0 or last):
                if lead:  # the others wait at the barrier
                    stats = evaluate(cfg, port, model, progress=False)
                    evals.append({"epoch": epoch + 1, "stats": stats})
                    if on_epoch_end:
                        on_epoch_end(epoch + 1, stats)
                port.distributed.barrier()
                model.train()
            if it >= total:
                break
    finally:
        loader.close()
        bar.close()
        if log:
            log.close()
    return {"log": log.path if log else None,
            "checkpoint": checkpoint_path(work_dir, port, "latest"), "evals": evals,
            "iters": it, "total": total, "complete": False, "model": model, "port": port,
            "rank": rank}


def predict_dataset(port, model, loader, progress=False, latencies=None):
    """Detections for every image of `loader`, in its order, with per-batch timing."""
    model.eval()
    predictions, img_ids = [], []
    for batch in tqdm(loader, desc="predict", disable=not progress, dynamic_ncols=True):
        t0 = time.perf_counter()
        with memory_guard(port, "inference"):
            out = model.predict(batch)
        if latencies is not None:
            latencies.append((time.perf_counter() - t0) / len(out))
        predictions.extend(out)
        img_ids.extend(meta["img_id"] for meta in batch["img_metas"])
    return predictions, img_ids


def evaluate(cfg, port, model, progress=False, out_json=None, latencies=None):
    """The 12 COCO statistics of `model` (of `port`, on its device) on cfg's val split."""
    with build_dataloader(cfg, "val", device=str(port.current_device())) as loader:
        predictions, img_ids = predict_dataset(port, model, loader, progress, latencies)
    dataset = loader.dataset
    results = results_to_coco(predictions, img_ids, dataset.label_to_cat_id)
    if out_json:
        from gfocal.evaluation.coco_eval import save_results
        save_results(out_json, results)
    return coco_evaluate(dataset.coco, results, img_ids=img_ids)
