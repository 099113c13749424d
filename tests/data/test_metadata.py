"""Patient metadata: reading ISIC 2017 / HAM10000 metadata CSVs and the subgroups of group_labels."""

from __future__ import annotations

import logging

import pytest

from dermogaze.data import metadata
from dermogaze.data.metadata import AGE, LOCALIZATION, SEX, age_band, group_labels, read_metadata_csv
from dermogaze.errors import DataError, DermogazeError

ISIC_CSV = """image_id,age_approximate,sex
ISIC_0000001,55,female
ISIC_0000002,unknown,male
ISIC_0000003,15,Unknown
ISIC_0000004,,
ISIC_0000005,85.0,MALE
ISIC_0000006
"""

HAM_CSV = """lesion_id,image_id,dx,dx_type,age,sex,localization
HAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp
HAM_0002730,ISIC_0026769,bkl,histo,,unknown,Lower Extremity
HAM_0002730,ISIC_0025661,bkl,histo,60.0,female,unknown
"""


def write(tmp_path, text: str, name: str = "meta.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_isic_2017_columns_with_unknowns(tmp_path):
    table = read_metadata_csv(write(tmp_path, ISIC_CSV))
    assert table.fields == (AGE, SEX)
    assert table.rows == {
        "isic_0000001": {AGE: 55.0, SEX: "female"},
        "isic_0000002": {AGE: None, SEX: "male"},
        "isic_0000003": {AGE: 15.0, SEX: None},
        "isic_0000004": {AGE: None, SEX: None},  # empty cells
        "isic_0000005": {AGE: 85.0, SEX: "male"},
        "isic_0000006": {AGE: None, SEX: None},  # missing cells
    }
    assert all(isinstance(row[AGE], float) for row in table.rows.values() if row[AGE] is not None)


def test_read_ham10000_columns_keeps_localization(tmp_path):
    table = read_metadata_csv(write(tmp_path, HAM_CSV))
    assert table.fields == (AGE, SEX, LOCALIZATION)
    assert table.rows["isic_0027419"] == {AGE: 80.0, SEX: "male", LOCALIZATION: "scalp"}
    assert table.rows["isic_0026769"] == {AGE: None, SEX: None, LOCALIZATION: "lower extremity"}
    assert table.rows["isic_0025661"] == {AGE: 60.0, SEX: "female", LOCALIZATION: None}


def test_rows_without_an_image_are_dropped_and_counted(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="dermogaze.data.metadata"):
        table = read_metadata_csv(write(tmp_path, ISIC_CSV), image_ids={"isic_0000001", "isic_0000005"})
    assert list(table.rows) == ["isic_0000001", "isic_0000005"]
    assert "4 rows name no image on disk" in caplog.text


def test_columns_align_with_ids(tmp_path, caplog):
    table = read_metadata_csv(write(tmp_path, ISIC_CSV))
    with caplog.at_level(logging.WARNING):
        columns = table.columns(["ISIC_0000005", "isic_0000001", "ISIC_0000099"])
    assert columns == {AGE: [85.0, 55.0, None], SEX: ["male", "female", None]}
    assert "no row for 1 of 3 images (e.g. ISIC_0000099)" in caplog.text


@pytest.mark.parametrize("text, match", [
    ("id,age_approximate,sex\nISIC_1,50,male\n", "expected an image_id column"),
    ("image_id,dx\nISIC_1,mel\n", "no metadata column"),
    ("image_id,age_approximate,sex\nISIC_1,50,male\nISIC_2,fifty,male\n", "line 3: age 'fifty'"),
    ("image_id,age_approximate,sex\nISIC_1,-5,male\n", "line 2: age '-5' is not a number of years from 0 to 120"),
    ("image_id,age_approximate,sex\nISIC_1,1000,male\n", "line 2: age '1000' is not a number of years from 0 to 120"),
    ("image_id,age_approximate,sex\nISIC_1,120.5,male\n", "line 2: age '120.5' is not a number of years from 0"),
    ("image_id,age_approximate,sex,Sex\nISIC_1,50,male,male\n", "line 1: column 'sex' appears twice"),
    ("image_id,age_approximate,sex\nISIC_1,nan,male\n", "line 2: age 'nan'"),
    ("image_id,age_approximate,sex\nISIC_1,50,m\n", "line 2: sex 'm'"),
    ("image_id,age_approximate,sex\nISIC_1,50,male\nisic_1,55,male\n", "line 3: isic_1 repeats the row of line 2"),
    ("image_id,age_approximate,sex\n,50,male\n", "line 2: empty image_id"),
])
def test_malformed_file_names_the_file_and_row(tmp_path, text, match):
    path = write(tmp_path, text, "ISIC-2017_Training_Data_metadata.csv")
    with pytest.raises(DataError, match=match) as excinfo:
        read_metadata_csv(path)
    assert str(excinfo.value).startswith(str(path))


def test_the_plausible_ages_are_0_to_120_and_a_byte_order_mark_is_read(tmp_path):
    table = read_metadata_csv(write(tmp_path, "\ufeffimage_id,age_approximate,sex\nISIC_1,0,male\nISIC_2,120,female\n"))
    assert [row[AGE] for row in table.rows.values()] == [0.0, 120.0]


def test_unreadable_file(tmp_path):
    with pytest.raises(DataError, match="nothing.csv: unreadable metadata CSV"):
        read_metadata_csv(tmp_path / "nothing.csv")


def test_real_isic_2017_validation_metadata(realdata_dir):
    table = read_metadata_csv(realdata_dir / "ISIC-2017_Validation_Data_metadata.csv")
    assert table.fields == (AGE, SEX) and len(table.rows) == 150
    assert table.rows["isic_0001769"] == {AGE: 15.0, SEX: "female"}
    ages = [r[AGE] for r in table.rows.values()]
    assert sum(a is None for a in ages) == 1 and sum(r[SEX] is None for r in table.rows.values()) == 1
    assert all(a % 5 == 0 for a in ages if a is not None)


# --------------------------------------------------------------------------- subgroups


def test_age_band_edges():
    assert metadata.AGE_BAND_YEARS == 20 and metadata.AGE_TOP_BAND == 80
    cases = {0: "0-19", 19: "0-19", 19.9: "0-19", 20: "20-39", 39: "20-39", 40: "40-59", 59.5: "40-59",
             60: "60-79", 79.9: "60-79", 80: "80+", 85: "80+", 101: "80+"}
    assert {age: age_band(age) for age in cases} == cases
    assert age_band(None) is None


def test_group_labels_sex_age_localization():
    meta = {AGE: [19.0, 20.0, None, 85.0, 45.0], SEX: ["female", "male", None, "female", None],
            LOCALIZATION: ["scalp", None, "back", "back", "trunk"]}
    assert group_labels(meta, "sex") == ["female", "male", None, "female", None]
    assert group_labels(meta, "age") == ["0-19", "20-39", None, "80+", "40-59"]
    assert group_labels(meta, "localization") == ["scalp", None, "back", "back", "trunk"]
    bands = ["80+", "0-19", "60-79", "20-39", "40-59"]
    assert sorted(bands) == ["0-19", "20-39", "40-59", "60-79", "80+"]  # labels sort in age order


def test_group_labels_errors_list_the_available_fields():
    meta = {AGE: [50.0], SEX: ["male"]}
    with pytest.raises(DermogazeError, match=r"'diagnosis' is not a metadata field \(available: age, sex\)"):
        group_labels(meta, "diagnosis")
    with pytest.raises(DermogazeError, match=r"'localization' is not in this cache's metadata \(available: age, sex\)"):
        group_labels(meta, "localization")
    with pytest.raises(DermogazeError, match="available: none"):
        group_labels(None, "sex")
