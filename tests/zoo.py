"""A test bed of real networks with batch normalization, built offline with random weights.

Every family of keras.applications that has batch normalization; every
keras-hub model that has it and builds offline from arguments: its vision
backbones (batch norms inside custom keras-hub layers, nested Functional
backbones and keras.Sequential heads included) and one task of each kind that
has batch norms (an image classifier, an image segmenter, an object detector);
each at the smallest size its constructor takes. And hand-written models, as
users write them (``HANDWRITTEN``): custom blocks that keep their sub-layers
in lists and dicts, branch on ``training`` in Python, hold a weight of their
own beside a batch norm or nest another custom block, and a subclassed
keras.Model. So folding, conversion, freezing, recalibration and the per-layer
statistics can be tested on networks nobody here wrote. Nothing is
downloaded: keras.applications are built with ``weights=None`` and keras-hub
models from constructor arguments, never ``from_preset``.

Use::

    from zoo import MODELS, build, sample_input

    model = build("keras_hub.ResNetBackbone(v2)", dtype="float32", seed=0)
    x = sample_input(model, batch=2, seed=0)
    model(x, training=False)

``build`` draws moving statistics and affine weights for every batch norm, at
any depth, so that a test cannot pass because gamma = 1, beta = 0, mean = 0 and
variance = 1 make a batch norm the identity.

Inputs (``sample_input``):

- keras.applications that preprocess inside the graph (EfficientNet,
  EfficientNetV2, MobileNetV3 with its default ``include_preprocessing=True``):
  raw pixels, uniform in [0, 255].
- the other keras.applications: uniform [0, 255] pixels passed through the
  family's own ``preprocess_input`` ("caffe" mode for ResNet50: BGR minus the
  ImageNet mean, about [-124, 152]; "torch" mode for DenseNet: about [-2.1, 2.6];
  "tf" mode, [-1, 1], for the others), which is what these networks see.
- keras-hub models: standard normal, what their image converters produce
  (the task model's preprocessor is not part of its graph: ``model(x)`` does
  not run it, only ``predict``/``fit`` do).
- hand-written models: standard normal, 16x16 (the subclassed model, which
  has no Input, at the shape it was built on).

Models, inputs, batch norms and times. BN: keras.layers.BatchNormalization
layers at any depth; custom: how many of those no Functional or Sequential
graph lists (``custom_batch_norm_layers``: held by custom keras-hub layers, by
Sequentials inside them, by the hand-written blocks or by a subclassed model),
which a tool walking only ``model.layers`` misses.
Seconds for ``build`` / one ``model(x, training=False)`` / one
``model(x, training=True)`` on 2 samples, eager, first calls, all models in one
process per backend in this order, on 2 CPU cores shared with other jobs (load
average 6 to 7 during the runs: read them as upper bounds)::

    model                                      side  BN  custom  tensorflow       jax                torch
    keras.applications.DenseNet121               32 121    0     0.9/0.3/0.4  23.5/31.8/15.9    5.3/1.2/2.1
    keras.applications.EfficientNetB0            32  49    0     1.8/0.3/0.3  44.1/24.7/9.5     1.9/0.5/0.7
    keras.applications.EfficientNetV2B0          32  59    0     2.4/0.3/0.3  21.9/4.2/1.8      2.6/1.0/1.3
    keras.applications.InceptionV3               75  94    0     1.9/0.3/0.4  35.1/6.7/2.6      1.7/0.9/1.5
    keras.applications.InceptionResNetV2         75 204    0     4.5/0.5/0.4  25.2/7.4/2.4      5.5/7.2/3.4
    keras.applications.MobileNet                 32  27    0     0.2/0.1/0.0   8.8/2.1/0.6      0.3/0.7/0.4
    keras.applications.MobileNetV2               32  52    0     0.3/0.1/0.1  14.8/3.3/0.5      0.5/0.6/1.1
    keras.applications.MobileNetV3Small          32  34    0     0.3/0.1/0.1  27.3/11.4/3.2     0.3/0.7/0.6
    keras.applications.MobileNetV3Large          32  46    0     0.4/0.1/0.1  14.3/5.2/1.0      0.7/0.8/1.2
    keras.applications.NASNetMobile              32 192    0     1.8/0.3/0.3  40.0/21.9/5.2     fails (below)
    keras.applications.ResNet50                  32  53    0     0.5/0.2/0.2  10.9/3.7/1.2      1.6/0.9/1.7
    keras.applications.ResNet50V2                32  49    0     0.7/0.2/0.2   0.8/3.2/0.5      1.6/0.9/0.7
    keras.applications.Xception                  71  40    0     0.6/0.2/0.1   6.3/8.6/2.8      0.7/2.9/0.2
    keras_hub.ResNetBackbone(v1)                 32   3    0     0.8/0.0/0.0   1.2/0.1/0.0      0.9/0.0/0.1
    keras_hub.ResNetBackbone(v2)                 32   3    0     0.0/0.0/0.0   0.0/0.3/0.0      0.0/0.1/0.1
    keras_hub.ResNetBackbone(vd)                 32  11    0     0.1/0.0/0.0  11.8/1.9/0.5      0.1/0.2/0.2
    keras_hub.DenseNetBackbone                   32   7    0     0.1/0.0/0.0   4.6/2.9/0.5      0.0/0.1/0.1
    keras_hub.CSPNetBackbone                     32  13    0     0.1/0.0/0.0   7.7/4.2/1.0      0.0/0.1/0.1
    keras_hub.MobileNetBackbone                  32  10    9     0.2/0.1/0.1   7.2/3.0/0.7      0.1/0.2/0.1
    keras_hub.EfficientNetBackbone               32   8    6     0.1/0.0/0.0  12.6/1.5/0.0      0.2/0.1/0.1
    keras_hub.XceptionBackbone                   32   4    0     0.0/0.0/0.0   0.6/1.5/1.2      0.0/0.1/0.1
    keras_hub.HGNetV2Backbone                    32  13   13     0.1/0.1/0.0  12.1/5.2/0.0      0.0/0.2/0.2
    keras_hub.MobileNetV5Backbone(batch_norm)    32  11   11     0.1/0.1/0.0  17.2/1.9/0.0      0.0/0.2/0.2
    keras_hub.DeepLabV3Backbone                  32  16    5     0.3/0.1/0.1   4.5/5.6/0.0      0.2/0.4/0.4
    keras_hub.RetinaNetBackbone                  32  18    6     0.2/0.1/0.1   3.4/3.1/0.4      0.6/0.6/0.6
    keras_hub.BASNetBackbone                     32  54    1     0.8/0.4/0.5   9.4/16.6/1.9     1.9/2.7/3.9
    keras_hub.SegFormerBackbone                  32   1    0     1.0/0.1/0.0  12.3/14.3/8.4     0.2/0.8/0.7
    keras_hub.ResNetImageClassifier              32   3    0     0.1/0.0/0.0   1.0/0.1/0.0      0.1/0.2/0.2
    keras_hub.ResNetImageClassifier(preprocessor) 32  3    0     0.1/0.0/0.0   0.0/0.0/0.0      0.1/0.2/0.2
    all 29 (28 on torch)                                          29 s          637 s             74 s
    -- added later, measured in a process of their own (load average 1 to 2):
    keras_hub.DFineBackbone                      32  42   40     1.2/0.5/0.2  27.4/19.5/1.5     4.9/0.9/1.1
    keras_hub.DeepLabV3ImageSegmenter            32  16    5     0.2/0.1/0.0   2.4/3.7/0.5      0.4/0.6/0.7
    keras_hub.RetinaNetObjectDetector            32  18    6     0.3/0.1/0.1   2.2/1.8/0.2      0.8/1.1/0.9
    handwritten.ListDictBlock                    16   5    4     0.1/0.0/0.0   0.7/0.2/0.0      0.0/0.0/0.0
    handwritten.DropPathBlock                    16   3    2     0.0/0.0/0.0   0.0/0.0/0.3      0.0/0.0/0.0
    handwritten.LayerScaleBlock                  16   3    2     0.1/0.0/0.0   0.1/0.0/0.0      0.0/0.1/0.1
    handwritten.NestedBlock                      16   5    4     0.1/0.0/0.0   0.0/0.0/0.0      0.0/0.1/0.1
    handwritten.SubclassedNet                    16   3    3     0.1/0.0/0.0   0.3/0.0/0.0      0.2/0.1/0.1
    the 8 added                                                    3 s           61 s              12 s

The first keras-hub entry of each process includes importing keras_hub (about
0.8 s on TensorFlow; DFineBackbone's 4.9 s on PyTorch includes it). On
TensorFlow and PyTorch every model builds in under 6 s. On JAX building is the
slow part: each new variable shape compiles its initializer (drawing the batch
norms' values, ``randomize_batch_norms``, takes under 0.1 s), so the times
depend on what the process built before: ResNet50V2 takes 0.8 s right after
ResNet50, while MobileNetV2 or ResNet50 alone in a fresh process take 16 to 18
s to construct. (``jax.disable_jit()`` around the constructor makes it slower,
about 30 s.) Keep JAX runs to the small keras-hub backbones or one application.

The batch norms outside every graph: MobileNetBackbone's DepthwiseConvBlock,
InvertedResidualBlock and ConvBnActBlock; EfficientNetBackbone's CBABlock,
FusedMBConvBlock and MBConvBlock; all of HGNetV2's (HGNetV2ConvLayer in the
embedder and the stages) and MobileNetV5's (edge residual, universal inverted
residual, stem ConvNormAct); DeepLabV3's SpatialPyramidPooling (keras.Sequential
branches inside a custom layer); RetinaNet's FeaturePyramid (three of its six,
``output_norm_P3`` to ``P5``, are never called: keras-hub applies the output
norms only to levels above the backbone's, none at ``max_level=5``, so changing
them changes no output); and in BASNet, the
image encoder's own ``conv1_bn``: BASNet keeps the whole encoder as an
attribute but calls only its residual stacks, so that batch norm is off the
computation path (changing its statistics leaves every output as it was),
though it has inbound nodes in the encoder's own graph. In DFineBackbone, all
but its two input projections' (``encoder_input_proj_bn_*``, in its graph):
its HGNetV2's and the hybrid encoder's DFineConvNormLayers (alone and inside
its CSP, RepVGG, feature-aggregation and SCDown blocks). DeepLabV3ImageSegmenter and RetinaNetObjectDetector add none to their
backbones'. In the hand-written models, every batch norm but the Functional
models' stem one; all three of SubclassedNet's.

Known failures and left-outs (none hidden; ``BACKEND_FAILURES`` holds each
model that fails to build on the running backend, with its error, and
``MODELS`` leaves it out there; ``build`` of it raises RuntimeError):

- keras.applications.NASNetMobile on PyTorch: Keras refuses it ("not available
  with the torch backend at this time due to an outstanding bug"). It builds
  and runs on TensorFlow and JAX.
- keras_hub.MobileNetV5Backbone with its default ``norm_layer="rms_norm"`` has
  no batch norm at all; it is here with ``norm_layer="batch_norm"``.
- Tasks: one of each kind with batch norms. The other image classifiers
  (CSPNet, DenseNet, EfficientNet, HGNetV2, MobileNet, MobileNetV5, Xception),
  segmenters (BASNet, SegFormer) and DFineObjectDetector add no batch norm to
  their backbone's, which are here. The one depth estimator,
  DepthAnythingDepthEstimator (a DINOv2 and a DPT head), has no batch norm;
  neither have SAM's and SAM3's segmenters. So no depth estimator is here.
- Other keras-hub backbones (ViT, ViTDet, DeiT, DINOv2, DINOv3, MiT, Swin, VGG,
  SAM, CLIP, SigLIP...) have no batch norm; Gemma3n's vision encoder is a
  MobileNetV5Backbone, here on its own.
- DFineBackbone builds at 32x32 with feature strides 8 and 16 (4x4 and 2x2
  maps, 20 anchors) and 4 queries; its HGNetV2 returns both of its stages
  (``out_features``), the maps D-FINE reads.
- InceptionV3 and InceptionResNetV2 refuse inputs under 75 pixels, Xception
  under 71; every other application builds and runs at 32 (NASNetMobile too).
"""

