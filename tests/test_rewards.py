"""Tests of attnrl.rewards: answer extraction, accuracy (exact path, math-verify path, time bound), format rewards."""

import functools
import os
import pickle
import signal
import threading
import time

import pytest
from attnrl.rewards import (
    VERIFY_STATS,
    BoundedVerifier,
    Verdict,
    VerifyStats,
    accuracy_reward,
    as_integer,
    as_number,
    completion_text,
    exact_integer_verdict,
    extract_final_answer,
    format_reward,
    last_boxed_content,
    last_number,
    make_regex_format_reward,
    math_verify_equal,
)
from attnrl.rewards.math import _Worker
from hypothesis import given, settings
from hypothesis import strategies as st


def scripted_check(gold: str, prediction: str) -> bool:
    """Injected verifier run in worker processes: hangs, raises or crashes on command, else compares strings."""
    if prediction == "hang":
        time.sleep(600)
    if prediction == "raise":
        raise RuntimeError("verifier bug")
    if prediction == "crash":
        os._exit(3)
    return gold == prediction


class NoVerifier:
    """Stand-in verifier asserting that the exact path decided everything."""

    def verify_many(self, pairs):
        assert pairs == []
        return []


@pytest.fixture(scope="module")
def mv_verifier():
    verifier = BoundedVerifier(timeout_s=2.0, n_workers=1, stats=VerifyStats())
    yield verifier
    verifier.close()


@pytest.fixture(scope="module")
def scripted_verifier():
    verifier = BoundedVerifier(scripted_check, timeout_s=1.0, n_workers=1, stats=VerifyStats())
    yield verifier
    verifier.close()


def assistant(content):
    return [{"role": "assistant", "content": content}]


# ------------------------------------------------------------------ extraction


def test_completion_text_accepts_strings_messages_and_missing_content():
    assert completion_text("42") == "42"
    assert completion_text(assistant("x = 1")) == "x = 1"
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    assert (
        completion_text(assistant([{"type": "text", "text": "4"}, {"type": "image"}, {"type": "text", "text": "2"}]))
        == "42"
    )
    assert [completion_text(c) for c in (None, [], assistant(None))] == ["", "", ""]


def test_boxed_content_prefers_the_last_box_and_balances_braces():
    assert last_boxed_content(r"\boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed_content(r"\boxed{1") is None
    assert last_boxed_content("no box") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", "42"),
        ("3 apples and 1,000 pears", "1000"),
        ("x = -7", "-7"),
        ("10-3", "3"),
        ("about 2.50 dollars", "2.50"),
        (r"\frac{1}{2}", None),
        ("2^{10}", None),
        ("1/2", None),
        ("x1", None),
        ("", None),
    ],
)
def test_last_number_keeps_standalone_numbers_only(text, expected):
    assert last_number(text) == expected


@pytest.mark.parametrize(
    ("text", "number", "integer"),
    [
        ("42", 42, 42),
        ("$7$.", 7, 7),
        (" -1,000 ", -1000, -1000),
        ("0.50", 0.5, None),
        ("2.0", 2, None),
        ("1,00", None, None),
        ("x", None, None),
    ],
)
def test_number_literals(text, number, integer):
    assert as_number(text) == number
    assert as_integer(text) == integer


def test_final_answer_prefers_boxed_over_later_numbers():
    assert extract_final_answer(r"\boxed{12} because 3*4=12 and 5") == "12"
    assert extract_final_answer("so 7 then 8") == "8"


@settings(max_examples=60, deadline=None)
@given(st.integers(-(10**6), 10**6))
def test_exact_path_matches_integers_in_any_plain_spelling(value):
    for text in (str(value), f"The answer is {value:,}.", rf"\boxed{{{value}}}", f"$ {value} $", f"{value}.0"):
        assert exact_integer_verdict(text, str(value)) is True
        assert exact_integer_verdict(text, str(value + 1)) is False


def test_exact_path_defers_non_literals_and_non_integer_golds():
    assert exact_integer_verdict(r"\boxed{\frac{84}{2}}", "42") is None
    assert exact_integer_verdict("no idea", "42") is None
    assert exact_integer_verdict("0.5", "0.5") is None


# ------------------------------------------------------------------ accuracy


def test_accuracy_exact_path_needs_no_verifier_and_reads_both_completion_forms():
    completions = ["42", assistant("The answer is 42."), assistant(r"\boxed{41}"), "-3", "", None]
    answers = ["42", "42", "42", "-3", "5", "5"]
    assert accuracy_reward(completions, answers, verifier=NoVerifier()) == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def test_accuracy_skips_missing_gold():
    assert accuracy_reward(["1", "2"], [None, " "], verifier=NoVerifier()) == [None, None]


def test_accuracy_rejects_unknown_on_error():
    with pytest.raises(ValueError, match="on_error"):
        accuracy_reward(["1"], ["1"], on_error="nan", verifier=NoVerifier())


def test_math_verify_path_compares_values_not_strings(mv_verifier):
    completions = [r"\boxed{\frac{1}{2}}", assistant("0.5"), r"\boxed{\frac{1}{3}}", r"\boxed{\frac{84}{2}}", "no idea"]
    answers = ["0.5", r"\frac{1}{2}", "0.5", "42", "42"]
    calls = mv_verifier.stats.calls
    assert accuracy_reward(completions, answers, verifier=mv_verifier) == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert mv_verifier.stats.calls == calls + 5


