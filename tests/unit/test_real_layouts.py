"""The five public datasets' column layouts and file formats, read through the `paper`
profile's dataset tables (real file names, formats and cleaning rules) from small files written
here in each layout, plus the ways of pointing a dataset at a file (--data-dir,
MEDQA_DATA_<NAME>). Rows are made up; the layouts follow the public sources."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_rows

from medqa_core.data.datasets import load_examples
from medqa_core.data.split import load_split
from medqa_core.errors import DatasetError
from medqa_core.profile import load_profile
from medqa_core.specs import SplitConfig

WIKIDOC = [  # medalpaca/medical_meadow_wikidoc: instruction / input / output, a JSON list
    {"instruction": "Answer this question truthfully", "input": "What is cellulitis?",
     "output": "Cellulitis is a bacterial infection of the skin."},
    {"instruction": "Answer this question truthfully", "input": "What causes gout?",
     "output": "Gout is caused by uric acid crystals in a joint."},
    {"instruction": "Answer this question truthfully", "input": "What is a stye?", "output": ""},  # empty answer
    {"instruction": "Answer this question truthfully", "input": "what causes  gout?",
     "output": "A duplicate question (case, spacing)."},
]

MENTAL = [  # Amod/mental_health_counseling_conversations: Context / Response, JSON Lines
    {"Context": "I feel anxious before every exam.", "Response": "Many students feel this way; breathing exercises help."},
    {"Context": "I feel anxious before every exam.", "Response": "A second counselor's reply to the same post."},
    {"Context": "My partner and I argue daily.", "Response": "Couples counseling can help you both be heard."},
    {"Context": "I cannot sleep since my father died.", "Response": "Grief often disturbs sleep; be gentle with yourself."},
]

MEDICAL = [  # medical dataset (iCliniq-style): input / answer_chatdoctor / answer_icliniq
    {"input": "Hi doctor, I have had a dry cough for a week.", "answer_chatdoctor": "Hi, this looks like a viral bronchitis. Take care.",
     "answer_icliniq": "Viral bronchitis."},
    {"input": "Hello doctor, my knee is swollen after a run.", "answer_chatdoctor": "Hello, thanks for your query. It is likely a sprain; rest and ice it.",
     "answer_icliniq": "Sprain."},
    {"input": "My eyes itch every spring.", "answer_chatdoctor": None, "answer_icliniq": "Allergy."},  # missing answer
]

CHATBOT = [  # ruslanmv/ai-medical-chatbot: Description / Patient / Doctor, CSV
    {"Description": "Q. What causes dizziness in the morning?",
     "Patient": "Hi doctor, I am 40 and I feel dizzy every morning, with a headache.",
     "Doctor": "Hi. I have gone through your query. Morning dizziness with headache suggests high blood pressure. "
               "Check it at home twice a day. For more information consult a cardiologist online --> https://example.org/ask/cardio"},
    {"Description": "Q. Is a rash after penicillin an allergy?",
     "Patient": "Hello doctor, I got an itchy rash, after penicillin. Please help.",
     "Doctor": "Hello. Yes, a rash after penicillin is likely an allergy; stop it and tell your doctor. Regards."},
    {"Description": "Q. Why does my back hurt?", "Patient": "My lower back hurts after lifting boxes.",
     "Doctor": "Hi. " + "Rest and gentle stretching help. " * 150},  # over the length cap
]

HCM = [  # lavita/ChatDoctor-HealthCareMagic-100k: instruction / input / output
    {"instruction": "If you are a doctor, please answer the medical questions based on the patient's description.",
     "input": "Hi doctor, I have a sore throat and fever since two days.",
     "output": "Hi, thanks for your query. This is probably tonsillitis. Gargle with warm salt water. "
               "Hope this helps. Regards Dr. Jane Doe"},
    {"instruction": "If you are a doctor, please answer the medical questions based on the patient's description.",
     "input": "Hello, my son has a rash on his cheeks.",
     "output": "Hello and welcome to Chat Doctor. This looks like fifth disease, which is harmless. Wishing you good health."},
    {"instruction": "If you are a doctor, please answer the medical questions based on the patient's description.",
     "input": "Hi doctor, is this serious?", "output": "Hi. Hope this helps. Take care."},  # empty after cleaning
]

PROFILE = load_profile("paper")


def profile_in(tmp_path: Path):
    return load_profile("paper", data_dir=tmp_path)


def test_wikidoc_layout_json(tmp_path):
    prof = profile_in(tmp_path)
    write_rows(tmp_path / prof.datasets["wikidoc"].file, WIKIDOC, "json")
    ex, st = load_examples(prof.datasets["wikidoc"], tmp_path)
    assert [e.question for e in ex] == ["What is cellulitis?", "What causes gout?"]
    assert ex[1].answer == WIKIDOC[1]["output"]
    assert (st.rows_read, st.dropped_empty, st.dropped_duplicate, st.kept, st.cleaned) == (4, 1, 1, 2, {})


def test_mental_health_layout_jsonl_with_json_suffix(tmp_path):
    prof = profile_in(tmp_path)
    assert prof.datasets["mental_health"].file.endswith(".json")  # the public file is JSONL despite its name
    write_rows(tmp_path / prof.datasets["mental_health"].file, MENTAL, "jsonl")
    ex, st = load_examples(prof.datasets["mental_health"], tmp_path)
    assert [e.answer for e in ex][0] == MENTAL[0]["Response"]  # first reply to a repeated post is kept
    assert (st.rows_read, st.dropped_duplicate, st.kept) == (4, 1, 3)


def test_medical_dataset_layout_json_with_cleaning(tmp_path):
    prof = profile_in(tmp_path)
    write_rows(tmp_path / prof.datasets["medical_dataset"].file, MEDICAL, "json")
    ex, st = load_examples(prof.datasets["medical_dataset"], tmp_path)
    assert [(e.question, e.answer) for e in ex] == [
        ("I have had a dry cough for a week.", "This looks like a viral bronchitis."),
        ("My knee is swollen after a run.", "It is likely a sprain; rest and ice it."),
    ]
    assert st.dropped_empty == 1
    assert st.cleaned == {"question_greeting": 2, "answer_greeting": 2, "answer_signoff": 1}


def test_ai_medical_chatbot_layout_csv_with_cleaning_and_cap(tmp_path):
    prof = profile_in(tmp_path)
    write_rows(tmp_path / prof.datasets["ai_medical_chatbot"].file, CHATBOT, "csv")
    ex, st = load_examples(prof.datasets["ai_medical_chatbot"], tmp_path)
    assert [e.question for e in ex] == [
        "What causes dizziness in the morning?\nI am 40 and I feel dizzy every morning, with a headache.",
        "Is a rash after penicillin an allergy?\nI got an itchy rash, after penicillin. Please help.",
    ]
    assert [e.answer for e in ex] == [
        "Morning dizziness with headache suggests high blood pressure. Check it at home twice a day.",
        "Yes, a rash after penicillin is likely an allergy; stop it and tell your doctor.",
    ]
    assert st.dropped_too_long == 1 and st.kept == 2
    assert st.cleaned == {"question_prefix": 3, "question_greeting": 2, "answer_greeting": 3, "answer_signoff": 2}


def test_healthcaremagic_layout_json_with_cleaning(tmp_path):
    prof = profile_in(tmp_path)
    write_rows(tmp_path / prof.datasets["healthcaremagic"].file, HCM, "json")
    ex, st = load_examples(prof.datasets["healthcaremagic"], tmp_path)
    assert [(e.question, e.answer) for e in ex] == [
        ("I have a sore throat and fever since two days.", "This is probably tonsillitis. Gargle with warm salt water."),
        ("My son has a rash on his cheeks.", "This looks like fifth disease, which is harmless."),
    ]
    assert st.dropped_empty == 1 and st.kept == 2
    assert st.cleaned == {"question_greeting": 3, "answer_greeting": 3, "answer_signoff": 3}


@pytest.mark.parametrize("name, rows", [("wikidoc", WIKIDOC), ("mental_health", MENTAL), ("medical_dataset", MEDICAL),
                                        ("ai_medical_chatbot", CHATBOT), ("healthcaremagic", HCM)])
@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv", "json"])
def test_every_layout_in_every_format_via_env_var(tmp_path, monkeypatch, name, rows, fmt):
    """Hub exports come as parquet, mirrors as csv/json/jsonl: MEDQA_DATA_<NAME> points at any of them."""
    spec = PROFILE.datasets[name]
    native_dir = tmp_path / "native"
    native_dir.mkdir()
    native_fmt = spec.format or Path(spec.file).suffix.lstrip(".")
    write_rows(native_dir / spec.file, rows, native_fmt)
    expected, expected_stats = load_examples(spec, native_dir)
    other = write_rows(tmp_path / f"export.{fmt}", rows if fmt != "csv" else [{k: ("" if v is None else v) for k, v in r.items()} for r in rows], fmt)
    assert spec.env_var == f"MEDQA_DATA_{name.upper()}"
    monkeypatch.setenv(spec.env_var, str(other))
    got, stats = load_examples(spec, tmp_path / "no-such-dir")
    assert [(e.id, e.question, e.answer) for e in got] == [(e.id, e.question, e.answer) for e in expected]
    assert stats == expected_stats


def test_env_var_to_missing_file_names_variable_and_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDQA_DATA_WIKIDOC", str(tmp_path / "nope.json"))
    with pytest.raises(DatasetError) as info:
        load_examples(PROFILE.datasets["wikidoc"], tmp_path)
    msg = str(info.value)
    assert "MEDQA_DATA_WIKIDOC" in msg and "nope.json" in msg and "'wikidoc'" in msg and "\n" not in msg


def test_data_dir_option_reaches_the_loader(tmp_path):
    prof = profile_in(tmp_path)
    assert prof.data_dir == tmp_path
    write_rows(tmp_path / prof.datasets["wikidoc"].file, WIKIDOC * 1, "json")
    assert load_examples(prof.datasets["wikidoc"], prof.data_dir)[1].kept == 2


def test_split_of_real_layout_records_leak_and_cleaning(tmp_path):
    prof = profile_in(tmp_path)
    rows = [dict(r, input=f"Hi doctor, {r['input']} (case {i})") for i in range(30) for r in HCM[:2]]
    write_rows(tmp_path / prof.datasets["healthcaremagic"].file, rows, "json")
    s = load_split(prof.datasets["healthcaremagic"], tmp_path, SplitConfig(test_fraction=0.2, seed=1))
    assert s.stats.kept == 60 and s.stats.cleaned["question_greeting"] == 60
    assert s.stats.leak["test"] == len(s.test) and s.stats.leak["near"] == len(s.test)  # templated rows leak
