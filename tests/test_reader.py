"""Option-scoring rules, evidence with the gold document put in or taken out, Stage A (reader SFT) on a
tiny VLM, choosing the scoring rule on val, and shipping a trained run as the default's weights."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from rag.cli import main
from rag.corpus import read_qa
from rag.prompt import EvidenceText, build_prompt
from rag.scoring import RULES, OptionLogProb, ScoringChoice, baseline_prompt, combine, read_rule, write_rule

EVIDENCE = [EvidenceText(1, "Cardiomegaly", "The cardiothoracic ratio is 0.62. Diagnosis: cardiomegaly.")]
OPTIONS = ["cardiomegaly", "normal chest radiograph", "pneumothorax"]


@pytest.fixture(scope="module")
def tiny_generator(tiny_vlm_dir):
    from rag.generator import create_generator

    return create_generator(str(tiny_vlm_dir))


@pytest.fixture(scope="module")
def tiny_rag(small_index, tiny_generator):
    from rag.pipeline import MedRAG
    from rag.retriever import Retriever

    return MedRAG(Retriever.load(small_index), tiny_generator)


def test_rules_combine_log_probabilities_as_defined():
    main_lp = [OptionLogProb(-2.0, 1), OptionLogProb(-6.0, 4)]
    base_lp = [OptionLogProb(-1.0, 1), OptionLogProb(-7.0, 4)]
    assert combine("sum", main_lp, None) == [-2.0, -6.0]
    assert combine("mean", main_lp, None) == [-2.0, -1.5]      # the per-token mean favours the long option
    assert combine("calibrated", main_lp, base_lp) == [-1.0, 1.0]
    assert combine("pmi", main_lp, base_lp) == [-1.0, 1.0]
    with pytest.raises(ValueError, match="baseline"):
        combine("pmi", main_lp, None)
    with pytest.raises(ValueError, match="unknown scoring rule 'max'"):
        combine("max", main_lp, None)


def test_baseline_prompts_remove_what_each_rule_measures():
    from PIL import Image

    image = Image.new("RGB", (32, 32))
    assert baseline_prompt("sum", "Q?", EVIDENCE, image, OPTIONS) is None
    assert baseline_prompt("mean", "Q?", EVIDENCE, image, OPTIONS) is None
    pmi = baseline_prompt("pmi", "What is the diagnosis?", EVIDENCE, image, OPTIONS)
    assert pmi.messages == build_prompt("What is the diagnosis?", [], image, OPTIONS).messages and pmi.images == [image]
    free = baseline_prompt("calibrated", "What is the diagnosis?", EVIDENCE, image, OPTIONS)
    assert free.images == [] and "N/A" in free.messages[1]["content"][-1]["text"]
    # a prompt without evidence has nothing for PMI to remove: it falls back to the content-free prompt
    assert baseline_prompt("pmi", "Q?", [], image, OPTIONS).messages == free.messages


def test_scoring_choice_round_trip_old_files_and_bad_files(tmp_path: Path):
    assert read_rule(tmp_path) == ScoringChoice.single("mean")
    choice = ScoringChoice({"yes_no": "sum", "multiple_choice": "pmi"}, yes_bias=0.5)
    write_rule(tmp_path, choice, {"chosen_on": "test"})
    assert read_rule(tmp_path) == choice
    (tmp_path / "scoring.json").write_text('{"rule": "pmi"}')     # saved before rules per kind
    assert read_rule(tmp_path) == ScoringChoice.single("pmi")
    (tmp_path / "scoring.json").write_text("{}")
    with pytest.raises(ValueError, match="scoring.json"):
        read_rule(tmp_path)
    with pytest.raises(ValueError, match="unknown scoring rule"):
        ScoringChoice({"yes_no": "best", "multiple_choice": "pmi"})
    with pytest.raises(ValueError, match="one rule for each"):
        ScoringChoice({"yes_no": "sum"})


def test_yes_bias_applies_to_yes_no_only_and_is_fitted_to_the_best_cut():
    from rag.eval_scoring import fit_yes_bias

    choice = ScoringChoice({"yes_no": "sum", "multiple_choice": "pmi"}, yes_bias=1.0)
    assert choice.rule_for(["No", "Yes"]) == "sum" and choice.rule_for(OPTIONS) == "pmi"
    assert choice.adjust(["no", "Yes"], [-1.0, -0.5]) == [-1.0, -1.5]   # "yes" loses its 1.0 head start
    assert choice.adjust(OPTIONS, [-1.0, -0.5, -2.0]) == [-1.0, -0.5, -2.0]
    # margins score(yes) - score(no): a model that leans to yes; the right answers say yes on the top two
    margins, says_yes = [3.0, 2.0, 1.0, 0.5, -1.0], [True, True, False, False, False]
    assert fit_yes_bias(margins, says_yes, margins) == pytest.approx(1.5)
    assert fit_yes_bias([1.0, -1.0], [True, False], [1.0, -1.0]) == 0.0   # nothing to correct: no bias


def test_score_options_applies_the_rule_to_batched_log_probabilities(tiny_generator):
    prompt = build_prompt("What is the diagnosis?", EVIDENCE, None, OPTIONS)
    raw = tiny_generator.option_logprobs(prompt, OPTIONS)
    assert [r.tokens for r in raw] == [len(tiny_generator.tokenizer(o, add_special_tokens=False)["input_ids"])
                                       for o in OPTIONS]
    assert tiny_generator.score_options(prompt, OPTIONS, "sum") == pytest.approx([r.total for r in raw])
    base = baseline_prompt("pmi", "What is the diagnosis?", EVIDENCE, None, OPTIONS)
    alone = tiny_generator.option_logprobs(base, OPTIONS)
    pmi = tiny_generator.score_options(prompt, OPTIONS, "pmi", base)
    assert pmi == pytest.approx([r.total - a.total for r, a in zip(raw, alone)], abs=1e-5)
    assert set(RULES) == {"sum", "mean", "calibrated", "pmi"}


def test_gold_document_is_put_in_or_taken_out_keeping_the_count(tiny_rag, small_corpus):
    from rag.evidence_variants import gold_position, with_gold, without_gold

    docs = {d.id: d for d in tiny_rag.retriever.bundle.docs.values()}
    items = [q for q in read_qa(small_corpus / "qa.jsonl") if q.split == "val" and q.options][:8]
    for item in items:
        context = tiny_rag.gather(item.question, None, item.options, k=3)
        gold = with_gold(context, docs[item.doc_id], item.question, item.options, position=1)
        assert len(gold.evidence) == len(context.evidence)
        assert [e.number for e in gold.evidence] == list(range(1, len(gold.evidence) + 1))
        number = gold_position(gold, item.doc_id)
        assert number is not None
        if gold_position(context, item.doc_id) is None:
            assert number == 2  # put where it was asked to go
        gone = without_gold(gold, item.doc_id, item.question, item.options)
        assert gold_position(gone, item.doc_id) is None and len(gone.evidence) == len(gold.evidence) - 1


def test_reader_rows_follow_the_mix_hold_out_templates_and_balance_yes_no(tiny_rag, small_corpus):
    from finetune.reader import ReaderMix, reader_rows
    from rag.qa_inputs import closed_questions, is_held_out

    items = closed_questions(small_corpus / "qa.jsonl", ["train"])
    rows, counts = reader_rows(tiny_rag, items, small_corpus, ReaderMix(seed=1), progress=False)
    assert counts["used"] == len(rows) and counts["held_out"] == sum(is_held_out(i) for i in items)
    assert counts["used"] <= len(items) - counts["held_out"]
    answers = Counter(counts["yes_no_answers"])
    assert answers["yes"] == answers["no"]
    with_evidence = [r for r in rows if "Evidence:" in r["prompt"][-1]["content"]]
    assert counts["forms"].get("gold", 0) > counts["forms"].get("distractors", 0)
    cited = [r for r in with_evidence if r["completion"][0]["content"].endswith("]")]
    assert len(cited) >= counts["forms"]["gold"]  # every gold prompt's answer cites its number
    for row in cited:
        number = int(row["completion"][0]["content"].rsplit("[", 1)[1].rstrip("]"))
        assert f"[{number}]" in row["prompt"][-1]["content"]


def test_kind_weights_repeat_and_thin_question_kinds(tiny_rag, small_corpus):
    from finetune.reader import ReaderMix, parse_kind_weights, reader_rows
    from rag.qa_inputs import closed_questions, question_kind

    assert parse_kind_weights("yes_no=3, multiple_choice=0.25") == {"yes_no": 3.0, "multiple_choice": 0.25}
    for bad, words in (("open=2", "unknown question kind 'open'"), ("yes_no=x", "needs a number"),
                       ("yes_no=-1", "must not be negative")):
        with pytest.raises(ValueError, match=words):
            parse_kind_weights(bad)
    items = closed_questions(small_corpus / "qa.jsonl", ["train"])
    plain, counts = reader_rows(tiny_rag, items, small_corpus, ReaderMix(seed=1), progress=False)
    weighted, wcounts = reader_rows(tiny_rag, items, small_corpus,
                                    ReaderMix(seed=1, kind_weights={"yes_no": 3, "multiple_choice": 0}), progress=False)
    yes_no = sum(counts["yes_no_answers"].values())
    assert yes_no > 0 and wcounts["used"] == counts["used"] and len(plain) == counts["prompts"] == counts["used"]
    assert len(weighted) == wcounts["prompts"] == 3 * yes_no  # each yes/no question thrice, no multiple choice
    assert all("Options:\nA. yes\nB. no" in r["prompt"][-1]["content"] or "A. no\nB. yes" in r["prompt"][-1]["content"]
               for r in weighted)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rag_sft_trains_chooses_a_rule_and_ships(small_index, small_corpus, tiny_vlm_dir, tmp_path: Path):
    from safetensors.torch import load_file

    from rag.shipped import PROJECTOR_FILE, adapter_folders, apply_shipped, ship_scoring, shipped_digest
    from rag.vlm import load_vlm

    out = tmp_path / "reader"
    assert main(["finetune", "rag-sft", "--index", str(small_index), "--qa", str(small_corpus / "qa.jsonl"),
                 "--base", str(tiny_vlm_dir), "--questions", "24", "--val-questions", "6", "--out", str(out),
                 "--max-steps", "2", "--batch-size", "2", "--lr", "5e-3", "--lora-rank", "4", "--json"]) == 0
    log = json.loads((out / "adapter" / "train_log.json").read_text())
    assert log["steps"] == 2 and log["reader_data"]["used"] > 0
    scoring = json.loads((out / "merged" / "scoring.json").read_text())
    assert set(scoring["rules"].values()) <= set(RULES) and set(scoring["accuracy"]) == {"retrieved", "gold"}
    assert scoring["accuracy"]["gold"]["pmi"]["all"]["n"] == 6
    assert scoring["accuracy_chosen"]["retrieved"]["all"]["n"] == 6

    shipped = tmp_path / "shipped"
    assert main(["finetune", "export", "--run", str(out), "--out", str(shipped),
                 "--command", "medrag finetune rag-sft ..."]) == 0
    assert (shipped / "README.md").read_text().count("medrag finetune rag-sft") == 1
    assert read_rule(shipped) == read_rule(out / "merged") and shipped_digest(shipped)
    # a scoring choice made again later (`eval scoring --ship`) replaces the shipped one and the card's figures
    digest = shipped_digest(shipped)
    write_rule(out / "merged", ScoringChoice({"yes_no": "sum", "multiple_choice": "calibrated"}, 0.25),
               {"chosen_on": "a later check"})
    ship_scoring(out / "merged", "medrag eval scoring --ship", shipped)
    card = (shipped / "README.md").read_text()
    assert read_rule(shipped).yes_bias == 0.25 and "a later check" in card and shipped_digest(shipped) != digest
    assert card.count("## Figures") == card.count("## Licences") == 1 and "medrag finetune rag-sft" in card
    assert all(t.dtype == torch.float16 for t in load_file(str(shipped / PROJECTOR_FILE)).values())
    # the shipped parts turn the untrained start into the trained model, up to float16 rounding
    start, _ = load_vlm(tiny_vlm_dir)
    trained, _ = load_vlm(out / "merged")
    rebuilt = apply_shipped(start, shipped).state_dict()
    for name, tensor in trained.state_dict().items():
        assert torch.allclose(rebuilt[name], tensor, atol=2e-3), name

    # a run trained on top of the shipped model ships as a second adapter, merged after the first
    more = tmp_path / "verify"
    assert main(["finetune", "rag-sft", "--index", str(small_index), "--qa", str(small_corpus / "qa.jsonl"),
                 "--base", str(out / "merged"), "--questions", "24", "--val-questions", "6", "--out", str(more),
                 "--kind-weights", "yes_no=2,multiple_choice=0.5", "--max-steps", "2", "--batch-size", "2",
                 "--lr", "5e-3", "--lora-rank", "4", "--json"]) == 0
    assert main(["finetune", "export", "--run", str(more), "--out", str(shipped), "--on-top",
                 "--command", "medrag finetune rag-sft --kind-weights ..."]) == 0
    assert [p.name for p in adapter_folders(shipped)] == ["adapter", "adapter-2"]
    card = (shipped / "README.md").read_text()
    assert card.count("## Training") == 1 and "Then, on top of it (adapter-2/)" in card
    assert card.index("medrag finetune rag-sft ...") < card.index("--kind-weights ...") < card.index("## Figures")
    start, _ = load_vlm(tiny_vlm_dir)
    stacked, _ = load_vlm(more / "merged")
    rebuilt = apply_shipped(start, shipped).state_dict()
    for name, tensor in stacked.state_dict().items():
        assert torch.allclose(rebuilt[name], tensor, atol=4e-3), name
    first = trained.state_dict()
    assert any(not torch.allclose(t, first[n], atol=1e-4) for n, t in stacked.state_dict().items())  # it did train


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_default_vlm_loads_the_shipped_weights_offline():
    from safetensors.torch import load_file

    from rag.generator import create_generator, default_vlm_dir
    from rag.shipped import PROJECTOR_FILE, SHIPPED_DIR, shipped_digest

    digest = shipped_digest()
    assert digest, f"no trained weights in {SHIPPED_DIR}; `make default-weights` writes them"
    folder = default_vlm_dir(progress=False)
    assert folder.name.endswith(digest)
    generator = create_generator(progress=False)
    assert generator.scoring == read_rule(SHIPPED_DIR)
    projector = generator.model.model.multi_modal_projector.state_dict()
    for name, tensor in load_file(str(SHIPPED_DIR / PROJECTOR_FILE)).items():
        assert torch.equal(projector[name], tensor.float()), name
    # the untrained assembly is another checkpoint: reproducing the weights starts there
    assert default_vlm_dir(progress=False, shipped=False) != folder
