import json

import pytest

from _answers import SIZE, A, B


@pytest.fixture()
def test_ids(tmp_path):
    # ids deliberately not in file order
    spec = {"images": [{"file_name": f"{B}.png", "id": 7, "height": SIZE[0], "width": SIZE[1]},
                       {"file_name": f"{A}.png", "id": 3, "height": SIZE[0], "width": SIZE[1]}]}
    path = tmp_path / "test_img_ids.json"
    path.write_text(json.dumps(spec))
    return path