import keras
import numpy as np

BN = keras.layers.BatchNormalization

# ---------------------------------------------------------------------------
# keras.applications
# ---------------------------------------------------------------------------

# Smallest input side each accepts among 32..75 (found by trying every size from
# 32 up): the constructors raise "Input size must be at least 75x75" (Inception)
# and "at least 71x71" (Xception); every other family, NASNetMobile included,
# builds and runs at 32.
APPLICATION_SIZES = {
    "DenseNet121": 32,
    "EfficientNetB0": 32,
    "EfficientNetV2B0": 32,
    "InceptionV3": 75,
    "InceptionResNetV2": 75,
    "MobileNet": 32,
    "MobileNetV2": 32,
    "MobileNetV3Small": 32,
    "MobileNetV3Large": 32,
    "NASNetMobile": 32,
    "ResNet50": 32,
    "ResNet50V2": 32,
    "Xception": 71,
}

# The module of keras.applications whose preprocess_input feeds each family;
# None: the network preprocesses raw [0, 255] pixels itself.
_APPLICATION_PREPROCESS = {
    "DenseNet121": "densenet",
    "EfficientNetB0": None,
    "EfficientNetV2B0": None,
    "InceptionV3": "inception_v3",
    "InceptionResNetV2": "inception_resnet_v2",
    "MobileNet": "mobilenet",
    "MobileNetV2": "mobilenet_v2",
    "MobileNetV3Small": None,
    "MobileNetV3Large": None,
    "NASNetMobile": "nasnet",
    "ResNet50": "resnet50",
    "ResNet50V2": "resnet_v2",
    "Xception": "xception",
}


