"""Make the TensorFlow / Keras fixtures in tests/fixtures/ with the real producers (run by hand, not in CI).

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu h5py safetensors
    /tmp/tfenv/bin/python tools/make_tf_fixtures.py

Keras' own EfficientNet builds a tiny compound-scaled network (width 0.1, depth 0.3, 64 px, 10 classes: the
fixtures stay under 2 MB together) with random weights and non-trivial BatchNorm statistics. It is saved as

- ``tiny_keras_legacy.h5``: the weights-only HDF5 layout of the keras.applications files
  (``/<layer>/<layer>/<var>:0``), written by Keras' legacy HDF5 writer;
- ``tiny.weights.h5``: Keras 3's ``save_weights`` format;
- ``tiny_tf1/model.ckpt.*``: a TF1 checkpoint written by ``tf.compat.v1.train.Saver`` under the variable names
  of Google's original EfficientNet code (``efficientnet-tiny/blocks_3/conv2d/kernel``, ...), with
  ``ExponentialMovingAverage`` shadows holding the Keras weights while the raw variables hold other values,
  ``RMSProp`` / ``RMSProp_1`` slots and ``global_step``, as in the released checkpoints;
- ``dtypes_tf1/model.ckpt.*``: float16 / bfloat16 / int64 / string tensors, for the reader;
- ``noema_tf1/model.ckpt.*``: raw variables without EMA shadows (the reader falls back with a warning);
- ``tiny_reference.safetensors``: a fixed input (NCHW, [0, 1]) and Keras' logits for it.
"""

from pathlib import Path

import h5py
import keras
import numpy as np
import tensorflow as tf
from keras.src.applications.efficientnet import EfficientNet
from keras.src.legacy.saving import legacy_h5_format
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
ROOT = "efficientnet-tiny"
BN_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")


def build_keras_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = EfficientNet(
        0.1, 0.3, 64, weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None,
        name="efficientnet_tiny",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([
                rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n), rng.uniform(0.5, 2.0, n)
            ])  # fmt: skip
        elif layer.name == "predictions" or layer.name.endswith(("se_reduce", "se_expand")):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
    return model


def tf1_names(model: keras.Model) -> dict[str, np.ndarray]:
    """Keras layer weights under the variable names of Google's original TF EfficientNet code."""
    out = {}

    def put(prefix, values, names):
        for name, value in zip(names, values, strict=True):
            out[f"{ROOT}/{prefix}/{name}"] = value

    blocks = sorted({layer.name.split("_")[0] for layer in model.layers if layer.name.startswith("block")})
    layers = {layer.name: layer for layer in model.layers}
    put("stem/conv2d", layers["stem_conv"].get_weights(), ["kernel"])
    put("stem/tpu_batch_normalization", layers["stem_bn"].get_weights(), BN_NAMES)
    for k, block in enumerate(blocks):
        p = f"blocks_{k}"
        expands = f"{block}_expand_conv" in layers
        bn = ["tpu_batch_normalization", "tpu_batch_normalization_1", "tpu_batch_normalization_2"]
        convs = ["conv2d", "conv2d_1"]
        if expands:
            put(f"{p}/{convs.pop(0)}", layers[f"{block}_expand_conv"].get_weights(), ["kernel"])
            put(f"{p}/{bn.pop(0)}", layers[f"{block}_expand_bn"].get_weights(), BN_NAMES)
        put(f"{p}/depthwise_conv2d", layers[f"{block}_dwconv"].get_weights(), ["depthwise_kernel"])
        put(f"{p}/{bn.pop(0)}", layers[f"{block}_bn"].get_weights(), BN_NAMES)
        put(f"{p}/se/conv2d", layers[f"{block}_se_reduce"].get_weights(), ["kernel", "bias"])
        put(f"{p}/se/conv2d_1", layers[f"{block}_se_expand"].get_weights(), ["kernel", "bias"])
        put(f"{p}/{convs.pop(0)}", layers[f"{block}_project_conv"].get_weights(), ["kernel"])
        put(f"{p}/{bn.pop(0)}", layers[f"{block}_project_bn"].get_weights(), BN_NAMES)
    put("head/conv2d", layers["top_conv"].get_weights(), ["kernel"])
    put("head/tpu_batch_normalization", layers["top_bn"].get_weights(), BN_NAMES)
    put("head/dense", layers["predictions"].get_weights(), ["kernel", "bias"])
    return out


