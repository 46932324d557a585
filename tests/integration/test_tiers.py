"""The tiers of tests/conftest.py: a test is marked by its directory, a unit test that is the first
to import torch fails, a test file outside the three tiers is a usage error."""
from __future__ import annotations

import shutil

import pytest
from helpers import REPO_ROOT

pytest_plugins = ["pytester"]


def _tree(pytester: pytest.Pytester) -> None:
    tests = pytester.path / "tests"
    for tier in ("unit", "integration", "slow"):
        (tests / tier).mkdir(parents=True)
    shutil.copy(REPO_ROOT / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "unit" / "test_u.py").write_text("def test_pure():\n    assert sum([1, 2]) == 3\n\n"
                                              "def test_loads_torch():\n    import torch  # noqa: F401\n")
    (tests / "integration" / "test_i.py").write_text("def test_loads_torch():\n    import torch\n    assert torch.ones(2).sum() == 2\n")
    (tests / "slow" / "test_s.py").write_text("def test_walk():\n    pass\n")


def test_markers_come_from_the_directory_and_a_unit_test_may_not_load_torch(pytester: pytest.Pytester):
    _tree(pytester)
    result = pytester.runpytest_subprocess("tests", "-m", "not slow", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*a unit test imported torch: move the test to tests/integration*"])
    assert "test_u.py::test_loads_torch" in result.stdout.str()
    only_slow = pytester.runpytest_subprocess("tests", "-m", "slow", "-p", "no:cacheprovider")
    only_slow.assert_outcomes(passed=1, deselected=3)
    units = pytester.runpytest_subprocess("tests", "-m", "unit", "-p", "no:cacheprovider")
    units.assert_outcomes(passed=1, failed=1, deselected=2)


def test_a_test_file_outside_the_tiers_is_refused(pytester: pytest.Pytester):
    _tree(pytester)
    (pytester.path / "tests" / "test_loose.py").write_text("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("tests", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_loose.py: a test file belongs in tests/unit, tests/integration or tests/slow*"])
