"""`llava train`'s arguments: the stage as a recipe field, every accepted field honoured or refused, and a `--help`
that shows the chosen recipe's values."""

import pytest
import torch

from command_line.main import main as llava
from modeling_llava import CHAT_TEMPLATES
from tests.conftest import run_args, unmasked_text
from trainers.train import RECIPES, SetupError, build_trainer, check_arguments, parse

ON_CPU = [] if torch.cuda.is_available() else ["--use_cpu", "true"]  # bf16 recipes on a CPU need use_cpu


def test_the_stage_is_a_recipe_field_and_the_command_word_a_shortcut_for_it():
    assert parse(["--config", "llava-1.5-7b-lora", *ON_CPU])[0].stage == "lora"
    assert parse(["stage2", "--config", "llava-1.5-7b-lora", *ON_CPU])[0].stage == "stage2"
    assert parse(["--config", "llava-1.5-7b-lora", "--stage", "qlora", *ON_CPU])[0].stage == "qlora"


def test_a_run_without_a_stage_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        llava(["train", "--output_dir", str(tmp_path), "--bf16", "false"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("llava train: No stage") and "\n" not in message


@pytest.mark.parametrize(
    ("stage", "flags", "hint"),
    [
        ("stage2", ["--padding_free", "true"], "padding_free_batches: true"),
        ("stage2", ["--packing", "true"], "padding_free_batches: true"),
        ("stage1", ["--completion_only_loss", "true"], "assistant_only_loss"),
        ("stage2", ["--truncation_mode", "keep_end"], "on_overflow"),
        ("stage2", ["--use_peft", "true"], "--stage lora"),
        ("stage2", ["--lora_r", "8"], "stage stage2 trains no LoRA"),
        ("lora", ["--lora_target_modules", "q_proj"], "every linear layer"),
        ("lora", ["--load_in_4bit", "true"], "--stage qlora"),
        ("stage2", ["--dataset_text_field", "caption"], "conversations"),
    ],
)
def test_fields_a_llava_run_cannot_act_on_are_refused_with_what_to_do(stage, flags, hint):
    arguments = parse([stage, "--output_dir", "unused", "--bf16", "false", *flags])
    with pytest.raises(SetupError, match=rf"^`{flags[0][2:]}: .*` is not used by a LLaVA run: .*{hint}"):
        check_arguments(*arguments)


def test_fields_the_stage_uses_are_accepted():
    for stage, flags in [("lora", ["--lora_r", "8", "--use_rslora", "true"]), ("qlora", ["--load_in_4bit", "true"])]:
        assert check_arguments(*parse([stage, "--output_dir", "unused", "--bf16", "false", *flags])).name == stage


def test_lora_honours_rslora_and_dora(checkpoints, train_data, tmp_path):
    args = run_args(checkpoints, train_data, tmp_path, "--lora_r", "4", "--use_rslora", "true", "--use_dora", "true")
    trainer, _ = build_trainer(*parse(["lora", *args]))
    config = trainer.model.peft_config["default"]
    assert (config.r, config.use_rslora, config.use_dora) == (4, True, True)
    assert any("lora_magnitude_vector" in name for name, _ in trainer.model.named_parameters())  # DoRA's own weights


def labelled_text(trainer) -> str:
    """The text of the tokens that carry the loss in the first training sample."""
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    return unmasked_text(trainer.processing_class, ids, [label != -100 for label in labels])


@pytest.mark.parametrize("padding_free", ["false", "true"])
def test_assistant_only_loss_chooses_the_tokens_that_carry_the_loss(checkpoints, train_data, tmp_path, padding_free):
    """LLaVA's default is the answers only (the original's masking); `false` trains on every text token."""
    args = run_args(checkpoints, train_data, tmp_path, "--padding_free_batches", padding_free)
    default, _ = build_trainer(*parse(["stage2", *args]))
    everything, _ = build_trainer(*parse(["stage2", *args, "--assistant_only_loss", "false"]))
    answers = labelled_text(default)
    assert "The square is red." in answers and "The blue circle is at the top left" in answers
    assert "colour" not in answers and "USER" not in answers and "ASSISTANT" not in answers
    text = labelled_text(everything)
    assert "What is the colour of the square?" in text and "USER:" in text and "The square is red." in text
    batch = everything.data_collator([everything.train_dataset[0]])
    image_tokens = batch["input_ids"] == everything.processing_class.image_token_id
    assert image_tokens.sum() == everything.model.config.image_seq_length  # the image is in the sample...
    assert (batch["labels"][image_tokens] == -100).all()  # ...and its tokens never carry the loss


def test_help_lists_llavas_fields_with_the_chosen_recipes_values(capsys):
    llava(["train", "stage1", "--config", "llava-1.5-7b-stage1", "--help"])
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in lines if line.startswith("  --")}
    assert rows["--stage"] == "stage1"
    assert rows["--learning_rate"] == "0.001"  # the recipe's value, not SFTConfig's 2e-5
    assert rows["--padding_free_batches"] == "True" and rows["--global_batch_size"] == "256"
    assert rows["--projector_lr"] == "None" and rows["--on_overflow"] == "drop"  # LLaVA's defaults where unset


def test_help_without_a_recipe_names_the_shipped_ones_and_help_all_lists_every_field(capsys):
    llava(["train", "lora", "--help"])
    out = capsys.readouterr().out
    assert "llava-1.5-7b-lora" in out and "--stage" in out
    llava(["train", "--help-all"])
    assert "--per_device_train_batch_size" in capsys.readouterr().out


def test_training_from_a_folder_of_no_llava_format_is_refused_in_one_line(tmp_path, capsys, checkpoints, train_data):
    """A language model alone (model_type 'llama') is neither of the three LLaVA formats `build_base` converts from."""
    args = run_args(checkpoints, train_data, tmp_path / "run", "--model_name_or_path", checkpoints["llama"])
    with pytest.raises(SystemExit) as exit_info:
        llava(["train", "stage2", *args])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"llava train: '{checkpoints['llama']}/config.json' has model_type 'llama' and neither")
    assert "\n" not in message


