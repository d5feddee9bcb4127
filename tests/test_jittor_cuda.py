"""scripts/jittor_cuda.py, Jittor's CUDA 13 compatibility step, without CUDA: the patch on
copies of the installed Jittor's own files (applies, idempotent, stops on a source that does
not match), and the whole command on a stand-in CUDA stack (a fake nvcc, CUDA home and nvidia
packages of empty files): the tree's links, the environment, and bad input as one line."""
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "jittor_cuda.py")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import jittor_cuda  # noqa: E402

PATCHED = sorted({h.path for h in jittor_cuda.HUNKS})


def installed_jittor():
    spec = importlib.util.find_spec("jittor")
    if spec is None:
        pytest.skip("Jittor is not installed")
    return list(spec.submodule_search_locations)[0]


def digest(folder):
    return {p: hashlib.sha256(open(os.path.join(folder, p), "rb").read()).hexdigest()
            for p in PATCHED}


def copy_jittor(dst, version="1.3.11.0"):
    """The files the patch touches, copied from the installed Jittor, and an __init__.py."""
    src = installed_jittor()
    for path in PATCHED:
        os.makedirs(os.path.dirname(os.path.join(dst, path)), exist_ok=True)
        shutil.copy(os.path.join(src, path), os.path.join(dst, path))
    with open(os.path.join(dst, "__init__.py"), "w") as f:
        f.write(f"__version__ = '{version}'\nraise ImportError('a copy, not importable')\n")
    return str(dst)


def test_the_patch_applies_to_the_installed_jittors_files_and_is_idempotent(tmp_path):
    src = installed_jittor()
    before = digest(src)
    applied, already = jittor_cuda.patch_jittor(src, str(tmp_path / "out"))
    assert (applied, already) == (len(jittor_cuda.HUNKS), 0)
    assert digest(src) == before  # out_dir given: the installed Jittor is left alone
    patched = digest(tmp_path / "out")
    assert all(patched[p] != before[p] for p in PATCHED)
    assert jittor_cuda.patch_jittor(str(tmp_path / "out")) == (0, len(jittor_cuda.HUNKS))
    assert digest(tmp_path / "out") == patched
    text = (tmp_path / "out" / "compiler.py").read_text()
    assert 'nvcc_flags.replace("-std=c++14", "-std=c++17")' in text
    header = (tmp_path / "out" / "extern/cuda/inc/helper_cuda.h").read_text()
    assert "deviceProp.clockRate" not in header and "deviceProp.computeMode" not in header


def test_a_source_that_does_not_match_stops_before_writing(tmp_path):
    jittor = copy_jittor(tmp_path / "jittor")
    path = tmp_path / "jittor" / "compile_extern.py"
    path.write_text(path.read_text().replace('"libcudnn_ops_infer.so", ', ""))
    before = digest(jittor)
    with pytest.raises(jittor_cuda.Failure) as info:
        jittor_cuda.patch_jittor(jittor)
    message = str(info.value)
    assert str(path) in message and "does not look like Jittor 1.3.11's" in message
    assert "\n" not in message and digest(jittor) == before  # not even compiler.py


# ---- the command on a stand-in CUDA stack ---------------------------------------------------
FAKE_NVCC = """#!/bin/sh
case "$*" in
    *--dryrun*) echo '#$ _HERE_=HOME/bin' >&2; echo '#$ TOP=HOME/bin/..' >&2 ;;
    *--version*) echo 'Cuda compilation tools, release 13.0, V13.0.88' ;;
esac
"""
PACKAGES = {  # folder under nvidia/: headers, libraries (the CUDA 13 wheels' layout)
    "cu13": (["cublas_v2.h", "cublas_api.h", "curand.h", "cufft.h", "cusparse.h"],
             ["libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcufft.so.12",
              "libcusparse.so.12"]),
    "cudnn": (["cudnn.h", "cudnn_version.h"],
              ["libcudnn.so.9", "libcudnn_ops.so.9", "libcudnn_cnn.so.9",
               "libcudnn_graph.so.9"]),
}


