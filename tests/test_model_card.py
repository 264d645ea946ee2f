"""Model cards: metadata, architecture, training and evaluation read from the folder, for each kind of artifact.

References are independent of the card code: parameter counts from the loaded model's own parameters, the config's
fields, and the values written into the run and result files by the test.
"""

import json
import shutil

import pytest
from huggingface_hub import ModelCard
from peft import get_peft_model

from hub_cards.model_card import (
    RUN_INFO_NAME,
    card_is_generated,
    card_text,
    folder_kind,
    refresh_card_after_eval,
    render_model_card,
    write_model_card,
)
from modeling_llava import LlavaPluginForConditionalGeneration
from tests.original_llava import save_original
from trainers.projector_artifact import save_projector
from trainers.stages import lora_config

RUN = {
    "stage": "stage2",
    "description": "Stage 2 (visual instruction tuning): trained for the test.",
    "template": "vicuna_v1",
    "sources": {
        "vision_tower": "openai/clip-vit-large-patch14-336",
        "language_model": "lmsys/vicuna-7b-v1.5",
        "data_path": "playground/data/llava_v1_5_mix665k.json",
        "dataset_name": "liuhaotian/LLaVA-Instruct-150K",
    },
    "hyperparameters": {"learning_rate": 2e-5, "global batch size": 128},
    "progress": {"steps done": 5197},
}


@pytest.fixture
def checkpoint(tmp_path, llava_checkpoint):
    folder = tmp_path / "llava-test"
    shutil.copytree(llava_checkpoint, folder)
    return folder


def test_checkpoint_card_has_hub_metadata_and_the_architecture(checkpoint):
    (checkpoint / RUN_INFO_NAME).write_text(json.dumps(RUN))
    card = render_model_card(checkpoint, repo_id="someone/llava-test", license="apache-2.0")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-text-to-text"
    assert data["library_name"] == "transformers"
    assert data["license"] == "apache-2.0"
    assert data["base_model"] == ["openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5"]
    assert data["datasets"] == ["liuhaotian/LLaVA-Instruct-150K"]
    assert "custom_code" in data["tags"]

    model = LlavaPluginForConditionalGeneration.from_pretrained(checkpoint)
    per_part: dict[str, int] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        part = next(p for p in ("vision_tower", "multi_modal_projector", "language_model", "lm_head") if p in name)
        per_part[part] = per_part.get(part, 0) + parameter.numel()
    for part, count in per_part.items():
        assert f"| parameters: {part} | {count:,} |" in card.text
    image_tokens = f"{model.config.image_seq_length} (token id {model.config.image_token_id})"
    assert f"| image tokens per image | {image_tokens} |" in card.text
    assert "| learning_rate | 2e-05 |" in card.text and "| steps done | 5197 |" in card.text
    assert 'from_pretrained("someone/llava-test", trust_remote_code=True)' in card.text


def test_local_backbone_paths_stay_out_of_the_metadata(checkpoint, checkpoints):
    local = {**RUN, "sources": {"vision_tower": checkpoints["clip"], "language_model": checkpoints["llama"]}}
    (checkpoint / RUN_INFO_NAME).write_text(json.dumps(local))
    card = render_model_card(checkpoint)
    assert "base_model" not in card.data.to_dict()
    assert f"| vision_tower | {checkpoints['clip']} |" in card.text


