"""The private modules of `ManualBatchNorm` (keras_bn/batch_norm.py), and which calls which.

The layer converts and checks its arguments (`args`), resolves its `Layout` at
`build` (`layout`), and hands every call's work to one path, with its options
and variables as plain values (`spec`):

    ManualBatchNorm.call
      -> paths.choose                 the path, decided once per call
           reference                  keras.ops, every backend and option;
                                      autodiff or the closed-form backward
           tensorflow                 FusedBatchNormV3
           torch                      F.batch_norm, or the plain case in direct
                                      torch calls with its autograd Function
      -> each training path ends in moving.update_statistics, the one rule for
         the moving statistics

`moments` holds the shared maths (moments, the normalize step, the replicas'
sum) and `layout` the masks and ghost batches. No module here imports a model
tool or the notebook; private Keras goes through keras_bn/_keras_compat.py.
"""
