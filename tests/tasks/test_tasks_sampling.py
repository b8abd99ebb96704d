"""Sampling is uniform and reproducible; allocation plans are disjoint and deterministic; one library
object works across threads and across fork."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest
from tasks_helpers import PYTHON, child_env

from hivemem.tasks import TaskLibrary

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

# chi-square critical values at p = 0.001 (the draws use fixed seeds: the outcome is deterministic)
CHI2_CRIT_DF9 = 27.877


def _chi2(counts: Counter, keys: list[str]) -> float:
    total = sum(counts.values())
    expected = total / len(keys)
    return sum((counts.get(k, 0) - expected) ** 2 / expected for k in keys)


def test_sampling_is_uniform(library_path: Path) -> None:
    lib = TaskLibrary(library_path)
    ids = lib.ids("type_00")
    assert len(ids) == 10
    picks: Counter = Counter()
    firsts: Counter = Counter()
    for seed in range(3000):
        drawn = [t["id"] for t in lib.sample("type_00", 3, seed=seed, fields=["id"])]
        assert len(set(drawn)) == 3  # without replacement
        picks.update(drawn)
        firsts[drawn[0]] += 1
    assert _chi2(picks, ids) < CHI2_CRIT_DF9
    assert _chi2(firsts, ids) < CHI2_CRIT_DF9
    with_replacement: Counter = Counter()
    for seed in range(1000):
        with_replacement.update(
            t["id"] for t in lib.sample("type_00", 5, seed=seed, replace=True, fields="id")
        )
    assert _chi2(with_replacement, ids) < CHI2_CRIT_DF9


def test_a_skewed_sampler_would_fail_the_uniformity_check(library_path: Path) -> None:
    """The check above has teeth: a classic modulo-bias sampler over as many draws is caught."""
    import random

    ids = TaskLibrary(library_path).ids("type_00")
    rng = random.Random(0)
    skewed = Counter(ids[rng.randrange(11) % 10] for _ in range(9000))  # ids[0] drawn twice as often
    assert _chi2(skewed, ids) > CHI2_CRIT_DF9


def test_sampling_is_reproducible(library_path: Path) -> None:
    lib = TaskLibrary(library_path)
    first = lib.sample("type_01", 4, seed=123)
    assert lib.sample("type_01", 4, seed=123) == first
    assert TaskLibrary(library_path).sample("type_01", 4, seed=123) == first
    assert [t["id"] for t in lib.sample("type_01", 4, seed=124)] != [t["id"] for t in first]
    unseeded = {tuple(t["id"] for t in lib.sample(None, 5, fields="id")) for _ in range(10)}
    assert len(unseeded) > 1
    code = (
        "import json, sys; from hivemem.tasks import TaskLibrary; lib = TaskLibrary(sys.argv[1]); "
        "drawn = [t['id'] for t in lib.sample('type_01', 4, seed=123)]; "
        "print(json.dumps([drawn, lib.allocate(3, 3, seed=9)]))"
    )
    out = subprocess.run(
        [PYTHON, "-c", code, str(library_path)], env=child_env(), capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == [[t["id"] for t in first], lib.allocate(3, 3, seed=9)]


def test_sample_any_type_and_filters(library_path: Path, tasks: list[dict]) -> None:
    lib = TaskLibrary(library_path)
    everything = lib.sample(None, lib.count(), seed=1, fields=["id"])
    assert sorted(str(t["id"]) for t in everything) == sorted(str(t["id"]) for t in tasks)
    hard = lib.sample(
        "type_02", lib.count("type_02", where={"difficulty": "hard"}), where={"difficulty": "hard"}
    )
    expected = {t["id"] for t in tasks if t["task_type"] == "type_02" and t.get("difficulty") == "hard"}
    assert {t["id"] for t in hard} == expected and expected
    assert lib.count(where={"difficulty": None}) == 2  # the two awkward tasks have no difficulty
    assert lib.sample("type_00", 0) == []


def test_allocate_gives_disjoint_deterministic_plans(library_path: Path) -> None:
    lib = TaskLibrary(library_path)
    plan = lib.allocate(5, 2, "type_00", seed=1)
    flat = [i for share in plan for i in share]
    assert [len(s) for s in plan] == [2] * 5
    assert sorted(flat) == sorted(lib.ids("type_00"))  # disjoint and complete
    assert lib.allocate(5, 2, "type_00", seed=1) == plan
    assert lib.allocate(5, 2, "type_00", seed=2) != plan
    wide = lib.allocate(25, 2, seed=7)
    assert len({i for share in wide for i in share}) == 50
    shared = lib.allocate(4, 5, "type_00", seed=3, replace=True)
    assert Counter(i for share in shared for i in share) == Counter({i: 2 for i in lib.ids("type_00")})
    tasks = lib.get_many(plan[3])
    assert [t["id"] for t in tasks] == plan[3]
    for bad in (
        {"workers": 0, "per_worker": 1},
        {"workers": 2, "per_worker": -1},
        {"workers": 1.5, "per_worker": 1},
    ):
        with pytest.raises(ValueError):
            lib.allocate(bad["workers"], bad["per_worker"], "type_00")


def test_threads_share_one_library(library_path: Path) -> None:
    lib = TaskLibrary(library_path)
    expected = {seed: lib.sample("type_03", 5, seed=seed) for seed in range(16)}
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for _ in range(5):
                results[seed] = lib.sample("type_03", 5, seed=seed)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == expected
    lib.close()
    assert lib.sample("type_03", 5, seed=0) == expected[0]  # reconnects after close


def _child_reads(lib: TaskLibrary, queue: multiprocessing.Queue) -> None:
    queue.put([t["id"] for t in lib.sample("type_04", 3, seed=5)])


def test_library_object_survives_fork(library_path: Path) -> None:
    lib = TaskLibrary(library_path)
    expected = [t["id"] for t in lib.sample("type_04", 3, seed=5)]  # parent connection is open now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(lib, queue))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and got == expected
    assert [t["id"] for t in lib.sample("type_04", 3, seed=5)] == expected
