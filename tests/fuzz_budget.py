"""How hard the bad-input tests (tests/test_fuzz_*.py) try. CI runs the small budgets written in
the tests; GATEHOUSE_FUZZ_SCALE=N multiplies every one of them for a longer hunt, e.g.
`GATEHOUSE_FUZZ_SCALE=20 pytest tests/test_fuzz_payloads.py`."""
import os

from hypothesis import HealthCheck, settings

SCALE = float(os.environ.get("GATEHOUSE_FUZZ_SCALE", "1"))


def budget(examples: int) -> int:
    return max(1, round(examples * SCALE))


def fuzz_settings(examples: int, **options) -> settings:
    """Hypothesis settings for `examples` (scaled). No deadline: the servers under test are
    shared with other processes on a small machine, and timing is never what is tested. Module
    fixtures are reused across examples on purpose (one server per module)."""
    return settings(max_examples=budget(examples), deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.filter_too_much, HealthCheck.data_too_large],
                    **options)
