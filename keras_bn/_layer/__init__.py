"""The private modules of `ManualBatchNorm` (keras_bn/batch_norm.py)."""
