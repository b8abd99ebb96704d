"""One benchmark worker (spawned by ``benchmarks/tasks.py``): get 20 tasks, touch them, hold them.

Imports nothing at the top beyond sys/os/time, so the ``bare`` mode measures a bare interpreter
and every other mode pays exactly for what it loads. Protocol: prints one JSON line of timings
when it holds its tasks, then waits for a line on stdin (the parent measures PSS meanwhile).

    python tasks_worker.py MODE PATH TASK_TYPE N SEED      MODE: bare | json | tasklib
"""

import os
import sys
import time


def _touch(value: object) -> int:
    """Visit every object of a task, as a harness would while running it."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return seen


def main() -> None:
    started = time.perf_counter()
    mode, path, task_type, n, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    tasks: list = []
    first = None
    if mode == "json":  # what harnesses do today: load everything, keep it, pick some
        import json
        import random

        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        of_type = [t for t in data if t["task_type"] == task_type]
        tasks = random.Random(seed).sample(of_type, n)
        first = time.perf_counter() - started
    elif mode == "tasklib":  # pick ids, then fetch each task when it is about to run
        from hivemem.tasks import TaskLibrary

        lib = TaskLibrary(path)
        ids = [t["id"] for t in lib.sample(task_type, n, seed=seed, fields=["id"])]
        for k, task_id in enumerate(ids):
            tasks.append(lib.get(task_id))
            if k == 0:
                first = time.perf_counter() - started
    elif mode != "bare":
        raise SystemExit(f"unknown mode {mode!r}")
    objects = sum(_touch(t) for t in tasks)
    held = time.perf_counter() - started
    first_s = "null" if first is None else repr(first)
    print(
        f'{{"pid": {os.getpid()}, "first_s": {first_s}, "all_s": {held!r}, "tasks": {len(tasks)}, '
        f'"objects": {objects}}}',
        flush=True,
    )
    sys.stdin.readline()  # the barrier: hold everything until the parent has measured


if __name__ == "__main__":
    main()
