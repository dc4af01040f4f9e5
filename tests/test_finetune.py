"""RAG-PT pairs, DPO and knowledge SFT on a tiny VLM, and the factuality experiment end to end."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.lora import LM_LORA_TARGETS, TuneSettings
from finetune.pairs import Outcome, balance_pairs, pair_kinds, type_cap
from rag.cli import main
from rag.corpus import read_qa

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # pairs and training on a tiny VLM

TRAIN_FLAGS = ["--max-steps", "2", "--batch-size", "2", "--lr", "5e-3", "--lora-rank", "4", "--save-steps", "1"]


@pytest.fixture(scope="module")
def pairs_dir(small_index, small_corpus, tiny_vlm_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs") / "pairs"
    assert main(["finetune", "pairs", "--index", str(small_index), "--qa", str(small_corpus / "qa.jsonl"),
                 "--generator", str(tiny_vlm_dir), "--questions", "16", "--out", str(out), "--json"]) == 0
    return out


@pytest.fixture(scope="module")
def dpo_dir(pairs_dir, tiny_vlm_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dpo") / "ragpt"
    assert main(["finetune", "dpo", "--pairs", str(pairs_dir), "--base", str(tiny_vlm_dir), "--out", str(out),
                 "--beta", "0.2", *TRAIN_FLAGS, "--json"]) == 0
    return out


def _outcome(trace: dict) -> Outcome:
    wrong = trace["wrong_evidence_answer"]
    return Outcome(trace["with_retrieval"] == trace["answer"], trace["without_retrieval"] == trace["answer"],
                   trace["right_with_replaced_image"], None if wrong is None else wrong == trace["answer"],
                   trace["gold_in_evidence"])


def test_pair_kinds_follow_the_conditions():
    for with_, without, replaced, wrong, gold in itertools.product([True, False], [True, False], [True, False, None],
                                                                   [True, False, None], [True, False]):
        kinds = pair_kinds(Outcome(with_, without, replaced, wrong, gold))
        assert ("cross_modality" in kinds) == (with_ and replaced is True)
        assert ("helpful_evidence" in kinds) == (with_ and not without)
        assert ("harmful_evidence" in kinds) == (without and not with_)
        assert ("misread_evidence" in kinds) == (gold and not with_ and not without)
        assert ("wrong_evidence" in kinds) == (without and wrong is False)


def _pair(kind: str, chosen: str, rejected: str, yes_no: bool = True) -> dict:
    return {"pair_type": kind, "chosen": [{"content": chosen}], "rejected": [{"content": rejected}],
            "chosen_answer": chosen, "kind": "yes_no" if yes_no else "multiple_choice"}


def test_balancing_drops_identical_pairs_balances_yes_no_and_caps_each_type():
    rows = ([_pair("helpful_evidence", "no", "yes")] * 30 + [_pair("helpful_evidence", "yes", "no")] * 10
            + [_pair("harmful_evidence", "cold", "warm", yes_no=False)] * 8
            + [_pair("wrong_evidence", "A", "B", yes_no=False)] * 6 + [_pair("cross_modality", "cold", "cold")] * 9)
    kept = balance_pairs(rows, max_type_share=0.4)
    kinds = [r["pair_type"] for r in kept]
    assert "cross_modality" not in kinds                      # chosen == rejected: never kept
    helpful = [r["chosen_answer"] for r in kept if r["pair_type"] == "helpful_evidence"]
    assert helpful.count("yes") == helpful.count("no") > 0    # as often "yes" as "no" is chosen
    assert all(kinds.count(k) <= 0.4 * len(kept) for k in set(kinds))
    assert kinds.count("wrong_evidence") == 6                 # the smallest type is not cut
    assert type_cap([10, 1], 0.4) == 1 and type_cap([5, 5, 5], 0.4) == 5 and type_cap([], 0.4) == 0


def test_each_pair_exists_exactly_when_its_condition_held(pairs_dir, small_index, small_corpus, tiny_vlm_dir,
                                                          encoders):
    from finetune.pairs import load_pairs
    from rag.generator import create_generator
    from rag.pipeline import MedRAG
    from rag.qa_inputs import is_held_out
    from rag.retriever import Retriever

    traces = [json.loads(line) for line in (pairs_dir / "answers.jsonl").read_text().splitlines()]
    summary = json.loads((pairs_dir / "pairs.json").read_text())
    dataset = load_pairs(pairs_dir)
    rows = [dataset[i] for i in range(len(dataset))]
    items = {q.id: q for q in read_qa(small_corpus / "qa.jsonl")}
    assert len(traces) == summary["questions"] and 0 < len(traces) <= 16
    assert not [t for t in traces if is_held_out(items[t["qa_id"]])]
    assert sum(summary["counts"].values()) == len(rows)
    by_id = {}
    for row in rows:
        by_id.setdefault(row["qa_id"], []).append(row)
    for trace in traces:
        assert sorted(trace["pairs"]) == sorted(pair_kinds(_outcome(trace)))
        got = by_id.get(trace["qa_id"], [])
        assert sorted(r["pair_type"] for r in got) == trace["kept"] and set(trace["kept"]) <= set(trace["pairs"])
        for row in got:
            chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
            assert chosen != rejected and chosen.startswith(trace["answer"])
            expected = {"helpful_evidence": trace["without_retrieval"], "wrong_evidence": trace["wrong_evidence_answer"],
                        "cross_modality": None}.get(row["pair_type"], trace["with_retrieval"])
            if expected is not None:
                assert rejected.startswith(expected)
            assert rejected.removeprefix(rejected.split(" [")[0]) == chosen.removeprefix(trace["answer"])
            # the prompt carries exactly the evidence that test-time selection kept
            evidence = trace["wrong_evidence"] if row["pair_type"] == "wrong_evidence" else trace["evidence"]
            assert row["n_evidence"] == len(evidence)
            assert [f"\n[{n}] " in row["prompt"][1]["content"] for n in range(1, 12)] == \
                [n <= len(evidence) for n in range(1, 12)]
            if row["pair_type"] == "cross_modality":
                assert row["images"] and row["rejected_images"]
                assert row["rejected_images"][0].tobytes() != row["images"][0].tobytes()
                assert row["rejected_images"][0].size == row["images"][0].size

    # the "with retrieval" answers are what the answering pipeline itself gives (abstention off)
    text, image = encoders
    rag = MedRAG(Retriever.load(small_index, text, image), create_generator(str(tiny_vlm_dir)))
    for trace in traces[:4]:
        item = items[trace["qa_id"]]
        answer = rag.ask(item.question, image=small_corpus / item.image if item.image else None,
                         options=item.options, abstain=False)
        assert item.options[answer.option] == trace["with_retrieval"]
        assert [e.id for e in answer.evidence] == trace["evidence"]


def test_collator_gives_the_rejected_side_the_replaced_image(tiny_vlm_dir):
    from PIL import Image

    from finetune.dpo import EvidencePreferenceCollator
    from rag.counterfactual import noise_image
    from rag.vlm import load_vlm

    _, processor = load_vlm(tiny_vlm_dir)
    real, fake = Image.new("RGB", (40, 30), (200, 30, 30)), noise_image((40, 30), 1)
    msg = [{"role": "user", "content": "What is shown?"}]
    examples = [{"prompt": msg, "chosen": [{"role": "assistant", "content": "red"}],
                 "rejected": [{"role": "assistant", "content": "red"}], "images": [real], "rejected_images": [fake]},
                {"prompt": msg, "chosen": [{"role": "assistant", "content": "tongue"}],
                 "rejected": [{"role": "assistant", "content": "herb"}], "images": [], "rejected_images": []}]
    batch = EvidencePreferenceCollator(processor=processor)(examples)
    pixels = processor.image_processor([real, fake], return_tensors="pt")["pixel_values"]
    assert batch["pixel_values"].shape[0] == 2  # one image in the chosen half, one in the rejected half
    assert torch.allclose(batch["pixel_values"][0], pixels[0]) and torch.allclose(batch["pixel_values"][1], pixels[1])
    assert batch["input_ids"].shape[0] == 4


def test_compact_answer_scoring_matches_full_scoring(tiny_vlm_dir):
    from trl.trainer.utils import add_fused_lm_head

    from finetune.dpo import compact_log_probs
    from rag.vlm import load_vlm

    model, _ = load_vlm(tiny_vlm_dir)
    add_fused_lm_head(model)
    model.requires_grad_(True)
    ids = torch.randint(5, model.config.get_text_config().vocab_size, (2, 12))
    labels = ids.masked_fill(torch.arange(12) < 9, -100)   # the last 3 tokens are the answer

    def scored() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        logps = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True).log_probs
        logps.sum().backward()
        return logps.detach(), model.get_output_embeddings().weight.grad.clone()

    full_logps, full_grad = scored()
    with compact_log_probs():
        compact_logps, compact_grad = scored()
    assert (compact_logps[:, :8] == 0).all() and (compact_logps[:, 8:] < 0).all()
    assert torch.allclose(compact_logps, full_logps, atol=1e-5) and torch.allclose(compact_grad, full_grad, atol=1e-5)


def _changed_keys(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    assert before.keys() == after.keys()
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_dpo_trains_only_lora_on_the_language_model_and_resumes(dpo_dir, tiny_vlm_dir, pairs_dir):
    import re

    adapter = load_file(str(dpo_dir / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert all("language_model" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero: it trained
    base = load_file(str(tiny_vlm_dir / "model.safetensors"))
    merged = load_file(str(dpo_dir / "merged" / "model.safetensors"))
    changed = _changed_keys(base, merged)
    pattern = re.compile(LM_LORA_TARGETS)
    assert changed and all(pattern.fullmatch(k.removesuffix(".weight")) for k in changed), changed
    # the vision tower (BatchNorm running statistics included) and the projector are untouched
    assert not [k for k in changed if "vision_tower" in k or "projector" in k]
    log = json.loads((dpo_dir / "adapter" / "train_log.json").read_text())
    assert log["steps"] == 2 and log["settings"]["beta"] == 0.2 and log["settings"]["sft_weight"] == 1.0
    assert (dpo_dir / "train_loss.png").is_file()

    # resume: one more step from the last checkpoint
    assert main(["finetune", "dpo", "--pairs", str(pairs_dir), "--base", str(tiny_vlm_dir), "--out", str(dpo_dir),
                 *TRAIN_FLAGS[:0], "--max-steps", "3", "--batch-size", "2", "--lora-rank", "4", "--save-steps", "1",
                 "--resume", "--json"]) == 0
    assert json.loads((dpo_dir / "adapter" / "train_log.json").read_text())["steps"] == 3


def test_dpo_refuses_targets_outside_the_language_model(pairs_dir, tiny_vlm_dir, tmp_path, capsys):
    code = main(["finetune", "dpo", "--pairs", str(pairs_dir), "--base", str(tiny_vlm_dir), "--out",
                 str(tmp_path / "x"), "--lora-targets", r".*projector\.linear_1", "--max-steps", "1"])
    assert code == 2 and "language model" in capsys.readouterr().err
    assert not (tmp_path / "x" / "merged").exists()


def test_settings_file_then_flags(tmp_path):
    config = tmp_path / "dpo.yaml"
    config.write_text("beta: 0.3\nlearning_rate: 1.0e-5\nlora_rank: 8\n")
    settings = TuneSettings.load(config, lora_rank=4, beta=None)
    assert (settings.beta, settings.learning_rate, settings.lora_rank) == (0.3, 1e-5, 4)
    with pytest.raises(ValueError, match="sft_weight"):
        TuneSettings.load(sft_weight=-0.5)
    config.write_text("betta: 0.3\n")
    with pytest.raises(ValueError, match="betta"):
        TuneSettings.load(config)


def test_knowledge_sft_runs_and_teaches_document_facts(small_corpus, tiny_vlm_dir, tmp_path):
    """After SFT on one document, the model finds that document's facts more likely than before."""
    from finetune.sft import fact_examples
    from rag.corpus import copy_corpus_slice, read_documents
    from rag.generator import create_generator
    from rag.prompt import build_prompt

    radiology = next(i for i, d in enumerate(read_documents(small_corpus / "corpus.jsonl")) if d.domain == "radiology")
    corpus = copy_corpus_slice(small_corpus, tmp_path / "one-doc", "corpus.jsonl", slice(radiology, radiology + 1))
    doc = read_documents(corpus)[0]
    facts = [(f["prompt"][1]["content"].split("Question: ", 1)[1], f["completion"][0]["content"])
             for f in fact_examples(doc)]
    assert any(q.startswith("What is the impression of") for q, _ in facts)
    out = tmp_path / "sft"
    assert main(["finetune", "sft", "--corpus", str(corpus), "--qa", str(small_corpus / "qa.jsonl"),
                 "--questions", "1", "--base", str(tiny_vlm_dir), "--out", str(out), *TRAIN_FLAGS,
                 "--max-steps", "6", "--json"]) == 0
    changed = _changed_keys(load_file(str(tiny_vlm_dir / "model.safetensors")),
                            load_file(str(out / "merged" / "model.safetensors")))
    assert changed and all("language_model.layers" in k for k in changed)

    def fact_log_prob(model_dir: Path) -> float:
        generator = create_generator(str(model_dir))
        return sum(generator.score_options(build_prompt(q, []), [a])[0] for q, a in facts) / len(facts)

    before, after = fact_log_prob(tiny_vlm_dir), fact_log_prob(out / "merged")
    assert after > before + 0.1, f"mean log-prob per answer token of the document's facts: {before:.3f} -> {after:.3f}"


