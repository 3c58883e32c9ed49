"""A training job that checkpoints in a loop, for test_checkpoint_crash.py to kill with SIGKILL.

Standalone (to reproduce by hand)::

    python ckpt_crash_writer.py DIR [--incremental 0|1] [--budget-mib N] [--steps N]

saves steps latest+1, latest+2, ... of :func:`make_state` under DIR and prints
``<pid> durable <step>`` once each step's handle.wait() returned.

``--zygote`` (what the test uses): imports torch and granary once, then reads commands on stdin
and forks one writer per ``run DIR INCREMENTAL BUDGET_MIB STEPS`` (printing ``started <pid>``),
so each trial's writer starts in milliseconds instead of re-importing torch. ``reap <pid>``
waits for that writer and prints ``reaped <pid> <wait status>``; every line the writer printed
comes before it. ``quit`` exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Dict

import torch

import granary

MiB = 1 << 20
KEEP_LAST = 3


def _bits(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """n elements of `dtype` with random bit patterns determined by `seed`."""
    g = torch.Generator().manual_seed(seed)
    element = torch.empty((), dtype=dtype).element_size()
    words = torch.randint(-(2**31), 2**31 - 1, ((n * element + 3) // 4,), dtype=torch.int32,
                          generator=g)
    return words.view(torch.uint8)[: n * element].view(dtype)


def make_state(step: int) -> Dict[str, Any]:
    """The state saved as `step`: ~38 MiB in 10 tensors, a function of `step` only.

    Some tensors change every step, some every third step, some never, so incremental saves
    both reuse and write bytes.
    """
    wide = _bits(512 * 2048, torch.float32, 10 * step + 7).view(512, 2048)  # 4 MiB
    return {
        "model": {
            "embed": _bits(4 * MiB, torch.float32, 1),                        # 16 MiB, frozen
            "w0": _bits(1536 * 1024, torch.float32, 10 * step).view(1536, 1024),  # 6 MiB
            "w1": _bits(3 * MiB, torch.bfloat16, 10 * step + 1),             # 6 MiB
            "slow": _bits(2 * MiB, torch.float16, 10 * (step // 3) + 2),     # 4 MiB
            "bias": _bits(1000, torch.float32, 10 * step + 3),
            "norm": _bits(4096, torch.bfloat16, 5),                           # frozen, small
            "strided": wide[:, ::2],                                          # 2 MiB, non-contiguous
        },
        "optim": {
            "state": {0: {"step": torch.tensor(float(step)),
                          "exp_avg": _bits(512 * 1024, torch.float32, 10 * step + 4)}},  # 2 MiB
            "param_groups": [{"lr": 1e-3 / step, "params": [0]}],
        },
        "meta": {"step": step, "tag": ("step", step), "big": 2**64 + step},
    }


def _say(line: str) -> None:
    """One line on stdout in a single write(2), so lines of the zygote and its writers never
    interleave within a line."""
    os.write(1, (line + "\n").encode())


def run_writer(directory: str, incremental: bool, budget_mib: int, steps: int) -> None:
    pid = os.getpid()
    ckpt = granary.Checkpointer(directory, keep_last=KEEP_LAST, incremental=incremental,
                                budget_bytes=budget_mib * MiB or None)
    latest = ckpt.latest()
    if latest is not None and incremental:
        ckpt.load()  # resume like a training job; the loaded step is the incremental base
    step = (latest or 0) + 1
    _say(f"{pid} start {step} base {latest if incremental else None}")
    state = make_state(step)
    for _ in range(steps):
        handle = ckpt.save(step, state)
        state = make_state(step + 1)  # "training" continues while the save persists
        handle.wait()
        _say(f"{pid} durable {step}")
        step += 1
    ckpt.wait()
    _say(f"{pid} exit")


def _zygote() -> None:
    _say("ready")
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "run":
            go_r, go_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(go_w)
                os.read(go_r, 1)  # until the zygote said "started": that line comes first
                os.close(go_r)
                code = 0
                try:
                    run_writer(args[0], args[1] == "1", int(args[2]), int(args[3]))
                except BaseException:  # noqa: BLE001 - reported to the test, then exit
                    _say(f"{os.getpid()} error " + traceback.format_exc().replace("\n", " | "))
                    code = 1
                os._exit(code)
            os.close(go_r)
            _say(f"started {pid}")
            os.write(go_w, b"g")
            os.close(go_w)
        elif cmd == "reap":
            pid = int(args[0])
            _, status = os.waitpid(pid, 0)
            _say(f"reaped {pid} {status}")
        elif cmd == "quit":
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?")
    parser.add_argument("--zygote", action="store_true")
    parser.add_argument("--incremental", type=int, default=1)
    parser.add_argument("--budget-mib", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10**9)
    a = parser.parse_args()
    if a.zygote:
        _zygote()
    else:
        run_writer(a.dir, bool(a.incremental), a.budget_mib, a.steps)


if __name__ == "__main__":
    main()
