"""Notebook 04's one choice record (predictions/choice.json), read by notebooks 05 and 06."""
import json

import pytest

from helpers.infer import rescore
from helpers.infer.choice import (CHOICE_FILE, Choice, ChoiceError, choice_path, load_choice, load_ranker,
                                  save_choice)
from helpers.infer.routing import Router
from helpers.infer.strategy import Merge, Route, Single


def test_the_record_round_trips_with_every_strategy_kind(tmp_path):
    router = Router(default="all", by_organ={"colon": "colon"})
    for choice in [Choice(Single("all+tta", ("all+tta",)), {"all": "all"}, rescore.RECIPES["mask"],
                          ("hflip", "zoom125"), "AP50@100", {"strategies": [{"strategy": "all+tta"}]}),
                   Choice(Route("route", ("all", "colon"), router=router), {"all": "all", "colon": "specialist-colon"}),
                   Choice(Merge("merge-nms", ("heads", "all"), method="nms", iou_threshold=0.4),
                          {"heads": "heads", "all": "final"}, tta=("vflip",), metric="PQ")]:
        save_choice(tmp_path, choice, overwrite=True)
        loaded = load_choice(tmp_path)
        assert loaded == choice and type(loaded.strategy) is type(choice.strategy)
        assert loaded.tables == choice.tables
    assert json.loads(choice_path(tmp_path).read_text())["stages"] == {"heads": "heads", "all": "final"}
    assert choice_path(tmp_path).name == CHOICE_FILE


def test_what_replaying_needs():
    plain = Choice(Single("all", ("all",)), {"all": "all"}, tta=("hflip",))
    assert not plain.uses_tta  # neither a +tta model nor an agreement rescoring
    assert Choice(Single("all+tta", ("all+tta",)), {"all": "all"}).uses_tta
    assert Choice(Single("all", ("all",)), {"all": "all"}, rescore.RECIPES["agreement"]).uses_tta
    with pytest.raises(ChoiceError, match=r"model\(s\) \['heads'\] with no stage"):
        Choice(Merge("m", ("heads+tta", "all")), {"all": "all"})
    assert "rescoring 'none'" in plain.describe() and "all = stage 'all'" in plain.describe()


def test_another_choice_is_kept_unless_overwritten(tmp_path):
    first = Choice(Single("all", ("all",)), {"all": "all"})
    other = Choice(Single("heads", ("heads",)), {"heads": "heads"})
    save_choice(tmp_path, first)
    save_choice(tmp_path, first)  # the same choice again: fine
    with pytest.raises(FileExistsError, match="overwrite_choice = True in the parameters cell") as e:
        save_choice(tmp_path, other)
    assert f"({first.describe()}), not this one ({other.describe()})" in str(e.value)
    assert load_choice(tmp_path) == first
    with pytest.raises(FileExistsError):  # the same strategy with other augmentations is another choice
        save_choice(tmp_path, Choice(Single("all", ("all",)), {"all": "all"}, tta=("hflip",)))
    save_choice(tmp_path, other, overwrite=True)
    assert load_choice(tmp_path) == other


def test_a_missing_older_or_broken_record_says_what_to_do(tmp_path):
    with pytest.raises(ChoiceError, match="choice.json not found: run notebook 04"):
        load_choice(tmp_path)
    assert load_choice(tmp_path, required=False) is None
    (tmp_path / "ensemble.json").write_text('{"name": "all", "kind": "single", "models": ["all"]}')
    with pytest.raises(ChoiceError, match="ensemble.json is notebook 04's choice as an earlier version"):
        load_choice(tmp_path, required=False)
    for text in ("{not json", '{"format": 1, "strategy": {"kind": "vote"}}', '{"strategy": {}}', "[]"):
        choice_path(tmp_path).write_text(text)
        with pytest.raises(ChoiceError, match="choice.json is not a choice record.*run notebook 04"):
            load_choice(tmp_path)


def test_a_learned_rescoring_needs_its_ranking(tmp_path):
    learned = Choice(Single("all", ("all",)), {"all": "all"}, rescore.RECIPES["learned-match50"])
    with pytest.raises(ChoiceError, match="save its ranking"):
        save_choice(tmp_path, learned)
    assert not choice_path(tmp_path).exists()
    assert load_ranker(tmp_path, rescore.RECIPES["mask"]) is None  # a hand recipe needs none


def test_the_exports_rule_is_recorded_and_an_older_record_gains_it(tmp_path):
    from helpers.infer.choice import export_rule
    from helpers.infer.segmentation import DEFAULT_RULE, SegmentationRule

    older = Choice(Single("all", ("all",)), {"all": "all"})
    save_choice(tmp_path, older)
    rule, source = export_rule(load_choice(tmp_path))
    assert rule == DEFAULT_RULE and "run it to choose one on validation" in source
    chosen = Choice(Single("all", ("all",)), {"all": "all"},
                    segmentation=SegmentationRule(min_score=0.3, min_kept=0.25), segmentation_metric="PQ")
    save_choice(tmp_path, chosen)  # the same choice, now with its rule: no overwrite_choice needed
    loaded = load_choice(tmp_path)
    assert loaded == chosen and loaded.segmentation.min_score == 0.3
    assert json.loads(choice_path(tmp_path).read_text())["segmentation"]["metric"] == "PQ"
    assert export_rule(loaded) == (chosen.segmentation, "chosen on validation by PQ in notebook 04")
    override, source = export_rule(loaded, 0.6)
    assert override == SegmentationRule(min_score=0.6, min_kept=0.25) and "set here" in source
    assert "exports: score >= 0.3" in loaded.describe()
    with pytest.raises(FileExistsError):  # another rule is another choice
        save_choice(tmp_path, Choice(Single("all", ("all",)), {"all": "all"},
                                     segmentation=SegmentationRule(min_score=0.4), segmentation_metric="PQ"))
    obj = json.loads(choice_path(tmp_path).read_text())
    obj["segmentation"]["min_score"] = 7
    choice_path(tmp_path).write_text(json.dumps(obj))
    with pytest.raises(ChoiceError, match="is not a choice record"):
        load_choice(tmp_path)


def test_the_stain_normalisation_is_recorded_and_an_older_record_had_none(tmp_path):
    chosen = Choice(Single("all+tta", ("all+tta",)), {"all": "all"}, tta=("hflip",), stain="macenko")
    save_choice(tmp_path, chosen)
    assert load_choice(tmp_path).stain == "macenko" and "stain 'macenko'" in chosen.describe()
    obj = json.loads(choice_path(tmp_path).read_text())
    del obj["stain"]  # written before notebook 04 normalised stains: its predictions were not
    choice_path(tmp_path).write_text(json.dumps(obj))
    assert load_choice(tmp_path).stain == "none"
    with pytest.raises(FileExistsError):  # predictions of other images are another choice
        save_choice(tmp_path, chosen)
    obj["stain"] = "reinhard"
    choice_path(tmp_path).write_text(json.dumps(obj))
    with pytest.raises(ChoiceError, match="is not a choice record"):
        load_choice(tmp_path)


def test_a_choice_naming_an_unknown_stage_is_named_with_its_file(tmp_path):
    save_choice(tmp_path, Choice(Single("all", ("all",)), {"all": "all"}), overwrite=True)
    record = json.loads(choice_path(tmp_path).read_text())
    record["stages"] = {"all": "alll"}
    choice_path(tmp_path).write_text(json.dumps(record))
    with pytest.raises(ChoiceError, match=f"{choice_path(tmp_path)} is not a choice record .*unknown stage 'alll'.*"
                                          "run notebook 04 again"):
        load_choice(tmp_path)
