"""Reward scoring in a pool of Ray actors: TRL reward functions whose calls are bounded in time and never crash.

``RewardActorPool(reward_funcs, num_actors, timeout_s).reward_funcs`` is a list of TRL reward functions (same
names as the wrapped ones, so TRL logs ``rewards/<name>/mean`` as before) to pass as the trainer's
``reward_funcs``. Each call splits the batch into ``num_actors`` contiguous chunks scored in parallel, one per actor.

Failures: a chunk not scored within ``timeout_s`` (a hung verifier), or whose actor died (a crashed verifier), has
its actor killed and replaced, and every completion of that chunk fails; a reward function that raises is retried
one completion at a time inside the actor, so only the completions that raise fail. A failed completion scores
``failure_reward``: None by default, which TRL (1.16) treats as a missing reward: left out of the logged means, and a
completion whose every reward is missing is left out of its group's baseline and gets advantage 0, so a broken
verifier neither rewards nor punishes. Failures are counted in :attr:`RewardActorPool.stats` and, through TRL's
``log_metric``, logged per call as ``reward_pool/<name>/failures`` and by cause (``.../timeouts``, ``.../crashes``,
``.../errors``). Only per-completion columns (lists as long as the batch) travel to the actors; ``trainer_state``,
``log_metric`` and the other trainer-side objects stay local.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial

logger = logging.getLogger(__name__)

_LOCAL_ONLY = {"trainer_state", "log_extra", "log_metric", "environments"}


@dataclass
class PoolStats:
    """Running counts: calls, completions, failed completions (all causes, then by cause: in a chunk that timed out,
    in a chunk whose actor crashed, raised) and actor replacements."""

    calls: int = 0
    completions: int = 0
    failures: int = 0
    timeouts: int = 0
    crashes: int = 0
    errors: int = 0
    restarts: int = 0

    def record(self, completions: int, failures: dict[str, int]) -> None:
        """Counts one call: its size and its failed completions by cause."""
        self.calls += 1
        self.completions += completions
        for kind, count in failures.items():
            setattr(self, kind, getattr(self, kind) + count)

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


class _RewardActor:
    """Holds the reward functions; scores one chunk and reports which completions raised."""

    def __init__(self, reward_funcs: Sequence[Callable]):
        self.reward_funcs = list(reward_funcs)

    def ready(self) -> bool:
        return True

    def score(self, index: int, prompts: list, completions: list, columns: dict) -> tuple[list, list[int]]:
        func = self.reward_funcs[index]
        try:
            return list(func(prompts=prompts, completions=completions, **columns)), []
        except Exception:
            return self._score_one_by_one(func, prompts, completions, columns)

    @staticmethod
    def _score_one_by_one(func, prompts, completions, columns) -> tuple[list, list[int]]:
        rewards, failed = [], []
        for i in range(len(completions)):
            row = {key: [value[i]] for key, value in columns.items()}
            try:
                rewards.append(func(prompts=[prompts[i]], completions=[completions[i]], **row)[0])
            except Exception as exc:
                logger.warning("reward function %s raised %s", callable_name(func), type(exc).__name__)
                rewards.append(None)
                failed.append(i)
        return rewards, failed


class _RemoteReward:
    """One wrapped reward function, called by TRL; scoring happens in the pool's actors."""

    def __init__(self, pool: RewardActorPool, index: int, name: str):
        self.pool, self.index, self.__name__ = pool, index, name

    def __call__(self, prompts, completions, log_metric=None, **kwargs) -> list[float | None]:
        return self.pool.score(self.index, prompts, completions, kwargs, log_metric)


