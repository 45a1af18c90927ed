"""Pixel sizes read from what files say (helpers/pixel_size.py)."""
import numpy as np
import pytest
import tifffile
from PIL import Image

from helpers.pixel_size import read_pixel_size, tiff_resolution

RGB = np.zeros((8, 8, 3), np.uint8)
APERIO = "Aperio Image Library v12\n46000x32914 (256x256) JPEG/RGB Q=70|AppMag = 40|MPP = 0.2520"


@pytest.mark.parametrize("name, write, um, source", [
    ("tags.tif", lambda p: tifffile.imwrite(p, RGB, **tiff_resolution(0.5)), 0.5, "TIFF resolution tags"),
    ("inch.tif", lambda p: tifffile.imwrite(p, RGB, resolution=(25400 / 0.25,) * 2, resolutionunit="INCH"),
     0.25, "TIFF resolution tags"),
    ("imagej.tif", lambda p: tifffile.imwrite(p, RGB[..., 0], imagej=True, resolution=(1 / 0.3, 1 / 0.3),
                                              metadata={"unit": "micron"}), 0.3, "ImageJ metadata"),
    ("slide.ome.tif", lambda p: tifffile.imwrite(p, RGB, metadata={"PhysicalSizeX": 0.26, "axes": "YXS"}),
     0.26, "OME-XML"),
    ("slide.svs", lambda p: tifffile.imwrite(p, RGB, description=APERIO), 0.252, "Aperio MPP"),
    ("dense.png", lambda p: Image.fromarray(RGB).save(p, dpi=(25400 / 0.5,) * 2), 0.5, "PNG pixel density"),
])
def test_each_place_a_size_is_written_is_read(tmp_path, name, write, um, source):
    write(tmp_path / name)
    size = read_pixel_size(tmp_path / name)
    assert size.um == pytest.approx(um, rel=1e-3) and size.source == source


@pytest.mark.parametrize("name, write", [
    ("screen.png", lambda p: Image.fromarray(RGB).save(p, dpi=(72, 72))),  # a screen's default, no microscope's
    ("plain.png", lambda p: Image.fromarray(RGB).save(p)),
    ("plain.tif", lambda p: tifffile.imwrite(p, RGB)),
    ("broken.tif", lambda p: p.write_bytes(b"II*\x00garbage")),
])
def test_a_file_that_says_nothing_plausible_gives_unknown(tmp_path, name, write):
    write(tmp_path / name)
    assert read_pixel_size(tmp_path / name).um is None
