"""What the command line offers, known without importing torch or timm.

``effnet-zoo --help`` and argument errors are answered before anything heavy is imported (see ``effnet_zoo_cli``),
so the names and bounds its parser checks live here, and the library modules that act on them import them from
here: one list of each.
"""

from __future__ import annotations

MAX_INPUT_SIDE = 1600  # twice EfficientNet-L2's 800 px; [3, 12000, 12000] took 7.3 GB in predict
LAYOUTS = ("effnet_zoo", "timm")  # of a saved model folder's weights: ours, or timm's tf_efficientnet_* names
DTYPE_NAMES = ("fp32", "fp16", "bf16")  # stored precision of a model folder's weights
SOURCE_FORMATS = ("tf-ckpt", "keras-h5", "timm", "torchvision", "lukemelas", "seed", "transformers")
EXPORT_FORMATS = ("onnx", "torchscript", "torch-export")
MIN_CALIBRATION_IMAGES = 10  # export --int8: ranges from fewer images than this are a guess
PREDICT_FORMATS = ("jsonl", "csv")  # predict --out: one record per image, written as each batch finishes