def test_eval_qa_runs_every_system_and_writes_the_report(small_index, small_corpus, tiny_vlm_dir, dpo_dir,
                                                         tmp_path, capsys):
    from rag.eval_qa import SYSTEM_SETUP, SYSTEMS

    out = tmp_path / "results"
    merged = str(dpo_dir / "merged")
    added = tmp_path / "index-added"  # the added split is asked of the index that holds the added documents
    shutil.copytree(small_index, added, symlinks=True)
    assert main(["index", "add", str(added), "--corpus", str(small_corpus / "corpus_added.jsonl")]) == 0
    assert main(["eval", "qa", "--index", str(small_index), "--added-index", str(added), "--qa",
                 str(small_corpus / "qa.jsonl"), "--base", str(tiny_vlm_dir), "--reader", merged, "--rag-pt", merged,
                 "--sft", merged, "--questions", "4", "--generate", "2", "--out", str(out), "--name", "tiny",
                 "--json"]) == 0
    report = json.loads((out / "tiny.json").read_text())
    assert (out / "tiny.md").is_file() and (out / "tiny.png").is_file()
    for split in ("test", "added"):
        assert list(report["summary"][split]) == list(SYSTEMS)
        for system in SYSTEMS:
            assert report["summary"][split][system]["overall"]["n"] == 4
            groups = report["summary"][split][system]["by_group"]
            assert groups["yes_no"]["n"] + groups["multiple_choice"]["n"] == 4
            assert groups["image"]["n"] + groups["text"]["n"] == 4
    outcomes = report["outcomes"]
    label = {system: model for system, (model, condition) in SYSTEM_SETUP.items() if condition == "none"}
    alone = {(label[o["system"]], o["split"], o["qa_id"]): o["correct"] for o in outcomes if o["system"] in label}
    for o in outcomes:
        if o["system"] in SYSTEM_SETUP and SYSTEM_SETUP[o["system"]][1] != "none":
            assert o["correct_alone"] == alone[(SYSTEM_SETUP[o["system"]][0], o["split"], o["qa_id"])]
        if o["system"].endswith("+rag"):
            assert (o["correct_replaced"] is None) == (not o["has_image"])
    # 2 questions per split answered in free text by each model, without and with retrieved evidence
    assert sum(o["generated_correct"] is not None for o in outcomes) == 2 * 2 * 4 * 2
    assert any(t["target"].startswith("stage_ab+gold") for t in report["targets"])
    assert all(t["met"] == (t["ci95"][0] >= float(t["needed"].split()[-1])) for t in report["targets"]
               if "accuracy" in t["target"])
