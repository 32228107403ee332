from llem.policy import CircuitBreaker, WallClock


def test_breaker_opens_after_threshold_and_a_good_probe_closes_it():
    breaker = CircuitBreaker(threshold=3, cooldown_s=1)
    assert [breaker.record(False) for _ in range(2)] == ["continue", "continue"]
    assert breaker.record(False) == "cooldown"
    assert breaker.state == "open"
    breaker.probe()
    assert breaker.record(True) == "continue"
    assert (breaker.state, breaker.consecutive_failures) == ("closed", 0)


def test_a_failed_probe_aborts():
    breaker = CircuitBreaker(threshold=2, cooldown_s=0)
    breaker.record(False)
    assert breaker.record(False) == "cooldown"
    breaker.probe()
    assert breaker.record(False) == "abort"


def test_zero_disables_and_one_fails_fast():
    off = CircuitBreaker(threshold=0, cooldown_s=60)
    assert {off.record(False) for _ in range(50)} == {"continue"}
    assert CircuitBreaker(threshold=1, cooldown_s=60).record(False) == "abort"


def test_success_resets_the_count():
    breaker = CircuitBreaker(threshold=2, cooldown_s=0)
    assert [breaker.record(x) for x in (False, True, False, True)] == ["continue"] * 4


def test_wall_clock():
    now = [100.0]
    clock = WallClock(limit_s=10, clock=lambda: now[0])
    assert clock.remaining_s() == 10
    now[0] = 111.0
    assert clock.expired()
    assert WallClock(limit_s=None).remaining_s() is None
