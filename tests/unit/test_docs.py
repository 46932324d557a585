"""The docs say what the code does: the README's two commands are the ones CI runs, it stays short,
every relative link in README.md and docs/*.md points at a file (and heading) that exists, and
the numbers, commands and pointers the docs take from the code, the profiles and the baselines
(issue 26) are checked against them here, so a change on either side shows up as a failing test."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
ANCHOR_LINK = re.compile(r"\]\(([^)#\s]*)#([^)\s]+)\)")
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_opens_with_the_install_and_test_commands_ci_runs():
    readme = (REPO / "README.md").read_text()
    head = readme.split("\n## ", 1)[0]
    blocks = _blocks(head)
    assert len(blocks) == 2, "README must start with exactly two commands"
    install_run, test = blocks
    assert "pip install -c constraints/cpu.txt -e '.[dev]'" in install_run and "pytest benchmarks/" in install_run
    ci = (REPO / ".ci" / "run").read_text()
    assert test.startswith(".venv/bin/pytest")
    assert re.search(rf"^{re.escape(test)}$", ci, flags=re.M), f"{test!r} is not run verbatim by .ci/run"
    install = install_run.split("&&")[1].strip()
    assert install in ci.replace(" -q ", " "), f"{install!r} is not the install command of .ci/run"


def test_readme_is_short():
    assert len((REPO / "README.md").read_bytes()) < 6 * 1024


def test_every_relative_link_resolves():
    missing = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            if not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not missing, missing


# ---- headings and pointers ------------------------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation (backticks too) dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # a '# comment' in a code block is no heading
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+?)\s*$", text, flags=re.M)}


def test_every_relative_link_anchor_names_a_heading():
    seen, missing = 0, []
    for doc in DOCS:
        for target, anchor in ANCHOR_LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            dest = (doc.parent / target) if target else doc
            if dest.suffix != ".md" or not dest.exists():
                continue  # a missing file is test_every_relative_link_resolves' finding
            seen += 1
            if anchor not in _anchors(dest):
                missing.append(f"{doc.relative_to(REPO)} -> {target}#{anchor}")
    assert seen > 5 and not missing, missing


#: "docs/X.md" or "README", optionally followed by a heading: '#anchor', ', "Heading"', or
#: 'README's "Heading"' / 'README section "Heading"' (the heading in double or single quotes)
POINTER = re.compile(r'(README(?:\.md)?|docs/[\w./-]+\.md)'
                     r'(?:#([\w-]+)|(?:\'s)?(?: section)?,? (?:"([^"\n]+)"|\'([^\'\n]+)\'))?')
#: pointers in src/ known to name a missing doc or heading, as (file, pointer text); empty now.
#: Strict: once a comment is fixed, its entry must go (the test fails on a stale entry too).
KNOWN_STALE_POINTERS: set[tuple[str, str]] = set()


def _source_pointers():
    src = REPO / "src" / "medqa_core"
    for path in sorted(src.rglob("*")):
        if path.suffix not in (".py", ".toml", ".json") or "__pycache__" in path.parts or not path.is_file():
            continue
        for m in POINTER.finditer(path.read_text(encoding="utf-8", errors="replace")):
            yield path.relative_to(REPO).as_posix(), m


def _resolves(m: re.Match[str]) -> bool:
    """A POINTER match names an existing doc and, where it names one, an existing heading of it."""
    target, anchor, heading, quoted = m.groups()
    doc = REPO / ("README.md" if target.startswith("README") else target)
    if not doc.is_file():
        return False
    heading = heading or quoted
    want = anchor or (_slug(heading) if heading else None)
    return want is None or want in _anchors(doc)


def test_source_pointers_name_existing_docs_and_headings():
    """Every "docs/X.md" and "README" a docstring, comment or message in src/ points to exists, and
    so does the heading it names ('docs/own-data.md, "Measured on real data"', 'README#...')."""
    broken, seen = set(), 0
    for where, m in _source_pointers():
        seen += 1
        if not _resolves(m):
            broken.add((where, m.group(0)))
    assert seen > 10
    assert broken == KNOWN_STALE_POINTERS, (
        f"pointers to a missing doc or heading: {sorted(broken - KNOWN_STALE_POINTERS)}; "
        f"fixed (drop them from KNOWN_STALE_POINTERS): {sorted(KNOWN_STALE_POINTERS - broken)}")


def _init_profile_text() -> str:
    """The profile `medqa-bench init` writes (tiny stand-in; nothing is loaded or written)."""
    from medqa_core import scaffold

    return scaffold.render("demo", REPO / "data" / "q.csv", scaffold.choose_model("tiny-llama"),
                           {"file": "q.csv", "question": "q", "answer": "a"},
                           {k: dict(v) for k, v in scaffold._TINY_RECIPE.items()},
                           REPO / "baselines" / "demo.json", False, "q.csv", REPO)


def _comment_text(text: str) -> str:
    """The ``#`` comment lines of a TOML text as one line (a pointer may wrap across them)."""
    return " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))


