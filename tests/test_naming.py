"""Output names: deterministic, inside their prefixes, within Cloud Storage's name limit."""

from hypothesis import given, settings
from hypothesis import strategies as st

from segmentation.naming import MAX_OBJECT_NAME_BYTES, OutputNames, row_id

PREFIXES = dict(
    source_prefix="raw/",
    crops_prefix="processed/",
    overview_prefix="processed-overview/",
    markers_prefix="processed-markers/",
)


def names_for(name):
    return OutputNames.for_object(name, **PREFIXES)


def test_layout_matches_the_notebook_and_keeps_camera_folders():
    names = names_for("raw/cam 1/bag.large.JPG")
    assert names.crop(12) == "processed/cam 1/bag.large.JPG-output-0012.jpg"
    assert names.overview == "processed-overview/cam 1/processed_bag.large.JPG.jpg"
    assert names.marker == "processed-markers/cam 1/bag.large.JPG.json"
    assert names.claim == "processed-markers/cam 1/bag.large.JPG.claim"


def test_same_stem_different_extension_shares_no_output_name():
    jpg, png = names_for("raw/cam1/a.jpg"), names_for("raw/cam1/a.png")
    for pick in (
        lambda n: n.crop(1),
        lambda n: n.overview,
        lambda n: n.marker,
        lambda n: n.claim,
        lambda n: n.crops_glob_prefix,
    ):
        assert pick(jpg) != pick(png)
    assert not jpg.crops_glob_prefix.startswith(png.crops_glob_prefix)


def test_dot_segments_cannot_climb_out_of_a_prefix():
    names = names_for("raw/../../etc/./passwd.jpg")
    assert names.crop(1) == "processed/etc/passwd~ab1b415396ea2e13.jpg-output-0001.jpg"
    assert names.overview == "processed-overview/etc/processed_passwd~ab1b415396ea2e13.jpg.jpg"
    assert names.marker == "processed-markers/etc/passwd~ab1b415396ea2e13.jpg.json"


def test_names_that_clean_to_the_same_path_keep_separate_outputs():
    # Cloud Storage names are flat: each of these is a different object from raw/cam1/a.jpg.
    variants = [
        "raw/cam1/a.jpg",
        "raw//cam1/a.jpg",
        "raw/cam1//a.jpg",
        "raw/./cam1/a.jpg",
        "raw/x/../cam1/a.jpg",
        "raw/../cam1/a.jpg",
        "raw/cam1/a.jpg/",
    ]
    all_names = [names_for(name) for name in variants]
    for pick in (lambda n: n.crop(1), lambda n: n.overview, lambda n: n.marker, lambda n: n.crops_glob_prefix):
        assert len({pick(names) for names in all_names}) == len(variants)
    assert all(
        not a.crops_glob_prefix.startswith(b.crops_glob_prefix) for a in all_names for b in all_names if a is not b
    )


def test_very_long_names_are_shortened_uniquely():
    first, second = names_for("raw/" + "é" * 1000 + "a.jpg"), names_for("raw/" + "é" * 1000 + "b.jpg")
    for names in (first, second):
        for name in (names.crop(9999), names.overview, names.marker, names.claim):
            assert len(name.encode()) <= MAX_OBJECT_NAME_BYTES
    assert first.crop(1) != second.crop(1) and first.marker != second.marker


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=1200))
def test_any_name_gives_outputs_under_their_prefixes(tail):
    names = names_for("raw/" + tail)
    for name, prefix in (
        (names.crop(1), "processed/"),
        (names.overview, "processed-overview/"),
        (names.marker, "processed-markers/"),
        (names.claim, "processed-markers/"),
    ):
        assert name.startswith(prefix)
        assert "/../" not in "/" + name[len(prefix) :] and not name[len(prefix) :].startswith("/")
        assert len(name.encode("utf-8", errors="surrogatepass")) <= MAX_OBJECT_NAME_BYTES


def test_row_ids_are_stable_and_distinct():
    assert row_id("b", "raw/a.jpg", 1, "object", 1) == row_id("b", "raw/a.jpg", 1, "object", 1)
    ids = {row_id("b", "raw/a.jpg", generation, "object", index) for generation in (1, 2) for index in range(50)}
    assert len(ids) == 100
