import pytest

from lite_delta.errors import LiteDeltaError
from lite_delta.utility_scorers import SCORERS, get_scorer
from lite_delta.utility_scorers import list_item_count, list_marker_count, paragraph_count, sections_count, word_count


@pytest.mark.parametrize(
    "text, expected",
    [
        ("**Introduction**\nText.\n**Method:**\nMore.\n**Results**:\nDone.", 3),
        ("# Title\n## Sub\n###### Deep\n####### too deep\n#nospace", 3),
        ("Some **bold** words in a sentence.\n**Bold** then text", 0),
        ("**a** and **b**", 0),  # two bold spans on one line are not a header
        ("****\n** spaced **\n**", 0),
        ("  **Indented**  \n\t**Tabbed**", 1),  # up to 3 spaces like Markdown; a tab makes it code
        ("**Intro**\r\n\r\n**Body**\r\n", 2),
        ("", 0),
    ],
)
def test_sections_count(text, expected):
    assert sections_count(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("one", 1),
        ("one\ntwo lines", 1),
        ("one\n\ntwo\n\n\n\nthree", 3),
        ("one\n   \t\ntwo", 2),  # whitespace-only lines separate too
        ("\n\n  lead\n\ntrail\n\n", 2),
        ("a\r\n\r\nb", 2),
        ("", 0),
        ("   \n\n  ", 0),
    ],
)
def test_paragraph_count(text, expected):
    assert paragraph_count(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- a\n* b\n+ c", 3),
        ("1. a\n2) b\n10. c", 3),
        ("  - nested\n    1. deeper", 2),
        ("**Bold header**\n**Bold:** text", 0),
        ("---\n***\n* * *\n- - -\n___", 0),  # horizontal rules
        ("-no space\n1.no space\n-\n- ", 0),
        ("Plain text - with a dash\n3.14 is pi", 0),
        ("* **Bold item**: text", 1),
    ],
)
def test_list_marker_count(text, expected):
    assert list_marker_count(text) == expected
    assert get_scorer("list_markers") is list_marker_count


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- Water the soil\n* Move them to shade\n+ Ask the neighbour", 3),
        ("1. **Water**: soak the soil first\n2) **Light**: keep them out of sun", 2),
        ("  - nested item with words\n    1. a deeper item here", 2),
        ("- a\n* b\n+ c", 0),  # markers with no real words
        ("- Apples\n- Two words", 0),  # fewer than 3 real words
        # what the over-trained demo student wrote: markers, numbers and emphasis, no content
        ("1. **1.1.1.1.1**\n\n1.1.1.1.1\n\n1.1.1.1.1", 0),
        ("1. **1. **1.1\n\n1. **2. **2.1\n\n1. **3. **3.1", 0),
        ("1. \n2.\n3. \n4.\n5.", 0),
        ("- Keep them watered\n- keep THEM watered!\n- Keep them watered", 1),  # repeats count once
        ("1. Gießen Sie die Pflanzen\n2. 给植物 浇水 每天 早上", 2),  # letters of any script are words
        ("---\n***\n- - -\n___", 0),
    ],
)
def test_list_item_count_needs_content(text, expected):
    assert list_item_count(text) == expected
    assert list_item_count(text) <= list_marker_count(text)


def test_word_count():
    assert word_count("  Hello,   world!\n\nThree  ") == 3
    assert word_count("") == 0


def test_scorers_return_floats():
    for fn in SCORERS.values():
        assert isinstance(fn("**A**\n\n- b"), float)


def test_registry_names():
    assert set(SCORERS) == {"sections", "paragraphs", "list_items", "list_markers", "length"}
    assert get_scorer("length") is word_count
    assert get_scorer("sections") is sections_count


def test_get_scorer_imports_user_function():
    assert get_scorer("os.path:basename")("a/b") == "b"


@pytest.mark.parametrize("name", ["bogus", "no_such_module_xyz:f", "os.path:no_such_function", ":f", ".foo:bar",
                                  "..x:y", "os.path:", "a b:c", "this_raises_on_import:f"])
def test_get_scorer_unknown_names_builtins(name, tmp_path, monkeypatch):
    (tmp_path / "this_raises_on_import.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LiteDeltaError, match="sections, paragraphs, list_items, list_markers, length"):
        get_scorer(name)


def test_get_scorer_rejects_non_callable():
    with pytest.raises(LiteDeltaError, match="not a function"):
        get_scorer("os:sep")
