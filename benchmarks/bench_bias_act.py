from conftest import parametrize_cases, run_case


@parametrize_cases("bias_act")
def test_bias_act(benchmark, case, impl):
    run_case(benchmark, case, impl)
