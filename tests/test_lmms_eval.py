"""`lmms-eval --model llava_plugin`: the entry point pyproject.toml declares, found by lmms-eval's model registry, runs
a local copy of lmms-eval's POPE task (its own `lmms_eval.tasks.pope.utils`, over a dataset saved with
`datasets.save_to_disk`, under `--include_path`) offline on the session's tiny checkpoint and on a LoRA folder, in
batches, and answers each question as the original LLaVA-1.5 does: the vicuna_v1 prompt with its system line, the
image first, greedy, compared with transformers' own generate() on each question alone.

lmms-eval is an optional extra (`llava-plugin[lmms-eval]`): without it the test is skipped.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import tomllib
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.conftest import random_image, vicuna_v1_get_prompt
from tests.test_adapters import adapter, merged  # noqa: F401  (the LoRA folder of `llava train lora`, and merged)

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install 'llava-plugin[lmms-eval]')")

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["Is there a dog in the image?", "Is there a cat in the image?", "Is there a red square?"]
LABELS = ["yes", "no", "yes"]
POST_PROMPT = "\nAnswer the question using a single word or phrase."  # lmms-eval's pope.yaml
MAX_NEW_TOKENS = 6
TASK = f"""dataset_path: {{data}}
dataset_kwargs:
  load_from_disk: true
task: local_pope
test_split: test
output_type: generate_until
doc_to_visual: !function utils.pope_doc_to_visual
doc_to_text: !function utils.pope_doc_to_text
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: {MAX_NEW_TOKENS}
  temperature: 0
  top_p: 1.0
  num_beams: 1
  do_sample: false
process_results: !function utils.pope_process_results
metric_list:
  - metric: pope_accuracy
    aggregation: !function utils.pope_aggregate_accuracy
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: {json.dumps(POST_PROMPT)}
metadata:
  - version: 0.0
"""
# lmms-eval 0.7.3's evaluator patches filelock through `filelock._api`, a module filelock 4 no longer has (the
# extra pins filelock<4 for it); where it is missing the patch, which only shares dataset-cache locks between
# processes, is marked done so that the run goes on. Then lmms-eval's own command line runs.
RUN_LMMS_EVAL = """
import importlib.util, sys
import lmms_eval.evaluator
if importlib.util.find_spec("filelock._api") is None:
    lmms_eval.evaluator._enable_reentrant_filelocks._patched = True
from lmms_eval.__main__ import cli_evaluate
sys.argv = ["lmms-eval", *sys.argv[1:]]
cli_evaluate()
"""


@pytest.fixture(scope="module")
def local_task(tmp_path_factory) -> Path:
    """The include path: POPE's task over a dataset on disk, and the plugin's entry point as an installed
    distribution declares it (a dist-info whose entry_points.txt is pyproject.toml's table)."""
    root = tmp_path_factory.mktemp("lmms-eval")
    features = datasets.Features(
        {"question_id": datasets.Value("string"), "question": datasets.Value("string")}
        | {"answer": datasets.Value("string"), "image": datasets.Image()}
    )
    rows = {"question_id": ["1", "2", "3"], "question": QUESTIONS, "answer": LABELS}
    rows["image"] = [random_image(seed, (30 + 8 * seed, 52)) for seed in range(3)]
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(root / "data")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text("from lmms_eval.tasks.pope.utils import *  # noqa: F403\n")
    (tasks / "local_pope.yaml").write_text(TASK.format(data=root / "data"))
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    info = root / "site" / "llava_plugin-0.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: llava-plugin\nVersion: 0.0.0\n")
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in groups.items()
    )
    (info / "entry_points.txt").write_text(entry_points)
    return root


def lmms_eval_answers(root: Path, pretrained: str | Path, output: Path) -> tuple[list[str], dict]:
    """Runs `lmms-eval --model llava_plugin --model_args pretrained=... --tasks local_pope` offline; returns the
    answers it logged, in the documents' order, and the task's results."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(root / "site"), str(ROOT), env.get("PYTHONPATH", "")])
    argv = ["--model", "llava_plugin", "--model_args", f"pretrained={pretrained}", "--tasks", "local_pope"]
    argv += ["--include_path", str(root / "tasks"), "--batch_size", "2", "--device", "cpu"]
    argv += ["--output_path", str(output), "--log_samples"]
    done = subprocess.run(
        [sys.executable, "-c", RUN_LMMS_EVAL, *argv], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    samples = [json.loads(line) for path in output.rglob("*_samples_local_pope.jsonl") for line in path.open()]
    (results_file,) = output.rglob("*_results.json")
    results = json.loads(results_file.read_text())["results"]["local_pope"]
    return [sample["filtered_resps"] for sample in sorted(samples, key=lambda s: s["doc_id"])], results


def alone(checkpoint: str, system: str | None) -> list[str]:
    """Each question answered alone by transformers' generate(), greedy, on the vicuna_v1 prompt of the original's
    eval scripts (`system`: its system line; None: none, as lmms-eval's llava_hf template writes it)."""
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    answers = []
    for seed, question in enumerate(QUESTIONS):
        turns = [("USER", f"<image>\n{question}{POST_PROMPT}"), ("ASSISTANT", None)]
        prompt = vicuna_v1_get_prompt(turns) if system else vicuna_v1_get_prompt(turns, system="").lstrip()
        image = random_image(seed, (30 + 8 * seed, 52))
        inputs = processor(images=image, text=processor.tokenizer.bos_token + prompt, add_special_tokens=False,
                           return_tensors="pt")  # fmt: skip
        with torch.no_grad():
            tokens = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        answers.append(processor.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers


@pytest.mark.parametrize("which", ["checkpoint", pytest.param("lora", marks=pytest.mark.slow)])
def test_lmms_eval_answers_with_the_originals_prompt_in_batches(
    which, local_task, llava_checkpoint, request, tmp_path
):
    # A LoRA folder as `llava train lora` leaves it (adapters moved from their initial values) is applied to its
    # rebuilt base: it answers as its merged checkpoint does.
    pretrained, as_checkpoint = (
        (llava_checkpoint, llava_checkpoint)
        if which == "checkpoint"
        else (request.getfixturevalue("adapter"), request.getfixturevalue("merged"))
    )
    reference = alone(str(as_checkpoint), system="vicuna_v1")
    assert reference != alone(str(as_checkpoint), system=None), "the system line must change the answers here"
    answers, results = lmms_eval_answers(local_task, pretrained, tmp_path / "out")
    assert answers == reference
    # lmms-eval's POPE accuracy: the share of answers that, lowercased and stripped, are the label.
    expected = sum(answer.lower().strip() == label for answer, label in zip(reference, LABELS, strict=True)) / 3
    assert results["pope_accuracy,none"] == pytest.approx(expected)
