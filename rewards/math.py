r"""Math accuracy reward: an exact fast path for integer answers, math-verify under a hard time bound otherwise.

math-verify's own timeouts use ``signal.alarm`` and fail off the main thread (Ray actors, reward threads), so they
are always disabled here (``parse(..., parsing_timeout=None)``, ``verify(..., timeout_seconds=None)``). Instead every
verification runs in a worker process of a :class:`BoundedVerifier`; a worker that misses its deadline is killed and
replaced, so a pathological input (e.g. ``\boxed{9^{9^{9^{9}}}}``, which holds the GIL in C for minutes) costs
``timeout_s`` plus a worker restart (about a second, paid by the next verification on that worker).
"""

from __future__ import annotations

import enum
import logging
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from math_verify import parse, verify

from .completions import as_integer, as_number, completion_text, extract_final_answer

logger = logging.getLogger(__name__)


class _DropTimeoutDisabledWarning(logging.Filter):
    """Silences math-verify's "Timeout is disabled" warning: the time bound is enforced by BoundedVerifier."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


def math_verify_equal(gold: str, prediction: str) -> bool:
    """Whether math-verify finds ``prediction``'s final answer equal to ``gold`` (no time bound: run it in a worker)."""
    return verify(parse(gold, parsing_timeout=None), parse(prediction, parsing_timeout=None), timeout_seconds=None)


class Verdict(enum.Enum):
    """Outcome of one bounded verification."""

    CORRECT = "correct"
    WRONG = "wrong"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass
class VerifyStats:
    """Running counts of a verifier, safe to read from a trainer: pairs sent, timed out, and crashed/raised."""

    calls: int = 0
    timeouts: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, verdict: Verdict) -> None:
        """Counts one finished verification."""
        with self._lock:
            self.calls += 1
            self.timeouts += verdict is Verdict.TIMEOUT
            self.errors += verdict is Verdict.ERROR

    def snapshot(self) -> dict[str, int]:
        """The counts as a dict, e.g. for ``trainer.log``."""
        with self._lock:
            return {"calls": self.calls, "timeouts": self.timeouts, "errors": self.errors}

    def reset(self) -> None:
        """Sets every count back to zero."""
        with self._lock:
            self.calls = self.timeouts = self.errors = 0

    def __getstate__(self) -> dict[str, int]:
        return self.snapshot()

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(**state)


VERIFY_STATS = VerifyStats()
"""Counts of the default verifier (one per process)."""

_BACKSTOP_MARGIN_S = 2.0
"""A worker ends itself this long after a missed deadline if its parent could not kill it."""


def _serve(fd: int) -> None:
    """Worker process loop (started by :class:`_Worker`): receive ``(check, backstop_s)`` on connection ``fd``,
    announce readiness, then answer each ``(gold, prediction)`` with ``(ok, result)``; exits when the parent leaves.

    Each check runs under a SIGALRM timer left at its default action, so the kernel ends this process after
    ``backstop_s`` even when the parent died before killing it and the check is stuck in C code holding the GIL.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    conn = Connection(fd)
    check, backstop_s = conn.recv()
    conn.send("ready")
    while True:
        try:
            gold, prediction = conn.recv()
        except EOFError:
            return
        signal.setitimer(signal.ITIMER_REAL, backstop_s)
        try:
            outcome = (True, bool(check(gold, prediction)))
        except Exception as exc:  # reported to the parent; str(exc) is avoided, it can hang on sympy objects
            outcome = (False, type(exc).__name__)
        signal.setitimer(signal.ITIMER_REAL, 0)
        conn.send(outcome)


class _Worker:
    """One verification process (a fresh ``python -c``, so nothing of the parent, ``__main__`` included, is
    re-imported or forked) and the parent's end of its socket."""

    def __init__(self, check: Callable[[str, str], bool], backstop_s: float):
        self.conn, child_conn = multiprocessing.Pipe()
        command = f"import sys; from {__name__} import _serve; _serve(int(sys.argv[1]))"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", command, str(child_conn.fileno())],
            pass_fds=[child_conn.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        child_conn.close()
        self.conn.send((check, backstop_s))
        self.ready = False
        self.alive = True

    def run(self, gold: str, prediction: str, timeout_s: float, startup_timeout_s: float) -> Verdict:
        """Verifies one pair; on timeout or crash the worker is killed and marked dead."""
        try:
            if not self.ready:
                if not self.conn.poll(startup_timeout_s):
                    logger.warning("verifier worker did not start within %.0f s", startup_timeout_s)
                    self.kill()
                    return Verdict.ERROR
                self.conn.recv()
                self.ready = True
            self.conn.send((gold, prediction))
            if not self.conn.poll(timeout_s):
                self.kill()
                return Verdict.TIMEOUT
            ok, result = self.conn.recv()
        except (EOFError, OSError) as exc:
            logger.debug("verifier worker failed: %r", exc)
            self.kill()
            return Verdict.ERROR
        if not ok:
            logger.debug("verification raised %s", result)
            return Verdict.ERROR
        return Verdict.CORRECT if result else Verdict.WRONG

    def kill(self) -> None:
        """Ends the process at once (SIGKILL) and closes the pipe."""
        self.alive = False
        self.process.kill()
        self.process.wait()
        self.conn.close()


class BoundedVerifier:
    """Runs ``check(gold, prediction) -> bool`` in ``n_workers`` persistent processes, each call bounded in time.

    ``timeout_s`` bounds one verification (counted from when a started worker receives it); a worker that misses it,
    dies or cannot start within ``startup_timeout_s`` is replaced. Outcomes are counted in ``stats`` (default: the
    process-wide :data:`VERIFY_STATS`). Thread-safe; picklable (only the configuration travels, workers restart
    lazily). ``check`` must be picklable (a module-level function) and importable in a fresh interpreter that sees
    this process's ``sys.path``.
    """

    def __init__(
        self,
        check: Callable[[str, str], bool] = math_verify_equal,
        timeout_s: float = 5.0,
        n_workers: int = 2,
        startup_timeout_s: float = 60.0,
        stats: VerifyStats | None = None,
    ):
        if timeout_s <= 0 or n_workers < 1:
            raise ValueError("timeout_s must be > 0 and n_workers >= 1")
        self.check = check
        self.timeout_s = timeout_s
        self.n_workers = n_workers
        self.startup_timeout_s = startup_timeout_s
        self.stats = VERIFY_STATS if stats is None else stats
        self._idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        for _ in range(n_workers):
            self._idle.put(None)

    def verify_many(self, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        """One verdict per ``(gold, prediction)`` pair, in order; pairs run in parallel across the workers."""
        if not pairs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.n_workers, len(pairs))) as pool:
            return list(pool.map(lambda pair: self._verify_one(*pair), pairs))

    def _verify_one(self, gold: str, prediction: str) -> Verdict:
        worker = self._idle.get()
        try:
            if worker is None or not worker.alive:
                worker = _Worker(self.check, self.timeout_s + _BACKSTOP_MARGIN_S)
            verdict = worker.run(gold, prediction, self.timeout_s, self.startup_timeout_s)
        finally:
            self._idle.put(worker)
        self.stats.record(verdict)
        return verdict

    def close(self) -> None:
        """Stops every worker (waiting for running verifications); the verifier restarts them if used again."""
        workers = [self._idle.get() for _ in range(self.n_workers)]
        for worker in workers:
            if worker is not None and worker.alive:
                worker.kill()
            self._idle.put(None)

    def __getstate__(self) -> dict:
        state = {key: value for key, value in self.__dict__.items() if key != "_idle"}
        state["stats"] = None if self.stats is VERIFY_STATS else self.stats  # the receiving process's own counts
        return state

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


