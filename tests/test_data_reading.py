"""Reading CelebA copies: annotation formats, both layouts, duplicates, broken files, the cache."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from celeba_gender.data import DataError, build_index
from celeba_gender.data.__main__ import main as data_main
from celeba_gender.data.annotations import (
    AnnotationWarning,
    detect_layout,
    read_attributes,
    read_name_value_file,
)


def test_official_attribute_file_reads_all_rows(subset_root, subset_attributes):
    assert subset_attributes.shape == (202_599, 40)
    assert set(np.unique(subset_attributes.to_numpy())) == {0, 1}
    # The first row of the official file: 000001.jpg is female (-1), 000008.jpg... spot-check
    # against the raw text rather than a remembered value.
    raw = (subset_root / "Anno" / "list_attr_celeba.txt").read_text().splitlines()
    header, first = raw[1].split(), raw[2].split()
    male = int(first[1 + header.index("Male")])
    assert subset_attributes.loc[first[0], "Male"] == (1 if male == 1 else 0)


def test_attribute_file_variants_give_the_same_table(subset_root, subset_attributes, tmp_path):
    """No count line, CRLF, 1/0 values, a header naming the file column: same labels."""
    expected = subset_attributes.iloc[:50]
    raw = (subset_root / "Anno" / "list_attr_celeba.txt").read_text().splitlines()
    header, rows = raw[1], raw[2:52]
    crlf = tmp_path / "crlf_no_count.txt"
    crlf.write_bytes(("\r\n".join([header, *rows]) + "\r\n").encode())
    zero_one = tmp_path / "zero_one_with_name_column.txt"
    zero_one.write_text(
        expected.reset_index().to_csv(sep=" ", index=False).replace("file_name", "file_name", 1)
    )
    for path in (crlf, zero_one):
        table, facts = read_attributes(path)
        assert facts["declared_count"] is None
        assert table.equals(expected), path.name
    assert read_attributes(crlf)[1]["encoding"] == "1/-1"
    assert read_attributes(zero_one)[1]["encoding"] == "1/0"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("2\nMale Young\na.jpg 1 -1\nb.jpg 1\n", "line 4: no value for column 'Young'"),
        (
            "Male Young\na.jpg 1 -1\nb.jpg 1 yes\n",
            "line 3 \\(b.jpg\\), column 'Young': 'yes' is not",
        ),
        (
            "Male Young\na.jpg 1 -1\nb.jpg 1 7\n",
            "line 3 \\(b.jpg\\), column 'Young': 7 is not allowed",
        ),
        ("Young Smiling\na.jpg 1 -1\n", "no 'Male' column"),
        ("Male Young\na.jpg 1 -1 1 1\n", "header \\(line 1\\) names 2 columns but the first row"),
        ("", "no data rows"),
        ("\u00b2\nMale Young\na.jpg 1 -1\n", "no 'Male' column"),  # a digit int() refuses
    ],
)
def test_malformed_attribute_files_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as caught:
        read_attributes(path)
    assert str(path) in str(caught.value)


HEADER = "3\nSmiling Male Young\n"


@pytest.mark.parametrize(
    ("rows", "line", "column", "says"),
    [
        # A fractional label was truncated to 0 (female) without a word.
        ("a.jpg 1 1 1\nb.jpg -1 0.5 1\nc.jpg 1 -1 1\n", 4, "Male", "'0.5' is a fraction"),
        ("a.jpg 1 1 1\nb.jpg -1 1 1\nc.jpg 1 2 1\n", 5, "Male", "2 is not allowed"),
        ("a.jpg 1 1 1\nb.jpg abc 1 1\nc.jpg 1 -1 1\n", 4, "Smiling", "'abc' is not a whole"),
        (
            "a.jpg 1 1 1\nb.jpg 1.0 1 1\nc.jpg 1 -1 1\n",
            4,
            "Smiling",
            "'1.0' is not written as a whole",
        ),
        ("a.jpg 1 1 1\nb.jpg -1  1\nc.jpg 1 -1 1\n", 4, "Young", "no value for column"),
        ("a.jpg 1 1 1\nb.jpg -1 1 1 1\nc.jpg 1 -1 1\n", 4, "Young", "1 more than"),
        ("a.jpg 1 1 1\n\n\nb.jpg -1 NaN 1\n", 6, "Male", "'NaN' is not a whole number"),
        ('a.jpg 1 1 1\nb.jpg "1 1" 1\nc.jpg 1 -1 1\n', 4, "Smiling", "'\"1' is not"),
    ],
)
def test_bad_attribute_values_name_the_file_the_line_and_the_column(
    tmp_path, rows, line, column, says
):
    path = tmp_path / "list_attr_celeba.txt"
    for name, ending in (("lf", "\n"), ("crlf_bom", "\r\n")):
        text = (HEADER + rows).replace("\n", ending)
        path.write_bytes((b"\xef\xbb\xbf" if "bom" in name else b"") + text.encode())
        with pytest.raises(DataError) as caught:
            read_attributes(path)
        message = str(caught.value)
        assert str(path) in message, name
        assert f"line {line}" in message, (name, message)
        assert f"'{column}'" in message, (name, message)
        assert says in message, (name, message)


def test_mixed_encodings_and_conflicting_duplicates_are_errors(tmp_path):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text(HEADER + "a.jpg 1 1 1\nb.jpg -1 0 1\nc.jpg 1 -1 1\n")
    with pytest.raises(DataError, match="mixes the 1/-1 and 1/0 encodings: 0 on line 4"):
        read_attributes(path)
    path.write_text(HEADER + "a.jpg 1 1 1\nb.jpg -1 1 1\na.jpg 1 -1 1\n")
    with pytest.raises(DataError) as caught:
        read_attributes(path)
    assert str(caught.value).startswith(f"{path}: a.jpg is listed twice with different")
    assert "line 3 and line 5" in str(caught.value)
    identity = tmp_path / "identity_CelebA.txt"
    identity.write_text("a.jpg 7\nb.jpg 8\n\nb.jpg 9\n")
    with pytest.raises(DataError, match="b.jpg is listed twice .* line 2 and line 4"):
        read_name_value_file(identity, "identity")
    partition = tmp_path / "list_eval_partition.txt"
    partition.write_text("a.jpg 0\nb.jpg 3\n")
    with pytest.raises(DataError, match="line 2 \\(b.jpg\\), column 'partition': 3 is not"):
        read_name_value_file(partition, "partition", (0, 1, 2))
    identity.write_text("a.jpg 7\nb.jpg 0.5\n")
    with pytest.raises(DataError, match="line 2 \\(b.jpg\\), column 'identity': '0.5'"):
        read_name_value_file(identity, "identity")


def test_identical_duplicates_warn_and_appear_in_the_text_report(defective_copy, tmp_path, capsys):
    attributes = defective_copy.root / "Anno" / "list_attr_celeba.txt"
    lines = attributes.read_text().splitlines()
    repeated = lines[3]  # the second image's row, again at the end
    attributes.write_text("\n".join([*lines, repeated]) + "\n")
    name, last = repeated.split()[0], len(lines) + 1
    with pytest.warns(AnnotationWarning, match=f"{name} \\(lines 4, {last}\\)"):
        table, facts = read_attributes(attributes)
    assert facts["duplicate_rows"] == [name]
    assert facts["duplicate_lines"] == {name: [4, last]}
    assert facts["count_mismatch"] == "first line says 52, found 53 rows"
    assert table.index.is_unique and len(table) == 52

    with pytest.warns(AnnotationWarning):
        code = data_main([str(defective_copy.root), "--split", "all", "--cache-dir", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    assert "annotation warnings: 2" in text
    assert f"{name} is listed 2 times with identical values (lines 4, {last})" in text
    assert "first line says 52, found 53 rows" in text


def test_annotation_errors_end_the_data_command_with_a_message(defective_copy, tmp_path, capsys):
    attributes = defective_copy.root / "Anno" / "list_attr_celeba.txt"
    lines = attributes.read_text().splitlines()
    header = lines[1].split()
    fields = lines[5].split()
    fields[1 + header.index("Male")] = "0.5"
    lines[5] = " ".join(fields)
    attributes.write_text("\n".join(lines) + "\n")
    code = data_main([str(defective_copy.root), "--split", "all", "--cache-dir", str(tmp_path)])
    assert code == 2
    error = capsys.readouterr().err
    assert f"{attributes}, line 6 ({fields[0]}), column 'Male': '0.5' is a fraction" in error


def test_identity_file_with_or_without_header(tmp_path):
    plain = tmp_path / "identity.txt"
    plain.write_text("000001.jpg 2880\n000002.jpg 2937\n")
    headed = tmp_path / "identity_header.txt"
    headed.write_text("file_name identity\r\n000001.jpg 2880\r\n000002.jpg 2937\r\n")
    for path in (plain, headed):
        series = read_name_value_file(path, "identity")
        assert series.to_dict() == {"000001.jpg": 2880, "000002.jpg": 2937}


def test_shared_subset_index(subset_root, cache_dir):
    index = build_index(subset_root, cache_dir)
    report = index.report
    assert report["layout"] == "official"
    assert report["files_in_folder"] == 4031
    assert report["images_usable"] == len(index.images) == 4014
    assert len(report["duplicates"]) == 17
    assert all("(1).jpg" in name for name in report["duplicates"])
    assert all("same bytes" in why for why in report["duplicates"].values())
    assert report["images_listed"] == 202_599
    assert report["listed_but_absent"] == 202_599 - 4014
    assert report["unreadable"] == {}
    assert index.images["file_name"].is_unique
    assert set(index.images["male"].unique()) == {0, 1}
    assert (index.images["identity"] > 0).all()


def test_defective_copy_keeps_the_good_and_names_the_bad(defective_copy, tmp_path):
    index = build_index(defective_copy.root, tmp_path / "cache")
    report = index.report
    planted = defective_copy.planted
    by_kind = {kind: name for name, kind in planted.items()}

    assert sorted(index.images["file_name"]) == sorted(defective_copy.good)
    assert set(report["unreadable"]) == {
        by_kind["truncated"],
        by_kind["zero-byte"],
        by_kind["not an image"],
    }
    assert "zero-byte" in report["unreadable"][by_kind["zero-byte"]]
    assert "not an image" in report["unreadable"][by_kind["not an image"]]
    assert "truncated" in report["unreadable"][by_kind["truncated"]]
    assert set(report["duplicates"]) == {
        by_kind["duplicate by name"],
        by_kind["duplicate by content"],
    }
    assert report["format_differs_from_extension"] == {by_kind["png named jpg"]: "PNG"}
    assert report["converted_to_rgb"] == {"L": 1, "CMYK": 1}
    assert report["unannotated_files"] == [by_kind["rgba png, not annotated under that name"]]
    # Rows for the missing images and for the three unreadable files have no usable file.
    assert report["images_listed"] == 52
    assert report["listed_but_absent"] == len(defective_copy.missing)
    assert report["images_present"] == 52 - len(defective_copy.missing)


def test_file_check_is_cached_and_redone_for_changed_files(defective_copy, tmp_path):
    cache = tmp_path / "cache"
    first = build_index(defective_copy.root, cache).report["scan"]
    assert first["checked"] == first["reused_from_cache"] + first["checked"] > 0
    second = build_index(defective_copy.root, cache).report["scan"]
    assert second["checked"] == 0
    changed = defective_copy.image_dir / defective_copy.good[0]
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    third = build_index(defective_copy.root, cache).report["scan"]
    # A new mtime alone (a copy, a touch): its content sample is read again, nothing decoded.
    assert (third["checked"], third["sampled"]) == (0, 1)
    changed.write_bytes((defective_copy.image_dir / defective_copy.good[1]).read_bytes())
    fourth = build_index(defective_copy.root, cache).report["scan"]
    assert fourth["checked"] == 1


def test_study_layout(study_copy, subset_attributes, tmp_path):
    index = build_index(study_copy.root, tmp_path / "cache")
    report = index.report
    assert report["layout"] == "study_subset"
    assert sorted(index.images["file_name"]) == sorted(study_copy.good)
    assert len(report["duplicates"]) == 1
    csv = str(study_copy.root / "gender_classification.csv")
    assert "no file names" in report["ignored_files"][csv]
    labels = index.images.set_index("file_name")["male"]
    assert labels.equals(subset_attributes.loc[labels.index, "Male"].rename("male"))
    assert report["annotation_files"]["partition"] is None


def test_torchvision_layout_with_files_at_the_root(defective_copy, tmp_path):
    root = defective_copy.root
    for path in [*(root / "Anno").iterdir(), *(root / "Eval").iterdir()]:
        shutil.move(path, root / path.name)
    layout = detect_layout(root.parent)  # torchvision's parent folder, holding celeba/
    assert layout.name == "official"
    assert layout.attributes_file == root / "list_attr_celeba.txt"
    assert layout.partition_file == root / "list_eval_partition.txt"
    assert len(build_index(root, tmp_path / "cache").images) == len(defective_copy.good)


def test_wrong_or_empty_roots_fail_clearly(tmp_path, defective_copy):
    with pytest.raises(DataError, match="does not exist"):
        build_index(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No CelebA layout recognised"):
        build_index(tmp_path / "empty")
    for path in defective_copy.image_dir.iterdir():
        path.write_bytes(b"")
    with pytest.raises(DataError, match="No usable labelled images") as caught:
        build_index(defective_copy.root, tmp_path / "cache")
    assert str(defective_copy.image_dir) in str(caught.value)


def test_annotation_files_that_are_not_text(tmp_path):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_bytes(b"Male Young\na.jpg 1 -1\nb\xe9.jpg 1 1\n")  # Latin-1, not UTF-8
    with pytest.raises(DataError, match="line 3: not UTF-8 text \\(byte 0xe9\\)"):
        read_attributes(path)
    path.write_bytes(b"Male Young\na.jpg 1 -1\nb.jpg 1\x00 1\n")
    with pytest.raises(DataError, match="line 3: a NUL byte"):
        read_attributes(path)
    identity = tmp_path / "identity_CelebA.txt"
    identity.write_bytes(b"\xff\xfe\x00a\x00")
    with pytest.raises(DataError, match=f"{identity}, line 1"):
        read_name_value_file(identity, "identity")


@pytest.mark.parametrize("token", ["+1", "01", "-01", "-0", "+0", "1_0", "\u0661", "\uff11"])
def test_values_written_otherwise_than_plainly_are_errors(tmp_path, token):
    # pandas reads "+1", "01" and "-01" as 1 and -1: the file must say exactly 1 or -1.
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text(HEADER + f"a.jpg 1 1 1\nb.jpg -1 {token} 1\nc.jpg 1 -1 1\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_attributes(path)
    assert f"{path}, line 4 (b.jpg), column 'Male': '{token}' is not written plainly" in str(
        caught.value
    )
    partition = tmp_path / "list_eval_partition.txt"
    partition.write_text(f"a.jpg 0\nb.jpg {token}\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2 \\(b.jpg\\), column 'partition'"):
        read_name_value_file(partition, "partition", (0, 1, 2))


def test_names_with_signs_and_zeros_and_odd_spacing_are_still_read(tmp_path):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text(HEADER + "a+b.jpg  1\t1 1\t\n  0001.jpg -1 -1  1\n-0.jpg 1 1 -1\n")
    attributes, _ = read_attributes(path)
    assert attributes["Male"].to_dict() == {"a+b.jpg": 1, "0001.jpg": 0, "-0.jpg": 1}
    study = tmp_path / "list_attribute_edit.txt"
    study.write_text("Smiling Male Young\na.jpg 0 1 0\nb.jpg 1 0 0\n")
    attributes, facts = read_attributes(study)
    assert attributes["Male"].to_dict() == {"a.jpg": 1, "b.jpg": 0}
    assert facts["encoding"] == "1/0"


@pytest.mark.parametrize("first", ["000001.jpg", "000001.jpg O", "000001.jpg train"])
def test_a_broken_first_row_of_an_identity_or_partition_file_is_not_taken_for_a_header(
    tmp_path, first
):
    # Taken for a header, the first image would silently lose its partition.
    partition = tmp_path / "list_eval_partition.txt"
    partition.write_text(f"{first}\n000002.jpg 0\n000003.jpg 2\n")
    with pytest.raises(DataError, match=f"{partition}, line 1"):
        read_name_value_file(partition, "partition", (0, 1, 2))
    partition.write_text("image_id partition\n000001.jpg 1\n000002.jpg 0\n")
    series = read_name_value_file(partition, "partition", (0, 1, 2))
    assert series.to_dict() == {"000001.jpg": 1, "000002.jpg": 0}
