from conftest import parametrize_cases, run_case


@parametrize_cases("gan_layers")
def test_gan_layers(benchmark, case, impl):
    run_case(benchmark, case, impl)