def test_math_verify_check_runs_off_the_main_thread(mv_verifier):
    results = {}

    def score():
        results["direct"] = math_verify_equal("0.5", r"\boxed{\frac{1}{2}}")
        results["reward"] = accuracy_reward([r"\boxed{\frac{1}{2}}", "7"], ["0.5", "8"], verifier=mv_verifier)

    thread = threading.Thread(target=score)
    thread.start()
    thread.join(timeout=30)
    assert results == {"direct": True, "reward": [1.0, 0.0]}


def test_pathological_math_verify_input_is_cut_off(mv_verifier):
    mv_verifier.verify_many([("1", "1")])  # worker started, so only the verification itself is timed
    timeouts = mv_verifier.stats.timeouts
    start = time.monotonic()
    rewards = accuracy_reward([r"\boxed{9^{9^{9^{9}}}}"], ["1"], verifier=mv_verifier)
    assert time.monotonic() - start < mv_verifier.timeout_s + 3.0
    assert rewards == [0.0]
    assert mv_verifier.stats.timeouts == timeouts + 1


def test_hanging_verifier_times_out_is_counted_and_replaced(scripted_verifier):
    assert scripted_verifier.verify_many([("a", "a")]) == [Verdict.CORRECT]
    before = scripted_verifier.stats.snapshot()
    start = time.monotonic()
    assert scripted_verifier.verify_many([("a", "hang")]) == [Verdict.TIMEOUT]
    assert time.monotonic() - start < scripted_verifier.timeout_s + 3.0
    assert scripted_verifier.verify_many([("a", "a"), ("a", "b")]) == [Verdict.CORRECT, Verdict.WRONG]
    after = scripted_verifier.stats.snapshot()
    assert after == {"calls": before["calls"] + 3, "timeouts": before["timeouts"] + 1, "errors": before["errors"]}


def test_hung_worker_ends_itself_when_its_parent_cannot_kill_it():
    worker = _Worker(scripted_check, backstop_s=0.5)
    worker.conn.send(("a", "hang"))  # sent directly: no parent-side deadline, as if the trainer had died
    assert worker.process.wait(timeout=30) == -signal.SIGALRM
    worker.conn.close()


def test_raising_and_crashing_verifiers_are_counted_as_errors(scripted_verifier):
    errors = scripted_verifier.stats.errors
    verdicts = scripted_verifier.verify_many([("a", "raise"), ("a", "a"), ("a", "crash"), ("a", "a")])
    assert verdicts == [Verdict.ERROR, Verdict.CORRECT, Verdict.ERROR, Verdict.CORRECT]
    assert scripted_verifier.stats.errors == errors + 2


def test_failed_verifications_score_zero_or_none_and_are_logged(scripted_verifier):
    logged = []
    rewards = accuracy_reward(
        ["raise", "a", "b"], ["a", "a", "a"], verifier=scripted_verifier, log_metric=lambda *item: logged.append(item)
    )
    assert rewards == [0.0, 1.0, 0.0]
    assert accuracy_reward(["raise"], ["a"], on_error="none", verifier=scripted_verifier) == [None]
    assert logged == [("verify_timeouts", 0.0), ("verify_errors", 1.0)]


def test_verifier_and_configured_reward_pickle_with_their_configuration():
    verifier = pickle.loads(pickle.dumps(BoundedVerifier(timeout_s=3.0, n_workers=3)))
    assert (verifier.timeout_s, verifier.n_workers, verifier.check) == (3.0, 3, math_verify_equal)
    assert verifier.stats is VERIFY_STATS
    reward = pickle.loads(pickle.dumps(functools.partial(accuracy_reward, on_error="none", verifier=NoVerifier())))
    assert reward(["7"], ["7"]) == [1.0]


def test_verifier_rejects_bad_configuration():
    with pytest.raises(ValueError):
        BoundedVerifier(timeout_s=0)
    with pytest.raises(ValueError):
        BoundedVerifier(n_workers=0)


# ------------------------------------------------------------------ format


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", 1.0),
        ("42", 1.0),
        (r"\boxed{7}", 1.0),
        (r"so \boxed{\sqrt{\frac{1}{2}}} <|im_end|>", 1.0),
        ("**-3**\n", 1.0),
        ("42 apples", 0.0),
        ("x^2", 0.0),
        (r"\boxed{7} is wrong", 0.0),
        ("", 0.0),
    ],
)
def test_default_format_wants_a_final_answer_at_the_end(text, expected):
    assert format_reward([text]) == [expected]
    assert format_reward([assistant(text)]) == [expected]


def test_format_reward_scores_missing_completions_zero():
    assert format_reward([None, []]) == [0.0, 0.0]


def test_regex_format_factory_is_picklable_and_full_matches():
    reward = pickle.loads(pickle.dumps(make_regex_format_reward(r"(?s)<think>.*</think>\s*\d+")))
    texts = ["<think>a\nb</think> 12", "<think>a</think> 12 extra", "12"]
    assert reward(prompts=None, completions=texts) == [1.0, 0.0, 0.0]
