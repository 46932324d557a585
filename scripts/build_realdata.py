#!/usr/bin/env python3
"""Build the real development QA sets under realdata/ from public snapshots.

Two sets, each written as a 300-row dev file and a disjoint 300-row
``*_heldout.csv`` file (columns ``question,answer,source_id``):

* ``medquad``     -- patient-information Q&A (WikiDoc-like) from MedQuAD
                     (abachaa/MedQuAD, CC BY 4.0).  Shipped in realdata/.
* ``counselchat`` -- mental-health question / therapist answer pairs from
                     nbertagnolli/counsel-chat.  The data's licence is unclear
                     (see realdata/SOURCES.md), so it is NOT shipped: build it
                     locally into realdata/local/ (git-ignored).

Each ``--medquad`` / ``--counselchat`` argument is either a bare git dir (as
brought by the ``fetch`` tool, e.g. /work/.mirror/abachaa+MedQuAD/repo) or a
plain folder holding a checkout/extract of the repository.

Pipeline (identical for both sets, deterministic for a given snapshot+seed):
  1. parse rows; strip HTML tags, unescape entities, collapse whitespace;
  2. drop rows whose question is empty or whose answer has < 20 or > 300 words;
  3. drop duplicate questions (case/punctuation-insensitive; first kept) and,
     for MedQuAD, duplicate answers (boiler-plate answers shared by many
     questions; first kept);
  4. group rows by topic (MedQuAD: question focus; counsel-chat: question),
     shuffle the groups with ``random.Random(seed)``, take one row per group:
     the first N groups give the dev file, the next N the held-out file, so the
     two files share no topic.

Only the standard library is used.  Usage::

    python scripts/build_realdata.py --medquad /work/.mirror/abachaa+MedQuAD/repo
    python scripts/build_realdata.py --counselchat /work/.mirror/nbertagnolli+counsel-chat/repo
"""
from __future__ import annotations

import argparse
import csv
import html
import io
import json
import os
import random
import re
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEED = 20240611
DEFAULT_N = 300
MIN_WORDS = 20
MAX_WORDS = 300

# MedQuAD collections whose answers were removed by the MedQuAD authors for
# MedlinePlus copyright reasons; skipped outright (they hold no answers).
MEDQUAD_SKIP = ("10_MPlus_ADAM_QA", "11_MPlusDrugs_QA", "12_MPlusHerbsSupplements_QA")
# GARD "symptoms" answers that are mostly a Human Phenotype Ontology table
# (lists of "Abnormality of ... 90%") rather than patient prose.
HPO_MARKER = "Human Phenotype Ontology provides the following list"
COUNSELCHAT_CSV = "data/counselchat-data.csv"


# --------------------------------------------------------------------------- #
# source access: bare git dir or plain folder
# --------------------------------------------------------------------------- #
class Source:
    def __init__(self, path: str, commit: str | None = None):
        self.path = Path(path)
        if not self.path.exists():
            sys.exit(f"error: {path} does not exist")
        self.is_git = (self.path / "HEAD").is_file() and (self.path / "objects").is_dir()
        if self.is_git:
            self.commit = self._git("rev-parse", "HEAD").decode().strip()
        else:
            self.commit = commit or "unknown (plain folder)"

    def _git(self, *args: str, stdin: bytes | None = None) -> bytes:
        return subprocess.run(
            ["git", "--git-dir", str(self.path), *args],
            input=stdin, stdout=subprocess.PIPE, check=True,
        ).stdout

    def list_files(self) -> list[str]:
        if self.is_git:
            out = self._git("ls-tree", "-r", "--name-only", "-z", self.commit)
            return sorted(p for p in out.decode().split("\0") if p)
        return sorted(
            str(p.relative_to(self.path)).replace(os.sep, "/")
            for p in self.path.rglob("*") if p.is_file() and ".git" not in p.parts
        )

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        if not self.is_git:
            return {p: (self.path / p).read_bytes() for p in paths}
        req = "".join(f"{self.commit}:{p}\n" for p in paths).encode()
        out = self._git("cat-file", "--batch", stdin=req)
        result, pos = {}, 0
        for p in paths:
            nl = out.index(b"\n", pos)
            header = out[pos:nl].split()
            if len(header) < 3 or header[1] != b"blob":
                raise RuntimeError(f"cannot read {p}: {out[pos:nl]!r}")
            size = int(header[2])
            result[p] = out[nl + 1: nl + 1 + size]
            pos = nl + 1 + size + 1
        return result


