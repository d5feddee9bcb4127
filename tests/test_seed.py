"""train.seed and `--seed`: one seed, one run (initialisation, data order, flips), in both
ports, bit for bit on the CPU; and nothing random is drawn after the initialisation, so a
resumed run needs no saved RNG state."""
import json
import re

import numpy as np
import pytest

from gfocal import engine
from gfocal.checkpoint_io import read_training_state
from gfocal.cli import main
from gfocal.config import ConfigError, load_config

LOSS_KEYS = ("loss", "loss_cls", "loss_bbox", "loss_dfl")


def losses(work, port):
    with open(work / f"log_{port.FRAMEWORK}.jsonl") as f:
        return [[r[k] for k in LOSS_KEYS] for r in map(json.loads, f)]


def state(work, port):
    """Weights, momentum and meta of the run's `latest` checkpoint. Not the file's bytes:
    torch.save names the archive's folder after the temporary file it writes."""
    saved = read_training_state(str(work / ("latest" + port.checkpoint.EXTENSION)))
    return saved["state_dict"], saved["momentum"], saved["meta"]


def same_arrays(a, b):
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def gfocal_train(config, port, work, *extra):
    """`gfocal train` of one iteration on the CPU; returns (losses, checkpoint state)."""
    assert main(["train", config, "--framework", port.FRAMEWORK, "--work-dir", str(work),
                 "--device", "cpu", "--max-iters", "1", *extra]) == 0
    return losses(work, port), state(work, port)


@pytest.mark.ci  # trains both ports several times
def test_one_seed_gives_one_run_another_seed_another(port, tiny_config, tmp_path):
    """--seed 3 twice (whatever the process drew in between), and train.seed = 3 in the
    config: the same first losses and checkpoint, bit for bit; --seed 4: different ones."""
    seeded = tmp_path / "seeded.py"
    seeded.write_text(open(tiny_config).read() + "train['seed'] = 3\n")
    first = gfocal_train(tiny_config, port, tmp_path / "a", "--seed", "3")
    again = gfocal_train(tiny_config, port, tmp_path / "b", "--seed", "3")
    from_config = gfocal_train(str(seeded), port, tmp_path / "c")
    other = gfocal_train(tiny_config, port, tmp_path / "d", "--seed", "4")
    for run in (again, from_config):
        assert run[0] == first[0]
        assert same_arrays(run[1][0], first[1][0]) and same_arrays(run[1][1], first[1][1])
        assert run[1][2] == first[1][2]
    assert other[0][0] != first[0][0]
    assert not same_arrays(other[1][0], first[1][0])


def test_the_seed_decides_the_initialisation(port, tiny_config):
    """Before any data: the detector's initial weights follow train.seed alone."""
    def initial(seed):
        cfg = load_config(tiny_config, {"train": {"seed": seed}})
        model = engine.build_model(cfg, port.FRAMEWORK, device="cpu")[1]
        return port.checkpoint.state_dict_numpy(model)

    three = initial(3)
    assert same_arrays(initial(3), three) and not same_arrays(initial(4), three)


@pytest.mark.ci  # trains both ports several times
def test_training_draws_nothing_random_so_a_resume_needs_no_rng_state(port, tiny_config,
                                                                      tmp_path):
    """Every random source re-seeded after each iteration changes no loss and no weight;
    a run resumed at iteration 1 (its generators in another state) continues bit for bit."""
    def scramble(iteration, model, port):
        port.seed(1000 + iteration)

    cfg = load_config(tiny_config)

    def train(work, max_iters, **choices):
        engine.train(engine.TrainRun(cfg, port.FRAMEWORK, str(tmp_path / work),
                                     max_iters=max_iters, device="cpu", progress=False,
                                     **choices))
        return losses(tmp_path / work, port), state(tmp_path / work, port)

    straight = train("straight", 2)
    scrambled = train("scrambled", 2, on_iter_end=scramble)
    train("resumed", 1)
    resumed = train("resumed", 2, on_iter_end=scramble,
                    resume=str(tmp_path / "resumed" / ("latest" + port.checkpoint.EXTENSION)))
    for run in (scrambled, resumed):
        assert run[0] == straight[0]
        assert same_arrays(run[1][0], straight[1][0]) and same_arrays(run[1][1], straight[1][1])


@pytest.mark.parametrize("seed", ["-1", "4294967296", "x"])
def test_a_bad_seed_option_is_one_line(tiny_config, tmp_path, capsys, seed):
    with pytest.raises(SystemExit) as stop:
        main(["train", tiny_config, "--framework", "torch", "--work-dir", str(tmp_path / "w"),
              "--seed", seed])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert "argument --seed: " in err and seed in err.splitlines()[-1]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("seed", [-1, 1.5, 2 ** 32])
def test_a_bad_train_seed_names_the_file(tiny_config, tmp_path, seed):
    config = tmp_path / "bad_seed.py"
    config.write_text(open(tiny_config).read() + f"train['seed'] = {seed!r}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{config}: 'train.seed' = {seed!r}")):
        load_config(str(config))
