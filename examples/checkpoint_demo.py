#!/usr/bin/env python3
"""granary checkpoint demo: async saves, a SIGKILL mid-save, and a bit-exact resume.

A small torch model trains on the CPU and checkpoints every few steps with granary.Checkpointer
(the training loop only waits for the copy into staging memory). The demo kills the trainer
with SIGKILL while a save is persisting, restarts it, and the restart resumes from the newest
*complete* checkpoint: its weights hash equal to the ones recorded when that save became
durable. Finally it compares the stall and bandwidth of granary against torch.save + fsync on
the same state.

Usage: checkpoint_demo.py [DIR] [--params-mib N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")


def state_hash(model) -> str:
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def build(params_mib: int):
    import torch

    torch.manual_seed(0)
    width = 1024
    layers = max(1, params_mib * (1 << 20) // (4 * width * width))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    return model, opt


def train(args) -> int:
    """The trainer: resumes from the newest checkpoint, trains, saves every --every steps."""
    import torch

    import granary

    model, opt = build(args.params_mib)
    ckpt = granary.Checkpointer(args.dir, keep_last=2)
    start = 0
    if ckpt.latest() is not None:
        # Optimizer state must exist before load(into=...) can fill it in place.
        model(torch.zeros(1, 1024)).sum().backward()
        opt.step()
        opt.zero_grad()
        state = ckpt.load(into={"model": model.state_dict(), "optim": opt.state_dict()})
        opt.load_state_dict(state["optim"])
        start = state["meta"]["step"]
        print(json.dumps({"event": "resumed", "step": start, "hash": state_hash(model)}), flush=True)
    x = torch.randn(64, 1024)
    pending = None
    for step in range(start + 1, args.steps + 1):
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % args.every == 0:
            if pending is not None:  # report the previous save once durable
                pending[0].wait()
                print(json.dumps({"event": "durable", "step": pending[1], "hash": pending[2],
                                  **pending[0].stats()}), flush=True)
            h = state_hash(model)
            t0 = time.perf_counter()
            handle = ckpt.save(step, {"model": model.state_dict(), "optim": opt.state_dict(),
                                      "meta": {"step": step, "loss": loss.item()}})
            stall = time.perf_counter() - t0
            print(json.dumps({"event": "saving", "step": step, "stall_s": stall}), flush=True)
            pending = (handle, step, h)
    if pending is not None:
        pending[0].wait()
        print(json.dumps({"event": "durable", "step": pending[1], "hash": pending[2],
                          **pending[0].stats()}), flush=True)
    return 0


def torch_save_baseline(args) -> dict:
    import torch

    model, opt = build(args.params_mib)
    model(torch.zeros(1, 1024)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    path = os.path.join(args.dir + "-torch", "ckpt.pt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        times.append(time.perf_counter() - t0)
    size = os.path.getsize(path)
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    times.sort()
    return {"stall_s": times[1], "bytes": size}


def run_trainer(args, kill_at_step=None):
    cmd = [sys.executable, __file__, args.dir, "--role", "train", "--params-mib",
           str(args.params_mib), "--steps", str(args.steps), "--every", str(args.every)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    events = []
    for line in proc.stdout:
        event = json.loads(line)
        events.append(event)
        if event["event"] == "saving":
            print(f"  step {event['step']:>3}: save() returned after {event['stall_s'] * 1e3:7.1f} ms; "
                  f"persisting in the background")
        elif event["event"] == "durable":
            print(f"  step {event['step']:>3}: durable ({event['bytes_written'] / 2**20:.0f} MiB written "
                  f"in {event['persist_s']:.2f} s, {event['tensors_reused']} tensors reused)")
        elif event["event"] == "resumed":
            print(f"  resumed from step {event['step']} (weights hash {event['hash']})")
        if kill_at_step is not None and event["event"] == "saving" and event["step"] == kill_at_step:
            time.sleep(0.05)  # the save is persisting now
            os.kill(proc.pid, signal.SIGKILL)
            print(f"  -- SIGKILL while step {kill_at_step} persists --")
            break
    proc.wait()
    return events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", default="build/demo-checkpoint")
    parser.add_argument("--role", default="demo", choices=["demo", "train"])
    parser.add_argument("--params-mib", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args()
    args.dir = os.path.abspath(args.dir)
    if args.role == "train":
        return train(args)

    import granary

    shutil.rmtree(args.dir, ignore_errors=True)
    print(f"granary checkpoint demo: {args.params_mib} MiB of weights + Adam state, saving every "
          f"{args.every} steps into {args.dir}")
    print("run 1: train, killed mid-save")
    kill_step = 3 * args.every
    first = run_trainer(args, kill_at_step=kill_step)
    durable = {e["step"]: e["hash"] for e in first if e["event"] == "durable"}
    newest = max(durable)
    print(f"run 2: restart (newest durable step before the kill: {newest})")
    second = run_trainer(args)
    resumed = next(e for e in second if e["event"] == "resumed")
    ok = resumed["step"] >= newest and (resumed["step"] not in durable or
                                         resumed["hash"] == durable[resumed["step"]])
    print(f"  resume {'OK' if ok else 'FAILED'}: step {resumed['step']}, "
          f"weights {'match' if ok else 'DIFFER from'} the saved ones")
    granary.Checkpointer(args.dir).verify()
    print("  granary ckpt verify: every checksum of the newest step OK")

    saves = [e for e in first + second if e["event"] == "durable"]
    stalls = sorted(e["stall_s"] for e in first + second if e["event"] == "saving")[1:]  # skip warm-up
    full = [e for e in saves if e["tensors_reused"] == 0] or saves
    state_bytes = full[0]["bytes_total"]
    persist = sorted(e["persist_s"] for e in full)[len(full) // 2]
    base = torch_save_baseline(args)
    med_stall = stalls[len(stalls) // 2]
    print()
    print(f"{'':24}{'stall (training waits)':>24}{'time to durable':>18}{'MB/s':>8}")
    print(f"{'torch.save + fsync':24}{base['stall_s'] * 1e3:21.0f} ms{base['stall_s']:16.2f} s"
          f"{base['bytes'] / base['stall_s'] / 1e6:8.0f}")
    print(f"{'granary.Checkpointer':24}{med_stall * 1e3:21.0f} ms{med_stall + persist:16.2f} s"
          f"{state_bytes / (med_stall + persist) / 1e6:8.0f}")
    print(f"state: {state_bytes / 2**20:.0f} MiB; medians; the first granary save also faults in its "
          f"staging memory and is left out")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
