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