def test_evaluation_results_become_model_index(checkpoint):
    scienceqa = {"accuracy": 0.9092, "columns": {"NAT": 0.9036, "IMG": 0.8805}, "split": "test", "scoring": "paper"}
    (checkpoint / "scienceqa_results.json").write_text(json.dumps(scienceqa))
    # LLaVA-Bench (COCO), the paper's Table 4 figures, in evaluation/results.py's shape.
    parts = {name: {"score": value} for name, value in {"conversation": 83.1, "detail": 75.3, "complex": 96.5}.items()}
    bench = {"benchmark": "llava-bench", "score": 85.1, "parts": {**parts, "overall": {"score": 85.1}}}
    bench |= {"dataset": "coco", "scoring": "paper", "judge": "gpt-4-0314", "judge_prompts": "rule file 'rule.json'"}
    (checkpoint / "llava_bench_results.json").write_text(json.dumps(bench))
    path = write_model_card(checkpoint, repo_id="someone/llava-test")
    reloaded = ModelCard.load(path)  # what the Hub parses: the metadata block of README.md
    results = {result.dataset_name: result.metric_value for result in reloaded.data.eval_results}
    assert results == {"ScienceQA": 90.92, "LLaVA-Bench (COCO)": 85.1}
    assert reloaded.data.eval_results[1].dataset_type == "lmms-lab/llava-bench-coco"
    assert "| ScienceQA (IMG) | accuracy (paper scoring) | 88.05% |" in reloaded.text
    judged = "relative score (paper scoring, judge gpt-4-0314, judge prompts: rule file 'rule.json')"
    assert f"| LLaVA-Bench COCO (complex) | {judged} | 96.5 |" in reloaded.text

    # In-the-Wild over three runs (LLaVA-1.5-13B's official reviews), summarized from review files: mean ± std.
    overall = {"score": 72.5, "std": 0.4, "runs": [72.8, 72.7, 72.1], "counts": [60, 60, 60]}
    bench = {"benchmark": "llava-bench", "score": 72.5, "std": 0.4, "dataset": "in-the-wild", "scoring": "paper"}
    bench |= {"judge": None, "judge_prompts": None, "parts": {"overall": overall, "runs": overall["runs"]}}
    (checkpoint / "llava_bench_results.json").write_text(json.dumps(bench))
    reloaded = ModelCard.load(write_model_card(checkpoint, repo_id="someone/llava-test"))
    assert {result.dataset_name: result.metric_value for result in reloaded.data.eval_results}[
        "LLaVA-Bench (In-the-Wild)"
    ] == 72.5
    assert "| LLaVA-Bench In-the-Wild | relative score (paper scoring; mean ± std of 3 runs) | 72.5 ± 0.4 |" in (
        reloaded.text
    )


def test_adapter_and_projector_cards(tmp_path, llava_checkpoint, checkpoints):
    model = LlavaPluginForConditionalGeneration.from_pretrained(llava_checkpoint)
    save_projector(model, tmp_path / "projector", vision_tower="openai/clip-vit-large-patch14-336")
    card = render_model_card(tmp_path / "projector", repo_id="someone/projector")
    projector_params = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert folder_kind(tmp_path / "projector") == "projector"
    assert card.data.library_name == "llava-plugin"
    assert f"| parameters: multi_modal_projector | {projector_params:,} |" in card.text
    assert "--pretrain_projector projector" in card.text

    adapter = get_peft_model(model, lora_config(model, r=4, alpha=8, dropout=0.0))
    adapter.save_pretrained(tmp_path / "adapter")
    base = {"script_args": {"vision_tower": checkpoints["clip"], "language_model": "lmsys/vicuna-7b-v1.5"}}
    (tmp_path / "adapter" / "llava_base.json").write_text(json.dumps(base))
    card = render_model_card(tmp_path / "adapter", repo_id="someone/adapter")
    lora_params = sum(p.numel() for name, p in adapter.named_parameters() if "lora_" in name)
    assert card.data.library_name == "peft" and card.data.base_model == ["lmsys/vicuna-7b-v1.5"]
    assert "LoRA r 4, alpha 8" in card.text and "llava merge-lora adapter merged" in card.text
    assert f"| parameters: language_model | {lora_params:,} |" in card.text


def test_a_folder_of_something_else_is_refused(tmp_path, checkpoints):
    with pytest.raises(ValueError, match="'llama' checkpoint, not a llava_plugin one"):
        render_model_card(checkpoints["llama"])
    # LLaVA-1.5's config says model_type 'llava', as llava-hf's does: its mm_* fields tell which it is.
    original = save_original(tmp_path / "original", checkpoints, "mlp2x_gelu", model_type="llava")
    with pytest.raises(ValueError, match=r"holds an original LLaVA checkpoint \(model_type 'llava'\).*llava convert"):
        render_model_card(original)
    with pytest.raises(ValueError, match="none of what this project saves"):
        render_model_card(tmp_path)


def test_a_card_edited_by_hand_is_never_rewritten_unless_asked(tmp_path, llava_checkpoint):
    folder = tmp_path / "checkpoint"
    shutil.copytree(llava_checkpoint, folder)
    assert card_is_generated(folder)  # no card yet: one may be written
    path = write_model_card(folder)
    assert path.read_text() == card_text(render_model_card(folder)) and card_is_generated(folder)

    path.write_text(path.read_text().replace("## ", "## Edited by hand: ", 1))
    edited = path.read_text()
    assert not card_is_generated(folder)
    assert write_model_card(folder) is None and path.read_text() == edited
    assert "edited by hand" in refresh_card_after_eval(folder)
    assert write_model_card(folder, overwrite=True) == path and card_is_generated(folder)

    path.write_text("# My own card\n")  # written without this project: no hash comment
    assert not card_is_generated(folder)
    assert "not a saved checkpoint" in refresh_card_after_eval(tmp_path)