# --------------------------------------------------------------------------- #
# text helpers
# --------------------------------------------------------------------------- #
_TAG = re.compile(r"<[^>]+>")


def clean_text(s: str | None) -> str:
    s = _TAG.sub(" ", s or "")
    s = html.unescape(s).replace("\u00a0", " ")
    s = " ".join(s.split())
    s = re.sub(r"\s+([?.,;:!])", r"\1", s)   # "X ?" -> "X?"
    s = re.sub(r"\?(\s*\?)+", "?", s)        # "Cancer? ?" -> "Cancer?"
    return s


# MedQuAD template / source artefacts (see realdata/SOURCES.md)
_ECHO = re.compile(r"^(?:How|What|Why|Is|Are|Can|Do|Does|Who|When|Which|Where)\b[^.!?]{3,200}\?\s+")
_SUMMARY = re.compile(r"^Summary\s*:\s*")


def clean_medquad_question(q: str) -> str:
    return re.sub(r"^What is \(are\) ", "What is ", q)


def clean_medquad_answer(a: str) -> str:
    """Drop a leading restatement of the question (GARD answers begin with
    e.g. "How might X be treated? ...") and MedlinePlus' "Summary :" label."""
    a = _SUMMARY.sub("", a)
    return _ECHO.sub("", a, count=1)


def n_words(s: str) -> int:
    return len(s.split())


def norm_key(s: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", s.lower()).split())


# --------------------------------------------------------------------------- #
# loaders -> list of dict(question, answer, source_id, group)
# --------------------------------------------------------------------------- #
def _collection_order(path: str) -> tuple[int, str]:
    top = path.split("/", 1)[0]
    m = re.match(r"(\d+)_", top)
    return (int(m.group(1)) if m else 999, path)


def load_medquad(src: Source, stats: dict) -> list[dict]:
    paths = [p for p in src.list_files()
             if p.endswith(".xml") and "/" in p and not p.startswith(MEDQUAD_SKIP)]
    paths.sort(key=_collection_order)
    rows, n_pairs, n_hpo = [], 0, 0
    for p, blob in src.read_many(paths).items():
        doc = ET.fromstring(blob)
        focus = clean_text(doc.findtext("Focus")) or p
        for qa in doc.iter("QAPair"):
            n_pairs += 1
            q_el = qa.find("Question")
            answer = qa.findtext("Answer") or ""
            if HPO_MARKER in answer:
                n_hpo += 1
                continue
            rows.append({
                "question": clean_medquad_question(clean_text(q_el.text if q_el is not None else "")),
                "answer": clean_medquad_answer(clean_text(answer)),
                "source_id": f"medquad:{p}#{q_el.get('qid') if q_el is not None else qa.get('pid')}",
                "group": norm_key(focus),
            })
    stats["input_files"] = len(paths)
    stats["rows_raw"] = n_pairs
    stats["dropped_hpo_table"] = n_hpo
    return rows


def load_counselchat(src: Source, stats: dict) -> list[dict]:
    blob = src.read_many([COUNSELCHAT_CSV])[COUNSELCHAT_CSV]
    csv.field_size_limit(1 << 30)  # a few answers embed inline images (>128 KiB)
    reader = csv.DictReader(io.StringIO(blob.decode("utf-8"), newline=""))
    raw = list(reader)
    stats["input_files"] = 1
    stats["rows_raw"] = len(raw)
    rows = []
    for i, r in enumerate(raw):
        q = clean_text(r.get("questionText")) or clean_text(r.get("questionTitle"))
        rows.append({
            "question": q,
            "answer": clean_text(r.get("answerText")),
            "source_id": f"counselchat:{COUNSELCHAT_CSV}#row{i + 2}:q{r.get('questionID', '')}",
            "group": norm_key(q),
            "_upvotes": int(r.get("upvotes") or 0),
        })
    # several therapist answers per question: keep the most up-voted answer
    # that passes the length filter (ties: first in file order).
    return rows


# --------------------------------------------------------------------------- #
# pipeline
# --------------------------------------------------------------------------- #
def filter_and_dedupe(rows: list[dict], stats: dict, dedupe_answers: bool) -> list[dict]:
    stats["dropped_empty_question"] = sum(1 for r in rows if not r["question"])
    rows = [r for r in rows if r["question"]]
    stats["dropped_empty_answer"] = sum(1 for r in rows if not r["answer"])
    stats["dropped_short_answer"] = sum(1 for r in rows if 0 < n_words(r["answer"]) < MIN_WORDS)
    stats["dropped_long_answer"] = sum(1 for r in rows if n_words(r["answer"]) > MAX_WORDS)
    rows = [r for r in rows if MIN_WORDS <= n_words(r["answer"]) <= MAX_WORDS]
    if rows and "_upvotes" in rows[0]:
        # stable sort: highest up-votes first, then file order
        rows = sorted(rows, key=lambda r: -r["_upvotes"])
    seen_q, seen_a, out, dq, da = set(), set(), [], 0, 0
    for r in rows:
        kq = norm_key(r["question"])
        if kq in seen_q:
            dq += 1
            continue
        ka = norm_key(r["answer"])
        if dedupe_answers and ka in seen_a:
            da += 1
            continue
        seen_q.add(kq)
        seen_a.add(ka)
        out.append(r)
    stats["dropped_duplicate_question"] = dq
    stats["dropped_duplicate_answer"] = da
    stats["rows_eligible"] = len(out)
    return out


def split_sample(rows: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict], int]:
    groups: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["source_id"]):
        groups.setdefault(r["group"], []).append(r)
    keys = sorted(groups)
    rng = random.Random(seed)
    rng.shuffle(keys)
    if len(keys) < 2 * n:
        sys.exit(f"error: only {len(keys)} topic groups, need {2 * n}")
    picked = [rng.choice(groups[k]) for k in keys[: 2 * n]]
    return picked[:n], picked[n:], len(keys)


