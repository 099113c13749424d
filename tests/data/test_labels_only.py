"""Label files of the published ISIC collections, folders of images, and their caches (dermogaze.data.labels_only)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dermogaze.data.isic2017 import read_labels_csv
from dermogaze.data.labels_only import is_image_folder, read_image_collection, read_labels
from dermogaze.data.metadata import AGE, LOCALIZATION, SEX
from dermogaze.errors import DataError, DermogazeError

NAN = math.nan

GENERIC_MELANOMA = """image_id,melanoma,lesion_id
ISIC_0000001,1,L1
ISIC_0000002,0.0,L1
ISIC_0000003,,
ISIC_0000004,unknown,L2
ISIC_0000005.JPG,1.0,L3
"""

ARCHIVE_DIAGNOSIS = """isic_id,attribution,diagnosis,age_approx,sex,anatom_site_general
ISIC_0000011,x,Melanoma,55,male,anterior torso
ISIC_0000012,x,nevus,,female,
ISIC_0000013,x,,40,,lower extremity
ISIC_0000014,x,unknown,70,male,head/neck
ISIC_0000015,x,melanoma metastasis,70,male,head/neck
"""

TASK3 = """image,MEL,NV,BCC,AKIEC,BKL,DF,VASC
ISIC_0024306,0.0,1.0,0.0,0.0,0.0,0.0,0.0
ISIC_0024307,1.0,0.0,0.0,0.0,0.0,0.0,0.0
ISIC_0024308,0.0,0.0,0.0,0.0,0.0,0.0,1.0
"""

TASK3_GROUPINGS = """image,lesion_id,diagnosis_confirm_type
ISIC_0024306,HAM_0000550,serial imaging showing no change
ISIC_0024307,HAM_0003577,histopathology
ISIC_0024308,HAM_0003577,histopathology
"""

HAM = """lesion_id,image_id,dx,dx_type,age,sex,localization
HAM_0000118,ISIC_0027419.jpg,bkl,histo,80.0,male,scalp
HAM_0000118,ISIC_0025030,bkl,histo,80.0,male,scalp
HAM_0002730,ISIC_0026769,mel,histo,,unknown,Lower Extremity
HAM_0001466,ISIC_0031633,nv,follow_up,75.0,female,unknown
"""

ISIC2019 = """image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK
ISIC_0000000,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0
ISIC_0000002,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0
ISIC_0053453_downsampled,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,0.0
"""

ISIC2019_METADATA = """image,age_approx,anatom_site_general,lesion_id,sex
ISIC_0000000,55.0,anterior torso,,female
ISIC_0000002,60.0,upper extremity,,female
ISIC_0053453_downsampled,,,BCN_0000123,male
"""

ISIC2020_V2 = """\
image_name,patient_id,lesion_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target
ISIC_2637011,IP_7279968,IL_7972535,male,45.0,head/neck,unknown,benign,0
ISIC_0015719,IP_3075186,IL_4649854,female,45.0,upper extremity,unknown,benign,0
ISIC_0052212,IP_2842074,IL_9087444,female,50.0,lower extremity,nevus,benign,0
ISIC_0074268,IP_6890425,IL_4255399,female,55.0,,melanoma,malignant,1
"""

KAGGLE_2020 = """image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target
ISIC_2637011,IP_7279968,male,45.0,head/neck,unknown,benign,0
ISIC_0074268,IP_6890425,,,torso,melanoma,malignant,1
"""


def write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


def nan_equal(a, b):
    np.testing.assert_array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float))


# --------------------------------------------------------------------------------------------
# Each format, hand-expected
# --------------------------------------------------------------------------------------------
def test_generic_melanoma_column(tmp_path):
    table = read_labels(write(tmp_path, "labels.csv", GENERIC_MELANOMA))
    assert table.format == "generic"
    assert table.ids == ("ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004", "ISIC_0000005")
    nan_equal(table.melanoma, [1, 0, NAN, NAN, 1])
    assert table.lesion_ids == ("L1", "L1", None, "L2", "L3")
    assert table.metadata is None and table.skipped == ()
    # Lookups by image key: any case, with or without a suffix; NaN / None without a row.
    nan_equal(table.melanoma_of(["isic_0000005", "ISIC_0000001.jpg", "ISIC_9"]), [1, 1, NAN])
    assert table.lesions_of(["ISIC_0000002", "ISIC_9"]) == ["L1", None]
    assert "isic_0000004.png" in table and "ISIC_9" not in table


def test_archive_export_with_diagnosis_text_and_metadata(tmp_path):
    table = read_labels(write(tmp_path, "metadata.csv", ARCHIVE_DIAGNOSIS))
    assert table.format == "generic"
    # "Melanoma" in any case is melanoma; "melanoma metastasis" is another text, so not; empty/unknown is NaN.
    nan_equal(table.melanoma, [1, 0, NAN, NAN, 0])
    assert table.lesion_ids is None
    assert table.metadata.fields == (AGE, SEX, LOCALIZATION)
    assert table.metadata.rows["isic_0000011"] == {AGE: 55.0, SEX: "male", LOCALIZATION: "anterior torso"}
    assert table.metadata.rows["isic_0000013"] == {AGE: 40.0, SEX: None, LOCALIZATION: "lower extremity"}


def test_isic2017_part3_file_reads_as_the_isic2017_reader_does(realdata_dir):
    path = realdata_dir / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    table = read_labels(path)
    rows, problems = read_labels_csv(path)
    assert table.format == "generic" and not problems
    assert list(table.ids) == [i for i, _ in rows]
    nan_equal(table.melanoma, [float(v >= 0.5) for _, v in rows])
    assert int(table.melanoma.sum()) == 30  # ISIC 2017 validation: 30 melanomas of 150


def test_isic2018_task3_one_hot_with_lesion_groupings_beside_it(tmp_path):
    path = write(tmp_path, "ISIC2018_Task3_Training_GroundTruth.csv", TASK3)
    alone = read_labels(path)
    assert alone.format == "isic2018_task3" and alone.lesion_ids is None and alone.companion is None
    nan_equal(alone.melanoma, [0, 1, 0])

    write(tmp_path, "ISIC2018_Task3_Training_LesionGroupings.csv", TASK3_GROUPINGS)
    table = read_labels(path)
    assert table.companion == tmp_path / "ISIC2018_Task3_Training_LesionGroupings.csv"
    assert table.lesion_ids == ("HAM_0000550", "HAM_0003577", "HAM_0003577")
    assert table.metadata is None  # the groupings carry no patient data


def test_isic2018_task3_with_ham10000_metadata_as_companion(tmp_path):
    task3 = TASK3.replace("ISIC_0024306", "ISIC_0027419").replace("ISIC_0024307", "ISIC_0026769")
    path = write(tmp_path, "ISIC2018_Task3_Training_GroundTruth.csv", task3)
    (tmp_path / "elsewhere").mkdir()
    companion = write(tmp_path / "elsewhere", "HAM10000_metadata.csv", HAM)  # not beside it: given explicitly
    table = read_labels(path, companion=companion)
    assert table.lesion_ids == ("HAM_0000118", "HAM_0002730", None)  # ISIC_0024308 has no HAM10000 row
    assert table.metadata.rows["isic_0026769"] == {AGE: None, SEX: None, LOCALIZATION: "lower extremity"}


def test_ham10000_metadata(tmp_path):
    table = read_labels(write(tmp_path, "HAM10000_metadata.csv", HAM))
    assert table.format == "ham10000"
    assert table.ids == ("ISIC_0027419", "ISIC_0025030", "ISIC_0026769", "ISIC_0031633")  # ".jpg" dropped
    nan_equal(table.melanoma, [0, 0, 1, 0])
    assert table.lesion_ids == ("HAM_0000118", "HAM_0000118", "HAM_0002730", "HAM_0001466")
    assert table.metadata.rows["isic_0027419"] == {AGE: 80.0, SEX: "male", LOCALIZATION: "scalp"}
    assert table.metadata.rows["isic_0031633"] == {AGE: 75.0, SEX: "female", LOCALIZATION: None}


def test_isic2019_with_its_metadata_beside_it(tmp_path):
    path = write(tmp_path, "ISIC_2019_Training_GroundTruth.csv", ISIC2019)
    write(tmp_path, "ISIC_2019_Training_Metadata.csv", ISIC2019_METADATA)
    table = read_labels(path)
    assert table.format == "isic2019"
    nan_equal(table.melanoma, [0, 1, 0])
    assert table.lesion_ids == (None, None, "BCN_0000123")  # empty cells: unknown lesion
    assert table.metadata.rows["isic_0000002"] == {AGE: 60.0, SEX: "female", LOCALIZATION: "upper extremity"}
    assert table.metadata.rows["isic_0053453_downsampled"] == {AGE: None, SEX: "male", LOCALIZATION: None}


def test_isic2020_ground_truth_v2_and_kaggle_train_csv(tmp_path):
    table = read_labels(write(tmp_path, "ISIC_2020_Training_GroundTruth_v2.csv", ISIC2020_V2))
    assert table.format == "isic2020"
    nan_equal(table.melanoma, [0, 0, 0, 1])  # target decides; diagnosis "unknown" of a benign image is not read
    assert table.lesion_ids == ("IL_7972535", "IL_4649854", "IL_9087444", "IL_4255399")
    assert table.metadata.rows["isic_2637011"] == {AGE: 45.0, SEX: "male", LOCALIZATION: "head/neck"}
    assert table.metadata.rows["isic_0074268"][LOCALIZATION] is None

    kaggle = read_labels(write(tmp_path, "train.csv", KAGGLE_2020))
    assert kaggle.format == "isic2020" and kaggle.lesion_ids is None
    nan_equal(kaggle.melanoma, [0, 1])
    assert kaggle.metadata.rows["isic_0074268"] == {AGE: None, SEX: None, LOCALIZATION: "torso"}


def test_metadata_reader_knows_the_isic_2019_and_2020_columns(tmp_path):
    from dermogaze.data.metadata import read_metadata_csv

    table = read_metadata_csv(write(tmp_path, "ISIC_2019_Training_Metadata.csv", ISIC2019_METADATA))
    assert table.fields == (AGE, SEX, LOCALIZATION)  # age_approx, sex, anatom_site_general
    assert table.rows["isic_0000000"] == {AGE: 55.0, SEX: "female", LOCALIZATION: "anterior torso"}
    table = read_metadata_csv(write(tmp_path, "train.csv", KAGGLE_2020), image_ids={"isic_2637011"})
    assert table.rows == {"isic_2637011": {AGE: 45.0, SEX: "male", LOCALIZATION: "head/neck"}}
    assert read_metadata_csv(write(tmp_path, "gt.csv", TASK3), required=False) is None
    with pytest.raises(DataError, match="no metadata column"):
        read_metadata_csv(tmp_path / "gt.csv")


def test_header_matching_ignores_case_spaces_and_bom(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes("\ufeff Image_ID , Melanoma \nISIC_1 , 1\n".encode())
    table = read_labels(path)
    assert table.ids == ("ISIC_1",) and table.melanoma.tolist() == [1.0]


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
BAD_ROWS = [
    ("image_id,melanoma\nISIC_1,1\nISIC_2,2\n", "line 3: ISIC_2: melanoma value '2' is not 0 or 1"),
    ("image_id,melanoma\nISIC_1,yes\n", "line 2: ISIC_1: melanoma value 'yes' is not 0 or 1"),
    ("image_id,melanoma\n,1\n", "line 2: empty image_id"),
    (TASK3 + "ISIC_9,1.0,1.0,0.0,0.0,0.0,0.0,0.0\n", "line 5: ISIC_9: not one-hot"),
    (TASK3 + "ISIC_9,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n", "line 5: ISIC_9: not one-hot"),
    (TASK3 + "ISIC_9,0.5,0.5,0.0,0.0,0.0,0.0,0.0\n", "line 5: ISIC_9: MEL value '0.5' is not 0 or 1"),
    (HAM + "HAM_9,ISIC_9,melanoma,histo,50,male,back\n", "line 6: ISIC_9: dx 'melanoma' is none of akiec"),
    (HAM + "HAM_9,ISIC_9,mel,histo,fifty,male,back\n", "line 6: ISIC_9: age 'fifty'"),
    (ISIC2020_V2 + "ISIC_9,IP_1,IL_1,male,45,torso,nevus,benign,0.3\n", "line 6: ISIC_9: target value '0.3'"),
]


@pytest.mark.parametrize("text, message", BAD_ROWS)
def test_a_bad_row_names_the_file_and_line(tmp_path, text, message):
    path = write(tmp_path, "labels.csv", text)
    with pytest.raises(DataError) as err:
        read_labels(path)
    assert str(err.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize("text, message", BAD_ROWS)
def test_a_bad_row_is_skipped_and_counted_under_skip_bad(tmp_path, text, message, caplog):
    path = write(tmp_path, "labels.csv", text)
    good = text.count("\n") - 2  # header and the one bad row
    with caplog.at_level(logging.WARNING, logger="dermogaze.data.labels_only"):
        table = read_labels(path, skip_bad=True)
    assert len(table) == good
    assert [(b.file, b.reason[: len(message)]) for b in table.skipped] == [(str(path), message)]
    assert "1 bad rows left out" in caplog.text


@pytest.mark.parametrize("text, message", [
    ("image_id,melanoma\nISIC_1,1\nisic_1.jpg,0\n", "line 3: isic_1.jpg repeats the row of line 2"),
    ("name,label\nISIC_1,1\n", "not a label CSV this reader knows (found columns ['name', 'label'])"),
    ("image_id,sex\nISIC_1,male\n", "not a label CSV this reader knows"),
    ("image,MEL,NV,BCC,AKIEC,BKL,DF\nISIC_1,1,0,0,0,0,0\n", "one-hot columns MEL,NV,BCC,AKIEC,BKL,DF are neither"),
    ("", "not a label CSV this reader knows"),
    ('image_id,melanoma\n"ISIC_1,1\n', "malformed label CSV (unexpected end of data)"),  # unterminated quote
])
def test_file_level_errors_are_never_skipped(tmp_path, text, message):
    path = write(tmp_path, "labels.csv", text)
    with pytest.raises(DataError, match=rf"^{path}: .*{message[:30]}".replace("[", r"\[").replace("(", r"\(")):
        read_labels(path, skip_bad=True)


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="missing.csv: unreadable label CSV"):
        read_labels(tmp_path / "missing.csv")
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"image_id,diagnosis\nISIC_1,n\xe6vus\n")
    with pytest.raises(DataError, match="latin1.csv: unreadable label CSV"):
        read_labels(path)
    labels = write(tmp_path, "ISIC2018_Task3_Training_GroundTruth.csv", TASK3)
    with pytest.raises(DataError, match="companion CSV without an image id column"):
        read_labels(labels, companion=write(tmp_path, "other.csv", "lesion,age\nL1,50\n"))


# --------------------------------------------------------------------------------------------
# A folder of images
# --------------------------------------------------------------------------------------------
def write_images(folder, ids, size=(24, 18), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


def ham_collection(root, n_lesions=12, images_per_lesion=2):
    """HAM10000 as published: two image folders and the metadata CSV; every third lesion a melanoma."""
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    ids = []
    for lesion in range(n_lesions):
        for _ in range(images_per_lesion):
            image_id = f"ISIC_{len(ids):07d}"
            ids.append(image_id)
            dx, sex = "mel" if lesion % 3 == 0 else "nv", "male" if lesion % 2 else "female"
            rows.append(f"HAM_{lesion:07d},{image_id},{dx},histo,{30 + lesion},{sex},back")
    write_images(root / "HAM10000_images_part_1", ids[: len(ids) // 2])
    write_images(root / "HAM10000_images_part_2", ids[len(ids) // 2 :], seed=1)
    return write(root, "HAM10000_metadata.csv", "\n".join(rows) + "\n"), ids


def test_image_collection_is_split_by_lesion(tmp_path):
    csv, ids = ham_collection(tmp_path / "ham", n_lesions=20)
    assert is_image_folder(tmp_path / "ham") and not is_image_folder(tmp_path / "nowhere")
    collection = read_image_collection(tmp_path / "ham", csv, fractions=(0.8, 0.1, 0.1), seed=0)
    assert collection.layout == "images" and not collection.has_masks
    assert list(collection.splits) == ["train", "val", "test"]
    seen = {}
    for name, split in collection.splits.items():
        assert split.csv == csv and split.metadata is not None
        for sample in split.samples:
            lesion = int(sample.id[5:]) // 2
            assert seen.setdefault(lesion, name) == name  # both images of a lesion on one side
            assert sample.label == int(lesion % 3 == 0)
            assert sample.image.parent.name.startswith("HAM10000_images_part_")
    assert sorted(s.id for split in collection.splits.values() for s in split.samples) == ids
    assert [len(s.samples) for s in collection.splits.values()] == [32, 4, 4]  # 16 / 2 / 2 lesions
    assert collection.splits["train"].problems == []


def test_image_collection_problems_and_unlabelled_rows(tmp_path, caplog):
    root = tmp_path / "images"
    write_images(root, ["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_4", "extra"] + [f"ISIC_{k}" for k in range(10, 30)])
    (root / "LICENSE.txt").write_text("CC-BY-NC")
    (root / ".hidden").mkdir()
    write_images(root / ".hidden", ["ISIC_1"])  # hidden folders are not part of the collection
    rows = ["image_id,melanoma", "ISIC_1,1", "ISIC_2,", "ISIC_3,7", "ISIC_4,0", "ISIC_5,1"]
    rows += [f"ISIC_{k},{k % 2}" for k in range(10, 30)]
    csv = write(tmp_path, "labels.csv", "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING):
        collection = read_image_collection(root, csv, fractions=(0.5, 0.5, 0), seed=0)
    assert list(collection.splits) == ["train", "val"]  # fraction 0: no test split
    problems = {(p.file, p.reason) for p in collection.splits["train"].problems}
    assert problems == {
        (str(csv), "line 4: ISIC_3: melanoma value '7' is not 0 or 1 (accepted: 0, 1, 0.0, 1.0; empty or "
                   "'unknown' when the diagnosis is unknown)"),
        (str(csv), f"row ISIC_5 has no image (ISIC_5.jpg) in {root}"),
        (str(root / "extra.jpg"), f"image has no row in {csv}"),
    }
    assert "1 images without a known diagnosis left out" in caplog.text  # ISIC_2
    assert sorted(s.id for split in collection.splits.values() for s in split.samples) == sorted(
        ["ISIC_1", "ISIC_4"] + [f"ISIC_{k}" for k in range(10, 30)])


def test_an_empty_image_folder_says_so(tmp_path):
    (tmp_path / "images" / "sub").mkdir(parents=True)
    (tmp_path / "images" / "notes.txt").write_text("")
    csv = write(tmp_path, "labels.csv", "image_id,melanoma\nISIC_1,1\n")
    with pytest.raises(DataError, match=f"^no images in {tmp_path / 'images'} \\(looked for .jpg, .jpeg, .png"):
        read_image_collection(tmp_path / "images", csv)


@pytest.mark.parametrize(("rows", "cause"), [
    (["ISIC_1,yes", "ISIC_2,no"], "2 rows refused (e.g. line 2: ISIC_1: melanoma value 'yes' is not 0 or 1 (accepted: "
                                  "0, 1, 0.0, 1.0; empty or 'unknown' when the diagnosis is unknown))"),
    (["ISIC_1,unknown", "ISIC_2,"], "2 rows of an image have an unknown diagnosis"),
    (["ISIC_7,1", "ISIC_8,0"], "2 rows name no image there (e.g. ISIC_7; the folder holds 2 images, e.g. ISIC_1.jpg)"),
    (["ISIC_1,", "ISIC_8,0", "ISIC_2,true"], "1 rows refused (e.g. line 4: ISIC_2: melanoma value 'true' is not 0 or 1 "
                                             "(accepted: 0, 1, 0.0, 1.0; empty or 'unknown' when the diagnosis is "
                                             "unknown)); 1 rows of an image have an unknown diagnosis; 1 rows name no "
                                             "image there"),
    ([], "the file has no rows"),
])
def test_no_usable_row_says_why_in_the_error_itself(tmp_path, rows, cause):
    write_images(tmp_path / "images", ["ISIC_1", "ISIC_2"])
    csv = write(tmp_path, "labels.csv", "\n".join(["image_id,melanoma", *rows]) + "\n")
    with pytest.raises(DataError) as err:
        read_image_collection(tmp_path / "images", csv)
    assert str(err.value).startswith(f"{csv}: no row gives a known diagnosis to an image in {tmp_path / 'images'}: "
                                     f"{cause}")


def test_too_few_images_for_the_fractions_say_so_in_images(tmp_path):
    write_images(tmp_path / "images", ["ISIC_1", "ISIC_2"])
    csv = write(tmp_path, "labels.csv", "image_id,melanoma\nISIC_1,1\nISIC_2,0\n")
    with pytest.raises(DermogazeError, match="^2 images are too few to divide into train, val and test in the "
                                             "fractions 0.8,0.1,0.1: that takes at least 10; add images, or give "
                                             "fractions such as 1,0,0"):
        read_image_collection(tmp_path / "images", csv)


def test_two_images_of_one_id_is_an_error(tmp_path):
    write_images(tmp_path / "a", ["ISIC_1"])
    write_images(tmp_path / "b", ["isic_1"])
    csv = write(tmp_path, "labels.csv", "image_id,melanoma\nISIC_1,1\n")
    with pytest.raises(DataError, match="a second image of isic_1"):
        read_image_collection(tmp_path, csv)


# --------------------------------------------------------------------------------------------
# prepare → load_split → train
# --------------------------------------------------------------------------------------------
def test_ham10000_folder_prepares_loads_memory_mapped_and_trains_vgg_gap(tmp_path):
    from dermogaze.config import load_config
    from dermogaze.data.cache import load_info, load_split
    from dermogaze.data.prepare import prepare
    from dermogaze.training import train

    csv, ids = ham_collection(tmp_path / "ham", n_lesions=20)
    cache = tmp_path / "cache"
    info = prepare(tmp_path / "ham", cache, size=40, labels=csv, split=(0.6, 0.2, 0.2), seed=3, workers=2,
                   progress=False)
    assert info["layout"] == "images" and not info["has_masks"]
    assert info["counts"] == {"train": 24, "val": 8, "test": 8}  # 12 / 4 / 4 lesions of 2 images
    assert info["metadata"] == [AGE, SEX, LOCALIZATION]
    assert info["official_splits"]["train"] == "60% of HAM10000_metadata.csv, seed 3, grouped by lesion_id"
    assert load_info(cache)["options"]["split"] == [0.6, 0.2, 0.2]
    lesion_split = {}
    for name in ("train", "val", "test"):
        arrays = load_split(cache, name)
        assert isinstance(arrays.images, np.memmap) and arrays.masks is None  # never read whole
        for i, label, age in zip(arrays.ids, arrays.labels, arrays.metadata[AGE], strict=True):
            lesion = int(i[5:]) // 2
            assert lesion_split.setdefault(lesion, name) == name
            assert label == float(lesion % 3 == 0) and age == 30 + lesion
    assert len(lesion_split) == 20

    # The same fractions and seed give the same cache; another seed another split.
    again = prepare(tmp_path / "ham", tmp_path / "again", size=40, labels=csv, split=(0.6, 0.2, 0.2), seed=3,
                    progress=False)
    assert load_split(tmp_path / "again", "test").ids == load_split(cache, "test").ids and again["counts"]

    cfg = load_config("tiny", [f"data.cache={cache}", "model.name=vgg_gap", "train.epochs=1"])
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["epochs"] == 1 and (tmp_path / "run" / "best.pt").is_file()


def test_prepare_skip_bad_counts_bad_rows_and_refuses_masks_variants(tmp_path):
    from dermogaze.data.prepare import prepare

    csv, _ = ham_collection(tmp_path / "ham", n_lesions=10, images_per_lesion=1)
    csv.write_text(csv.read_text() + "HAM_9999999,ISIC_9999999,mel,histo,50,male,back\n")  # no image
    with pytest.raises(DataError, match="row ISIC_9999999 has no image"):
        prepare(tmp_path / "ham", tmp_path / "cache", size=32, labels=csv, split=(0.8, 0.2, 0), progress=False)
    info = prepare(tmp_path / "ham", tmp_path / "cache", size=32, labels=csv, split=(0.8, 0.2, 0), skip_bad=True,
                   progress=False)
    assert info["splits"] == ["train", "val"] and sum(info["counts"].values()) == 10
    assert [s["reason"] for s in info["skipped"]] == [f"row ISIC_9999999 has no image (ISIC_9999999.jpg) in "
                                                      f"{tmp_path / 'ham'}"]


def test_cli_prepare_with_labels_split_and_seed(tmp_path, capsys):
    from dermogaze.cli import main
    from dermogaze.data.cache import load_info

    csv, _ = ham_collection(tmp_path / "ham", n_lesions=10, images_per_lesion=1)
    out = tmp_path / "cache"
    code = main(["data", "prepare", "--isic", str(tmp_path / "ham"), "--labels", str(csv), "--out", str(out),
                 "--size", "32", "--split", "0.6,0.2,0.2", "--seed", "4", "--workers", "2", "--no-progress"])
    assert code == 0 and "train 6, val 2, test 2" in capsys.readouterr().out
    assert load_info(out)["options"]["seed"] == 4
    code = main(["data", "prepare", "--isic", str(tmp_path / "ham"), "--labels", str(csv), "--out", str(out),
                 "--split", "0.6,0.2"])
    assert code == 2 and "expected three non-negative numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--isic", str(tmp_path / "ham"), "--out", str(out), "--seed", "-1"])


def test_a_folder_of_images_without_labels_is_refused(tmp_path):
    from dermogaze.data.prepare import prepare

    write_images(tmp_path / "images", ["ISIC_1"])
    with pytest.raises(DataError, match="a folder of images needs its label CSV"):
        prepare(tmp_path / "images", tmp_path / "cache", layout="images", progress=False)


HEADERS = [GENERIC_MELANOMA, ARCHIVE_DIAGNOSIS, TASK3, HAM, ISIC2019, ISIC2020_V2, KAGGLE_2020]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.sampled_from([h.splitlines()[0] for h in HEADERS]),
    cells=st.lists(st.lists(st.sampled_from(["", "0", "1", "1.0", "0.5", "mel", "nv", "melanoma", "unknown", "ISIC_1",
                                             "isic_1.JPG", "55", "-3", "male", "x", '"', "é", "HAM_1", " "]),
                            max_size=12), max_size=6),
    skip_bad=st.booleans(),
)
def test_any_label_file_is_read_or_refused_with_one_data_error(tmp_path, header, cells, skip_bad):
    path = write(tmp_path, "labels.csv", "\n".join([header, *(",".join(row) for row in cells)]) + "\n")
    try:
        table = read_labels(path, skip_bad=skip_bad)
    except DataError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    assert len(table.ids) == len(table.melanoma) == len(set(map(str.lower, table.ids)))
    assert set(np.unique(table.melanoma[~np.isnan(table.melanoma)])) <= {0.0, 1.0}
    assert len(table.ids) + len(table.skipped) <= len(cells)
