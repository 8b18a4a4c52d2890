"""Build script for decaf-kernels.

`pip install .` compiles up to two extension modules:

* ``decaf_kernels._C``       C++17 (CPU) kernels, with OpenMP where the compiler supports it. Always built.
* ``decaf_kernels._C_cuda``  CUDA kernels. Built only when asked for (``DECAF_BUILD_CUDA=1`` or
                             ``DECAF_CUDA_ARCHS`` set) or when this machine has an NVIDIA GPU, and nvcc is found;
                             ``DECAF_SKIP_CUDA_BUILD=1`` overrides all of these. It is a separate module so that
                             a machine without a CUDA driver still loads the CPU kernels.

Finding nvcc alone is not a reason to build the CUDA module: nvcc adds minutes to the build for a module
that a CPU-only machine cannot run. The build prints one line saying whether the CUDA module is built and why.

Both are plain pybind11 modules that take raw pointers, shapes and strides: they do not link against
libtorch, so the build needs no torch (this script never imports it, also not to look for a GPU) and the
result works with any torch version the package supports.

nvcc is not rerun for a .cu file whose object is newer than the source and every header under csrc/include/
and csrc/cuda/, and was compiled with the same command line and the same nvcc (a hash of both sits beside the
object, ``<object>.cmd``). Editable installs keep these objects in ``build/cuda-objects/``. When this build does
not make ``_C_cuda``, a ``_C_cuda`` module left by an earlier build in the build folder (or, for in-place and
editable builds, in ``decaf_kernels/``) is deleted, so that a stale CUDA module never ends up in a CPU-only
wheel or install.

Environment variables read here (also listed in the README):

=========================  ==========================================================================
DECAF_BUILD_CUDA           "1": build the CUDA module even without a GPU here (e.g. to build a wheel for
                           a GPU machine). "0": never build it. Unset: build it only when a GPU is
                           present (``nvidia-smi -L`` lists one, or /dev/nvidia0 exists).
DECAF_SKIP_CUDA_BUILD      "1"/"true": never build the CUDA module; overrides everything else.
DECAF_CUDA_ARCHS           semicolon list of compute capabilities, e.g. "80;90" (default "80;90").
                           Setting it also asks for the CUDA module, as DECAF_BUILD_CUDA=1 does.
CUDA_HOME / CUDA_PATH      where to look for nvcc before falling back to PATH.
DECAF_NO_OPENMP            "1": build the CPU module without OpenMP.
=========================  ==========================================================================
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Optional

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
CUDA_EXT = "decaf_kernels._C_cuda"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _truthy(name: str, env: Mapping[str, str] = os.environ) -> bool:
    return env.get(name, "").strip().lower() in _TRUE


def _pybind11_include() -> str:
    import pybind11

    return pybind11.get_include()


def _compiler_accepts(flags: list[str], code: str = "int main(){return 0;}\n") -> bool:
    """Try to compile and link a tiny program with `flags` using the C++ compiler Python was built with."""
    cxx = os.environ.get("CXX") or (sysconfig.get_config_var("CXX") or "c++").split()[0]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text(code)
        try:
            res = subprocess.run(
                [cxx, str(src), "-o", str(Path(tmp) / "probe"), *flags],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=120,
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return res.returncode == 0


def _find_nvcc() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.exists() else None


def _find_gpu() -> Optional[str]:
    """Describes this machine's NVIDIA GPU, or None. Asks nvidia-smi and the device files, never torch."""
    try:
        res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        gpus = [line.strip() for line in res.stdout.splitlines() if line.startswith("GPU ")]
        if res.returncode == 0 and gpus:
            return f"nvidia-smi -L lists {gpus[0]!r}" + (f" and {len(gpus) - 1} more" if len(gpus) > 1 else "")
    except (OSError, subprocess.SubprocessError):
        pass  # no driver tools installed, or they hang: fall back to the device file
    if Path("/dev/nvidia0").exists():
        return "/dev/nvidia0 exists"
    return None


def _cuda_wanted(env: Mapping[str, str] = os.environ,
                 find_gpu: Callable[[], Optional[str]] = _find_gpu) -> tuple[bool, str]:
    """Whether to build the CUDA module, and why, from the environment variables and the GPU probe."""
    if _truthy("DECAF_SKIP_CUDA_BUILD", env):
        return False, "DECAF_SKIP_CUDA_BUILD is set"
    raw = env.get("DECAF_BUILD_CUDA", "").strip()
    if raw.lower() in _TRUE:
        return True, f"DECAF_BUILD_CUDA={raw}"
    if raw.lower() in _FALSE:
        return False, f"DECAF_BUILD_CUDA={raw}"
    if raw:
        raise SystemExit(f"DECAF_BUILD_CUDA: expected 1 (build the CUDA module) or 0 (do not), got {raw!r}")
    if env.get("DECAF_CUDA_ARCHS", "").strip():
        return True, "DECAF_CUDA_ARCHS is set"
    gpu = find_gpu()
    if gpu:
        return True, f"a GPU is present: {gpu}"
    return False, ("no NVIDIA GPU found (nvidia-smi -L, /dev/nvidia0) and neither DECAF_BUILD_CUDA=1 nor "
                   "DECAF_CUDA_ARCHS is set")


