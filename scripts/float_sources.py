"""Which CPU kernels make an LSTM step's bits depend on the host? A minimal probe.

Runs one forward + backward of the classifier's bidirectional LSTM (fixed seed, fixed batch) in a
fresh process per setting and prints an md5 of the outputs and gradients, plus the seconds of 20
such steps. Settings vary what a different host would change on its own: the instruction set the
kernels may use (oneDNN's ONEDNN_MAX_CPU_ISA, MKL's MKL_CBWR) and the thread count, for the two
LSTM paths PyTorch has on CPU: oneDNN's fused RNN (`aten::mkldnn_rnn_layer`, the default for fp32)
and the native one (`torch.backends.mkldnn` off: MKL sgemm + pointwise ops).

    python scripts/float_sources.py

Same md5 across an ISA column = that path gives the same bits on hosts that differ in that way.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = r"""
import hashlib, time, torch
torch.set_num_threads(int(THREADS))
torch.backends.mkldnn.enabled = MKLDNN
torch.manual_seed(0)
lstm = torch.nn.LSTM(128, 128, batch_first=True, bidirectional=True)
x = torch.randn(64, 250, 128, requires_grad=True)
def step():
    lstm.zero_grad(); x.grad = None
    out, _ = lstm(x)
    (out * out).sum().backward()
    return out
out = step()
h = hashlib.md5()
for t in [out, x.grad, *[p.grad for p in lstm.parameters()]]:
    h.update(t.detach().contiguous().numpy().tobytes())
t0 = time.perf_counter()
for _ in range(20):
    step()
print(h.hexdigest(), round(time.perf_counter() - t0, 3))
"""


def probe(mkldnn: bool, threads: int, env: dict) -> tuple[str, float]:
    code = PROBE.replace("THREADS", str(threads)).replace("MKLDNN", str(mkldnn))
    e = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    p = subprocess.run([sys.executable, "-c", code], env={**e, **env}, capture_output=True, text=True, check=True)
    md5, secs = p.stdout.split()
    return md5, float(secs)


def main() -> None:
    settings = [
        ("onednn", True, {}),
        ("onednn", True, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}),
        ("onednn", True, {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
        ("onednn", True, {"ONEDNN_MAX_CPU_ISA": "SSE41"}),
        ("native", False, {}),
        ("native", False, {"MKL_CBWR": "AVX512"}),
        ("native", False, {"MKL_CBWR": "AVX2"}),
        ("native", False, {"MKL_CBWR": "AVX2,STRICT"}),
        ("native", False, {"MKL_CBWR": "COMPATIBLE"}),
    ]
    for threads in (1, 2):
        for path, mkldnn, env in settings:
            md5, secs = probe(mkldnn, threads, env)
            print(json.dumps({"lstm": path, "threads": threads, "env": env, "md5": md5, "seconds_20_steps": secs}),
                  flush=True)


if __name__ == "__main__":
    main()
