#!/usr/bin/env python3
"""granary model demo: save a small GPT as sharded safetensors, load it cold and warm.

1. Builds a GPT-like torch model (token embedding tied to the LM head, pre-norm
   nn.TransformerEncoder blocks) and saves its state_dict with granary.models.save as Hugging
   Face style shards plus model.safetensors.index.json. safetensors stores each tensor once, so
   the tied lm_head.weight is left out and tied again after loading.
2. Shows granary.models.inspect: tensors, bytes and shards, from the headers alone.
3. Loads every shard cold (page cache dropped) and warm, granary.models.load against
   safetensors.torch.load_file per shard, interleaved, a few rounds. Both are charged for
   touching every byte: a checksum pass over the returned tensors (an mmap'ed tensor is read
   from disk only then), minus a second pass over the same bytes (pure compute).
4. Checks the loaded tensors equal the originals, and that a fresh model built on the meta
   device, filled with load_state_dict(assign=True), gives exactly the original logits.
5. Times iter_load(order="layer") to its first tensor (embeddings first, then layer by layer).

Usage: model_demo.py [DIR] [--layers N] [--width N] [--rounds N]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import granary.models as gm  # noqa: E402

VOCAB = 8192


class GPT(torch.nn.Module):
    def __init__(self, layers: int, width: int):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(VOCAB, width)
        self.embed_positions = torch.nn.Embedding(1024, width)
        block = torch.nn.TransformerEncoderLayer(width, width // 64, 4 * width, dropout=0.0,
                                                 batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(width)
        self.lm_head = torch.nn.Linear(width, VOCAB, bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied, as in GPT-2

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        x = self.embed_tokens(tokens) + self.embed_positions(torch.arange(n))
        mask = torch.nn.Transformer.generate_square_subsequent_mask(n)
        return self.lm_head(self.norm(self.blocks(x, mask=mask, is_causal=True)))


def drop_caches(files: list[str]) -> str:
    """Evicts the files from the page cache; returns how."""
    os.sync()
    if os.geteuid() == 0:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    for path in files:  # not root: ask the kernel to forget these files' pages
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    return "posix_fadvise(DONTNEED)"


def warm_up(files: list[str]) -> None:
    for path in files:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


def checksum(tensors: dict[str, torch.Tensor]) -> int:
    """Sum mod 2^64 of each tensor's bytes as int64 words (plus its tail bytes): reads them all."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # memory-bound; OpenMP's barrier stalls a 2-thread sum on a busy box
    total = 0
    for t in tensors.values():
        b = t.reshape(-1).view(torch.uint8)
        if b.data_ptr() % 8:  # an int64 view needs 8-byte alignment (every tensor here has it)
            b = b.clone()
        n = b.numel() // 8 * 8
        total += int(b[:n].view(torch.int64).sum()) + int(b[n:].sum())
    torch.set_num_threads(threads)
    return total % 2**64


def granary_load(model_dir: str, shards: list[str]):
    m = gm.open(model_dir)
    return m.load(), m.last_stats


def granary_load_mapped(model_dir: str, shards: list[str]):
    m = gm.open(model_dir)
    return m.load(map_resident=True), m.last_stats


def safetensors_load(model_dir: str, shards: list[str]):
    out = {}
    for path in shards:
        out.update(load_file(path))
    return out, None


def memcpy_fresh_seconds(nbytes: int) -> float:
    """The warm ceiling for a loader that copies: filling new memory (page faults included)."""
    src = torch.ones(nbytes, dtype=torch.uint8)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        torch.empty_like(src).copy_(src)
        times.append(time.perf_counter() - t)
    return sorted(times)[1]


