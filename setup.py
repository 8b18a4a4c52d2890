"""Build script for decaf-kernels.

`pip install .` compiles two extension modules:

* ``decaf_kernels._C``       C++17 (CPU) kernels, with OpenMP where the compiler supports it. Always built.
* ``decaf_kernels._C_cuda``  CUDA kernels, built only when ``nvcc`` is found and ``DECAF_SKIP_CUDA_BUILD`` is
                             not set. It is a separate module so that a machine without a CUDA driver still
                             loads the CPU kernels.

Both are plain pybind11 modules that take raw pointers, shapes and strides: they do not link against
libtorch, so the build needs no torch and the result works with any torch version the package supports.

Environment variables read here (also listed in the README):

=========================  ==========================================================================
DECAF_SKIP_CUDA_BUILD      "1"/"true": never build the CUDA module, even when nvcc is present.
DECAF_CUDA_ARCHS           semicolon list of compute capabilities, e.g. "80;90" (default "80;90").
CUDA_HOME / CUDA_PATH      where to look for nvcc before falling back to PATH.
DECAF_NO_OPENMP            "1": build the CPU module without OpenMP.
=========================  ==========================================================================
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


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


class BuildExt(build_ext):
    """Compiles .cu sources with nvcc; everything else goes through the normal C++ compiler.

    A failure anywhere in the CUDA module (nvcc, cudart, the link) drops that module with a loud message and
    keeps the CPU module: a broken CUDA toolkit must never make the CPU install fail.
    """

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

    def _build_cuda_extension(self, ext: Extension) -> None:
        nvcc = getattr(ext, "_nvcc")
        build_temp = Path(self.build_temp) / "cuda"
        build_temp.mkdir(parents=True, exist_ok=True)
        gencode = []
        for arch in _cuda_archs():
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        objects = []
        for src in [s for s in ext.sources if s.endswith(".cu")]:
            obj = build_temp / (Path(src).stem + ".o")
            cmd = [
                nvcc, "-c", src, "-o", str(obj), "-O3", "-std=c++17", "--expt-relaxed-constexpr",
                "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
                f"-I{CSRC / 'include'}", f"-I{_pybind11_include()}",
                f"-I{sysconfig.get_paths()['include']}", *gencode,
            ]
            print("nvcc:", " ".join(cmd), flush=True)
            subprocess.check_call(cmd)
            objects.append(str(obj))
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        ext.extra_objects = list(ext.extra_objects or []) + objects
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

    cu_sources = sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cuda").glob("*.cu"))
    if _truthy("DECAF_SKIP_CUDA_BUILD"):
        print("decaf-kernels: DECAF_SKIP_CUDA_BUILD set, not building the CUDA module", flush=True)
    elif cu_sources:
        nvcc = _find_nvcc()
        if nvcc is None:
            print("decaf-kernels: nvcc not found, building the CPU module only", flush=True)
        else:
            print(f"decaf-kernels: nvcc found at {nvcc}, building the CUDA module for archs {_cuda_archs()}", flush=True)
            cpp_sources = sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cuda").glob("*.cpp"))
            ext = Extension(
                "decaf_kernels._C_cuda",
                sources=cpp_sources + cu_sources,
                include_dirs=[str(CSRC / "include"), _pybind11_include()],
                library_dirs=_cuda_lib_dirs(nvcc),
                # Static cudart: importing the module needs no libcudart.so, only a driver when a kernel runs.
                libraries=["cudart_static", "dl", "rt", "pthread"],
                extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden"],
                depends=headers,
                language="c++",
            )
            ext._nvcc = nvcc  # type: ignore[attr-defined]
            exts.append(ext)
    return exts


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
