"""The lost-bag search benchmarks count what they claim to (benchmarks/search.py).

Each runs a section's functions at the smallest sizes (the Gemini and Cloud Storage stand-ins in
their own processes, as in a real run) and checks the tables' shape and the bookkeeping behind
them (calls per image, rows indexed, matches found), not any speed.
"""

from __future__ import annotations

import pytest

from benchmarks import search


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every Markdown table line, header and rule included."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]


def test_rotated_puts_each_item_first_in_turn():
    assert [search.rotated("abc", i)[0] for i in range(4)] == ["a", "b", "c", "a"]
    assert search.rotated("abc", 4) == ["b", "c", "a"]


@pytest.mark.timeout(120)
def test_the_descriptor_table_has_a_row_per_object_count():
    text = search.descriptor_section(counts=(1, 3), images=2)

    header, rule, *rows = table_rows(text)
    assert len(header) == 7 and len(rule) == 7
    assert [row[0] for row in rows] == ["1", "3"]
    assert all(len(row) == 7 for row in rows)


@pytest.mark.timeout(180)
def test_only_the_indexing_pipeline_writes_embeddings():
    comparison = search.compare_pipelines(
        [search.Variant("off"), search.Variant("descriptor")], objects=2, images=2, rounds=2, warmup=1
    )

    for rounds in comparison.samples.values():
        assert [len(round_) for round_ in rounds] == [2, 2]
        assert {(s.status, s.objects) for round_ in rounds for s in round_} == {("ok", 2)}
    # (1 warm-up + 2 rounds x 2 photos) x 2 crops, all indexed; none with EMBEDDER=off.
    assert comparison.embedding_rows == {"off": 0, "descriptor": 10}
    assert comparison.embedding_statuses == {"off": ["off"], "descriptor": ["ok"]}
    assert comparison.samples["descriptor"][0][0].timings.get("index", 0.0) > 0.0
    header, _, *rows = table_rows(search.comparison_table(comparison, "off"))
    assert len(header) == 11 and [row[0] for row in rows] == ["off", "descriptor"]
    assert rows[0][7] == "-" and rows[1][7] != "-"  # the paired difference is against off only


@pytest.mark.timeout(180)
def test_gemini_pipelines_embed_on_their_own_backend():
    variants = [search.Variant("off"), search.Variant("gemini"), search.Variant("gemini", "vertex")]
    comparison = search.compare_pipelines(variants, objects=3, images=1, rounds=1, warmup=0)

    assert comparison.embedding_rows == {"off": 0, "gemini": 3, "gemini (vertex)": 3}
    # One batch call for the api-key pipeline's three crops, one call per crop on Vertex AI.
    assert comparison.calls["embedding_requests"] == 1 + 3
    assert comparison.calls["embedded_contents"] == 3 + 3
    assert comparison.calls["detection_requests"] == 3
    assert comparison.calls["methods"] == ["batchEmbedContents", "embedContent"]


@pytest.mark.timeout(180)
def test_gemini_embedding_cells_count_calls_per_image():
    cells = search.gemini_embed_samples((0.0,), (1, 9), repeats=2)

    assert set(cells) == {(0.0, backend, count) for backend in ("api-key", "vertex") for count in (1, 9)}
    assert cells[(0.0, "api-key", 9)]["calls"] == {1}
    assert cells[(0.0, "vertex", 9)]["calls"] == {9}
    assert all(cell["contents"] == {count} for (_, _, count), cell in cells.items())
    assert all(len(cell["wall"]) == 2 and len(cell["cpu"]) == 2 for cell in cells.values())
    assert search.rounds_of("vertex", 9) == 2 and search.rounds_of("api-key", 9) == 1


@pytest.mark.timeout(180)
def test_the_store_table_has_a_row_per_length_and_size():
    cells = search.store_samples((100, 250), (373, 768), repeats=2)

    assert [(cell["dimensions"], cell["rows"]) for cell in cells] == [(373, 100), (373, 250), (768, 100), (768, 250)]
    # Every search found its top 10, with and without the camera filter (one camera in ten).
    assert all(cell["matches"] == {"none": search.TOP_K, "camera": search.TOP_K} for cell in cells)
    assert all(len(cell["ms"]["none"]) == len(cell["ms"]["camera"]) == 2 for cell in cells)
    assert cells[0]["file_mib"] < cells[1]["file_mib"] and cells[1]["file_mib"] < cells[3]["file_mib"]
    assert all(cell["peak_rss"]["none"] >= cell["import_rss"] > 0 for cell in cells)
    header, _, *rows = table_rows(search.store_table(cells))
    assert len(header) == 10 and len(rows) == 4 and all(len(row) == 10 for row in rows)


@pytest.mark.timeout(180)
def test_the_searcher_cells_time_the_embedding_and_the_lookup_of_each_query():
    cells = search.searcher_samples(200, ((640, 480),), repeats=2)

    embedders = ("descriptor", "gemini (api-key, 0 ms)")
    assert set(cells) == {(name, query) for name in embedders for query in ("photo 640x480", "text")}
    for cell in cells.values():
        assert len(cell["search"]) == len(cell["embed"]) == len(cell["lookup"]) == 2
        # The embedder and the store were each called inside every timed search.
        timings = zip(cell["search"], cell["embed"], cell["lookup"], strict=True)
        assert all(embed > 0 and lookup > 0 and embed + lookup <= whole for whole, embed, lookup in timings)
