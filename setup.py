"""Builds gankern's native modules ahead of time with CMake + ninja.

`pip install .` / `pip install -e .` (or `python setup.py build_ext --inplace` while developing)
configure CMakeLists.txt once and build:
  gankern._C     C++ CPU kernels (always)
  gankern._cuda  CUDA kernels, when a CUDA compiler is found
  gankern._cuda_emu  the same CUDA kernels emulated on the CPU (tests), when asked for

Environment:
  GANKERN_CUDA=0|1          force the CUDA module off / on (on: fail if no nvcc)
  GANKERN_CUDA_ARCHS="80;90" CMake CUDA architectures (default: sm_80 and sm_90)
  GANKERN_BUILD_EMULATOR=1  also build gankern._cuda_emu (x86-64 Linux, no CUDA toolkit needed;
                            tests run it with GANKERN_CUDA_EMULATOR=1, see csrc/emulator/runtime.h)
  GANKERN_BUILD_TYPE=Release|Debug|RelWithDebInfo
  GANKERN_BUILD_JOBS=N      parallel compile jobs (default: all cores)
  GANKERN_SANITIZE=address  build gankern._C with AddressSanitizer (tests only: load it with libasan
                            preloaded, see .ci/asan)
  GANKERN_CPU_CLONES=v4,v3|v3|none  CPU versions compiled for the hot loops (default v4,v3: AVX-512,
                            AVX2+FMA and baseline, picked at load); v3 drops AVX-512, none builds
                            baseline x86-64 only. CI builds `none` once to test that path.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def find_nvcc():
    """Path of nvcc, or None. Honors CUDACXX / CUDA_HOME / CUDA_PATH, then PATH, then /usr/local/cuda."""
    candidates = [os.environ.get("CUDACXX")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


def find_ninja():
    """The ninja this build runs: the `ninja` package of the (possibly isolated) build environment
    first, then PATH. Passed to CMake explicitly on every configure."""
    try:
        import ninja
        path = os.path.join(ninja.BIN_DIR, "ninja")
        if os.path.isfile(path):
            return path
    except ImportError:
        pass
    return shutil.which("ninja")


def fresh_build_dir(build_dir: Path, toolchain: dict) -> None:
    """Empties build_dir when it was configured by another toolchain than this build's.

    A CMake cache records absolute paths of the tools that configured it (ninja, cmake, pybind11,
    the interpreter). pip builds in an isolated environment that it deletes afterwards, so a second
    `pip install .` in the same checkout, or switching between `pip install -e .` and
    `pip install .`, would reuse a cache pointing at a deleted ninja ("Running '.../ninja'
    '--version' failed"). The toolchain is recorded next to the cache; a different one means a
    configure from scratch, the same one (repeated `python setup.py build_ext --inplace`) keeps the
    incremental build."""
    stamp = build_dir / "gankern-toolchain.json"
    want = json.dumps(toolchain, sort_keys=True)
    if build_dir.exists() and (not stamp.exists() or stamp.read_text() != want):
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(want)


class CMakeBuild(build_ext):
    """One CMake configure + build produces every extension in place of setuptools' compiler."""

    def run(self):
        import pybind11

        ext_dir = Path(self.get_ext_fullpath("gankern._C")).resolve().parent
        ext_dir.mkdir(parents=True, exist_ok=True)
        build_dir = Path(self.build_temp).resolve() / "cmake"

        want = os.environ.get("GANKERN_CUDA", "").strip()
        nvcc = find_nvcc()
        if want == "1" and nvcc is None:
            raise RuntimeError("GANKERN_CUDA=1 but no CUDA compiler (nvcc) was found; set CUDA_HOME or CUDACXX")
        build_cuda = nvcc is not None and want != "0"
        if not build_cuda:
            why = "GANKERN_CUDA=0" if want == "0" else "no CUDA compiler (nvcc) found"
            print(f"gankern: CUDA backend skipped ({why}); building the CPU module only", file=sys.stderr)

        cfg = os.environ.get("GANKERN_BUILD_TYPE", "Release")
        cmake, ninja = shutil.which("cmake") or "cmake", find_ninja()
        if ninja is None:
            raise RuntimeError("gankern: ninja not found (pip install ninja)")
        fresh_build_dir(build_dir, {"cmake": cmake, "ninja": ninja, "python": sys.executable,
                                    "pybind11": pybind11.get_cmake_dir(), "nvcc": nvcc if build_cuda else None})
        args = [
            cmake, "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={ext_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DGANKERN_CUDA={'ON' if build_cuda else 'OFF'}",
            f"-DGANKERN_CPU_CLONES={os.environ.get('GANKERN_CPU_CLONES', 'v4,v3')}",
            f"-DGANKERN_CUDA_EMULATOR={'ON' if os.environ.get('GANKERN_BUILD_EMULATOR') == '1' else 'OFF'}",
            f"-DGANKERN_SANITIZE={os.environ.get('GANKERN_SANITIZE', '')}",
        ]
        if build_cuda:
            args += [f"-DCMAKE_CUDA_COMPILER={nvcc}",
                     f"-DGANKERN_CUDA_ARCHS={os.environ.get('GANKERN_CUDA_ARCHS', '80;90')}"]
        subprocess.check_call(args)
        build = [cmake, "--build", str(build_dir)]
        if os.environ.get("GANKERN_BUILD_JOBS"):
            build += ["-j", os.environ["GANKERN_BUILD_JOBS"]]
        subprocess.check_call(build)


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import find_nvcc
    setup(
        ext_modules=[CMakeExtension("gankern._C"), CMakeExtension("gankern._cuda")],
        cmdclass={"build_ext": CMakeBuild},
    )
