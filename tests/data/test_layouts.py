"""Which layout a folder holds, and any of them imported the same way (helpers/data/layouts.py)."""
import pytest

from helpers.data import layouts
from helpers.data.coco_annotations import export_coco
from helpers.data.dataset import DatasetError, open_dataset, read_masks
from helpers.data.imported import ImportOptions
from helpers.data.label_images import export_label_pairs
from helpers.data.qupath_annotations import export_geojson

EXPORTS = {"labels": export_label_pairs, "coco": export_coco, "geojson": export_geojson}



@pytest.mark.parametrize("layout", sorted(EXPORTS))
def test_each_layout_is_told_apart_and_reads_back_to_the_same_nuclei(course, tmp_path, layout):
    mine = EXPORTS[layout](course, tmp_path / "mine")
    assert layouts.detect_layout(mine) == layout
    others = [name for name in EXPORTS if name != layout]
    for other in others:  # named by the user, another layout's reader refuses the folder with its own words
        with pytest.raises(DatasetError):
            layouts.import_dataset(mine, tmp_path / f"as-{other}", ImportOptions(layout=other))
    back = layouts.import_dataset(mine, tmp_path / "back", ImportOptions(layout=layout))
    original, imported = open_dataset(course), open_dataset(back)
    assert imported.train_ids == original.train_ids
    assert [len(read_masks(it)) for it in imported.train] == [len(read_masks(it)) for it in original.train]


def test_the_course_layout_is_read_where_it_is(course, tmp_path):
    assert layouts.detect_layout(course) == "course"
    assert layouts.import_dataset(course, tmp_path / "unused") == course and not (tmp_path / "unused").exists()


def test_an_unknown_layout_name_is_refused(course, tmp_path):
    with pytest.raises(DatasetError, match=r"layout 'csv' is not one of \('course', 'labels', 'coco', 'geojson'\)"):
        layouts.import_dataset(course, tmp_path / "out", ImportOptions(layout="csv"))


def test_another_tools_dataset_json_is_not_taken_for_an_import_record(tmp_path):
    from helpers.data.imported import dataset_pixel_size, read_record

    (tmp_path / "dataset.json").write_text('{"name": "my dataset", "images": ["a.png"]}')
    assert read_record(tmp_path) is None and dataset_pixel_size(tmp_path).um == 0.25  # read as the course data


def test_names_of_other_characters_stay_apart_and_never_empty():
    from helpers.data.imported import safe_name

    assert safe_name("site A/img 1") == "site_A_img_1"
    names = {safe_name(n) for n in ("切片", "切片1", "组织1")}
    assert len(names) == 3 and "" not in names
