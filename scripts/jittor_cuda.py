"""Make an installed Jittor 1.3.11 build and run on a CUDA 13 stack whose cuDNN 9 and cuBLAS
come as pip's nvidia packages (the borrowed GPU machine), without downloads or hand edits.
A script of its own beside scripts/gpu.py: it is the only way Jittor builds on CUDA 13, and
users run it on their own GPU machines too (docs/GPU.md), not only inside the GPU check.

    python3 scripts/jittor_cuda.py TREE [--python PY] [--nvcc NVCC] [--onednn DIR]
                                        [--cudnn on|off] [--copy]

1. TREE/cuda: a CUDA home laid out as Jittor expects one. Jittor takes nvcc's folder's
   ../include and ../lib64 and looks for cuDNN, cuBLAS, cuRAND, cuFFT and cuSPARSE there and
   in /usr only; bin/nvcc is a script running the real nvcc (Jittor resolves links), include/
   and lib64/ link the CUDA home's files and the nvidia packages' headers and libraries, with
   the unversioned names Jittor searches. Where PY's Python headers have no python3.X-config
   that Jittor finds (a virtual environment), TREE/bin/python3.X-config answers for them.
2. Patches the Jittor that PY imports (HUNKS below: idempotent, every hunk checked before
   any file is written; a Jittor that does not match stops with one line naming the file).
   --copy writes the patched files under TREE/jittor-patched/ instead (the dry run).
3. Writes TREE/env.sh (source it before Python starts) and prints it: nvcc_path (with none,
   Jittor downloads CUDA 12.2 + cuDNN 8 where nvidia-smi works), use_cutt=0, use_cutlass=0,
   use_nccl=0 (downloads at first CUDA use), use_mkl=0 unless --onednn names a folder with
   include/dnnl.h and lib*/libdnnl.so* (e.g. Debian's libdnnl-dev unpacked; Jittor would
   download oneDNN), the tree's libraries first on LD_LIBRARY_PATH, and with --cudnn off
   Jittor's own conv_opt=1 (cuDNN left unloaded: convolutions run as Jittor's generated
   reindex-reduce CUDA kernels).

PY: the interpreter whose sys.path (PYTHONPATH included) holds jittor and nvidia/* (default:
this one). NVCC: CUDA 13's nvcc (default: $nvcc_path, nvcc on PATH, /usr/local/cuda/bin/nvcc);
its CUDA home is read off its own --dryrun. Bad input: one line on stderr, exit status 2.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

JITTOR_VERSION = "1.3.11"
MARK = "gfocal-parity"
# Jittor's setup_cuda_extern loads all five (any one missing is fatal), plus the CUDA runtime.
LIBRARIES = {  # name: (header, libraries Jittor or the loader needs under lib64)
    "cudart": ("cuda_runtime.h", ["libcudart.so"]),
    "cublas": ("cublas_v2.h", ["libcublas.so", "libcublasLt.so"]),
    "cudnn": ("cudnn.h", ["libcudnn.so"]),
    "curand": ("curand.h", ["libcurand.so"]),
    "cufft": ("cufft.h", ["libcufft.so"]),
    "cusparse": ("cusparse.h", ["libcusparse.so"]),
}


class Failure(Exception):
    """Bad input or a Jittor source that does not look as expected: one line, exit 2."""


# ---- the patch ------------------------------------------------------------------------------
class Hunk:
    def __init__(self, path, old, new):
        self.path, self.old, self.new = path, old, new


CUDNN_MAJOR = '''def _cudnn_major():
    # gfocal-parity: the major version of the cuDNN that Jittor compiles against (0: none)
    import re
    for folder in (cuda_include, "/usr/include"):
        name = os.path.join(folder, "cudnn_version.h")
        if os.path.isfile(name):
            with open(name) as f:
                found = re.search(r"#define CUDNN_MAJOR (\\d+)", f.read())
            return int(found.group(1)) if found else 0
    return 0

def setup_cuda_lib('''

DEVICE_ATTRIBUTE = '''// gfocal-parity: CUDA 13 removed cudaDeviceProp::clockRate and ::computeMode
inline int jtDeviceAttribute(cudaDeviceAttr attr, int device) {
  int value = 0;
  cudaDeviceGetAttribute(&value, attr, device);
  return value;
}

// Beginning of GPU Architecture definitions'''

# (file under jittor/, old text, new text); each old text must occur exactly once.
HUNKS = [
    # nvcc gets Jittor's g++ flags, -std=c++14 among them; CUDA 13's CCCL refuses C++14
    # ("#error CUB requires at least C++17") in every JIT kernel that includes cub/thrust.
    Hunk("compiler.py",
         '        nvcc_flags = nvcc_flags.replace("-Wall", "")\n',
         '        # gfocal-parity: CUDA 13\'s CCCL (thrust, cub, libcu++) needs C++17\n'
         '        nvcc_flags = nvcc_flags.replace("-std=c++14", "-std=c++17")\n'
         '        nvcc_flags = nvcc_flags.replace("-Wall", "")\n'),
    # helper_cuda.h (included by Jittor's core and ops) reads cudaDeviceProp::computeMode
    # and ::clockRate, which CUDA 13 removed: read them as device attributes.
    Hunk("extern/cuda/inc/helper_cuda.h",
         "// Beginning of GPU Architecture definitions", DEVICE_ATTRIBUTE),
    Hunk("extern/cuda/inc/helper_cuda.h",
         "  if (deviceProp.computeMode == cudaComputeModeProhibited) {",
         "  if (jtDeviceAttribute(cudaDevAttrComputeMode, devID) == cudaComputeModeProhibited) {"),
    Hunk("extern/cuda/inc/helper_cuda.h",
         "    if (deviceProp.computeMode != cudaComputeModeProhibited) {",
         "    if (jtDeviceAttribute(cudaDevAttrComputeMode, current_device) != "
         "cudaComputeModeProhibited) {"),
    Hunk("extern/cuda/inc/helper_cuda.h",
         "sm_per_multiproc * deviceProp.clockRate;",
         "sm_per_multiproc * jtDeviceAttribute(cudaDevAttrClockRate, current_device);"),
    Hunk("extern/cuda/inc/helper_cuda.h",
         "        (deviceProp.computeMode != cudaComputeModeProhibited)) {",
         "        (jtDeviceAttribute(cudaDevAttrComputeMode, current_device) != "
         "cudaComputeModeProhibited)) {"),
    # Without a driver cudaGetDeviceCount fails and leaves the count at -1, which Jittor
    # takes for "devices present": its import aborts creating a stream (array_op.cc,
    # cudaErrorInsufficientDriver). Counted as 0, a CUDA build imports there (has_cuda 0).
    Hunk("src/misc/cuda_flags.cc",
         "    if (count==-1)\n        cudaGetDeviceCount(&count);\n",
         "    if (count==-1 && cudaGetDeviceCount(&count) != cudaSuccess)\n"
         "        count = 0;  // gfocal-parity: no driver, no device (it stayed -1: \"found\")\n"),
    # Jittor's mkl_include_path / mkl_lib_path (a oneDNN of one's own) end in an
    # UnboundLocalError: mkl_home is only set on the download path.
    Hunk("compile_extern.py",
         '        assert mkl_home!=""\n'
         '    mkl_include_path = os.path.join(mkl_home, "include")\n'
         '    mkl_lib_path = os.path.join(mkl_home, "lib")\n',
         '        assert mkl_home!=""\n'
         '        # gfocal-parity: only here (given mkl_include_path and mkl_lib_path, mkl_home\n'
         '        # is unset and this raised UnboundLocalError)\n'
         '        mkl_include_path = os.path.join(mkl_home, "include")\n'
         '        mkl_lib_path = os.path.join(mkl_home, "lib")\n'),
    # cuDNN 9 renamed its libraries (Jittor preloads cuDNN 8's libcudnn_ops_infer.so ...,
    # Jittor's GitHub issue 666) and removed the RNN API of the cudnn_rnn ops; the convolution
    # API that Jittor's cudnn_conv ops call is still there.
    Hunk("compile_extern.py", "def setup_cuda_lib(", CUDNN_MAJOR),
    Hunk("compile_extern.py",
         '                libs = ["libcudnn_ops_infer.so", "libcudnn_ops_train.so", '
         '"libcudnn_cnn_infer.so", "libcudnn_cnn_train.so"]\n',
         '                libs = ["libcudnn_ops_infer.so", "libcudnn_ops_train.so", '
         '"libcudnn_cnn_infer.so", "libcudnn_cnn_train.so"]\n'
         '                if _cudnn_major() >= 9:  # gfocal-parity: cuDNN 9\'s libraries\n'
         '                    libs = ["libcudnn_graph.so", "libcudnn_ops.so", '
         '"libcudnn_cnn.so"]\n'),
    Hunk("compile_extern.py",
         "    for r, _, f in os.walk(culib_src_dir):\n"
         "        for fname in f:\n"
         "            culib_src_files.append(os.path.join(r, fname))\n",
         "    # gfocal-parity: cuDNN 9 removed the RNN API of the cudnn_rnn ops "
         "(not the conv API)\n"
         "    skip_rnn = lib_name == \"cudnn\" and _cudnn_major() >= 9\n"
         "    for r, _, f in os.walk(culib_src_dir):\n"
         "        for fname in f:\n"
         "            if skip_rnn and fname.startswith(\"cudnn_rnn\"):\n"
         "                continue\n"
         "            culib_src_files.append(os.path.join(r, fname))\n"),
]


def patch_jittor(jittor_dir, out_dir=None):
    """Apply HUNKS to the files under jittor_dir (or to copies under out_dir); returns
    (applied, already) counts. Every hunk is checked before any file is written."""
    texts = {}
    for hunk in HUNKS:
        if hunk.path not in texts:
            source = os.path.join(jittor_dir, hunk.path)
            try:
                with open(source, encoding="utf8") as f:
                    texts[hunk.path] = f.read()
            except OSError as exc:
                raise Failure(f"cannot read {source}: {exc.strerror}") from None
    original = dict(texts)
    applied = already = 0
    for hunk in HUNKS:
        text = texts[hunk.path]
        if hunk.new in text:
            already += 1
        elif text.count(hunk.old) == 1:
            texts[hunk.path] = text.replace(hunk.old, hunk.new)
            applied += 1
        else:
            raise Failure(f"{os.path.join(jittor_dir, hunk.path)} does not look like Jittor "
                          f"{JITTOR_VERSION}'s: no single {hunk.old.strip().splitlines()[0]!r}; "
                          "nothing patched")
    for path, text in texts.items():
        target = os.path.join(out_dir or jittor_dir, path)
        if out_dir is None and text == original[path]:
            continue  # an unchanged file keeps its time stamp
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf8") as f:
            f.write(text)
    return applied, already


# ---- what the interpreter sees --------------------------------------------------------------
PROBE = r"""
import importlib.util, json, os, sys, sysconfig
def places(name):
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    return list(spec.submodule_search_locations or []) if spec else []
minor, here = sys.version_info.minor, os.path.dirname(sys.executable)
# where Jittor looks for python3.X-config (jittor_utils.get_py3_config_path)
seen = [here + f"/python3.{minor}-config", sys.executable + "-config",
        f"/usr/bin/python3.{minor}-config", f"/usr/local/bin/python3.{minor}-config",
        here + "/python3-config"]
