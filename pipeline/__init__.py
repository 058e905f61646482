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

# Threads that wait sleep instead of spinning. With libgomp's default (spin a while, then sleep),
# two trainings on the same cores (`dvc queue start -j 2`, a shared server) each ran at 2.4% of
# their solo speed: every parallel region's waiting threads burned the time slices the other
# process needed. Passive waiting costs ~5% alone and gives each of two at once 57-63% of its solo
# speed (`python -m benchmarks.bench_contention`). Set OMP_WAIT_POLICY=ACTIVE for a dedicated machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
