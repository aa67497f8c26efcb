"""Contract cases, one module per op family, each with a list `CASES` of tests/contract.py:Case.
tests/test_contract.py collects every module here: a new family joins by adding its file."""
import importlib
import pkgutil


def all_cases():
    cases = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        cases += importlib.import_module(f"{__name__}.{info.name}").CASES
    return cases
