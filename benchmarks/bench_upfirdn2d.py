from conftest import parametrize_cases, run_case


@parametrize_cases("upfirdn2d")
def test_upfirdn2d(benchmark, case, impl):
    run_case(benchmark, case, impl)
