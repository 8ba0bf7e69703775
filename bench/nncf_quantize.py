"""NNCF's post-training int8 (``nncf.quantize`` with its defaults) on an ONNX model, for bench_shrink.py.

Runs in the separate benchmark environment that has nncf (it is not a project dependency):

    /work/bench-venv-nncf/bin/python bench/nncf_quantize.py MODEL.onnx CALIB.npy OUT.onnx

CALIB.npy holds the calibration inputs already shaped for the model (batch axis first); they are fed
in the model's own batch size. Prints the quantization time in seconds (the call alone) on stdout.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import onnx


def main() -> None:
    model_path, calib_path, out_path = sys.argv[1:4]
    import nncf

    model = onnx.load(model_path)
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dim0 = inp.type.tensor_type.shape.dim[0]
    batch = dim0.dim_value if dim0.HasField("dim_value") and dim0.dim_value > 0 else 1
    x = np.load(calib_path)
    feeds = [{inp.name: x[i:i + batch]} for i in range(0, len(x) - batch + 1, batch)]
    t = time.perf_counter()
    q = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds))
    dt = time.perf_counter() - t
    onnx.save(q, out_path)
    print(f"{dt:.3f}")


if __name__ == "__main__":
    main()