class RewardActorPool:
    """``num_actors`` Ray actors holding ``reward_funcs``; see the module docstring. Needs a running Ray (in a Ray
    Train worker it is). Actors take ``num_cpus`` CPUs each (default 0: they never block the scheduling of training
    workers on a small cluster). A call that replaces an actor also waits for the new one to start (its imports;
    at most ``startup_timeout_s``), so the next call gets the full ``timeout_s``. Call :meth:`close` (or use
    ``with``) to stop the actors.
    """

    def __init__(
        self,
        reward_funcs: Callable | Sequence[Callable],
        num_actors: int = 2,
        timeout_s: float = 30.0,
        failure_reward: float | None = None,
        num_cpus: float = 0.0,
        startup_timeout_s: float = 120.0,
    ):
        import ray

        if num_actors < 1 or timeout_s <= 0:
            raise ValueError("num_actors must be >= 1 and timeout_s > 0")
        funcs = [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
        self.timeout_s, self.failure_reward, self.startup_timeout_s = timeout_s, failure_reward, startup_timeout_s
        self.stats = PoolStats()
        self._actor_class = ray.remote(_RewardActor).options(num_cpus=num_cpus, max_restarts=0)
        self._funcs_ref = ray.put(funcs)
        self._lock = threading.Lock()
        self._actors = [self._start_actor() for _ in range(num_actors)]
        ray.get([actor.ready.remote() for actor in self._actors], timeout=startup_timeout_s)
        self.reward_funcs = [_RemoteReward(self, i, callable_name(f)) for i, f in enumerate(funcs)]

    def _start_actor(self):
        return self._actor_class.remote(self._funcs_ref)

    def score(self, index: int, prompts: list, completions: list, kwargs: dict, log_metric=None) -> list:
        """Rewards of one batch for reward function ``index``; failures score ``failure_reward`` (see module doc)."""
        n = len(completions)
        columns = {k: v for k, v in kwargs.items() if k not in _LOCAL_ONLY and isinstance(v, list) and len(v) == n}
        with self._lock:  # one batch at a time: each chunk owns its actor until it is done
            rewards, failures = self._score_chunks(index, prompts, completions, columns)
            self.stats.record(n, failures)
        if log_metric is not None:
            name = self.reward_funcs[index].__name__
            for kind, count in failures.items():
                log_metric(f"reward_pool/{name}/{kind}", float(count))
        return rewards

    def _score_chunks(self, index, prompts, completions, columns) -> tuple[list, dict[str, int]]:
        import ray

        chunks = _split(len(completions), len(self._actors))
        refs = [
            self._actors[j].score.remote(index, prompts[lo:hi], completions[lo:hi], _slice(columns, lo, hi))
            for j, (lo, hi) in enumerate(chunks)
        ]
        done = set(ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)[0])
        rewards: list = []
        failures = {"failures": 0, "timeouts": 0, "crashes": 0, "errors": 0}
        for j, ((lo, hi), ref) in enumerate(zip(chunks, refs)):
            chunk_rewards, failed, kind = self._collect(j, ref, ref in done, hi - lo)
            rewards += [self.failure_reward if i in failed else r for i, r in enumerate(chunk_rewards)]
            failures["failures"] += len(failed)
            if kind:
                failures[kind] += len(failed)
        return rewards, failures

    def _collect(self, j: int, ref, finished: bool, size: int) -> tuple[list, set[int], str | None]:
        """A chunk's rewards, the indices that failed and why ("timeouts", "crashes" or "errors"); an actor that
        hung or died is replaced."""
        import ray

        everything = set(range(size))
        if not finished:
            logger.warning("reward actor %d missed its %.0f s deadline: replacing it", j, self.timeout_s)
            self._replace(j)
            return [None] * size, everything, "timeouts"
        try:
            rewards, failed = ray.get(ref)
        except ray.exceptions.RayActorError:
            logger.warning("reward actor %d died: replacing it", j)
            self._replace(j)
            return [None] * size, everything, "crashes"
        except ray.exceptions.RayError as exc:
            logger.warning("reward actor %d failed: %s", j, type(exc).__name__)
            return [None] * size, everything, "errors"
        return rewards, set(failed), "errors" if failed else None

    def _replace(self, j: int) -> None:
        import ray

        ray.kill(self._actors[j], no_restart=True)
        self.stats.restarts += 1
        started = time.monotonic()
        self._actors[j] = self._start_actor()
        try:
            ray.get(self._actors[j].ready.remote(), timeout=self.startup_timeout_s)
        except ray.exceptions.RayError as exc:  # its next chunk fails and it is replaced again
            logger.warning("replacement reward actor did not start: %s", type(exc).__name__)
        logger.info("reward actor %d replaced in %.1f s", j, time.monotonic() - started)

    def close(self) -> None:
        """Kills every actor."""
        import ray

        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []

    def __enter__(self) -> RewardActorPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def callable_name(func: Callable) -> str:
    """The name TRL logs a reward function under (``functools.partial`` unwrapped, else the class name)."""
    while isinstance(func, partial):
        func = func.func
    return getattr(func, "__name__", type(func).__name__)


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """``min(parts, n)`` contiguous, near-equal ``(lo, hi)`` ranges covering ``range(n)``."""
    parts = max(1, min(parts, n))
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _slice(columns: dict, lo: int, hi: int) -> dict:
    return {key: value[lo:hi] for key, value in columns.items()}
