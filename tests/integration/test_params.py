"""LoRA trainable parameters of the paper profile's models, counted on meta-device skeletons
built from the architecture numbers in profiles/paper.toml, against the study's Table 1."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from medqa_core.model.params import lora_param_count, lora_param_formula
from medqa_core.profile import load_profile

REPO = Path(__file__).resolve().parents[2]
PAPER = load_profile("paper")
TABLE1 = json.loads((REPO / "baselines" / "paper.json").read_text())["models"]
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def millions(n: int) -> int:
    return round(n / 1e6)  # Table 1 prints whole millions


@pytest.fixture(scope="module")
def counts():
    return {name: lora_param_count(spec, PAPER.train) for name, spec in PAPER.models.items()}


@pytest.mark.parametrize("name", sorted(PAPER.models))
def test_meta_count_equals_closed_form(counts, name):
    spec = PAPER.models[name]
    assert counts[name].trainable == lora_param_formula(spec, PAPER.train.lora_r)
    assert counts[name].total > 3e9  # the skeleton is the full-size model


@pytest.mark.parametrize("name", ["gemma", "mistral"])
def test_table1_reproduced_with_r16_on_all_linear_projections(counts, name):
    assert PAPER.train.lora_r == 16
    assert millions(counts[name].trainable) == TABLE1[name]["trainable_params_millions"]


def test_phi_table1_mismatch_is_reported(counts):
    """Phi-3.5 fuses qkv and gate/up. r=16 on the fused modules trains 25,165,824 (25M); on the
    seven unfused projections, as trainers that split the fused modules count it, 29,884,416
    (30M when rounded like the other rows, 29M only if truncated). Table 1 says 29M: reported
    as a near-miss, not reproduced exactly."""
    phi = PAPER.models["phi"]
    assert counts["phi"].trainable == 25_165_824
    unfused = dataclasses.replace(phi, target_modules=LLAMA_LINEARS)
    assert lora_param_formula(unfused, 16) == 29_884_416
    assert TABLE1["phi"]["trainable_params_millions"] == 29


def test_llama_table1_is_not_all_seven_projections(counts):
    """Llama 3.1 8B with r=16 on all seven projections trains 41.9M (the same shapes as Mistral 7B),
    not Table 1's 39M; leaving out k_proj (or v_proj) gives 39.3M. Reported as a mismatch."""
    assert counts["llama"].trainable == 41_943_040
    assert millions(counts["llama"].trainable) != TABLE1["llama"]["trainable_params_millions"]
    no_k = dataclasses.replace(PAPER.models["llama"], target_modules=tuple(t for t in LLAMA_LINEARS if t != "k_proj"))
    assert millions(lora_param_formula(no_k, 16)) == TABLE1["llama"]["trainable_params_millions"]


def test_paper_json_matches_reference_tables():
    """baselines/paper.json is an exact transcription of shared/reference/paper-tables.md."""
    ref = REPO.parent / "shared" / "reference" / "paper-tables.md"
    if not ref.is_file():
        pytest.skip(f"{ref} not present in this checkout")
    data = json.loads((REPO / "baselines" / "paper.json").read_text())
    rows = {}
    for line in ref.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[2].startswith("0."):
            rows[f"{cells[1]}-{cells[0]}"] = [float(c) for c in cells[2:]]
    assert len(rows) == 20
    metrics = ("bert_p", "bert_r", "bert_f1", "cosine", "use_p", "use_r", "use_f1")
    assert {cid: [data["cases"][cid]["metrics"][m] for m in metrics] for cid in data["cases"]} == rows
    assert {m["name"]: (m["trainable_params_millions"], m["training_minutes"]) for m in data["models"].values()} == {
        "gemma-2-9b": (54, 437.76), "llama-3.1-8b": (39, 312.41), "mistral-7b-v0.3": (42, 370.67),
        "phi-3.5-mini": (29, 203.91)}
