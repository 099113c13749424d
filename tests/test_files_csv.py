"""The one CSV reader, :func:`dermogaze.files.parse_csv_file`: what it reads and what it refuses, by file and line."""

from __future__ import annotations

import pytest

from dermogaze import files
from dermogaze.errors import DataError
from dermogaze.files import parse_csv_file


def write(tmp_path, text: str | bytes, name: str = "table.csv"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_header_and_rows_with_their_lines(tmp_path):
    path = write(tmp_path, " Image_ID , Melanoma \nISIC_1,1\n\n  \nISIC_2,0\n\"ISIC_3\",\"0\n\"\nISIC_4,1\n")
    table = parse_csv_file(path, "label CSV")
    assert table.columns == ("image_id", "melanoma")
    assert [line for line, _ in table.rows] == [2, 5, 7, 8]  # blank lines skipped; a quoted value spans 6-7
    assert table.rows[0][1] == {"image_id": "ISIC_1", "melanoma": "1"}
    assert table.key is None


def test_a_byte_order_mark_is_read(tmp_path):
    path = write(tmp_path, "\ufeffimage_id,melanoma\nISIC_1,0.25\n")
    assert parse_csv_file(path, "predictions file").columns == ("image_id", "melanoma")


def test_a_short_row_is_padded_and_trailing_empty_cells_tolerated(tmp_path):
    table = parse_csv_file(write(tmp_path, "image_id,age,sex\nISIC_1\nISIC_2,50,male,,\n"), "metadata CSV")
    assert [row for _, row in table.rows] == [{"image_id": "ISIC_1", "age": "", "sex": ""},
                                              {"image_id": "ISIC_2", "age": "50", "sex": "male"}]


@pytest.mark.parametrize(("text", "message"), [
    ("image_id,melanoma,Melanoma \nISIC_1,1,1\n", "line 1: column 'melanoma' appears twice (columns 2 and 3)"),
    ("image_id,melanoma\nISIC_1,1\nISIC_2,benign, nevus\n", "line 3: 3 values, the header has 2 columns"),
    ('image_id,melanoma\n"ISIC_1,1\n', "malformed label CSV (unexpected end of data)"),
])
def test_a_malformed_file_is_refused_by_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=f"^{path}: ") as err:
        parse_csv_file(path, "label CSV")
    assert message in str(err.value)


def test_a_repeated_key_is_refused_naming_both_lines(tmp_path):
    path = write(tmp_path, "image_id,melanoma\nISIC_1,1\nISIC_2,0\n ISIC_2 ,1\n")
    with pytest.raises(DataError, match=f"^{path}: line 4: ISIC_2 repeats the row of line 3 \\(one row per image_id"):
        parse_csv_file(path, "label CSV", key="image_id")


def test_the_key_is_the_first_named_column_present_and_compared_in_the_callers_form(tmp_path):
    text = "image,isic_id,melanoma\nISIC_1,A,1\nisic_1,B,0\n"
    path = write(tmp_path, text)
    assert parse_csv_file(path, "label CSV", key=("image_id", "isic_id", "image")).key == "isic_id"  # A, B differ
    assert parse_csv_file(path, "label CSV", key="image").key == "image"  # ISIC_1, isic_1 differ as written
    with pytest.raises(DataError, match="line 3: isic_1 repeats the row of line 2"):
        parse_csv_file(path, "label CSV", key="image", same_key=str.lower)


def test_empty_keys_and_a_missing_key_column_are_left_to_the_caller(tmp_path):
    path = write(tmp_path, "image_id,melanoma\n,1\n,0\n")
    assert len(parse_csv_file(path, "label CSV", key="image_id").rows) == 2
    assert parse_csv_file(path, "label CSV", key="isic_id").key is None


def test_an_empty_file_has_no_columns(tmp_path):
    table = parse_csv_file(write(tmp_path, ""), "fixations CSV")
    assert table.columns == () and table.rows == ()


@pytest.mark.parametrize(("content", "message"), [
    (b"image_id,diagnosis\nISIC_1,n\xe6vus\n", "unreadable label CSV (not UTF-8 text at byte 27: save it as CSV "
                                               "UTF-8)"),
    ("image_id,melanoma\n".encode("utf-16"), "unreadable label CSV (not UTF-8 text at byte 0"),
    (None, "unreadable label CSV (No such file or directory)"),
])
def test_an_unreadable_file_is_named(tmp_path, content, message):
    path = tmp_path / "labels.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as err:
        parse_csv_file(path, "label CSV")
    assert str(err.value).startswith(f"{path}: {message}")


def test_a_file_above_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = write(tmp_path, "image_id,melanoma\n" + "ISIC_1,1\n" * 200)
    monkeypatch.setattr(files, "MAX_CSV_BYTES", 1 << 10)
    with pytest.raises(DataError, match=f"^{path}: .* MiB, too large for a label CSV"):
        parse_csv_file(path, "label CSV")