def _application(family):
    """Returns a zero-argument builder of keras.applications.<family> with random weights."""
    size = APPLICATION_SIZES[family]

    def builder():
        return getattr(keras.applications, family)(
            weights=None,
            input_shape=(size, size, 3),
            classes=10,
            classifier_activation=None,
            **_application_name(family),
        )

    builder.__name__ = f"build_{family}"
    builder.__doc__ = (
        f"keras.applications.{family}(weights=None, input_shape=({size}, {size}, 3), "
        "classes=10, classifier_activation=None)"
    )
    return builder


APPLICATIONS = {
    "keras.applications." + family: _application(family) for family in APPLICATION_SIZES
}

# ---------------------------------------------------------------------------
# keras-hub
# ---------------------------------------------------------------------------

# The smallest arguments each constructor takes (checked against the source in
# keras_hub/src/models/<family>/): ResNetBackbone wants the first stack at 64
# filters; the others take any width.
_RESNET_SMALL = {
    "input_conv_filters": [64],
    "input_conv_kernel_sizes": [7],
    "stackwise_num_filters": [64],
    "stackwise_num_blocks": [1],
    "stackwise_num_strides": [1],
    "block_type": "basic_block",
}

_MOBILENETV5_SMALL = {
    "stackwise_block_types": [["er"], ["uir", "uir"]],
    "stackwise_num_blocks": [1, 2],
    "stackwise_num_filters": [[16], [24, 24]],
    "stackwise_strides": [[2], [2, 1]],
    "stackwise_act_layers": [["relu"], ["relu", "relu"]],
    "stackwise_exp_ratios": [[4.0], [4.0, 4.0]],
    "stackwise_se_ratios": [[0.0], [0.0, 0.0]],
    "stackwise_dw_kernel_sizes": [[0], [3, 3]],
    "stackwise_dw_start_kernel_sizes": [[0], [3, 0]],
    "stackwise_dw_end_kernel_sizes": [[0], [0, 3]],
    "stackwise_exp_kernel_sizes": [[3], [0, 0]],
    "stackwise_pw_kernel_sizes": [[1], [0, 0]],
    "stackwise_num_heads": [[0], [0, 0]],
    "stackwise_key_dims": [[0], [0, 0]],
    "stackwise_value_dims": [[0], [0, 0]],
    "stackwise_kv_strides": [[0], [0, 0]],
    "stackwise_use_cpe": [[False], [False, False]],
    "stem_size": 16,
    "num_features": 32,
    "use_msfa": False,
}


def _hub():
    import keras_hub

    return keras_hub


def _resnet_v1():
    """ResNetBackbone, one basic block (post-activation, ResNet v1), 32x32."""
    return _hub().models.ResNetBackbone(
        **_RESNET_SMALL, image_shape=(32, 32, 3), name=_model_name("keras_hub.ResNetBackbone(v1)")
    )