#: files that lived beside this repository, never in it: the repository must stand alone
OUTSIDE = re.compile(r"\.\./shared\b|\bshared/reference\b|\bDESIGN\.md\b")


def _docstrings_and_comments(path: Path, module_only: bool = False) -> str:
    """The docstrings (only the module's with ``module_only``) and, unless ``module_only``, the
    ``#`` comments of a Python file."""
    import ast
    import io
    import tokenize

    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    kinds = (ast.Module,) if module_only else (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    parts = [ast.get_docstring(n, clean=False) or "" for n in ast.walk(tree) if isinstance(n, kinds)]
    if not module_only:
        parts += [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.COMMENT]
    return "\n".join(parts)


def test_test_and_init_pointers_name_existing_docs_and_headings():
    """The same for the tests (tests/*.py; this file holds the pattern's own examples and is left
    out) and for the header comment `medqa-bench init` writes atop every generated profile: each
    "docs/X.md", "README.md#anchor", 'README's "Heading"' or "README section 'Heading'" resolves
    to a file and heading of this repository. And no docstring or comment in src/, no test
    module's docstring and no init header points at a file kept outside the repository
    (``OUTSIDE``)."""
    texts = {p.relative_to(REPO).as_posix(): p.read_text(encoding="utf-8")
             for p in sorted((REPO / "tests").rglob("*.py")) if p.name != Path(__file__).name}
    texts["medqa-bench init profile header"] = _comment_text(_init_profile_text())
    found = {(where, m.group(0)): _resolves(m) for where, text in texts.items() for m in POINTER.finditer(text)}
    assert any(where.startswith("medqa-bench init") for where, _ in found), "init's header names no doc any more"
    assert len(found) > 5
    assert [k for k, ok in found.items() if not ok] == []

    prose = {p.relative_to(REPO).as_posix(): _docstrings_and_comments(p)
             for p in sorted((REPO / "src" / "medqa_core").rglob("*.py"))}
    prose |= {p.relative_to(REPO).as_posix(): _docstrings_and_comments(p, module_only=True)
              for p in sorted((REPO / "tests").rglob("*.py"))}
    prose["medqa-bench init profile header"] = texts["medqa-bench init profile header"]
    assert [(where, m.group(0)) for where, text in prose.items() for m in OUTSIDE.finditer(text)] == []


def test_init_header_points_at_a_doc_that_lists_the_keys_it_writes():
    """The comment `medqa-bench init` writes atop every profile sends the reader to docs/profiles.md
    for the keys: each key init can write into a table is named there."""
    from medqa_core import scaffold

    header = _comment_text(_init_profile_text())
    assert "docs/profiles.md" in header
    keys = {k for recipe in (scaffold._TINY_RECIPE, scaffold._REAL_RECIPE) for table in recipe.values() for k in table}
    keys |= set(scaffold._GATE) | {"test_size", "test_fraction", "prior_sd", "prior_df", "file", "question", "answer"}
    keys |= {k for table in scaffold.SHIPPED_MODELS.values() for k in table}
    profiles_md = (REPO / "docs" / "profiles.md").read_text()
    assert not [k for k in sorted(keys) if not re.search(rf"\b{k}\b", profiles_md)]


# ---- docs/performance.md against the profile, the perf guard and the baseline ----------------

def _tiny_profile() -> dict:
    return tomllib.loads((REPO / "profiles" / "tiny.toml").read_text())


def _perf_md() -> str:
    return re.sub(r"\s+", " ", (REPO / "docs" / "performance.md").read_text())


def test_perf_doc_states_the_current_split_and_batch_size():
    doc, prof = _perf_md(), _tiny_profile()
    assert int(re.search(r"`\[split\] test_size = (\d+)`", doc).group(1)) == prof["split"]["test_size"]
    assert int(re.search(r"`\[generation\] batch_size = (\d+)`", doc).group(1)) == prof["generation"]["batch_size"]


def test_perf_doc_states_what_the_generation_guard_asserts():
    """The perf guard's question count: the doc quotes its assertion, and says whether the current
    split satisfies it (the "Known gap" paragraph goes when it does)."""
    doc, prof = _perf_md(), _tiny_profile()
    speed = (REPO / "benchmarks" / "test_speed.py").read_text()
    asserted = int(re.search(r"assert len\(questions\) == (\d+)", speed).group(1))
    extra = int(re.search(r"data\.train\[:(\d+)\]", speed).group(1))
    cut = re.search(r"data\.test\[:(\d+)\]", speed)
    gathered = min(prof["split"]["test_size"], int(cut.group(1)) if cut else prof["split"]["test_size"]) + extra
    assert int(re.search(r"asserts `len\(questions\) == (\d+)`", doc).group(1)) == asserted
    if asserted != gathered:
        m = re.search(r"split now gives (\d+) test questions \((\d+) with the (\d+) added\)", doc)
        assert m and tuple(map(int, m.groups())) == (prof["split"]["test_size"], gathered, extra)
    assert ("Known gap" in doc) == (asserted != gathered)


def test_perf_doc_baseline_section_is_baselines_tiny():
    doc = _perf_md()
    base = json.loads((REPO / "baselines" / "tiny.json").read_text())
    command = re.search(r"recorded by `([^`]+)`", base["source"]).group(1)
    section = doc[doc.index("## Baselines"):]
    assert re.search(r"gives the command that recorded it: `([^`]+)`", section).group(1) == command
    runs = {len(c["runs"]) for c in base["cases"].values()}
    assert runs == {5} and "five training runs per case" in section
    m = re.search(r"gemma-wikidoc's mean over the five runs is BERTScore F1 ([\d.]+) and USE F1 ([\d.]+)", section)
    metrics = base["cases"]["gemma-wikidoc"]["metrics"]
    assert (float(m.group(1)), float(m.group(2))) == (round(metrics["bert_f1"], 4), round(metrics["use_f1"], 4))


def test_perf_doc_dates_its_measurements():
    """No timing is presented as current: the page opens by naming the date and commits it was
    measured at."""
    head = _perf_md().split("Every ratio below", 1)[0]
    assert re.search(r"measured on \d{4}-\d{2}-\d{2}", head) and len(re.findall(r"\b[0-9a-f]{7}\b", head)) >= 2


# ---- README against the constraints, the workflows and the gate ------------------------------

def test_readme_says_what_picks_the_cpu_torch_wheel():
    """constraints/cpu.txt pins a version only (no +cpu build, no index), so the README must not
    claim it picks the CPU build; the index it names instead is the one the CPU workflow uses."""
    pins = [line.split("#")[0].strip() for line in (REPO / "constraints" / "cpu.txt").read_text().splitlines()]
    pins = [p for p in pins if p]
    assert any(p.startswith("torch") for p in pins)
    assert not any("+cpu" in p or "index-url" in p or p.startswith("-i") for p in pins)
    readme = re.sub(r"\s+", " ", (REPO / "README.md").read_text())
    assert not re.search(r"cpu\.txt`? (pins|picks|selects|chooses) the CPU build", readme)
    url = re.search(r"--extra-index-url (https://\S+?)`", readme).group(1)
    workflow = re.search(r"`(\.github/workflows/[\w.-]+\.yml)`", readme).group(1)
    installs = [line for line in (REPO / workflow).read_text().splitlines() if "pip install" in line]
    assert any(f"--extra-index-url {url}" in line and "-c constraints/cpu.txt" in line for line in installs)


def test_readme_verdict_example_is_what_the_gate_prints_for_baselines_tiny():
    """The example verdict: the run's value and steps are invented (each of the profile's
    gate_seeds runs at that value), everything else (baseline, band, t, df, K, R, MDE, the head
    line) is what the gate prints against baselines/tiny.json."""
    from medqa_core import gate
    from medqa_core.metrics.registry import MEASURES
    from medqa_core.profile import load_profile

    readme = (REPO / "README.md").read_text()
    section = readme.split("## A case failed", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, flags=re.S).group(1)
    example = [line.strip() for line in block.splitlines() if line.strip()]
    case_id = example[0].split(":", 1)[0]
    noise = next(line for line in example if re.match(r"\[FAIL\] \w+: [\d.]+ vs [\d.]+ ", line))
    metric, value = re.match(r"\[FAIL\] (\w+): ([\d.]+)", noise).groups()
    steps = int(re.search(r"\[FAIL\] train_steps: (\d+) vs", section).group(1))

    g = load_profile("tiny").gate
    cases = json.loads((REPO / "baselines" / "tiny.json").read_text())["cases"]
    case = cases[case_id]
    band = gate.band(case, metric, gate.variance_prior(cases, metric, g))
    tol = {**gate.DEFAULT_MIN_EFFECT, **g.metric_tolerance}[metric]
    checks = [gate.judge_noise(metric, [float(value)] * g.gate_seeds, band, g.alpha, tol, metric in g.one_sided,
                               MEASURES[metric].higher_is_better),
              *gate.judge_invariants({"train_steps": steps}, {"train_steps": case["invariants"]["train_steps"]}, False)]
    printed = [line.strip() for line in gate.Verdict(case_id, gate.status_of(checks), checks).explain().splitlines()]
    assert [line for line in example if line not in printed] == []


# ---- docs/development.md and docs/results/ ---------------------------------------------------

def test_development_doc_test_counts_are_dated():
    """A test count goes stale with the next test: development.md may quote one only beside the
    date and commit it was counted at, and gives the command that counts today's."""
    text = (REPO / "docs" / "development.md").read_text()
    for para in re.split(r"\n\s*\n|\n- ", text):
        if re.search(r"\b\d[\d,]* tests\b", para):
            assert re.search(r"\d{4}-\d{2}-\d{2}", para) and re.search(r"\b[0-9a-f]{7,40}\b", para), para
    assert "pytest --collect-only -q" in text


def test_every_results_file_is_cited():
    """Each file under docs/results/ is named by some page (README.md or docs/*.md)."""
    docs = "\n".join(d.read_text() for d in DOCS)
    results = REPO / "docs" / "results"
    files = [f.relative_to(results).as_posix() for f in sorted(results.rglob("*")) if f.is_file()]
    assert files and [f for f in files if f not in docs] == []


def test_gate_calibration_json_holds_the_mde_table_of_regression_gating():
    """development.md says docs/results/gate-calibration.json holds the numbers of the MDE table."""
    mde = json.loads((REPO / "docs" / "results" / "gate-calibration.json").read_text())["mde"]
    table = (REPO / "docs" / "regression-gating.md").read_text()
    rows = dict((m.group(1), (float(m.group(2)), float(m.group(3))))
                for m in re.finditer(r"^\| ([\w-]+) \| \d+ \| [\d.]+ \| ([\d.]+) \| [\d.]+ \| ([\d.]+) \|", table, flags=re.M))
    cases = {k: v for k, v in mde.items() if ":" not in k}
    assert len(rows) == len(cases) == 20
    assert all(rows[c] == (v["bert_f1"], v["use_f1"]) for c, v in cases.items())
