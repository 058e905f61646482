"""A reproducible DVC pipeline that trains LSTM models on IMDB movie reviews."""
import os

# Same code, params, data, CPU type and thread count -> same bytes. MKL (the BLAS of PyTorch's CPU
# wheels: Linear layers, the LM's softmax) may otherwise pick its kernel by memory alignment and
# split reductions by the threads it decides to use; its "conditional numerical reproducibility"
# mode fixes both and keeps the fastest code path of this CPU (AUTO). MKL reads these once, at its
# first call, so they are set here, before any stage imports torch. scripts/float_sources.py shows
# what each setting changes; docs/reproducibility.md says what is guaranteed.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

# Threads that wait spin briefly, then sleep. libgomp's default (spin ~3 ms, then sleep) made two
# trainings on the same cores (`dvc queue start -j 2`, a shared server) each run at 2.4% of their
# solo speed: waiting threads burned the time slices the other process needed. Sleeping at once
# (OMP_WAIT_POLICY=PASSIVE, the setting before this one) cures that but costs a solo run up to 40%
# on a VM, where waking a thread on an idle vCPU goes through the hypervisor. 1,000 rounds (~10 us)
# bridge the short gaps of the LSTM step and still give each of two at once 61-74% of its solo
# speed (`python -m benchmarks.bench_contention`, docs/benchmarks.md). OMP_WAIT_POLICY or
# GOMP_SPINCOUNT in the environment win: OMP_WAIT_POLICY=ACTIVE for a dedicated machine.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

# Tensors of 2 MB and more on transparent huge pages: PyTorch's CPU allocator then madvises them
# (it reads this once, at its first allocation, hence here). The training step's LSTM buffers fault
# in 2 MB at a time instead of 4 KB, and the kept heap (pipeline.training) holds fewer half-used
# pages: the full-data backward classifier of `full-lm` peaked at 6.16 GB against 6.9-7.8 GB, for
# the same speed on new batch lengths and 7-12% less on repeated ones (docs/benchmarks.md,
# "Transparent huge pages"). Outputs are byte-identical. THP_MEM_ALLOC_ENABLE=0 turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