def _resnet_v2():
    """ResNetBackbone, one basic block, use_pre_activation=True (ResNet v2), 32x32."""
    return _hub().models.ResNetBackbone(
        **_RESNET_SMALL,
        use_pre_activation=True,
        image_shape=(32, 32, 3),
        name=_model_name("keras_hub.ResNetBackbone(v2)"),
    )


def _resnet_vd():
    """ResNetBackbone, ResNet-vd: three stem convolutions, a pooled shortcut, 32x32."""
    return _hub().models.ResNetBackbone(
        input_conv_filters=[8, 8, 16],
        input_conv_kernel_sizes=[3, 3, 3],
        stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="bottleneck_block_vd",
        image_shape=(32, 32, 3),
        name=_model_name("keras_hub.ResNetBackbone(vd)"),
    )


def _densenet():
    """DenseNetBackbone, two stacks of one dense block, growth rate 8, 32x32."""
    return _hub().models.DenseNetBackbone(
        stackwise_num_repeats=[1, 1],
        growth_rate=8,
        image_shape=(32, 32, 3),
        name=_model_name("keras_hub.DenseNetBackbone"),
    )


def _cspnet():
    """CSPNetBackbone, CSP-Darknet stages of one dark block, 8 and 16 filters, 32x32."""
    return _hub().models.CSPNetBackbone(
        stem_filters=8,
        stem_kernel_size=3,
        stem_strides=1,
        stackwise_depth=[1, 1],
        stackwise_strides=2,
        stackwise_num_filters=[8, 16],
        block_type="dark_block",
        stage_type="csp",
        down_growth=True,
        bottle_ratio=(0.5, 1.0),
        block_ratio=(1.0, 0.5),
        expand_ratio=(2.0, 1.0),
        stem_padding="same",
        image_shape=(32, 32, 3),
        name=_model_name("keras_hub.CSPNetBackbone"),
    )


def _mobilenet():
    """MobileNetBackbone (v3 style), one depthwise block and two inverted residual stacks, 32x32."""
    return _hub().models.MobileNetBackbone(
        stackwise_expansion=[[16], [32]],
        stackwise_num_blocks=[1, 1],
        stackwise_num_filters=[[8], [16]],
        stackwise_kernel_size=[[3], [3]],
        stackwise_num_strides=[[2], [1]],
        stackwise_se_ratio=[[None], [0.25]],
        stackwise_activation=[["relu"], ["hard_swish"], ["hard_swish"]],
        stackwise_padding=[[1], [1]],
        output_num_filters=32,
        depthwise_filters=8,
        depthwise_stride=2,
        depthwise_residual=False,
        squeeze_and_excite=0.5,
        last_layer_filter=32,
        input_num_filters=8,
        input_activation="hard_swish",
        output_activation="hard_swish",
        image_shape=(32, 32, 3),
        name=_model_name("keras_hub.MobileNetBackbone"),
    )


def _efficientnet():
    """EfficientNetBackbone, one block of each custom type: CBABlock, FusedMBConvBlock, MBConvBlock, 32x32."""
    return _hub().models.EfficientNetBackbone(
        stackwise_kernel_sizes=[3, 3, 3],
        stackwise_num_repeats=[1, 1, 1],
        stackwise_input_filters=[8, 8, 8],
        stackwise_output_filters=[8, 8, 16],
        stackwise_expansion_ratios=[1, 4, 4],
        stackwise_squeeze_and_excite_ratios=[0.0, 0.0, 0.25],
        stackwise_strides=[1, 2, 2],
        stackwise_block_types=["cba", "fused", "unfused"],
        stackwise_force_input_filters=[0] * 3,
        stackwise_nores_option=[False] * 3,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        num_features=32,
        input_shape=(32, 32, 3),
        name=_model_name("keras_hub.EfficientNetBackbone"),
    )


def _xception():
    """XceptionBackbone, two blocks of 8-16 and 32-32 filters, the second pooled, 32x32."""
    return _hub().models.XceptionBackbone(
        stackwise_conv_filters=[[8, 16], [32, 32]],
        stackwise_pooling=[False, True],
        image_shape=(32, 32, 3),
        name=_model_name("keras_hub.XceptionBackbone"),
    )


def _hgnetv2():
    """HGNetV2Backbone, learnable affine blocks, a standard and a light stage of depth 1, 32x32."""
    return _hub().models.HGNetV2Backbone(
        depths=[1, 1],
        embedding_size=16,
        hidden_sizes=[32, 64],
        stem_channels=[3, 8, 16],
        hidden_act="relu",
        use_learnable_affine_block=True,
        stackwise_stage_filters=[[16, 8, 32, 1, 1, 3], [32, 16, 64, 1, 1, 3]],
        apply_downsample=[False, True],
        use_lightweight_conv_block=[False, True],
        image_shape=(32, 32, 3),
        name=_model_name("keras_hub.HGNetV2Backbone"),
    )


def _mobilenetv5():
    """MobileNetV5Backbone with norm_layer="batch_norm": an edge residual and two universal inverted residuals, 32x32."""
    return _hub().models.MobileNetV5Backbone(
        **_MOBILENETV5_SMALL,
        norm_layer="batch_norm",
        image_shape=(32, 32, 3),
        name=_model_name("keras_hub.MobileNetV5Backbone(batch_norm)"),
    )


