"""Our Model Garden task, registered with ``task_factory`` for its config
(:class:`~helpers.train.configs.nuclei_maskrcnn.NucleiTask`), as ``official/vision/tasks/maskrcnn.py``
registers ``MaskRCNNTask``: ``task_factory.get_task(cfg.task)`` builds it.

It is Model Garden's ``MaskRCNNTask`` with training data read through
:class:`~helpers.train.train_input.WindowDecoder`, and weights converted from torchvision read
and kept as they were converted; model, losses and train step are the library's.
"""
from __future__ import annotations

from official.common import dataset_fn as dataset_fn_lib
from official.core import task_factory
from official.vision.dataloaders import input_reader, maskrcnn_input
from official.vision.tasks import maskrcnn as mg_maskrcnn

from helpers.train import torch_convert
from helpers.train.config import task_field
from helpers.train.configs.nuclei_maskrcnn import NucleiTask
from helpers.train.train_input import ListedFilesReader, WindowDecoder


@task_factory.register_task_cls(NucleiTask)
class NucleiMaskRCNNTask(mg_maskrcnn.MaskRCNNTask):
    """Model Garden's MaskRCNNTask; training data decoded through :class:`WindowDecoder`, and
    weights converted from torchvision (:mod:`helpers.train.torch_convert`) read and kept as
    they were converted."""

    def build_model(self):
        model = super().build_model()
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
        if not params.is_training:
            return super().build_inputs(params, input_context, dataset_fn)
        model = self.task_config.model
        # A crop of input_size shows input_size / input_scale native px (Profile.scale).
        scale = float(task_field(self.task_config, "input_scale"))
        decoder = WindowDecoder(window=[round(v / scale) for v in model.input_size[:2]],
                                stain_jitter=task_field(self.task_config, "stain_jitter"),
                                crop_sampling=task_field(self.task_config, "crop_sampling"),
                                photometric_jitter=task_field(self.task_config, "photometric_jitter"))
        # The same Parser, with the same arguments, as MaskRCNNTask.build_inputs.
        parser = maskrcnn_input.Parser(
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
        reader = ListedFilesReader(
            params,
            dataset_fn=dataset_fn or dataset_fn_lib.pick_dataset_fn(params.file_type),
            decoder_fn=decoder.decode,
            combine_fn=input_reader.create_combine_fn(params),
            parser_fn=parser.parse_fn(params.is_training))
        return reader.read(input_context=input_context)
