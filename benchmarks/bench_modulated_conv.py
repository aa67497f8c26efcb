from conftest import parametrize_cases, run_case


@parametrize_cases("modulated_conv")
def test_modulated_conv(benchmark, case, impl):
    run_case(benchmark, case, impl)
