"""What waking W waiting callers costs, by mechanism: the question behind issue 25's "one wake-up per
batch, vectors through shared memory" design (docs/service.md, "Round 3").

    python benchmarks/wake_mechanisms.py [--callers 1 25] [--batches 4000] [--rounds 3]

No model and no hivemem code: one "service" process and W "caller" processes (forked), lock-step
as the fleet runs. Each batch: every caller sends a 36-byte request on its Unix socket (a
single-text EMBED frame's size); once the service has all W, it answers every one, then the next
batch starts. The answer, by mechanism:

* ``socket``: a 1,564-byte reply frame (one 384-float vector and the headers) on each caller's
  socket; the caller waits in ``poll`` and reads it with ``recv_into`` (today's protocol);
* ``eventfd``: the vector copied into the caller's part of a shared mapping, then an ``eventfd``
  write per caller; the caller polls its eventfd and its socket together (the socket still says
  when the service died), reads the eventfd and copies the vector out;
* ``futex``: the vectors copied into shared memory, then one generation word bumped and ONE
  ``FUTEX_WAKE`` for all W callers (ctypes ``syscall``, which drops the GIL); each caller waits
  with ``FUTEX_WAIT`` on that word.

Reported per reply (medians over rounds, the mechanisms alternated): the service's CPU, the
callers' CPU (summed over the W processes) and the wall time. CPU from ``time.process_time`` in
each process. Prints a table and a JSON line, and draws the CPU per reply.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import select
import socket
import statistics
import sys
import time

from plots import add_plot_options, bars

REQUEST = b"q" * 36
VECTOR = b"v" * 1564
SLOT = 2048  # bytes of shared memory per caller
MECHANISMS = ("socket", "eventfd", "futex")
_SYS_FUTEX = 202 if os.uname().machine == "x86_64" else 98  # x86_64, else aarch64
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_libc = ctypes.CDLL(None, use_errno=True)


def _futex(addr: int, op: int, value: int) -> None:
    _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(addr), op, value, None, None, 0)


def _caller(
    kind: str, index: int, sock: socket.socket, efd: int, mm: mmap.mmap, batches: int, out: int
) -> None:
    sock.setblocking(False)
    either = select.poll()
    either.register(sock, select.POLLIN)
    if kind == "eventfd":
        either.register(efd, select.POLLIN)
    buf = bytearray(65536)
    word = ctypes.c_uint32.from_buffer(mm, 0)
    addr = ctypes.addressof(word)
    base = 64 + index * SLOT
    start = time.process_time()
    for batch in range(batches):
        sock.send(REQUEST)
        if kind == "socket":
            either.poll(10_000)
            sock.recv_into(buf)
        elif kind == "eventfd":
            either.poll(10_000)
            os.eventfd_read(efd)
            bytes(mm[base : base + len(VECTOR)])
        else:
            while word.value == batch:  # the service has not bumped the generation yet
                _futex(addr, _FUTEX_WAIT, batch)
            bytes(mm[base : base + len(VECTOR)])
    os.write(out, f"{time.process_time() - start}\n".encode())
    del word
    os._exit(0)


def run(kind: str, callers: int, batches: int) -> dict[str, float]:
    mm = mmap.mmap(-1, 64 + callers * SLOT)
    pairs = [socket.socketpair() for _ in range(callers)]
    efds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(callers)]
    read_end, write_end = os.pipe()
    pids = []
    for i, (_mine, theirs) in enumerate(pairs):
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _caller(kind, i, theirs, efds[i], mm, batches, write_end)
        pids.append(pid)
        theirs.close()
    os.close(write_end)
    service = [mine for mine, _ in pairs]
    word = ctypes.c_uint32.from_buffer(mm, 0)
    addr = ctypes.addressof(word)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for batch in range(batches):
        for s in service:
            s.recv(64)
        if kind == "socket":
            for s in service:
                s.send(VECTOR)
        else:
            for i in range(callers):
                mm[64 + i * SLOT : 64 + i * SLOT + len(VECTOR)] = VECTOR
            if kind == "eventfd":
                for efd in efds:
                    os.eventfd_write(efd, 1)
            else:
                word.value = batch + 1
                _futex(addr, _FUTEX_WAKE, 2**31 - 1)  # every waiter, one system call
    service_cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    with os.fdopen(read_end) as f:
        callers_cpu = sum(float(line) for line in f)
    for pid in pids:
        os.waitpid(pid, 0)
    for s in service:
        s.close()
    for efd in efds:
        os.close(efd)
    del word
    mm.close()
    replies = callers * batches
    return {
        "service_us_per_reply": service_cpu / replies * 1e6,
        "callers_us_per_reply": callers_cpu / replies * 1e6,
        "wall_us_per_reply": wall / replies * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callers", type=int, nargs="+", default=[1, 25])
    ap.add_argument("--batches", type=int, default=4000, help="lock-step batches per run")
    ap.add_argument("--rounds", type=int, default=3)
    add_plot_options(ap)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for w in args.callers:
            for kind in MECHANISMS if r % 2 == 0 else MECHANISMS[::-1]:
                row = run(kind, w, max(1, args.batches // w))
                runs.setdefault(f"{kind} W={w}", []).append(row)
                print(
                    f"  round {r} {kind:8} W={w:3} " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()),
                    flush=True,
                )
    keys = ("service_us_per_reply", "callers_us_per_reply", "wall_us_per_reply")
    result: dict = {"rounds": args.rounds, "batches": args.batches, "loadavg_end": os.getloadavg()[0]}
    print(
        f"\n| mechanism (median of {args.rounds}) | service CPU µs | callers' CPU µs | wall µs (per reply) |"
    )
    print("|---|---|---|---|")
    for label, rows in runs.items():
        med = {k: statistics.median(x[k] for x in rows) for k in keys}
        result[label] = med
        print(f"| {label} | " + " | ".join(f"{med[k]:.2f}" for k in keys) + " |")
    result["runs"] = runs
    print(json.dumps(result))
    labels = list(runs)
    load = result["loadavg_end"]
    bars(
        args,
        "wake_mechanisms",
        "Waking W lock-step callers: CPU per reply",
        labels,
        {
            "service": [result[label]["service_us_per_reply"] for label in labels],
            "callers": [result[label]["callers_us_per_reply"] for label in labels],
        },
        ylabel="µs of CPU per reply",
        fmt="{:.1f}",
        note=f"benchmarks/wake_mechanisms.py, median of {args.rounds} rounds; load {load:.1f}",
        horizontal=True,
    )


if __name__ == "__main__":
    sys.exit(main())