def length_stats(rows: list[dict]) -> dict:
    w = sorted(n_words(r["answer"]) for r in rows)
    q = sorted(n_words(r["question"]) for r in rows)
    p90 = w[min(len(w) - 1, int(round(0.9 * (len(w) - 1))))]
    return {"rows": len(rows), "answer_words_median": statistics.median(w),
            "answer_words_p90": p90, "answer_words_min": w[0], "answer_words_max": w[-1],
            "question_words_median": statistics.median(q)}


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["question", "answer", "source_id"])
        for r in rows:
            w.writerow([r["question"], r["answer"], r["source_id"]])


def build(name: str, src: Source, out_dir: Path, n: int, seed: int, repo: str) -> dict:
    stats: dict = {"set": name, "source_repo": repo, "source_commit": src.commit,
                   "seed": seed, "min_words": MIN_WORDS, "max_words": MAX_WORDS}
    if name == "medquad":
        rows = load_medquad(src, stats)
        rows = filter_and_dedupe(rows, stats, dedupe_answers=True)
    else:
        rows = load_counselchat(src, stats)
        rows = filter_and_dedupe(rows, stats, dedupe_answers=False)
    dev, held, n_groups = split_sample(rows, n, seed)
    stats["topic_groups"] = n_groups
    stats["eligible_pool"] = length_stats(rows)
    files = {}
    for suffix, part in (("", dev), ("_heldout", held)):
        path = out_dir / f"{name}{suffix}.csv"
        write_csv(path, part)
        st = length_stats(part)
        st["path"] = path.name
        files[f"{name}{suffix}"] = st
    stats["files"] = files
    with open(out_dir / f"{name}_build.json", "w", encoding="utf-8") as fh:
        json.dump(stats, fh, indent=2, sort_keys=True)
        fh.write("\n")
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--medquad", help="abachaa/MedQuAD snapshot (bare git dir or folder)")
    ap.add_argument("--counselchat", help="nbertagnolli/counsel-chat snapshot (bare git dir or folder)")
    ap.add_argument("--commit", help="commit sha to record when a source is a plain folder")
    ap.add_argument("--medquad-out", default=str(REPO_ROOT / "realdata"))
    ap.add_argument("--counselchat-out", default=str(REPO_ROOT / "realdata" / "local"),
                    help="default realdata/local (git-ignored: licence unclear, do not commit)")
    ap.add_argument("--n", type=int, default=DEFAULT_N, help="rows per file (default 300)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args(argv)
    if not (args.medquad or args.counselchat):
        ap.error("give --medquad and/or --counselchat")
    jobs = [("medquad", args.medquad, args.medquad_out, "abachaa/MedQuAD"),
            ("counselchat", args.counselchat, args.counselchat_out, "nbertagnolli/counsel-chat")]
    for name, path, out, repo in jobs:
        if path:
            st = build(name, Source(path, args.commit), Path(out), args.n, args.seed, repo)
            print(json.dumps(st, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