def save_tf1_checkpoint(variables: dict[str, np.ndarray], prefix: Path) -> None:
    """TF's own Saver: EMA shadows hold the real weights, the raw variables are off by noise."""
    rng = np.random.default_rng(1)
    tensors = {}
    for name, value in variables.items():
        value = value.astype(np.float32)
        tensors[name + "/ExponentialMovingAverage"] = value
        tensors[name] = value + rng.normal(0, 0.05, value.shape).astype(np.float32)
        if not name.endswith(("moving_mean", "moving_variance")):
            tensors[name + "/RMSProp"] = rng.uniform(0, 1, value.shape).astype(np.float32)
            tensors[name + "/RMSProp_1"] = rng.normal(0, 1, value.shape).astype(np.float32)

    def var_list():
        out = {name: tf.compat.v1.Variable(value, name=name.replace("/", "__")) for name, value in tensors.items()}
        out["global_step"] = tf.compat.v1.Variable(np.int64(123456), name="global_step")
        return out

    _save(prefix, var_list)


def _save(prefix: Path, make_variables) -> None:
    """Write the variables ``make_variables()`` creates (name -> tf.Variable) with TF's own Saver."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.Saver(var_list=make_variables())
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(prefix), write_meta_graph=False)


def save_dtype_checkpoint(prefix: Path) -> None:
    def variables():
        base = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 8.0 - 1.0
        return {
            "f32": tf.compat.v1.Variable(base, name="f32"),
            "f16": tf.compat.v1.Variable(base.astype(np.float16), name="f16"),
            "bf16": tf.compat.v1.Variable(tf.cast(base, tf.bfloat16), name="bf16"),
            "i64": tf.compat.v1.Variable(np.arange(-3, 3, dtype=np.int64), name="i64"),
            "scalar": tf.compat.v1.Variable(np.float32(2.5), name="scalar"),
            "text": tf.compat.v1.Variable(b"not a tensor of numbers", name="text"),
        }

    _save(prefix, variables)


def save_no_ema_checkpoint(prefix: Path) -> None:
    """Raw variables only (no EMA shadows), as a checkpoint saved without the EMA would be: the reader warns."""
    kernel = np.arange(3 * 3 * 3 * 8, dtype=np.float32).reshape(3, 3, 3, 8) / 100.0
    _save(
        prefix,
        lambda: {
            f"{ROOT}/stem/conv2d/kernel": tf.compat.v1.Variable(kernel, name="kernel"),
            f"{ROOT}/stem/conv2d/kernel/RMSProp": tf.compat.v1.Variable(kernel * 0, name="rms"),
            "global_step": tf.compat.v1.Variable(np.int64(7), name="global_step"),
        },
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    model = build_keras_model()
    x = np.random.default_rng(2).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    logits = model(x * 255.0, training=False).numpy()  # the model rescales by 1/255 itself
    save_file(
        {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "logits": logits},
        str(OUT / "tiny_reference.safetensors"),
    )
    with h5py.File(OUT / "tiny_keras_legacy.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    model.save_weights(str(OUT / "tiny.weights.h5"))
    save_tf1_checkpoint(tf1_names(model), OUT / "tiny_tf1" / "model.ckpt")
    save_dtype_checkpoint(OUT / "dtypes_tf1" / "model.ckpt")
    save_no_ema_checkpoint(OUT / "noema_tf1" / "model.ckpt")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB); logits[0] = {logits[0].round(4)}")


if __name__ == "__main__":
    main()
