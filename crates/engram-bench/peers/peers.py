#!/usr/bin/env python3
"""ANN peers for `engram-bench recall`: hnswlib and faiss HNSW on the bench's own vectors.

Usage: peers.py DIR [--efs 16,32,64,128,256,512] [--systems hnswlib,faiss]

DIR holds what the Rust bench wrote: meta.json {"n", "dim", "queries", "k"}, base.f32 (n*dim
little-endian f32, unit rows), queries.f32 (queries*dim f32) and truth.u32 (queries*k
little-endian u32, the exact top k rows by inner product). Prints one JSON object per line on
stdout: a build line per system, then a line per ef with recall@k and per-query latency.
Diagnostics go to stderr.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

BATCH = 10_000
BUILD_THREADS = 2


def fail(msg):
    sys.exit(f"peers.py: {msg}")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def emit(obj):
    print(json.dumps(obj), flush=True)


def load(d):
    try:
        with open(os.path.join(d, "meta.json")) as f:
            meta = json.load(f)
        n, dim, nq, k = (int(meta[key]) for key in ("n", "dim", "queries", "k"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"{d}/meta.json: {e!r}")
    if min(n, dim, nq, k) <= 0 or k > n:
        fail(f"{d}/meta.json: bad sizes {meta}")

    def read(name, dtype, count):
        path = os.path.join(d, name)
        try:
            size = os.path.getsize(path)
        except OSError as e:
            fail(f"{path}: {e.strerror}")
        if size != count * 4:
            fail(f"{path}: {size} bytes, expected {count * 4} ({count} x 4) from meta.json")
        return np.fromfile(path, dtype=dtype, count=count)

    base = read("base.f32", "<f4", n * dim).reshape(n, dim)
    queries = read("queries.f32", "<f4", nq * dim).reshape(nq, dim)
    truth = read("truth.u32", "<u4", nq * k).reshape(nq, k)
    if truth.max() >= n:
        fail(f"{d}/truth.u32: row {truth.max()} out of range (n = {n})")
    if not (np.isfinite(base).all() and np.isfinite(queries).all()):
        fail(f"{d}: non-finite values in base.f32 or queries.f32")
    return base, queries, truth, k


class Hnswlib:
    name = "hnswlib"
    M, EFC = 16, 200
    params = f"M{M} efc{EFC}"

    def __init__(self, dim, n):
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=n, ef_construction=self.EFC, M=self.M)

    def build_threads(self, t):
        self.index.set_num_threads(t)

    def add(self, rows, start):
        self.index.add_items(rows, np.arange(start, start + len(rows)))

    def set_ef(self, ef):
        self.index.set_ef(ef)

    def search(self, q, k):
        return self.index.knn_query(q, k=k)[0][0]


class Faiss:
    name = "faiss"
    M = 32
    params = None  # read from the index: efConstruction is faiss's default

    def __init__(self, dim, n):
        import faiss

        self.faiss = faiss
        self.index = faiss.IndexHNSWFlat(dim, self.M, faiss.METRIC_INNER_PRODUCT)
        self.params = f"HNSW{self.M} efc{self.index.hnsw.efConstruction}"

    def build_threads(self, t):
        self.faiss.omp_set_num_threads(t)

    def add(self, rows, start):
        self.index.add(rows)

    def set_ef(self, ef):
        self.index.hnsw.efSearch = ef

    def search(self, q, k):
        return self.index.search(q, k)[1][0]


SYSTEMS = {"hnswlib": Hnswlib, "faiss": Faiss}


def run(system, base, queries, truth, k, efs):
    n, dim = base.shape
    idx = system(dim, n)
    log(f"{system.name}: building {idx.params} over {n} x {dim} ({BUILD_THREADS} threads)")
    idx.build_threads(BUILD_THREADS)
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        idx.add(base[start : start + BATCH], start)
    build_s = time.perf_counter() - t0
    emit({"system": system.name, "params": idx.params, "build_s": round(build_s, 3),
          "ingest_per_s": round(n / build_s, 1)})

    idx.build_threads(1)
    truth_sets = [set(t.tolist()) for t in truth]
    single = [queries[i : i + 1] for i in range(len(queries))]
    warmed = False
    for ef in efs:
        if ef < k:
            log(f"{system.name}: skipping ef {ef} < k {k}")
            continue
        idx.set_ef(ef)
        if not warmed:  # one untimed pass to warm caches
            for q in single:
                idx.search(q, k)
            warmed = True
        lat = np.empty(len(single), dtype=np.int64)
        hits = 0
        for i, q in enumerate(single):
            t = time.perf_counter_ns()
            found = idx.search(q, k)
            lat[i] = time.perf_counter_ns() - t
            hits += len(truth_sets[i].intersection(found.tolist()))
        lat.sort()
        emit({"system": system.name, "ef": ef, "recall": round(hits / (len(single) * k), 4),
              "p50_us": round(percentile(lat, 50) / 1e3, 1),
              "p99_us": round(percentile(lat, 99) / 1e3, 1)})


def percentile(sorted_values, p):
    """Nearest rank, as the Rust bench's util::percentile."""
    rank = int(np.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--efs", default="16,32,64,128,256,512")
    ap.add_argument("--systems", default="hnswlib,faiss")
    args = ap.parse_args()
    try:
        efs = [int(x) for x in args.efs.split(",")]
    except ValueError:
        fail(f"--efs {args.efs!r}: not a comma-separated list of integers")
    names = [s for s in args.systems.split(",") if s]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown or not names:
        fail(f"--systems: unknown {unknown}; choose from {','.join(SYSTEMS)}")
    base, queries, truth, k = load(args.dir)
    log(f"loaded {args.dir}: {base.shape[0]} x {base.shape[1]}, {len(queries)} queries, k {k}")
    for name in names:
        run(SYSTEMS[name], base, queries, truth, k, efs)


if __name__ == "__main__":
    main()