def _small_resnet_encoder(stacks=3, image_shape=(None, None, 3)):
    """A ResNetBackbone of `stacks` one-block stacks of 64 filters, for the composite backbones."""
    return _hub().models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64] * stacks,
        stackwise_num_blocks=[1] * stacks,
        stackwise_num_strides=[1] + [2] * (stacks - 1),
        block_type="basic_block",
        image_shape=image_shape,
    )


def _deeplab_v3(name="keras_hub.DeepLabV3Backbone"):
    """DeepLabV3Backbone around a 3-stack ResNet: spatial pyramid pooling (custom layer) and a decoder, 32x32."""
    return _hub().models.DeepLabV3Backbone(
        image_encoder=_small_resnet_encoder(3),
        spatial_pyramid_pooling_key="P4",
        low_level_feature_key="P2",
        upsampling_size=4,
        dilation_rates=[1, 2],
        projection_filters=8,
        image_shape=(32, 32, 3),
        **_name_argument(name),
    )


def _retinanet(name="keras_hub.RetinaNetBackbone"):
    """RetinaNetBackbone around a 4-stack ResNet (P2..P5), feature pyramid P3..P5 with use_fpn_batch_norm=True, 32x32."""
    return _hub().models.RetinaNetBackbone(
        image_encoder=_small_resnet_encoder(4),
        min_level=3,
        max_level=5,
        use_p5=False,
        use_fpn_batch_norm=True,
        image_shape=(32, 32, 3),
        **_name_argument(name),
    )


def _basnet():
    """BASNetBackbone around a 4-stack ResNet (its minimum), projection_filters=64 (the ResNet blocks it reuses take 64): keras.Sequential prediction and refinement heads, 32x32."""
    return _hub().models.BASNetBackbone(
        image_encoder=_small_resnet_encoder(4),
        num_classes=1,
        projection_filters=64,
        image_shape=(32, 32, 3),
        name=_model_name("keras_hub.BASNetBackbone"),
    )


def _segformer():
    """SegFormerBackbone around a 2-stage MiT encoder (widths 4 and 8): a keras.Sequential conv-BN-ReLU fuse, 32x32."""
    hub = _hub()
    encoder = hub.models.MiTBackbone(
        layerwise_depths=[1, 1],
        num_layers=2,
        layerwise_num_heads=[1, 2],
        layerwise_sr_ratios=[2, 1],
        max_drop_path_rate=0.0,
        layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2],
        hidden_dims=[4, 8],
        image_shape=(32, 32, 3),
    )
    return hub.models.SegFormerBackbone(
        image_encoder=encoder,
        projection_filters=8,
        name=_model_name("keras_hub.SegFormerBackbone"),
    )


def _resnet_classifier(with_preprocessor):
    """ResNetImageClassifier (10 classes, average pooling) around the v1 ResNetBackbone, 32x32."""
    hub = _hub()
    preprocessor = None
    if with_preprocessor:
        converter = hub.layers.ResNetImageConverter(
            image_size=(32, 32),
            scale=[1 / (255 * s) for s in (0.229, 0.224, 0.225)],
            offset=[-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))],
        )
        preprocessor = hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    backbone = hub.models.ResNetBackbone(**_RESNET_SMALL, image_shape=(32, 32, 3))
    suffix = "(preprocessor)" if with_preprocessor else ""
    return hub.models.ResNetImageClassifier(
        backbone=backbone,
        num_classes=10,
        preprocessor=preprocessor,
        name=_model_name("keras_hub.ResNetImageClassifier" + suffix),
    )


def _dfine():
    """DFineBackbone around a 2-stage HGNetV2 (strides 8 and 16): a hybrid encoder of width 8, one decoder layer, 4 queries, 32x32."""
    hub = _hub()
    encoder = hub.models.HGNetV2Backbone(
        depths=[1, 1],
        embedding_size=16,
        hidden_sizes=[32, 64],
        stem_channels=[3, 8, 16],
        hidden_act="relu",
        use_learnable_affine_block=True,
        stackwise_stage_filters=[[16, 8, 32, 1, 1, 3], [32, 16, 64, 1, 1, 3]],
        apply_downsample=[False, True],
        use_lightweight_conv_block=[False, True],
        image_shape=(32, 32, 3),
        out_features=["stage1", "stage2"],
    )
    return hub.models.DFineBackbone(
        backbone=encoder,
        decoder_in_channels=[8, 8],
        encoder_hidden_dim=8,
        num_labels=3,
        num_denoising=0,
        learn_initial_query=False,
        num_queries=4,
        anchor_image_size=(32, 32),
        feat_strides=[8, 16],
        num_feature_levels=2,
        hidden_dim=8,
        encoder_in_channels=[32, 64],
        encode_proj_layers=[1],
        num_attention_heads=1,
        encoder_ffn_dim=8,
        num_encoder_layers=1,
        hidden_expansion=0.5,
        depth_multiplier=0.34,
        eval_idx=-1,
        num_decoder_layers=1,
        decoder_attention_heads=1,
        decoder_ffn_dim=8,
        decoder_n_points=[1, 1],
        lqe_hidden_dim=4,
        num_lqe_layers=1,
        out_features=["stage1", "stage2"],
        image_shape=(32, 32, 3),
        seed=0,
        name=_model_name("keras_hub.DFineBackbone"),
    )


def _deeplab_v3_segmenter():
    """DeepLabV3ImageSegmenter (3 classes) around the DeepLabV3Backbone above, 32x32."""
    return _hub().models.DeepLabV3ImageSegmenter(
        backbone=_deeplab_v3(name=None), num_classes=3, name=_model_name("keras_hub.DeepLabV3ImageSegmenter")
    )