print(json.dumps({"jittor": places("jittor"), "nvidia": places("nvidia"),
                  "version": f"3.{minor}", "config": next(filter(os.path.isfile, seen), None),
                  "base_config": os.path.join(sys.base_prefix, "bin", f"python3.{minor}-config"),
                  "includes": sorted({sysconfig.get_paths()["include"],
                                      sysconfig.get_paths()["platinclude"]}),
                  "suffix": sysconfig.get_config_var("EXT_SUFFIX")}))
"""


def probe_python(python):
    """What `python` imports and compiles against: {jittor, nvidia, version, config, ...}."""
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        found = shutil.which(python)
        if not found:
            raise Failure(f"no Python interpreter {python}")
        python = found
    try:
        out = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise Failure(f"cannot run {python}: {exc.strerror}") from None
    try:
        found = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise Failure(f"{python} is not a working Python interpreter "
                      f"(exit {out.returncode})") from None
    if not found["jittor"]:
        raise Failure(f"{python} finds no jittor package (install jittor=={JITTOR_VERSION} "
                      "there or put it on PYTHONPATH)")
    if not found["nvidia"]:
        raise Failure(f"{python} finds no nvidia/ packages (nvidia-cudnn-cu13, nvidia-cublas)")
    found["python"] = python
    return found


def python_config(tree, probe):
    """Jittor compiles against the Python headers that `python3.X-config --includes` names
    and finds that tool only beside the interpreter or in /usr: a virtual environment's
    interpreter (the GPU machine's) has none there. Returns the python_config_path to export
    (None: Jittor finds one itself): the base interpreter's, else one answering from
    sysconfig, as long as Python.h is there."""
    if probe["config"]:
        return None
    if os.path.isfile(probe["base_config"]):
        return probe["base_config"]
    if not any(os.path.isfile(os.path.join(d, "Python.h")) for d in probe["includes"]):
        raise Failure(f"no Python.h in {', '.join(probe['includes'])} for {probe['python']}: "
                      f"Jittor compiles against it (install python{probe['version']}-dev)")
    path = os.path.join(tree, "bin", f"python{probe['version']}-config")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    includes = " ".join(f"-I{d}" for d in probe["includes"])
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\n# {MARK}: what Jittor asks python{probe['version']}-config, from "
                f"{probe['python']}'s sysconfig\ncase \"$1\" in\n"
                f"    --includes) echo '{includes}' ;;\n"
                f"    --extension-suffix) echo '{probe['suffix']}' ;;\n"
                f"    *) echo \"$0: only --includes and --extension-suffix\" >&2; exit 1 ;;\n"
                "esac\n")
    os.chmod(path, 0o755)
    return path


def jittor_version(jittor_dir):
    init = os.path.join(jittor_dir, "__init__.py")
    try:
        with open(init, encoding="utf8") as f:
            found = re.search(r"^__version__ = '([^']+)'", f.read(), re.M)
    except OSError:
        found = None
    if not found:
        raise Failure(f"{init}: no __version__ (not a Jittor package)")
    version = found.group(1)
    if not (version == JITTOR_VERSION or version.startswith(JITTOR_VERSION + ".")):
        raise Failure(f"{jittor_dir} is Jittor {version}: this step is for {JITTOR_VERSION}")
    return version


def find_nvcc(nvcc):
    """(nvcc, CUDA home): the home from nvcc's own dry run (its TOP), since the nvcc on
    PATH may be a wrapper script in another folder."""
    candidates = [nvcc] if nvcc else [os.environ.get("nvcc_path") or None, shutil.which("nvcc"),
                                     "/usr/local/cuda/bin/nvcc"]
    for path in filter(None, candidates):
        if os.path.isfile(path) and os.access(path, os.X_OK):
            break
        if nvcc:
            raise Failure(f"no nvcc at {nvcc}")
    else:
        raise Failure("no nvcc ($nvcc_path unset, none on PATH, no /usr/local/cuda/bin/nvcc): "
                      "give --nvcc")
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([path, "--dryrun", "-c", os.path.join(tmp, "x.cu"), "-o",
                              os.path.join(tmp, "x.o")], capture_output=True, text=True)
    found = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.M)
    if not found:
        raise Failure(f"{path} is not an nvcc (no TOP in its --dryrun output)")
    home = os.path.realpath(found.group(1).strip())
    version = re.search(r"release (\d+)\.(\d+)", subprocess.run(
        [path, "--version"], capture_output=True, text=True).stdout)
    if not version or int(version.group(1)) < 13:
        raise Failure(f"{path} is not CUDA 13's nvcc (this step is for CUDA 13)")
    return path, home


def package_dirs(nvidia_dirs):
    """(include, lib) folder pairs of the nvidia packages: cu13/ holds the CUDA 13 wheels
    (cuBLAS, cuRAND, ...), cudnn/ cuDNN; the CUDA 12 wheels have one folder each."""
    pairs = []
    for root in nvidia_dirs:
        for name in sorted(os.listdir(root)):
            inc, lib = os.path.join(root, name, "include"), os.path.join(root, name, "lib")
            if os.path.isdir(inc) and os.path.isdir(lib):
                pairs.append((inc, lib))
    return pairs


# ---- the tree -------------------------------------------------------------------------------
def link(target, name):
    if os.path.lexists(name):
        os.remove(name)
    os.symlink(target, name)


def link_entries(src_dir, dst_dir):
    """Link every entry of src_dir into dst_dir that dst_dir does not hold yet."""
    for entry in sorted(os.listdir(src_dir)):
        if not os.path.lexists(os.path.join(dst_dir, entry)):
            os.symlink(os.path.join(src_dir, entry), os.path.join(dst_dir, entry))


def unversioned_names(lib_dir):
    """libX.so -> libX.so.N for every libX.so.N (Jittor searches the plain names)."""
    for entry in sorted(os.listdir(lib_dir)):
        found = re.match(r"^(lib[\w+-]+\.so)\.\d+$", entry)
        if found and not os.path.lexists(os.path.join(lib_dir, found.group(1))):
            os.symlink(entry, os.path.join(lib_dir, found.group(1)))


def build_tree(tree, nvcc, cuda_home, nvidia_dirs):
    """TREE/cuda: bin/nvcc, include/, lib64/; returns {library: folder it came from}."""
    cuda = os.path.join(tree, "cuda")
    if os.path.isdir(cuda):
        shutil.rmtree(cuda)
    for sub in ("bin", "include", "lib64"):
        os.makedirs(os.path.join(cuda, sub))
    # A script, not a link: Jittor resolves links and takes the real nvcc's folder as home.
    wrapper = os.path.join(cuda, "bin", "nvcc")
    real = os.path.join(cuda_home, "bin", "nvcc")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\n# {MARK}: the real nvcc, in a CUDA home laid out for Jittor\n"
                f"exec '{real if os.path.isfile(real) else os.path.realpath(nvcc)}' \"$@\"\n")
    os.chmod(wrapper, 0o755)
    include, lib64 = os.path.join(cuda, "include"), os.path.join(cuda, "lib64")
    home = (os.path.join(cuda_home, "include"), os.path.join(cuda_home, "lib64"))
    # Libraries from the packages first: the very files PyTorch loads in the same process
    # (LD_LIBRARY_PATH names the tree); headers from the CUDA home first, nvcc's own.
    pairs = package_dirs(nvidia_dirs) + [home]
    sources = {}
    for name, (header, libs) in LIBRARIES.items():
        for inc, lib in pairs:
            names = os.listdir(lib) if os.path.isdir(lib) else []
            has_libs = all(any(n == want or n.startswith(want + ".") for n in names)
                           for want in libs)
            if os.path.isfile(os.path.join(inc, header)) and has_libs:
                sources[name] = lib
                break
        else:
            where = ", ".join(inc for inc, _ in pairs)
            raise Failure(f"no {header} with {' '.join(libs)} in {where} "
                          f"(install the nvidia package of {name})")
    used = [pair for pair in pairs if pair[1] in sources.values()]
    for inc, _ in [home] + [pair for pair in used if pair != home]:
        link_entries(inc, include)  # the first to bring a name wins
    for _, lib in used:
        for entry in sorted(os.listdir(lib)):
            full = os.path.join(lib, entry)
            if ".so" in entry and os.path.isfile(full):
                if not os.path.lexists(os.path.join(lib64, entry)):
                    os.symlink(full, os.path.join(lib64, entry))
    unversioned_names(lib64)
    return sources


def onednn_tree(tree, onednn):
    """TREE/onednn/{include,lib/libmkldnn.so} from a folder with include/dnnl.h and a
    lib*/.../libdnnl.so*: the layout Jittor's mkl_include_path / mkl_lib_path expect."""
    header = os.path.join(onednn, "include", "dnnl.h")
    if not os.path.isfile(header):
        raise Failure(f"no oneDNN header {header}")
    found = sorted(glob.glob(os.path.join(onednn, "lib*", "libdnnl.so*"))
                   + glob.glob(os.path.join(onednn, "lib", "*-linux-gnu", "libdnnl.so*")))
    if not found or not os.path.isfile(found[0]):
        raise Failure(f"no libdnnl.so in {onednn}/lib*")
    library = os.path.realpath(found[0])
    home = os.path.join(tree, "onednn")
    if os.path.isdir(home):
        shutil.rmtree(home)
    os.makedirs(os.path.join(home, "lib"))
    os.symlink(os.path.join(onednn, "include"), os.path.join(home, "include"))
    # libmkldnn.so: the name Jittor links; libdnnl.so.N...: the loader's (its soname)
    versions = os.path.basename(library).split(".so")[-1].strip(".").split(".")
    names = ["libmkldnn.so", "libdnnl.so"] + [
        "libdnnl.so." + ".".join(versions[:i]) for i in range(1, len(versions) + 1) if versions[0]]
    for name in names:
        link(library, os.path.join(home, "lib", name))
    return home


def environment(tree, onednn_home, cudnn, config):
    """Jittor's variables (read at its import): name -> value."""
    lib_dirs = [os.path.join(tree, "cuda", "lib64")]
    env = {"nvcc_path": os.path.join(tree, "cuda", "bin", "nvcc"),
           "use_cutt": "0", "use_cutlass": "0", "use_nccl": "0"}
    if config:
        env["python_config_path"] = config
    if onednn_home:
        env.update(mkl_include_path=os.path.join(onednn_home, "include"),
                   mkl_lib_path=os.path.join(onednn_home, "lib"))
        lib_dirs.append(os.path.join(onednn_home, "lib"))
    else:
        env["use_mkl"] = "0"
    if cudnn == "off":
        env["conv_opt"] = "1"
    env["LD_LIBRARY_PATH"] = ":".join(lib_dirs)
    return env


def env_script(env):
    lines = [f"# {MARK}: Jittor on CUDA 13 (scripts/jittor_cuda.py); source before Python starts"]
    for key, value in env.items():
        if key == "LD_LIBRARY_PATH":
            lines.append(f"export LD_LIBRARY_PATH='{value}'${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}")
        else:
            lines.append(f"export {key}='{value}'")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree", help="folder for the CUDA home links and env.sh (created)")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter that imports jittor and nvidia/*")
    parser.add_argument("--nvcc", help="CUDA 13's nvcc (default: $nvcc_path, PATH, "
                        "/usr/local/cuda/bin/nvcc)")
    parser.add_argument("--onednn", help="oneDNN folder (include/dnnl.h, libdnnl.so) for "
                        "Jittor's CPU convolutions; without it use_mkl=0")
    parser.add_argument("--cudnn", choices=("on", "off"), default="on",
                        help="off: Jittor leaves cuDNN unloaded (conv_opt=1)")
    parser.add_argument("--copy", action="store_true",
                        help="patch copies under TREE/jittor-patched/, not the installed Jittor")
    args = parser.parse_args(argv)
    try:
        probe = probe_python(args.python)
        jittor_dir = probe["jittor"][0]
        version = jittor_version(jittor_dir)
        nvcc, cuda_home = find_nvcc(args.nvcc)
        try:
            os.makedirs(args.tree, exist_ok=True)
        except OSError as exc:
            raise Failure(f"cannot create {args.tree}: {exc.strerror}") from None
        tree = os.path.realpath(args.tree)
        sources = build_tree(tree, nvcc, cuda_home, probe["nvidia"])
        onednn_home = onednn_tree(tree, os.path.realpath(args.onednn)) if args.onednn else None
        config = python_config(tree, probe)
        if not os.access(jittor_dir, os.W_OK) and not args.copy:
            raise Failure(f"{jittor_dir} is not writable: cannot patch it (try --copy)")
        copy_dir = os.path.join(tree, "jittor-patched") if args.copy else None
        applied, already = patch_jittor(jittor_dir, copy_dir)
    except Failure as exc:
        print(f"jittor_cuda: error: {exc}", file=sys.stderr)
        return 2
    env = environment(tree, onednn_home, args.cudnn, config)
    with open(os.path.join(tree, "env.sh"), "w") as f:
        f.write(env_script(env))
    log = lambda text: print(f"[jittor_cuda] {text}", file=sys.stderr)  # noqa: E731
    log(f"Jittor {version} at {jittor_dir} (for {probe['python']}, Python {probe['version']})")
    log(f"nvcc {nvcc}, CUDA home {cuda_home}; libraries: "
        + ", ".join(f"{k} from {v}" for k, v in sources.items()))
    log(f"python{probe['version']}-config: {config or probe['config']}")
    where = copy_dir or jittor_dir
    log(f"patch: {applied} hunks applied, {already} already there, in {where}")
    log(f"oneDNN: {onednn_home or 'none (use_mkl=0: Jittor CPU convolutions take its slow path)'}"
        f"; cuDNN {args.cudnn}")
    log(f"environment: {os.path.join(tree, 'env.sh')}")
    print(env_script(env), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
