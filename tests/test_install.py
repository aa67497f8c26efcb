"""Installing twice from one checkout works (issue: the second `pip install .` failed because the
CMake cache in build/ named the ninja of the first install's deleted, isolated build environment).

Slow (two native builds, about a minute each): installs into throwaway --target folders, never into
the running environment."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _checkout_copy(dst: Path) -> None:
    """The checkout's tracked files as they are now (a fresh clone, local edits included)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


@pytest.mark.slow
def test_pip_install_twice_in_one_checkout(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout")
    src = tmp_path / "src"
    _checkout_copy(src)
    env = {**__import__("os").environ, "GANKERN_CUDA": "0", "GANKERN_BUILD_EMULATOR": "0"}
    for i in range(2):  # each in its own isolated build environment, as two `pip install .` are
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
                            "--target", str(tmp_path / f"site{i}"), "."], cwd=src, env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0, f"install {i + 1} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        assert list((tmp_path / f"site{i}" / "gankern").glob("_C*.so")), f"install {i + 1} built no gankern._C"
