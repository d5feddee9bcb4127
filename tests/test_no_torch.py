"""`import gfocal` and the Jittor port work where PyTorch is not installed."""
import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent("""
    import sys
    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith(("torch.", "torchvision")):
                raise ImportError(f"torch is blocked in this test ({name})")
    sys.meta_path.insert(0, BlockTorch())
""")


def run_without_torch(code):
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=600)


def test_the_block_really_blocks_torch():
    result = run_without_torch("import torch")
    assert result.returncode != 0 and "blocked" in result.stderr


def test_gfocal_and_jittor_port_work_without_torch():
    result = run_without_torch("""
        import numpy as np
        import gfocal, gfocal.config, gfocal.engine
        import gfocal.jittor as port
        from tests.factories import tiny_model_cfg
        model = port.build_detector(tiny_model_cfg(num_classes=3))
        cls, reg = model(port.tensor(np.zeros((1, 3, 64, 64), np.float32)))
        assert len(cls) == 5 and list(cls[0].shape) == [1, 3, 8, 8], cls[0].shape
        assert "torch" not in sys.modules
        print("ok")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_jittors_flush_to_zero_prints_no_numpy_warning():
    """Jittor's kernels switch the process to flush-to-zero; numpy's warning about that
    (smallest subnormal is zero) read as a fault to users of `gfocal compare`."""
    result = run_without_torch("""
        import numpy as np
        from gfocal.ports import load_port
        port = load_port("jittor")
        (port.tensor(np.ones(4, np.float32)) * 2).numpy()
        assert np.nextafter(0.0, 1.0) * 1.0 == 0.0, "no flush-to-zero: nothing to silence"
        np.finfo(np.float64)
        print("ok")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "smallest subnormal" not in result.stderr, result.stderr[-3000:]
