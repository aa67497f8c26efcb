from conftest import parametrize_cases, run_case


@parametrize_cases("filtered_lrelu")
def test_filtered_lrelu(benchmark, case, impl):
    run_case(benchmark, case, impl)