def _cuda_lib_dirs(nvcc: str) -> list[str]:
    """Library folders of the toolkit that owns nvcc (nvcc may be a wrapper outside the toolkit tree)."""
    homes = [os.environ.get(v) for v in ("CUDA_HOME", "CUDA_PATH")]
    homes += [str(Path(nvcc).resolve().parent.parent), "/usr/local/cuda"]
    dirs = []
    for home in filter(None, homes):
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
            d = Path(home) / sub
            if (d / "libcudart_static.a").exists() and str(d) not in dirs:
                dirs.append(str(d))
    return dirs


def _cuda_archs() -> list[str]:
    raw = os.environ.get("DECAF_CUDA_ARCHS", "80;90")
    archs = [a.strip().replace(".", "") for a in raw.replace(",", ";").split(";") if a.strip()]
    for a in archs:
        if not a.rstrip("a").isdigit():
            raise SystemExit(f"DECAF_CUDA_ARCHS: could not read compute capability {a!r} in {raw!r}; expected e.g. '80;90'")
    return archs


def _cuda_headers() -> list[Path]:
    """Every header a .cu file can include: csrc/include/** (its -I folder) and csrc/cuda/ (its own folder)."""
    found = [p for p in (CSRC / "include").rglob("*") if p.is_file()]
    found += [p for p in (CSRC / "cuda").rglob("*") if p.suffix in {".h", ".hpp", ".cuh", ".inl"}]
    return sorted(found)


def _object_is_current(obj: Path, stamp: Path, key: str, inputs: list[Path]) -> bool:
    """True when `obj` was built by the command hashed in `key` and is newer than every input."""
    try:
        if stamp.read_text().strip() != key:
            return False
        built = obj.stat().st_mtime_ns
    except OSError:  # no object or no stamp yet
        return False
    return all(p.stat().st_mtime_ns < built for p in inputs)


class BuildExt(build_ext):
    """Compiles .cu sources with nvcc; everything else goes through the normal C++ compiler.

    A failure anywhere in the CUDA module (nvcc, cudart, the link) drops that module with a loud message and
    keeps the CPU module: a broken CUDA toolkit must never make the CPU install fail.
    """

    def run(self) -> None:
        self._choose_cuda()
        super().run()
        if not any(ext.name == CUDA_EXT for ext in self.extensions):
            self._remove_stale_cuda_module()

    def _choose_cuda(self) -> None:
        """Keeps the CUDA module in the build only when it is wanted and nvcc exists; prints why in one line."""
        cuda = [ext for ext in self.extensions if ext.name == CUDA_EXT]
        if not cuda:
            return
        wanted, why = _cuda_wanted()
        nvcc = _find_nvcc() if wanted else None
        if wanted and nvcc:
            cuda[0]._nvcc = nvcc  # type: ignore[attr-defined]
            cuda[0].library_dirs = _cuda_lib_dirs(nvcc)
            print(f"decaf-kernels: building the CUDA module {CUDA_EXT} ({why}; nvcc {nvcc}, "
                  f"archs {';'.join(_cuda_archs())})", flush=True)
            return
        self.extensions.remove(cuda[0])
        if wanted:
            print(f"decaf-kernels: WARNING: not building the CUDA module {CUDA_EXT}: {why}, but nvcc was not found "
                  "(set CUDA_HOME or put nvcc on PATH); building the CPU module only", flush=True)
        else:
            print(f"decaf-kernels: not building the CUDA module {CUDA_EXT} ({why})", flush=True)

    def _remove_stale_cuda_module(self) -> None:
        """Deletes a _C_cuda that an earlier build left where this one's output goes.

        setuptools copies the whole build folder into the wheel (and in-place builds put modules into the
        package folder), so a CUDA module built earlier from older sources would otherwise ship with, or be
        imported by, a build that did not make one.
        """
        name = self.get_ext_filename(self.get_ext_fullname(CUDA_EXT))
        places = [Path(self.build_lib) / name]
        if self.inplace:
            package_dir = self.get_finalized_command("build_py").get_package_dir("decaf_kernels")
            places.append(Path(package_dir) / Path(name).name)
        for path in places:
            if path.is_file() or path.is_symlink():
                path.unlink()
                print(f"decaf-kernels: removed {path}, a CUDA module from an earlier build", flush=True)

    def build_extensions(self) -> None:
        for ext in list(self.extensions):
            if not any(src.endswith(".cu") for src in ext.sources):
                self.build_extension(ext)
                continue
            try:
                self._build_cuda_extension(ext)
            except Exception as err:  # noqa: BLE001
                self.extensions.remove(ext)  # so editable/inplace installs do not look for its output
                print(
                    f"\n*** decaf-kernels: building the CUDA module failed ({type(err).__name__}: {err}).\n"
                    "*** Continuing without it: CUDA tensors will use the documented fallback.\n"
                    "*** Set DECAF_SKIP_CUDA_BUILD=1 to skip this step silently.\n",
                    file=sys.stderr,
                    flush=True,
                )

    def _cuda_object_dir(self) -> Path:
        # Editable builds get a fresh temporary build_temp each time; their objects live in build/ instead so
        # that an unchanged .cu is not recompiled.
        if self.editable_mode:
            try:
                path = ROOT / "build" / "cuda-objects"
                path.mkdir(parents=True, exist_ok=True)
                return path
            except OSError:
                pass  # a read-only checkout: fall back to the temporary folder
        path = Path(self.build_temp) / "cuda"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _build_cuda_extension(self, ext: Extension) -> None:
        nvcc = getattr(ext, "_nvcc")
        obj_dir = self._cuda_object_dir()
        gencode = []
        for arch in _cuda_archs():
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        # The toolkit can change behind the same nvcc path, so its version is part of an object's key.
        nvcc_version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=120,
                                      check=True).stdout
        headers = _cuda_headers()
        objects = []
        for src in [s for s in ext.sources if s.endswith(".cu")]:
            obj = obj_dir / (Path(src).stem + ".o")
            stamp = obj.with_name(obj.name + ".cmd")
            # No pybind11 or Python include folders: the .cu files use neither, and pip's isolated build puts
            # pybind11 in a new temporary folder each time, which would change the command and defeat the reuse.
            cmd = [
                nvcc, "-c", src, "-o", str(obj), "-O3", "-std=c++17", "--expt-relaxed-constexpr",
                "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
                f"-I{CSRC / 'include'}", *gencode,
            ]
            key = hashlib.sha256("\0".join([*cmd, nvcc_version]).encode()).hexdigest()
            if not self.force and _object_is_current(obj, stamp, key, [ROOT / src, *headers]):
                print(f"nvcc: {obj} is up to date (same command, newer than {src} and its headers)", flush=True)
            else:
                stamp.unlink(missing_ok=True)  # an interrupted compile must not leave a matching stamp
                print("nvcc:", " ".join(cmd), flush=True)
                subprocess.check_call(cmd)
                stamp.write_text(key + "\n")
            objects.append(str(obj))
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        ext.extra_objects = list(ext.extra_objects or []) + objects
        # setuptools relinks only when a source or dependency is newer than the module: the objects count too
        ext.depends = list(ext.depends or []) + objects
        self.build_extension(ext)


