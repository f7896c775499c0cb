"""Where the tests find benchmark data: $LITE_DELTA_BENCHDATA or shared/benchdata beside the clone,
never a path of the machine the tests were written on. Checked on a copy of conftest.py in a fresh
folder, as a user's clone without the data sees it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BENCHDATA

TESTS = Path(__file__).resolve().parent

NEEDS_DATA = '''
import pytest
from conftest import BENCHDATA, BENCHDATA_SKIP

pytestmark = pytest.mark.skipif(not BENCHDATA.is_dir(), reason=BENCHDATA_SKIP)


def test_reads_the_data():
    assert BENCHDATA.is_dir()
'''


def _run_in_a_clone(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clone = tmp_path / "clone"
    (clone / "tests").mkdir(parents=True)
    shutil.copy(TESTS / "conftest.py", clone / "tests" / "conftest.py")
    (clone / "tests" / "test_needs_data.py").write_text(NEEDS_DATA)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "LITE_DELTA_BENCHDATA", "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests"],
                          cwd=clone, env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_without_data_the_tests_skip_saying_how_to_point_at_data(tmp_path):
    proc = _run_in_a_clone(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout and "set LITE_DELTA_BENCHDATA to a benchdata folder" in proc.stdout


def test_in_ci_missing_data_fails_instead_of_skipping(tmp_path):
    proc = _run_in_a_clone(tmp_path, CI="true")
    assert proc.returncode != 0
    assert "benchdata not found" in proc.stdout + proc.stderr


def test_the_environment_variable_points_at_data_anywhere(tmp_path):
    if not BENCHDATA.is_dir():
        pytest.skip("no benchmark data on this machine to point at")
    proc = _run_in_a_clone(tmp_path, CI="true", LITE_DELTA_BENCHDATA=str(BENCHDATA))
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr
