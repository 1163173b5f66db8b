"""The test-session rules of tests/conftest.py and pyproject.toml: registered markers, gpu skips, per-test timeouts."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_markers_and_timeout_are_configured(pytestconfig):
    assert {m.split(":")[0] for m in pytestconfig.getini("markers")} >= {"slow", "ray", "gpu"}
    assert float(pytestconfig.getini("timeout")) == 900


def test_gpu_tests_skip_without_attnrl_test_gpu_and_slow_tests_get_the_long_timeout(pytester, monkeypatch):
    monkeypatch.delenv("ATTNRL_TEST_GPU", raising=False)
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text().replace('pytest_plugins = ["pytester"]', ""))
    pytester.makeini("[pytest]\nmarkers =\n    slow: s\n    ray: r\n    gpu: g\ntimeout = 900\n")
    pytester.makepyfile(test_generated="""
        import pytest

        @pytest.mark.gpu
        def test_on_gpu():
            raise AssertionError("must not run without ATTNRL_TEST_GPU=1")

        @pytest.mark.slow
        def test_slow(request):
            assert request.node.get_closest_marker("timeout").args == (1800,)

        @pytest.mark.ray
        @pytest.mark.timeout(60)
        def test_ray_with_its_own_timeout(request):
            assert request.node.get_closest_marker("timeout").args == (60,)

        def test_fast(request):
            assert request.node.get_closest_marker("timeout") is None  # the ini timeout applies
    """)
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, skipped=1)
    result.stdout.fnmatch_lines(["*needs ATTNRL_TEST_GPU=1*"])