def timed(fn, model_dir, shards, expected: int) -> tuple[float, float, dict | None]:
    """Seconds to load and checksum every byte, seconds of a second checksum (pure compute: the
    bytes are in memory by then), and granary's read stats."""
    t0 = time.perf_counter()
    tensors, stats = fn(model_dir, shards)
    first = checksum(tensors)
    t1 = time.perf_counter()
    second = checksum(tensors)
    t2 = time.perf_counter()
    if first != expected or second != expected:
        raise SystemExit(f"{fn.__name__}: checksum {first:#x}, expected {expected:#x}")
    del tensors
    gc.collect()  # unmap safetensors' files before the next cache drop
    return t1 - t0, t2 - t1, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", default="build/demo-model")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    model_dir = os.path.abspath(args.dir)
    shutil.rmtree(model_dir, ignore_errors=True)

    torch.manual_seed(0)
    model = GPT(args.layers, args.width).eval()
    state = model.state_dict()
    del state["lm_head.weight"]  # shares embed_tokens.weight's memory: gm.save would refuse it
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    t = time.perf_counter()
    written = gm.save(state, model_dir, metadata={"format": "pt"}, shard_bytes=96 << 20)
    dt = time.perf_counter() - t
    shards = [path for path in written if path.endswith(".safetensors")]
    print(f"1. GPT with {args.layers} layers, width {args.width}, vocab {VOCAB}: {len(state)} "
          f"tensors, {nbytes / 2**20:.0f} MiB float32 (lm_head tied to embed_tokens: not stored)")
    print(f"   granary.models.save: {len(shards)} shards + index in {dt:.2f} s: {model_dir}")

    info = gm.inspect(model_dir)
    dtypes = sorted({v["dtype"] for v in info["tensors"].values()})
    biggest = max(info["tensors"].items(), key=lambda kv: kv[1]["bytes"])
    print(f"2. granary.models.inspect: {len(info['tensors'])} tensors, "
          f"{info['total_bytes'] / 2**20:.0f} MiB in {len(info['files'])} shards, dtypes {dtypes}, "
          f"metadata {info['metadata']}; largest {biggest[0]} {biggest[1]['shape']}")

    expected = checksum(state)
    how = drop_caches(shards)
    print(f"3. load all shards, median of {args.rounds} interleaved rounds "
          f"(cold: page cache emptied with {how}):")
    loaders = {"safetensors load_file": safetensors_load, "granary.models.load": granary_load,
               "  map_resident=True": granary_load_mapped}
    times = {(name, cache): [] for name in loaders for cache in ("cold", "warm")}
    compute, paths = [], {}
    for _ in range(args.rounds):
        for cache in ("cold", "warm"):
            for name, fn in loaders.items():
                drop_caches(shards) if cache == "cold" else warm_up(shards)
                secs, check_secs, stats = timed(fn, model_dir, shards, expected)
                times[(name, cache)].append(secs)
                compute.append(check_secs)
                if name == "granary.models.load":
                    paths[cache] = stats

    def median(xs):
        return sorted(xs)[len(xs) // 2]

    # A lazy (mmap) load reads the disk during the first checksum, so both loaders are charged
    # load + checksum, less the checksum's own compute (median of every second pass).
    check = median(compute)
    med = {k: median(v) - check for k, v in times.items()}
    print(f"   {'':24}{'cold s':>8}{'GB/s':>7}{'warm s':>9}{'GB/s':>7}")
    for name in loaders:
        cold, warm = med[(name, "cold")], med[(name, "warm")]
        print(f"   {name:24}{cold:8.3f}{nbytes / cold / 1e9:7.2f}{warm:9.3f}"
              f"{nbytes / warm / 1e9:7.2f}")
    ref, ours = "safetensors load_file", "granary.models.load"
    print(f"   {'granary speed-up':24}{med[(ref, 'cold')] / med[(ours, 'cold')]:7.2f}x"
          f"{'':7}{med[(ref, 'warm')] / med[(ours, 'warm')]:8.2f}x")
    print(f"   (each: load, then a checksum of every byte, less {check:.3f} s of checksum compute)")
    for cache, st in paths.items():
        print(f"   granary {cache}: {st['direct_bytes'] >> 20} MiB read with O_DIRECT, "
              f"{st['cached_bytes'] >> 20} MiB copied from the page cache")
    print(f"   warm, safetensors maps the cached pages (copies nothing; its tensors stay backed by "
          f"the files);\n   granary copies into new memory: a memcpy into new memory runs at "
          f"{nbytes / memcpy_fresh_seconds(nbytes) / 1e9:.2f} GB/s here;\n   with map_resident=True "
          f"granary maps the cached pages copy-on-write too (cold parts still O_DIRECT)")

    loaded = gm.load(model_dir)
    same = loaded.keys() == state.keys() and all(torch.equal(loaded[k], v)
                                                  for k, v in state.items())
    with torch.device("meta"):
        fresh = GPT(args.layers, args.width).eval()
    result = fresh.load_state_dict(loaded, strict=False, assign=True)
    fresh.lm_head.weight = fresh.embed_tokens.weight  # assign=True replaced embed_tokens' parameter
    tokens = torch.randint(0, VOCAB, (2, 128), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(tokens), fresh(tokens)
    print(f"4. loaded tensors equal the originals: {same}")
    print(f"   fresh model on the meta device + load_state_dict(assign=True): missing "
          f"{result.missing_keys} (tied again), unexpected {result.unexpected_keys}")
    print(f"   logits {list(got.shape)} on a fixed input: "
          f"{'identical' if torch.equal(want, got) else 'DIFFER'} to the original model's "
          f"(max |diff| {(want - got).abs().max().item():.1e})")
    if not same or result.missing_keys != ["lm_head.weight"] or not torch.equal(want, got):
        raise SystemExit("the loaded model is not the saved one")

    drop_caches(shards)
    m = gm.open(model_dir)
    t = time.perf_counter()
    it = m.iter_load(order="layer")
    first_name, _ = next(it)
    ttft = time.perf_counter() - t
    names = [first_name] + [name for name, _ in it]
    total = time.perf_counter() - t
    print(f"5. iter_load(order='layer'), cold: first tensor after {ttft * 1e3:.1f} ms, all "
          f"{len(names)} after {total:.2f} s;\n   order: {', '.join(names[:3])}, ... {names[-1]}")
    shutil.rmtree(model_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