def _retinanet_detector():
    """RetinaNetObjectDetector (3 classes, one conv before each head's logits) around the RetinaNetBackbone above, 32x32."""
    return _hub().models.RetinaNetObjectDetector(
        backbone=_retinanet(name=None),
        num_classes=3,
        pre_logits_num_conv_layers=1,
        name=_model_name("keras_hub.RetinaNetObjectDetector"),
    )


KERAS_HUB = {
    "keras_hub.ResNetBackbone(v1)": _resnet_v1,
    "keras_hub.ResNetBackbone(v2)": _resnet_v2,
    "keras_hub.ResNetBackbone(vd)": _resnet_vd,
    "keras_hub.DenseNetBackbone": _densenet,
    "keras_hub.CSPNetBackbone": _cspnet,
    "keras_hub.MobileNetBackbone": _mobilenet,
    "keras_hub.EfficientNetBackbone": _efficientnet,
    "keras_hub.XceptionBackbone": _xception,
    "keras_hub.HGNetV2Backbone": _hgnetv2,
    "keras_hub.MobileNetV5Backbone(batch_norm)": _mobilenetv5,
    "keras_hub.DeepLabV3Backbone": _deeplab_v3,
    "keras_hub.RetinaNetBackbone": _retinanet,
    "keras_hub.BASNetBackbone": _basnet,
    "keras_hub.SegFormerBackbone": _segformer,
    "keras_hub.DFineBackbone": _dfine,
    "keras_hub.ResNetImageClassifier": lambda: _resnet_classifier(False),
    "keras_hub.ResNetImageClassifier(preprocessor)": lambda: _resnet_classifier(True),
    "keras_hub.DeepLabV3ImageSegmenter": _deeplab_v3_segmenter,
    "keras_hub.RetinaNetObjectDetector": _retinanet_detector,
}

# ---------------------------------------------------------------------------
# Hand-written models
# ---------------------------------------------------------------------------

# Blocks as users write them: sub-layers kept in lists and dicts, keras.ops
# arithmetic, Python branches on `training`, a block's own weight beside its
# batch norm, a block inside a block, and a subclassed keras.Model. Each class
# round-trips its config, so that a tool can rebuild it.
_register = keras.saving.register_keras_serializable(package="keras_bn_zoo")


def _conv(filters, **kwargs):
    """Returns a 3x3 "same" Conv2D without bias, the convolution every hand-written block uses."""
    return keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, **kwargs)


def _build_chain(layers, input_shape, filters):
    """Builds `layers` in turn: the first on `input_shape`, the others on its shape with `filters` channels."""
    for layer in layers:
        layer.build(input_shape)
        input_shape = tuple(input_shape[:-1]) + (filters,)


@_register
class ListDictBlock(keras.layers.Layer):
    """Residual block whose convolutions sit in a list and batch norms in a dict: relu(x + bn(conv(relu(bn(conv(x))))))."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.convs = [_conv(self.filters), _conv(self.filters)]
        self.norms = {"first": BN(), "second": BN()}

    def build(self, input_shape):
        _build_chain([self.convs[0], self.norms["first"], self.convs[1], self.norms["second"]], input_shape, self.filters)

    def call(self, inputs, training=None):
        x = keras.ops.relu(self.norms["first"](self.convs[0](inputs), training=training))
        x = self.norms["second"](self.convs[1](x), training=training)
        return keras.ops.relu(keras.ops.add(inputs, x))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@_register
class DropPathBlock(keras.layers.Layer):
    """Residual block x + drop_path(relu(bn(conv(x)))) whose call() drops the branch only when `training` is true.

    The drop path is a Dropout over whole samples (noise_shape (batch, 1, 1,
    1)), so setting its rate to 0 makes training mode deterministic.
    """

    def __init__(self, filters, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.rate = int(filters), float(rate)
        self.conv = _conv(self.filters)
        self.norm = BN()
        self.drop_path = keras.layers.Dropout(self.rate, noise_shape=(None, 1, 1, 1))

    def build(self, input_shape):
        _build_chain([self.conv, self.norm], input_shape, self.filters)

    def call(self, inputs, training=None):
        x = keras.ops.relu(self.norm(self.conv(inputs), training=training))
        if training:
            x = self.drop_path(x, training=training)
        return inputs + x

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "rate": self.rate}


@_register
class LayerScaleBlock(keras.layers.Layer):
    """Residual block x + gamma * bn(conv(x)) with its own per-channel weight `gamma` (a layer scale), created in build()."""

    def __init__(self, filters, gamma_initializer="ones", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.conv = _conv(self.filters)
        self.norm = BN()

    def build(self, input_shape):
        _build_chain([self.conv, self.norm], input_shape, self.filters)
        self.gamma = self.add_weight(name="gamma", shape=(self.filters,), initializer=self.gamma_initializer)

    def call(self, inputs, training=None):
        return inputs + self.gamma * self.norm(self.conv(inputs), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
        }


@_register
class ConvNormBlock(keras.layers.Layer):
    """relu(bn(conv(x))), the inner block of NestedBlock."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.conv = _conv(self.filters)
        self.norm = BN()

    def build(self, input_shape):
        _build_chain([self.conv, self.norm], input_shape, self.filters)

    def call(self, inputs, training=None):
        return keras.ops.relu(self.norm(self.conv(inputs), training=training))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@_register
