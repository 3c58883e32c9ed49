#!/usr/bin/env python3
"""Next-epoch cache vs LRU: hit rate per epoch of granary's Loader(cache_bytes = half the data) on
the 200k x 16 KiB dataset of bench/dataset_bench.py, and an LRU of the same capacity (in samples)
simulated on the same epoch orders. Usage: .venv/bin/python bench/dataset_cache_hit.py [DIR]"""
import sys
import os, time, collections
import granary.data as gd
D=sys.argv[1] if len(sys.argv) > 1 else "/work/bench-data/dataset/16k-200000/granary"
ds=gd.Dataset(D); N=len(ds)
frac=0.5
ld=gd.Loader(ds, batch_size=256, seed=0, cache_bytes=int(ds.nbytes*frac)+N*220)
prev=ld.stats()
for e in range(4):
    t=time.perf_counter(); n=sum(len(b) for b in ld); dt=time.perf_counter()-t
    st=ld.stats(); h=st["cache_hits"]-prev["cache_hits"]; m=st["cache_misses"]-prev["cache_misses"]; prev=st
    print(f"granary epoch {e}: {n/dt:,.0f} samples/s, hit rate {h/(h+m):.1%}, cache {st['cache_bytes']>>20} MiB")
# LRU with the same capacity in samples, same orders
cap=int(N*frac); lru=collections.OrderedDict()
for e in range(4):
    order=gd.epoch_order(N, e, 0); hits=0
    for i in order:
        if i in lru: hits+=1; lru.move_to_end(i)
        else:
            lru[i]=1
            if len(lru)>cap: lru.popitem(last=False)
    print(f"LRU epoch {e}: hit rate {hits/N:.1%}")
