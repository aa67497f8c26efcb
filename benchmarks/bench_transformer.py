from conftest import parametrize_cases, run_case


@parametrize_cases("transformer")
def test_transformer(benchmark, case, impl):
    run_case(benchmark, case, impl)