class NestedBlock(keras.layers.Layer):
    """bn(x + inner(x)), where `inner` is a ConvNormBlock: a batch norm two custom layers deep, and one a level up."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.inner = ConvNormBlock(self.filters)
        self.norm = BN()

    def build(self, input_shape):
        _build_chain([self.inner, self.norm], input_shape, self.filters)

    def call(self, inputs, training=None):
        return self.norm(inputs + self.inner(inputs, training=training), training=training)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@_register
class SubclassedNet(keras.Model):
    """A subclassed keras.Model: convolutions in a list, batch norms in a dict, two residual steps, a Dense head.

    No build() of its own: Keras builds it by running call() on its input
    shape, which is what most subclassed models rely on.
    """

    def __init__(self, filters=8, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.classes = int(filters), int(classes)
        self.convs = [_conv(self.filters) for _ in range(3)]
        self.norms = {"stem": BN(), "block_0": BN(), "block_1": BN()}
        self.head = keras.layers.Dense(self.classes)

    def call(self, inputs, training=None):
        x = keras.ops.relu(self.norms["stem"](self.convs[0](inputs), training=training))
        for k in range(2):
            x = keras.ops.relu(x + self.norms[f"block_{k}"](self.convs[k + 1](x), training=training))
        return self.head(keras.ops.mean(x, axis=(1, 2)))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "classes": self.classes}


# Hand-written models take 16x16 inputs with 8 channels inside: enough to see
# every block, cheap on every backend.
_HANDWRITTEN_SIDE = 16


def _functional(zoo_name, blocks):
    """Returns a Functional model: conv-BN-relu stem, then `blocks` in order, average pooling, a Dense of 3."""
    inputs = keras.Input((_HANDWRITTEN_SIDE, _HANDWRITTEN_SIDE, 3))
    x = keras.layers.ReLU()(BN()(_conv(8)(inputs)))
    for block in blocks:
        x = block(x)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name=_model_name(zoo_name))


def _subclassed():
    """SubclassedNet, built by a call on one batch of zeros (a subclassed model has no Input)."""
    model = SubclassedNet(name=_model_name("handwritten.SubclassedNet"))
    model(np.zeros((1, _HANDWRITTEN_SIDE, _HANDWRITTEN_SIDE, 3), "float32"))
    return model


HANDWRITTEN = {
    "handwritten.ListDictBlock": lambda: _functional(
        "handwritten.ListDictBlock", [ListDictBlock(8), ListDictBlock(8)]
    ),
    "handwritten.DropPathBlock": lambda: _functional(
        "handwritten.DropPathBlock", [DropPathBlock(8), DropPathBlock(8)]
    ),
    "handwritten.LayerScaleBlock": lambda: _functional(
        "handwritten.LayerScaleBlock",
        [LayerScaleBlock(8, keras.initializers.RandomUniform(0.5, 1.5)) for _ in range(2)],
    ),
    "handwritten.NestedBlock": lambda: _functional("handwritten.NestedBlock", [NestedBlock(8), NestedBlock(8)]),
    "handwritten.SubclassedNet": _subclassed,
}

# Models that fail to build on a backend: {backend: {name: error}}. They stay in
# APPLICATIONS / KERAS_HUB and are left out of MODELS on that backend.
_KNOWN_FAILURES = {
    "tensorflow": {},
    "jax": {},
    "torch": {
        # Raised by keras.applications.NASNetMobile itself, before building anything.
        "keras.applications.NASNetMobile": "ValueError: NASNetMobile is not available with the "
        "torch backend at this time due to an outstanding bug. If interested, please open a PR.",
    },
}
BACKEND_FAILURES = dict(_KNOWN_FAILURES.get(keras.backend.backend(), {}))

MODELS = {
    name: builder
    for name, builder in {**APPLICATIONS, **KERAS_HUB, **HANDWRITTEN}.items()
    if name not in BACKEND_FAILURES
}

# ---------------------------------------------------------------------------
# Building, batch norms, inputs
# ---------------------------------------------------------------------------


def _model_name(zoo_name):
    """Returns the Keras model name of a zoo entry: "zoo_" and the name in [A-Za-z0-9_]."""
    return "zoo_" + "".join(c if c.isalnum() else "_" for c in zoo_name).strip("_")


def _name_argument(zoo_name):
    """Returns the name argument of a zoo entry's model: none for an unnamed part of another entry (None)."""
    return {} if zoo_name is None else {"name": _model_name(zoo_name)}


def _application_name(family):
    """Returns the name argument of an application: none for EfficientNetV2, whose name picks its blocks."""
    return {} if family in _DEFAULT_NAMES else {"name": _model_name("keras.applications." + family)}


# keras.applications.EfficientNetV2* look their block arguments up by the model's
# name (name="efficientnetv2-b0"), so they keep their own.
_DEFAULT_NAMES = {"EfficientNetV2B0": "efficientnetv2-b0"}

_ZOO_BY_MODEL_NAME = {_model_name(name): name for name in {**APPLICATIONS, **KERAS_HUB, **HANDWRITTEN}}
_ZOO_BY_MODEL_NAME.update(
    {model_name: "keras.applications." + family for family, model_name in _DEFAULT_NAMES.items()}
)


def zoo_name(model):
    """Returns the zoo name a model was built under (from its Keras name), or None."""
    return _ZOO_BY_MODEL_NAME.get(getattr(model, "name", None))


