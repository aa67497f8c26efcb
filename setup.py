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
"""
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


class CMakeBuild(build_ext):
    """One CMake configure + build produces every extension in place of setuptools' compiler."""

    def run(self):
        import pybind11

        ext_dir = Path(self.get_ext_fullpath("gankern._C")).resolve().parent
        ext_dir.mkdir(parents=True, exist_ok=True)
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)

        want = os.environ.get("GANKERN_CUDA", "").strip()
        nvcc = find_nvcc()
        if want == "1" and nvcc is None:
            raise RuntimeError("GANKERN_CUDA=1 but no CUDA compiler (nvcc) was found; set CUDA_HOME or CUDACXX")
        build_cuda = nvcc is not None and want != "0"
        if not build_cuda:
            why = "GANKERN_CUDA=0" if want == "0" else "no CUDA compiler (nvcc) found"
            print(f"gankern: CUDA backend skipped ({why}); building the CPU module only", file=sys.stderr)

        cfg = os.environ.get("GANKERN_BUILD_TYPE", "Release")
        args = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={ext_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DGANKERN_CUDA={'ON' if build_cuda else 'OFF'}",
            f"-DGANKERN_CUDA_EMULATOR={'ON' if os.environ.get('GANKERN_BUILD_EMULATOR') == '1' else 'OFF'}",
            f"-DGANKERN_SANITIZE={os.environ.get('GANKERN_SANITIZE', '')}",
        ]
        if build_cuda:
            args += [f"-DCMAKE_CUDA_COMPILER={nvcc}",
                     f"-DGANKERN_CUDA_ARCHS={os.environ.get('GANKERN_CUDA_ARCHS', '80;90')}"]
        subprocess.check_call(args)
        build = ["cmake", "--build", str(build_dir)]
        if os.environ.get("GANKERN_BUILD_JOBS"):
            build += ["-j", os.environ["GANKERN_BUILD_JOBS"]]
        subprocess.check_call(build)


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import find_nvcc
    setup(
        ext_modules=[CMakeExtension("gankern._C"), CMakeExtension("gankern._cuda")],
        cmdclass={"build_ext": CMakeBuild},
    )
