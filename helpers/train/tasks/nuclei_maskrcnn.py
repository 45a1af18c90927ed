"""Our Model Garden task, registered with ``task_factory`` for its config
(:class:`~helpers.train.configs.nuclei_maskrcnn.NucleiTask`), as ``official/vision/tasks/maskrcnn.py``
registers ``MaskRCNNTask``: ``task_factory.get_task(cfg.task)`` builds it.

It is Model Garden's ``MaskRCNNTask`` with training data read from instance maps
(:mod:`helpers.train.instance_map_input`: the targets of Model Garden's parser, made faster), and weights converted from torchvision read
and kept as they were converted; model, losses and train step are the library's.
"""
from __future__ import annotations

import tf_keras
from official.common import dataset_fn as dataset_fn_lib
from official.core import task_factory
from official.vision.dataloaders import input_reader, maskrcnn_input
from official.vision.tasks import maskrcnn as mg_maskrcnn

from helpers.train import instance_map_input, torch_convert, torch_resnet, torchvision_ops  # noqa: F401 (resnet_torch)
from helpers.train.config import task_field
from helpers.train.configs.nuclei_maskrcnn import NucleiTask
from helpers.train.train_input import ListedFilesReader, WindowDecoder


@task_factory.register_task_cls(NucleiTask)
class NucleiMaskRCNNTask(mg_maskrcnn.MaskRCNNTask):
    """Model Garden's MaskRCNNTask; training data read from instance maps, and
    weights converted from torchvision (:mod:`helpers.train.torch_convert`) read and kept as
    they were converted."""

    def build_model(self):
        """Model Garden's, computing as torchvision's when the config says so
        (:mod:`helpers.train.torchvision_ops`), with the added norms held."""
        model = super().build_model()
        if torchvision_ops.uses_torchvision_ops(self.task_config.model):
            model = torchvision_ops.as_torchvision(model, self.task_config.model)
            images = tf_keras.Input(self.task_config.model.input_size)  # built as Model Garden builds it
            _ = model(images, image_shape=tf_keras.layers.Input([2]), training=False)
        if task_field(self.task_config, "identity_norms"):
            for norm in torch_convert.added_norms(model):
                norm.trainable = False  # inference mode: stays the identity torchvision has there
        return model

    def initialize(self, model):
        """Model Garden's, except for a checkpoint converted from torchvision (its
        ``conversion.json`` beside it): a checked partial restore of what it holds."""
        ckpt = torch_convert.converted_prefix(self.task_config.init_checkpoint)
        if ckpt is None:
            return super().initialize(model)
        modules = self.task_config.init_checkpoint_modules
        torch_convert.restore_transferable(model, ckpt, [modules] if isinstance(modules, str) else list(modules),
                                           self.task_config.model)

    def build_inputs(self, params, input_context=None, dataset_fn=None):
        """Training data: from instance maps (:mod:`helpers.train.instance_map_input`), each image
        decoded once; shards without one (overlapping masks) through :class:`WindowDecoder` and
        Model Garden's parser, as ``MaskRCNNTask.build_inputs`` reads them. Evaluation: Model Garden's."""
        if not params.is_training:
            return super().build_inputs(params, input_context, dataset_fn)
        window, jitters = self._window()
        files = ListedFilesReader(params, dataset_fn=dataset_fn_lib.pick_dataset_fn(params.file_type)
                                  ).get_files(params.input_path)
        shards = instance_map_input.describe_shards(files)
        if dataset_fn is not None or not all(s["instance_map"] for s in shards):
            return self.model_garden_inputs(params, input_context, dataset_fn)
        parser = instance_map_input.InstanceMapParser(
            torchvision_anchors=torchvision_ops.uses_torchvision_ops(self.task_config.model),
            **self.parser_arguments(params))
        cache = 5 * sum(s["pixels"] for s in shards) <= instance_map_input.CACHE_BUDGET_BYTES
        return instance_map_input.training_dataset(
            files, instance_map_input.WindowSampler(window, **jitters), parser.parse_fn(True),
            params.global_batch_size, input_context, seed=params.seed, cache=cache,
            shuffle_buffer=params.shuffle_buffer_size, drop_remainder=params.drop_remainder)

    def _window(self):
        """The training window's (h, w) in native px and the decoder's jitters, from the config.
        A crop of input_size shows input_size / input_scale native px (Profile.scale)."""
        scale = float(task_field(self.task_config, "input_scale"))
        window = [round(v / scale) for v in self.task_config.model.input_size[:2]]
        return window, {"stain_jitter": task_field(self.task_config, "stain_jitter"),
                        "crop_sampling": task_field(self.task_config, "crop_sampling"),
                        "photometric_jitter": task_field(self.task_config, "photometric_jitter")}

    def model_garden_inputs(self, params, input_context=None, dataset_fn=None):
        """Training data the way ``MaskRCNNTask.build_inputs`` reads it: Model Garden's reader and
        parser, each example decoded by :class:`WindowDecoder` (a plane per nucleus)."""
        window, jitters = self._window()
        decoder = WindowDecoder(window=window, **jitters)
        parser_cls = (instance_map_input.TorchvisionAnchorsParser
                      if torchvision_ops.uses_torchvision_ops(self.task_config.model) else maskrcnn_input.Parser)
        parser = parser_cls(**self.parser_arguments(params))
        reader = ListedFilesReader(
            params,
            dataset_fn=dataset_fn or dataset_fn_lib.pick_dataset_fn(params.file_type),
            decoder_fn=decoder.decode,
            combine_fn=input_reader.create_combine_fn(params),
            parser_fn=parser.parse_fn(params.is_training))
        return reader.read(input_context=input_context)

    def parser_arguments(self, params) -> dict:
        """The arguments ``MaskRCNNTask.build_inputs`` gives Model Garden's ``Parser``, all of them."""
        model = self.task_config.model
        return dict(
            output_size=model.input_size[:2],
            min_level=model.min_level,
            max_level=model.max_level,
            num_scales=model.anchor.num_scales,
            aspect_ratios=model.anchor.aspect_ratios,
            anchor_size=model.anchor.anchor_size,
            rpn_match_threshold=params.parser.rpn_match_threshold,
            rpn_unmatched_threshold=params.parser.rpn_unmatched_threshold,
            rpn_batch_size_per_im=params.parser.rpn_batch_size_per_im,
            rpn_fg_fraction=params.parser.rpn_fg_fraction,
            aug_rand_hflip=params.parser.aug_rand_hflip,
            aug_rand_vflip=params.parser.aug_rand_vflip,
            aug_scale_min=params.parser.aug_scale_min,
            aug_scale_max=params.parser.aug_scale_max,
            aug_type=params.parser.aug_type,
            skip_crowd_during_training=params.parser.skip_crowd_during_training,
            max_num_instances=params.parser.max_num_instances,
            include_mask=model.include_mask,
            outer_boxes_scale=model.outer_boxes_scale,
            mask_crop_size=params.parser.mask_crop_size,
            dtype=params.dtype,
        )