def walk_layers(model):
    """Returns every layer reachable from `model`, itself included, each once, parents first.

    Walks the attributes (``vars``) of each layer: a value that is a Layer, or a
    list, tuple or dict holding Layers (at any depth), is visited. This reaches
    layers that custom keras-hub blocks keep as attributes, nested Functional
    and Sequential models, and keras.Sequential heads, without private helpers.
    """
    seen, order = set(), []

    def visit(obj):
        if isinstance(obj, keras.layers.Layer):
            if id(obj) in seen:
                return
            seen.add(id(obj))
            order.append(obj)
            for value in vars(obj).values():
                visit(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                visit(value)
        elif isinstance(obj, dict):
            for value in obj.values():
                visit(value)

    visit(model)
    return order


def batch_norm_layers(model, cls=BN):
    """Returns the `cls` instances (keras BatchNormalization by default) in `model`, at any depth.

    Ordered as their moving means appear in ``model.variables`` (the same order
    on every backend), then any not found there, in walking order.
    """
    found = [layer for layer in walk_layers(model) if isinstance(layer, cls)]
    position = {id(v): k for k, v in enumerate(model.variables)}
    end = len(position)

    def key(item):
        k, layer = item
        mean = getattr(layer, "moving_mean", None)
        return (position.get(id(mean), end), k)

    return [layer for _, layer in sorted(enumerate(found), key=key)]


def custom_batch_norm_layers(model, cls=BN):
    """Returns the batch norms of `model` that its graphs do not list.

    A graph is the top model's ``.layers`` when it is Functional or Sequential,
    recursing into the Functional and Sequential models among them and nothing
    else. What is left is held by custom (subclassed) layers, e.g. keras-hub's
    MBConvBlock, HGNetV2ConvLayer, or the keras.Sequential branches inside
    DeepLabV3's SpatialPyramidPooling: a tool that only walks ``.layers`` of
    nested models does not see them.
    """
    from keras.src.models.functional import Functional

    graph, stack = set(), [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, (Functional, keras.Sequential)):
            for sub in layer.layers:
                if id(sub) not in graph:
                    graph.add(id(sub))
                    stack.append(sub)
    return [layer for layer in batch_norm_layers(model, cls) if id(layer) not in graph]


def randomize_batch_norms(model, seed=0):
    """Draws moving statistics and affine weights for every batch norm in `model`.

    moving_mean ~ N(0, 0.1), moving_variance ~ U(0.5, 1.5), gamma ~ U(0.5, 1.5),
    beta ~ N(0, 0.1), from one numpy Generator seeded by `seed`, layer by layer
    in ``batch_norm_layers`` order, each assigned in its variable's dtype. A
    batch norm without center or scale skips that draw. Returns the layers.
    """
    rng = np.random.default_rng(seed)
    layers = batch_norm_layers(model)
    for layer in layers:
        draws = (
            ("moving_mean", lambda shape: rng.normal(0.0, 0.1, shape)),
            ("moving_variance", lambda shape: rng.uniform(0.5, 1.5, shape)),
            ("gamma", lambda shape: rng.uniform(0.5, 1.5, shape)),
            ("beta", lambda shape: rng.normal(0.0, 0.1, shape)),
        )
        for attr, draw in draws:
            variable = getattr(layer, attr, None)
            if variable is None:
                continue
            variable.assign(np.asarray(draw(tuple(variable.shape))).astype(variable.dtype))
    return layers


def build(name, dtype="float32", seed=0):
    """Returns the zoo model `name`, built under dtype policy `dtype`, with drawn batch-norm weights.

    Sets ``keras.utils.set_random_seed(seed)`` first, so kernels are the same
    from call to call; the global dtype policy is back to "float32" afterwards
    even when building fails.
    """
    if name not in MODELS:
        if name in BACKEND_FAILURES:
            raise RuntimeError(
                f"{name} does not build on {keras.backend.backend()}: {BACKEND_FAILURES[name]}"
            )
        raise KeyError(f"unknown zoo model {name!r}; known: {sorted(MODELS)}")
    keras.utils.set_random_seed(seed)
    keras.config.set_dtype_policy(dtype)
    try:
        model = MODELS[name]()
    finally:
        keras.config.set_dtype_policy("float32")
    randomize_batch_norms(model, seed)
    return model


def sample_input(model, batch=2, seed=0):
    """Returns a float32 numpy batch for `model`'s single input, in the range it expects.

    Raw [0, 255] pixels for the applications that preprocess inside the graph;
    [0, 255] pixels through the family's ``preprocess_input`` for the other
    applications; standard normal for keras-hub models, the hand-written ones
    and anything not built by this module. A subclassed model, which has no
    Input, takes the shape it was built on (``get_build_config``). Raises
    NotImplementedError for a model with several inputs.
    """
    if getattr(model, "inputs", None) is not None:
        shapes = [tuple(x.shape[1:]) for x in model.inputs]
    else:
        built_on = (model.get_build_config() or {}).get("input_shape")
        shapes = [tuple(built_on[1:])] if built_on and not isinstance(built_on[0], (list, tuple, dict)) else []
    if len(shapes) != 1:
        raise NotImplementedError(f"sample_input handles single-input models; {model.name} has {len(shapes)}")
    shape = shapes[0]
    if any(d is None for d in shape):
        raise NotImplementedError(f"{model.name} has an input of unknown size {shape}")
    rng = np.random.default_rng(seed)
    name = zoo_name(model) or ""
    family = name.removeprefix("keras.applications.") if name.startswith("keras.applications.") else None
    if family is None:
        return rng.standard_normal((batch,) + shape).astype("float32")
    pixels = rng.uniform(0.0, 255.0, (batch,) + shape).astype("float32")
    module = _APPLICATION_PREPROCESS[family]
    if module is None:
        return pixels
    preprocess = getattr(keras.applications, module).preprocess_input
    return np.asarray(keras.ops.convert_to_numpy(preprocess(pixels))).astype("float32")
