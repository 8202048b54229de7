"""benchmarks/README.md, and the claims block of README.md, are what benchmarks/report.py generates from
benchmarks/results/*.json: a figure edited by hand, or a results file changed without regenerating the
documents, fails here (python benchmarks/report.py rewrites them)."""
import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:  # the benchmark scripts' names shadow no model file
    sys.path.append(str(ROOT / "benchmarks"))
report = importlib.import_module("report")
DOCS = report.generate()  # once: rendering reads every results file


def test_every_document_is_what_the_results_generate():
    assert report.README in DOCS  # README.md joins once it has the claims markers
    for path, text in DOCS.items():
        assert not report.first_difference(path, text), report.first_difference(path, text)


def edit_a_figure(text, where):
    """text with the first figure of the first table row under `where` changed by one in its last digit."""
    start = text.index(where)
    row = next(line for line in text[start:].splitlines() if line.startswith("| ") and re.search(r"\d\.\d", line))
    figure = re.search(r"\d+\.\d+", row).group()
    edited = row.replace(figure, figure[:-1] + str((int(figure[-1]) + 1) % 10), 1)
    return text.replace(row, edited, 1), row


def test_a_figure_edited_by_hand_is_named(tmp_path):
    text = DOCS[report.README]
    for section in ("## Likelihoods on one footing", "## Flow matching's paths", "## GPU"):
        edited, row = edit_a_figure(text, section)
        path = tmp_path / "README.md"
        path.write_text(edited)
        diff = report.first_difference(path, text)
        line = text.splitlines().index(row) + 1
        assert diff.startswith(f"{path}:{line}: the file has") and row in diff, diff
    path.write_text(text + "a line added by hand\n")
    assert "the file has" in report.first_difference(path, text)


def test_the_claims_block_is_regenerated_and_the_rest_of_readme_kept():
    start, end = report.MARKERS
    text = f"# title\n\nprose\n{start}\n| a figure | 1.23 edited by hand |\n{end}\nmore prose\n"
    out = report.claims_readme(text)
    assert out == f"# title\n\nprose\n{start}\n{report.run_all_part('claims_table').strip()}\n{end}\nmore prose\n"
    assert "1.23 edited by hand" not in out
    assert report.claims_readme("# a README without the markers\n") is None
    if report.TOP in DOCS:  # README.md's own block: a figure edited there is named too
        edited, row = edit_a_figure(DOCS[report.TOP], start)
        assert report.claims_readme(edited) == DOCS[report.TOP]


def test_check_exits_1_naming_the_line_where_a_document_differs(tmp_path, monkeypatch, capsys):
    path = tmp_path / "README.md"
    monkeypatch.setattr(report, "generate", lambda: {path: "line 1\nline 2\n"})
    path.write_text("line 1\nline 2\n")
    assert report.main(["--check"]) == 0
    path.write_text("line 1\nline 2 edited\n")
    assert report.main(["--check"]) == 1
    assert f"{path}:2: the file has\n  line 2 edited\nthe results give\n  line 2" in capsys.readouterr().err


def test_no_history_words_in_the_generated_prose():
    """The documents say what is measured, not how it came to be: no 'was', 'before', 'now', 'earlier',
    'this session', issue numbers or before -> after arrows."""
    words = re.compile(r"\b(was|were|before|now|earlier|previously|no longer|this session)\b|->|issue \d", re.I)
    for path, text in DOCS.items():
        if path == report.README:
            assert not words.findall(text), words.findall(text)


def test_every_printed_interval_contains_its_estimate():
    """Wherever a document prints an estimate beside its interval, 'E (lo to hi' or '| E | lo to hi',
    lo <= E <= hi: the guard of benchmarks/stats.py's promise on what the reader sees."""
    num = r"(-?\d[\d.e+-]*)"
    pairs = re.compile(num + r" \(" + num + " to " + num + r"\b|\| " + num + r" \| " + num + " to " + num + r"\b")
    seen = 0
    for text in DOCS.values():
        for m in pairs.finditer(text):
            e, lo, hi = (float(v) for v in (m.groups()[:3] if m.group(1) else m.groups()[3:]))
            seen += 1
            tol = 5e-3 * abs(e) + 1e-9  # three significant digits printed
            assert lo <= e + tol and e <= hi + tol, m.group()
    assert seen > 50
