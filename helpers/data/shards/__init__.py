"""TFRecord shards that Model Garden's Mask R-CNN reads, one image per file.

Layout of ``shards_dir``::

    labeled-<organ>-<k:05d>-of-<n:05d>.tfrecord   train + val images (pool "labeled")
    test-<organ>-<k:05d>-of-<n:05d>.tfrecord      test images (no objects)
    index.json                                    lists every shard; "complete": false while
                                                  write_shards runs (each finished shard is
                                                  recorded as it completes), true at the end

One image per file, so any training subset (one organ, a split, hand-picked
images) is just a list of files: ``select_shards``.

* ``index``  index.json: its format, ``load_index``, fingerprints, and every query
  (``select_shards``, ``select_entries``, ``image_ids_of_files``, ``check_shard_files``,
  ``shards_pixel_size``).
* ``reader``  ``read_shard``: a record decoded by Model Garden's decoder or from the instance map.
* ``writer``  the tf.Example of an image (its keys are listed there) and ``write_shards``.
* ``verify``  ``verify_shards``: every shard bit for bit against its source PNGs.

The names below are this package's API (``from helpers.data import shards; shards.write_shards``).
"""
from helpers.data.shards.index import (FORMAT_VERSION, INDEX_NAME, LABELED_SOURCE_ID_BASE, SHARD_SUFFIX,
                                       ShardError, check_shard_files, image_ids_of_files, load_index,
                                       masks_fingerprint, select_entries, select_shards, shards_pixel_size,
                                       source_ids)
from helpers.data.shards.reader import INSTANCE_MAP_KEY, example_boxes, masks_from_instance_map, read_shard
from helpers.data.shards.verify import verify_shards
from helpers.data.shards.writer import WriteReport, make_example, write_shards
from helpers.image_codec import mask_box

__all__ = [
    "FORMAT_VERSION", "INDEX_NAME", "INSTANCE_MAP_KEY", "LABELED_SOURCE_ID_BASE", "SHARD_SUFFIX", "ShardError",
    "WriteReport", "check_shard_files", "example_boxes", "image_ids_of_files", "load_index", "make_example",
    "mask_box", "masks_fingerprint", "masks_from_instance_map", "read_shard", "select_entries", "select_shards",
    "shards_pixel_size", "source_ids", "verify_shards", "write_shards",
]