DEFAULT_VERIFIER = BoundedVerifier()
"""Verifier used by :func:`accuracy_reward` unless one is passed; its workers start on first use."""

_ON_ERROR = {"zero": 0.0, "none": None}
_VERDICT_REWARD = {Verdict.CORRECT: 1.0, Verdict.WRONG: 0.0}


def exact_integer_verdict(text: str, gold: str) -> bool | None:
    r"""Fast exact check for an integer ``gold``: compares the final answer of ``text`` (last ``\boxed{}`` content,
    else last number; see :mod:`attnrl.rewards.completions`) as an exact number.

    Returns None (undecided: use math-verify) when ``gold`` is not an integer literal or the final answer is missing
    or is not a plain integer/decimal literal (e.g. ``\boxed{\frac{84}{2}}``).
    """
    gold_value = as_integer(gold)
    answer_value = as_number(extract_final_answer(text))
    if gold_value is None or answer_value is None:
        return None
    return answer_value == gold_value


def accuracy_reward(
    completions: list,
    answer: list[str],
    *,
    on_error: str = "zero",
    verifier: BoundedVerifier | None = None,
    log_metric: Callable[[str, float], None] | None = None,
    **kwargs,
) -> list[float | None]:
    r"""1.0 if a completion's final answer equals the gold ``answer`` column, else 0.0 (TRL reward signature).

    Integer golds are decided by :func:`exact_integer_verdict` when it can; everything else goes to math-verify in
    ``verifier`` (default :data:`DEFAULT_VERIFIER`), so ``"\boxed{\frac{1}{2}}"`` matches gold ``"0.5"``. A verification
    that times out or crashes scores 0.0, or None with ``on_error="none"`` (TRL then ignores that reward), and is
    counted in ``verifier.stats``; with TRL's ``log_metric`` the batch's counts are logged as
    ``verify_timeouts`` / ``verify_errors``. A None or empty gold scores None. Options are set with
    ``functools.partial(accuracy_reward, on_error="none")``.
    """
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {sorted(_ON_ERROR)}, got {on_error!r}")
    verifier = DEFAULT_VERIFIER if verifier is None else verifier
    texts = [completion_text(completion) for completion in completions]
    rewards: list[float | None] = [None] * len(texts)
    pending: list[int] = []
    for index, (text, gold) in enumerate(zip(texts, answer, strict=True)):
        if gold is None or not str(gold).strip():
            continue
        exact = exact_integer_verdict(text, str(gold))
        if exact is not None:
            rewards[index] = float(exact)
        elif not text.strip():
            rewards[index] = 0.0
        else:
            pending.append(index)
    verdicts = verifier.verify_many([(str(answer[index]), texts[index]) for index in pending])
    for index, verdict in zip(pending, verdicts):
        rewards[index] = _VERDICT_REWARD.get(verdict, _ON_ERROR[on_error])
    if log_metric is not None:
        log_metric("verify_timeouts", float(verdicts.count(Verdict.TIMEOUT)))
        log_metric("verify_errors", float(verdicts.count(Verdict.ERROR)))
    return rewards
