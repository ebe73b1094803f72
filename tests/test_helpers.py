"""The test suite's own models of the receiver's documented behaviour, checked against the
reference values they come from (so a failing receiver test is not a broken model)."""

import pytest

from tests.helpers.dicom import hash7, render_value, safe_component, sanitise, seahash


def test_seahash_matches_the_crate() -> None:
    # seahash 4.1 reference.rs test vector.
    assert seahash(b"to be or not to be") == 1988685042348123509
    assert hash7("1.2.3") == f"{seahash(b'1.2.3'):x}"[:7]


@pytest.mark.parametrize(
    ("value", "expected"),
    # The cases of rust/storage/sanitize.rs's unit tests (oxidicom's rule).
    [
        ("Jane^Doe", "Jane_Doe"),
        ("Hanke Stadler 0024 transrep", "Hanke_Stadler_0024_transrep"),
        ("anat-T1w", "anat-T1w"),
        ("1.2.840.113619.2.1", "1.2.840.113619.2.1"),
        ("  padded  ", "padded"),
        ("ORIGINAL\\PRIMARY", "ORIGINAL_PRIMARY"),
        ("../../etc/passwd", ".._.._etc_passwd"),
        ("/abs", "_abs"),
        ("a\0b", "ab"),
        ("\x1b[31m", "_31m"),
        ('a<>:"|?*b', "a_b"),
        ("x\x7f\x85\u202ey", "x_y"),
        ("C:\\Windows", "C_Windows"),
        ("山田^太郎", "_"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada_Tarou_"),
        ("Παπαδόπουλος", "_"),
        (" \t\0\0 ", ""),
        ("A" * 100, "A" * 64),
    ],
)
def test_sanitise_model(value: str, expected: str) -> None:
    assert sanitise(value) == expected


def test_render_model() -> None:
    assert render_value("SeriesNumber", {"SeriesNumber": "007"}, 5) == "00007"
    assert render_value("SeriesNumber", {"SeriesNumber": "ab"}, 5) == "000ab"
    assert render_value("SeriesNumber", {}, 5) == "SeriesNumber"
    assert render_value("PatientName", {"PatientName": " \0 "}) == "PatientName"
    assert safe_component("..") == "_"
    assert safe_component("") == "_"
    assert safe_component("x" * 300 + ".dcm") == ("x" * 300 + ".dcm")[-255:]
