import pytest

from helpers.data.organs import ORGANS, TSS_TABLE, UNKNOWN, UnknownOrganError, organ_of, tss_code

# The TCGA TSS table (GDC code tables) for the codes of the course dataset.
EXPECTED = {
    "18": "lung", "21": "lung", "38": "lung", "49": "lung", "50": "lung",
    "A7": "breast", "AR": "breast", "E2": "breast",
    "B0": "kidney", "HE": "kidney",
    "CH": "prostate", "G9": "prostate",
    "DK": "bladder", "G2": "bladder",
    "KB": "stomach", "RD": "stomach",
    "NH": "colon", "AY": "colon",
}


def test_every_dataset_code_maps_to_its_tcga_organ():
    assert set(TSS_TABLE) == set(EXPECTED)
    for code, organ in EXPECTED.items():
        assert organ_of(f"TCGA-{code}-1234-01Z-00-DX1") == organ, code
    assert set(ORGANS) == set(EXPECTED.values())


def test_real_ids_and_file_names():
    assert organ_of("TCGA-G9-6356-01Z-00-DX1") == "prostate"
    assert organ_of("TCGA-KB-A93J-01A-01-TS1") == "stomach"
    assert organ_of("TCGA-G2-A2EK-01A-02-TSB.png") == "bladder"
    assert organ_of("tcga-ar-a1ak-01z-00-dx1") == "breast"
    assert tss_code("TCGA-50-5931-01Z-00-DX1") == "50"


def test_monuseg_liver_codes_follow_tcga_as_lung():
    # MoNuSeg (Kumar et al.) calls these liver; the TCGA TSS table says lung (LUSC/LUAD)
    for code in ("18", "21", "38", "49", "50"):
        assert organ_of(f"TCGA-{code}-0000-01Z-00-DX1") == "lung"
        assert TSS_TABLE[code][1] in ("LUSC", "LUAD")


def test_unknown_code_is_unknown_or_a_clear_error():
    assert organ_of("TCGA-ZZ-0000-01Z-00-DX1") == UNKNOWN
    assert organ_of("image_001") == UNKNOWN
    with pytest.raises(UnknownOrganError, match="'ZZ'.*TSS_TABLE"):
        organ_of("TCGA-ZZ-0000-01Z-00-DX1", strict=True)
    with pytest.raises(UnknownOrganError, match="not a TCGA barcode"):
        organ_of("image_001", strict=True)
