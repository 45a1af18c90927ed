"""Model Garden's ResNet, padded as torch pads: the backbone for weights converted from torchvision.

TensorFlow's ``'same'`` padding of a strided layer pads ``k - 1 - (in - 1) % s`` pixels, the
larger half at the bottom and right: on the even sizes of a ResNet, a 3x3/2 conv pads one
pixel at the bottom/right only, and its taps are centred on pixels 1, 3, 5... torch pads
``(k - 1) / 2`` on every side, centring them on 0, 2, 4..., where the block's 1x1/2 projection
shortcut samples in both. Weights trained in torch expect torch's alignment, and with TF's the
converted FPN differs from torchvision's by ~40% of its range (tests/train/test_torch_convert.py).

:class:`TorchPaddedResNet` is Model Garden's ``ResNet`` (same layers, same variables, same
checkpoints) whose strided convs and stem max pool pad symmetrically; it is registered with Model
Garden's backbone factory as ``resnet_torch``, configured by the same ``backbones.ResNet`` fields
(``helpers.train.configs.nuclei_maskrcnn.Backbone`` adds the choice). Its output sizes are those
of ``'same'`` padding, for any input size. Model Garden's own ResNet stays the backbone of its
own ImageNet weights and of random ones.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras
from official.modeling import tf_utils
from official.vision.modeling.backbones import factory, resnet
from official.vision.modeling.layers import nn_blocks

BACKBONE_TYPE = "resnet_torch"


def torch_padding(kernel_size: int, dilation: int = 1) -> int:
    """torch's ``padding`` on each side of a conv of odd ``kernel_size``: ``(k - 1) / 2`` taps."""
    return dilation * (kernel_size - 1) // 2


@tf_keras.utils.register_keras_serializable(package="Nuclei")
class TorchPaddedConv2D(tf_keras.layers.Conv2D):
    """A ``Conv2D(padding='same')`` that pads a strided input as torch does: ``(k - 1) / 2`` on
    every side (odd kernels). Unstrided, and for 1x1 kernels, the two paddings are the same."""

    def convolution_op(self, inputs, kernel):
        if self.padding != "same" or max(self.strides) == 1 or max(self.kernel_size) == 1:
            return super().convolution_op(inputs, kernel)
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"{self.name}: torch's symmetric padding needs an odd kernel, not {self.kernel_size}")
        (ph, pw) = (torch_padding(k, d) for k, d in zip(self.kernel_size, self.dilation_rate))
        padded = tf.pad(inputs, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
        return tf.nn.convolution(padded, kernel, strides=list(self.strides), padding="VALID",
                                 dilations=list(self.dilation_rate), data_format=self._tf_data_format,
                                 name=self.__class__.__name__)


def _torch_padded_convs(layer) -> None:
    """Turn each strided 'same' conv that ``layer`` has built into a :class:`TorchPaddedConv2D`
    of the same config (before its first call: no variable exists yet)."""
    for name, sub in list(vars(layer).items()):
        if type(sub) is tf_keras.layers.Conv2D and sub.padding == "same" and max(sub.strides) > 1:
            setattr(layer, name, TorchPaddedConv2D.from_config(sub.get_config()))


@tf_keras.utils.register_keras_serializable(package="Nuclei")
class TorchPaddedBottleneckBlock(nn_blocks.BottleneckBlock):
    """Model Garden's bottleneck block (the stride on the 3x3 conv, as torchvision's v1.5)."""

    def build(self, input_shape):
        super().build(input_shape)
        _torch_padded_convs(self)


@tf_keras.utils.register_keras_serializable(package="Nuclei")
class TorchPaddedResidualBlock(nn_blocks.ResidualBlock):
    """Model Garden's basic block (ResNet-18/34)."""

    def build(self, input_shape):
        super().build(input_shape)
        _torch_padded_convs(self)


_TORCH_BLOCKS = {nn_blocks.BottleneckBlock: TorchPaddedBottleneckBlock,
                 nn_blocks.ResidualBlock: TorchPaddedResidualBlock}


@tf_keras.utils.register_keras_serializable(package="Nuclei")
class TorchPaddedResNet(resnet.ResNet):
    """Model Garden's ResNet (stem v0, as torchvision's) with torch's padding on every strided
    layer: the 7x7/2 stem conv, the 3x3/2 max pool and each group's first strided conv."""

    def __init__(self, model_id: int, stem_type: str = "v0", replace_stem_max_pool: bool = False,
                 resnetd_shortcut: bool = False, **kwargs):
        if stem_type != "v0" or replace_stem_max_pool or resnetd_shortcut:
            raise ValueError("resnet_torch is torchvision's ResNet: stem_type 'v0', no ResNet-D shortcut, "
                             "a max-pooled stem")
        # torch pads its stem max pool with -inf; after a ReLU every value is >= 0, so zeros are the same
        if kwargs.get("activation", "relu") != "relu":
            raise ValueError(f"resnet_torch pads its max pool with zeros: exact after a ReLU only, not "
                             f"{kwargs['activation']!r}")
        super().__init__(model_id, stem_type=stem_type, replace_stem_max_pool=replace_stem_max_pool,
                         resnetd_shortcut=resnetd_shortcut, **kwargs)

    def _stem(self, inputs):
        stem = self._depth_multiplier if self._scale_stem else 1.0
        x = TorchPaddedConv2D(filters=int(64 * stem), kernel_size=7, strides=2, use_bias=False, padding="same",
                              kernel_initializer=self._kernel_initializer,
                              kernel_regularizer=self._kernel_regularizer,
                              bias_regularizer=self._bias_regularizer)(inputs)
        x = self._norm(axis=self._bn_axis, momentum=self._norm_momentum, epsilon=self._norm_epsilon,
                       trainable=self._bn_trainable, synchronized=self._use_sync_bn)(x)
        x = tf_utils.get_activation(self._activation, use_keras_layer=True)(x)
        x = tf_keras.layers.ZeroPadding2D(padding=torch_padding(3))(x)
        return tf_keras.layers.MaxPool2D(pool_size=3, strides=2, padding="valid")(x)

    def _block_group(self, inputs, filters, strides, block_fn, *args, **kwargs):
        return super()._block_group(inputs, filters, strides, _TORCH_BLOCKS[block_fn], *args, **kwargs)


@factory.register_backbone_builder(BACKBONE_TYPE)
def build_torch_padded_resnet(input_specs, backbone_config, norm_activation_config, l2_regularizer=None):
    """Model Garden's ``build_resnet``, for :class:`TorchPaddedResNet` (config ``resnet_torch``)."""
    c = backbone_config.get()
    return TorchPaddedResNet(
        model_id=c.model_id, input_specs=input_specs, depth_multiplier=c.depth_multiplier,
        stem_type=c.stem_type, resnetd_shortcut=c.resnetd_shortcut, replace_stem_max_pool=c.replace_stem_max_pool,
        se_ratio=c.se_ratio, init_stochastic_depth_rate=c.stochastic_depth_drop_rate, scale_stem=c.scale_stem,
        activation=norm_activation_config.activation, use_sync_bn=norm_activation_config.use_sync_bn,
        norm_momentum=norm_activation_config.norm_momentum, norm_epsilon=norm_activation_config.norm_epsilon,
        kernel_regularizer=l2_regularizer, bn_trainable=c.bn_trainable)