def touch(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def stack(tmp_path):
    """{home, nvcc, site, onednn}: a CUDA home with its nvcc, a site folder with a copy of
    Jittor and nvidia packages, a oneDNN folder; every library an empty file."""
    home = tmp_path / "cuda-13.0"
    touch(home / "include" / "cuda_runtime.h")
    touch(home / "lib64" / "libcudart.so.13")
    nvcc = home / "bin" / "nvcc"
    touch(nvcc, FAKE_NVCC.replace("HOME", str(home)))
    nvcc.chmod(0o755)
    site = tmp_path / "site"
    copy_jittor(site / "jittor")
    for name, (headers, libs) in PACKAGES.items():
        for header in headers:
            touch(site / "nvidia" / name / "include" / header, "#define CUDNN_MAJOR 9\n")
        for lib in libs:
            touch(site / "nvidia" / name / "lib" / lib)
    onednn = tmp_path / "onednn"
    touch(onednn / "include" / "dnnl.h")
    touch(onednn / "lib" / "x86_64-linux-gnu" / "libdnnl.so.2.6")
    # the interpreter under test sees the stand-in site folder only (-S: no site-packages)
    python = tmp_path / "python3"
    touch(python, f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    return {"home": home, "nvcc": nvcc, "site": site, "onednn": onednn, "tmp": tmp_path,
            "python": python}


def run(stack, *args):
    env = dict(os.environ, PYTHONPATH=str(stack["site"]))
    env.pop("nvcc_path", None)
    cmd = [sys.executable, SCRIPT, str(stack["tmp"] / "tree"), "--nvcc", str(stack["nvcc"]),
           "--python", str(stack["python"]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_tree_links_the_cuda_home_and_the_packages_where_jittor_looks(stack):
    result = run(stack, "--copy")
    assert result.returncode == 0, result.stderr
    cuda = stack["tmp"] / "tree" / "cuda"
    wrapper = (cuda / "bin" / "nvcc")
    assert not wrapper.is_symlink() and os.access(wrapper, os.X_OK)  # Jittor resolves links
    assert f"exec '{stack['nvcc']}'" in wrapper.read_text()
    site = stack["site"] / "nvidia"
    assert os.readlink(cuda / "include" / "cuda_runtime.h") == str(
        stack["home"] / "include" / "cuda_runtime.h")
    assert os.readlink(cuda / "include" / "cudnn.h") == str(site / "cudnn/include/cudnn.h")
    assert os.readlink(cuda / "include" / "cublas_v2.h") == str(site / "cu13/include/cublas_v2.h")
    for plain, versioned in (("libcudnn.so", "libcudnn.so.9"),
                             ("libcudnn_ops.so", "libcudnn_ops.so.9"),
                             ("libcublas.so", "libcublas.so.13"),
                             ("libcudart.so", "libcudart.so.13"),
                             ("libcusparse.so", "libcusparse.so.12")):
        assert os.readlink(cuda / "lib64" / plain) == versioned
        assert (cuda / "lib64" / plain).resolve().is_file()
    env = (stack["tmp"] / "tree" / "env.sh").read_text()
    assert result.stdout == env
    for line in (f"export nvcc_path='{wrapper}'", "export use_cutt='0'", "export use_cutlass='0'",
                 "export use_nccl='0'", "export use_mkl='0'",
                 f"export LD_LIBRARY_PATH='{cuda / 'lib64'}'"
                 "${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"):
        assert line in env.splitlines()
    assert "conv_opt" not in env
    patched = stack["tmp"] / "tree" / "jittor-patched" / "compiler.py"
    assert "gfocal-parity" in patched.read_text()
    assert "gfocal-parity" not in (stack["site"] / "jittor" / "compiler.py").read_text()
    assert "11 hunks applied, 0 already there" in result.stderr


def test_patches_the_jittor_in_place_once(stack):
    first, second = run(stack), run(stack)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert f"{len(jittor_cuda.HUNKS)} hunks applied, 0 already there" in first.stderr
    assert f"0 hunks applied, {len(jittor_cuda.HUNKS)} already there" in second.stderr
    assert "gfocal-parity" in (stack["site"] / "jittor" / "compiler.py").read_text()


def test_cudnn_off_and_a_onednn_of_ones_own(stack):
    result = run(stack, "--copy", "--cudnn", "off", "--onednn", str(stack["onednn"]))
    assert result.returncode == 0, result.stderr
    env = result.stdout.splitlines()
    lib = stack["tmp"] / "tree" / "onednn" / "lib"
    assert "export conv_opt='1'" in env and "export use_mkl='0'" not in env
    assert f"export mkl_lib_path='{lib}'" in env
    for name in ("libmkldnn.so", "libdnnl.so.2", "libdnnl.so.2.6"):
        assert (lib / name).resolve() == stack["onednn"] / "lib/x86_64-linux-gnu/libdnnl.so.2.6"


def remove(path):
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


@pytest.mark.parametrize("breakage, args, words", [
    ("", ["--nvcc", "/nonexistent/nvcc"], "no nvcc at /nonexistent/nvcc"),
    ("", ["--python", "/nonexistent/python3"], "no Python interpreter /nonexistent/python3"),
    ("", ["--python", "/bin/true"], "/bin/true is not a working Python interpreter"),
    ("nvidia", [], "finds no nvidia/ packages"),
    ("jittor", [], "finds no jittor package"),
    ("nvidia/cudnn", [], "no cudnn.h with libcudnn.so in"),
    ("version", [], "is Jittor 1.2.0: this step is for 1.3.11"),
    ("onednn", ["--onednn", "ONEDNN"], "no libdnnl.so in"),
])
def test_bad_input_is_one_line_naming_it(stack, breakage, args, words):
    if breakage == "version":
        (stack["site"] / "jittor" / "__init__.py").write_text("__version__ = '1.2.0'\n")
    elif breakage == "onednn":
        remove(stack["onednn"] / "lib")
    elif breakage:
        remove(stack["site"] / breakage)
    args = [str(stack["onednn"]) if a == "ONEDNN" else a for a in args]
    result = run(stack, "--copy", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jittor_cuda: error: ") and words in lines[0]
    assert not (stack["tmp"] / "tree" / "env.sh").exists()


def test_a_non_matching_jittor_source_is_one_line_naming_the_file(stack):
    path = stack["site"] / "jittor" / "extern/cuda/inc/helper_cuda.h"
    path.write_text(path.read_text().replace("deviceProp.clockRate", "deviceProp.clockrate"))
    result = run(stack)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"jittor_cuda: error: {path} does not look like Jittor 1.3.11's: no single "
        "'sm_per_multiproc * deviceProp.clockRate;'; nothing patched")
    assert "gfocal-parity" not in (stack["site"] / "jittor" / "compiler.py").read_text()


def test_a_python_without_its_config_tool_gets_one_from_sysconfig(tmp_path):
    """A virtual environment's interpreter has no python3.X-config where Jittor looks."""
    include = tmp_path / "include"
    touch(include / "Python.h")
    probe = {"python": "/venv/bin/python3", "version": "3.12", "config": None,
             "base_config": str(tmp_path / "missing-config"), "includes": [str(include)],
             "suffix": ".cpython-312-x86_64-linux-gnu.so"}
    path = jittor_cuda.python_config(str(tmp_path / "tree"), probe)
    assert path == str(tmp_path / "tree" / "bin" / "python3.12-config")
    answer = lambda flag: subprocess.run([path, flag], capture_output=True, text=True)  # noqa: E731
    assert answer("--includes").stdout.strip() == f"-I{include}"
    assert answer("--extension-suffix").stdout.strip() == ".cpython-312-x86_64-linux-gnu.so"
    assert answer("--ldflags").returncode == 1
    assert jittor_cuda.python_config(str(tmp_path), dict(probe, config="/usr/bin/x")) is None
    (include / "Python.h").unlink()
    with pytest.raises(jittor_cuda.Failure, match="no Python.h in .*install python3.12-dev"):
        jittor_cuda.python_config(str(tmp_path / "tree"), probe)
