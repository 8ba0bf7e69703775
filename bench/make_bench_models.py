"""Build the MLPerf Tiny shaped int8 TFLite models that bench/bench_mcu.py measures.

    /work/bench-venv/bin/python bench/make_bench_models.py [--cache DIR]

TensorFlow is only needed here, never by edgeloop: run this with a separate venv
(``python3 -m venv /work/bench-venv && /work/bench-venv/bin/pip install tensorflow``).
Writes, under ``~/.cache/edgeloop-bench`` (or --cache), with random weights (the
instruction counts depend on the shapes, not on the training):

- ``resnet8_int8.tflite``: the MLPerf Tiny image-classification ResNet-8 (32x32x3,
  conv 16, three stages 16/32/64 of two 3x3 convs with a residual add, 1x1 stride-2
  shortcuts in stages 2 and 3, global average pool, FC 10);
- ``mobilenet_v1_025_int8.tflite``: the visual-wake-words MobileNetV1 alpha 0.25 at
  96x96x3 (13 depthwise-separable blocks, stride-2 depthwise, 2 classes).

Both are fully int8 (int8 input and output, per-channel weights), quantized by the
TFLite converter with a representative dataset of random images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CACHE = Path.home() / ".cache" / "edgeloop-bench"


def resnet8(tf):
    L = tf.keras.layers
    inp = tf.keras.Input((32, 32, 3), batch_size=1)
    x = L.Conv2D(16, 3, padding="same")(inp)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        y = L.Conv2D(filters, 3, strides=stride, padding="same")(x)
        y = L.BatchNormalization()(y)
        y = L.Activation("relu")(y)
        y = L.Conv2D(filters, 3, padding="same")(y)
        y = L.BatchNormalization()(y)
        if stride != 1:
            x = L.Conv2D(filters, 1, strides=stride, padding="same")(x)
        x = L.Activation("relu")(L.add([x, y]))
    x = L.AveragePooling2D(pool_size=x.shape[1:3])(x)
    x = L.Flatten()(x)
    out = L.Dense(10, activation="softmax")(x)
    return tf.keras.Model(inp, out)


def mobilenet_v1_025(tf):
    L = tf.keras.layers
    inp = tf.keras.Input((96, 96, 3), batch_size=1)

    def cbr(x, filters, kernel, stride):
        x = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        return L.ReLU(6.0)(x)

    x = cbr(inp, 8, 3, 2)
    for filters, stride in ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1),
                            (128, 1), (128, 1), (128, 1), (128, 1), (256, 2), (256, 1)):
        x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU(6.0)(x)
        x = cbr(x, filters, 1, 1)
    x = L.AveragePooling2D(pool_size=x.shape[1:3])(x)
    x = L.Flatten()(x)
    out = L.Dense(2, activation="softmax")(x)
    return tf.keras.Model(inp, out)


def randomize_bn(model, rng):
    """Non-trivial batch-norm statistics, so the folded weights are not all alike."""
    for layer in model.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape).astype(np.float32),
                               rng.normal(0, 0.1, b.shape).astype(np.float32),
                               rng.normal(0, 0.1, m.shape).astype(np.float32),
                               rng.uniform(0.5, 1.5, v.shape).astype(np.float32)])


def convert(tf, model, shape, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    randomize_bn(model, rng)

    def rep():
        for _ in range(32):
            yield [rng.uniform(-1, 1, (1, *shape)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=CACHE, help="folder for the .tflite files")
    args = ap.parse_args(argv)
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    args.cache.mkdir(parents=True, exist_ok=True)
    for name, build, shape in (("resnet8_int8", resnet8, (32, 32, 3)),
                               ("mobilenet_v1_025_int8", mobilenet_v1_025, (96, 96, 3))):
        path = args.cache / f"{name}.tflite"
        data = convert(tf, build(tf), shape, seed=1)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        print(f"{path}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