def _extensions() -> list[Extension]:
    cxx_flags = ["-O3", "-std=c++17", "-fvisibility=hidden"]
    link_flags: list[str] = []
    if not _truthy("DECAF_NO_OPENMP") and _compiler_accepts(["-fopenmp"], "#include <omp.h>\nint main(){return omp_get_max_threads()>0?0:1;}\n"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
        print("decaf-kernels: building the CPU module with OpenMP", flush=True)
    else:
        print("decaf-kernels: building the CPU module without OpenMP", flush=True)

    cpu_sources = sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cpu").glob("*.cpp"))
    # headers: an edit to any of them must rebuild the module
    headers = sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*.h"))
    exts = [
        Extension(
            "decaf_kernels._C",
            sources=cpu_sources,
            include_dirs=[str(CSRC / "include"), _pybind11_include()],
            extra_compile_args=cxx_flags,
            extra_link_args=link_flags,
            depends=headers,
            language="c++",
        )
    ]

    # Always declared; BuildExt decides at build time whether to build it (and says why).
    cu_sources = sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cuda").glob("*.cu"))
    if cu_sources:
        cpp_sources = sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cuda").glob("*.cpp"))
        exts.append(
            Extension(
                CUDA_EXT,
                sources=cpp_sources + cu_sources,
                include_dirs=[str(CSRC / "include"), _pybind11_include()],
                # Static cudart: importing the module needs no libcudart.so, only a driver when a kernel runs.
                libraries=["cudart_static", "dl", "rt", "pthread"],
                extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden"],
                depends=headers,
                language="c++",
            )
        )
    return exts


# The kernel source that decaf_kernels._nvrtc compiles at run time (when no nvcc-built _C_cuda is installed), and
# the headers it includes, relative to csrc/.
NVRTC_SOURCES = ("cuda/small_core_block_kernel.cuh", "include/decaf/common.h", "include/decaf/small_core/shared.h")


class BuildPy(build_py):
    """Copies the NVRTC kernel sources into the package (decaf_kernels/_cuda_src) of a wheel; source checkouts and
    editable installs read them from csrc/ directly."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        dest = Path(self.build_lib) / "decaf_kernels" / "_cuda_src"
        for rel in NVRTC_SOURCES:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(CSRC / rel, dest / rel)


# setuptools runs this file as __main__; the guard lets tests import the helpers above without building.
if __name__ == "__main__":
    setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt, "build_py": BuildPy})