def test_a_start_that_is_neither_a_folder_nor_a_hub_model_is_named_in_one_line(
    tmp_path, capsys, checkpoints, train_data
):
    missing = str(tmp_path / "llava-v1.5-7b")  # a path that does not exist is no Hub id either
    args = run_args(checkpoints, train_data, tmp_path / "run", "--model_name_or_path", missing)
    with pytest.raises(SystemExit) as exit_info:
        llava(["train", "stage2", *args])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"llava train: {missing!r} is neither a checkpoint folder nor a model on the Hub (")
    assert "\n" not in message


@pytest.mark.parametrize("recipe", sorted(path.stem for path in RECIPES.glob("*.yaml")))
def test_every_shipped_recipe_parses_and_passes_the_checks(recipe):
    """Each recipe's fields are known, its values acted on (`check_arguments`), its template one of the project's."""
    stage = check_arguments(*parse(["--config", recipe, *ON_CPU]))
    assert stage.template in CHAT_TEMPLATES


# The paper-era runs, from the original's scripts and README (commits 8959d5c-4682aa6, April-May 2023; 9ccab83,
# August 2023) and the paper: (template, image in place, projector, vision tower, layer, epochs, lr, global batch).
PAPER_RECIPES = {
    "llava-v1-13b-stage1": ("v0", True, "linear", "openai/clip-vit-large-patch14", -2, 1, 2e-3, 128),
    "llava-v1-13b-stage2": ("v0", True, "linear", "openai/clip-vit-large-patch14", -2, 3, 2e-5, 32),
    "llava-lightning-7b-stage1": ("vicuna_v1", True, "linear", "openai/clip-vit-large-patch14", -2, 1, 2e-3, 128),
    "llava-lightning-7b-stage2": ("vicuna_v1", True, "linear", "openai/clip-vit-large-patch14", -2, 1, 2e-5, 128),
    "llava-v1-13b-scienceqa": ("v0", True, "linear", "openai/clip-vit-large-patch14", -2, 12, 2e-5, 32),
    "llava-v1-13b-scienceqa-rerun": ("vicuna_v1", False, "linear", "openai/clip-vit-large-patch14", -2, 12, 2e-5, 128),
}


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_the_paper_recipes_hold_the_original_settings(recipe):
    script, training, _ = parse(["--config", recipe, *ON_CPU])
    values = (script.template, script.image_in_place, script.projector_type, script.vision_tower)
    values += (script.vision_feature_layer, training.num_train_epochs, training.learning_rate)
    assert (*values, script.global_batch_size) == PAPER_RECIPES[recipe]
    assert (training.weight_decay, training.warmup_steps, training.lr_scheduler_type) == (0.0, 0.03, "cosine")
    assert training.max_length == 2048 and training.assistant_only_loss
    assert ("scienceqa" in recipe) == ("scienceqa" in script.data_path)
