"""The example plugins pass sdm-bench's conformance kit (run with the package installed, from a checkout)."""

from harness.testing import check_attack, check_defense


def test_example_noise_conforms():
    check_defense("example-noise", params={"steps": 3}, invalid_params=[{"noise": -1.0}, {"steps": "many"}])


def test_example_probe_conforms():
    check_attack("example-probe", invalid_params=[{"optimizer": "lbfgs"}], trial={"steps": 5})
