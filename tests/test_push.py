"""`llava push` against a Hub stand-in on loopback (`tests/hub_server.py`), then downloads in fresh processes.

References are independent of the push code: the bytes of the local folder, the card rendered from it, the logits of
the local checkpoint, and the server's own record of what it received.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers.utils.hub
from huggingface_hub import ModelCard
from peft import get_peft_model
from safetensors.torch import load_file
from trl import ModelConfig

from command_line.main import main as llava
from hub_cards.model_card import (
    ADAPTER_BASE_NAME,
    COMPLETE_NAME,
    FINGERPRINT_NAME,
    RUN_INFO_NAME,
    SCIENCEQA_RESULTS,
    card_text,
    render_model_card,
    write_model_card,
)
from hub_cards.push import PushError, files_to_push, push_to_hub
from modeling_llava import LlavaPluginForConditionalGeneration
from tests.conftest import GREEDY, QUESTION, REMOTE_SCRIPT, random_image, reference_outputs, refused, run_args, train
from tests.hub_server import HubServer
from trainers.projector_artifact import save_projector
from trainers.stages import lora_config
from trainers.train import LlavaScriptArguments, base_description

REPOSITORY = Path(__file__).parent.parent
LIBRARY = {"checkpoint": "transformers", "adapter": "peft", "projector": "llava-plugin"}

# The local reference's own function, given the repo id instead of the folder: the package's Auto classes.
PACKAGE_SCRIPT = """
import sys

from safetensors.torch import save_file

from tests.conftest import reference_outputs

repo_id, image_path, *_, out = sys.argv[1:]
logits, tokens = reference_outputs(repo_id, image_path)
save_file({"logits": logits.contiguous(), "tokens": tokens.contiguous()}, out)
"""


def folder_hashes(folder: str | Path) -> dict[str, str]:
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The server, with this process pointed at it: HF_ENDPOINT, a write token in HF_TOKEN and no saved login.

    huggingface_hub reads HF_ENDPOINT once, at import, so its `constants.ENDPOINT` is set as well; the processes
    started by the tests read the variable itself.
    """
    root = tmp_path_factory.mktemp("hub")
    with HubServer(root / "server") as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_ENDPOINT", server.url)
        patch.setenv("HF_TOKEN", server.token)
        patch.setattr(huggingface_hub.constants, "ENDPOINT", server.url)
        # transformers keeps one HfApi, made on first use with the endpoint of then; the Trainer pushes with it.
        patch.setattr(transformers.utils.hub, "_hf_api", None)
        patch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(root / "hf_home" / "token"))
        yield server


@pytest.fixture(scope="module")
def folders(tmp_path_factory, llava_checkpoint, checkpoints) -> dict[str, Path]:
    """One folder of each kind `llava push` takes, as training writes them (without a card)."""
    root = tmp_path_factory.mktemp("to_push")
    model = LlavaPluginForConditionalGeneration.from_pretrained(llava_checkpoint)
    save_projector(model, root / "projector", vision_tower=checkpoints["clip"], language_model=checkpoints["llama"])

    adapter = get_peft_model(model, lora_config(model, r=4, alpha=8, dropout=0.0))
    adapter.save_pretrained(root / "adapter")
    (root / "adapter" / "README.md").unlink()  # PEFT's generic card; a training run writes ours in its place
    base = base_description(LlavaScriptArguments(), ModelConfig(model_name_or_path=llava_checkpoint, dtype="float32"))
    (root / "adapter" / ADAPTER_BASE_NAME).write_text(json.dumps(base, indent=2) + "\n")
    return {"checkpoint": Path(llava_checkpoint), "adapter": root / "adapter", "projector": root / "projector"}


@pytest.fixture(scope="module")
def pushed(hub, folders) -> dict[str, str]:
    """Each folder pushed once, by `llava push`; the local hashes before the push are kept to compare."""
    repos = {}
    for kind, folder in folders.items():
        before = folder_hashes(folder)
        llava(["push", str(folder), f"tester/tiny-{kind}"])
        assert folder_hashes(folder) == before, f"pushing changed the local {kind} folder"
        repos[kind] = f"tester/tiny-{kind}"
    return repos


@pytest.mark.parametrize("kind", ["checkpoint", "adapter", "projector"])
def test_push_uploads_the_folder_byte_for_byte_and_the_rendered_card(hub, folders, pushed, kind):
    remote = hub.files(pushed[kind])
    local = {name: path.read_bytes() for name, path in files_to_push(folders[kind]).items()}
    assert {name: content for name, content in remote.items() if name != "README.md"} == local
    assert not (folders[kind] / "README.md").exists()

    card = remote["README.md"].decode()
    assert card == card_text(render_model_card(folders[kind], repo_id=pushed[kind]))
    metadata = ModelCard(card).data
    assert metadata.pipeline_tag == "image-text-to-text"
    assert metadata.library_name == LIBRARY[kind]


def test_checkpoint_ships_its_remote_code(hub, pushed):
    remote = hub.files(pushed["checkpoint"])
    assert {"configuration_llava_plugin.py", "modeling_llava_plugin.py", "processing_llava_plugin.py"} <= set(remote)
    assert "chat_templates.py" in remote  # imported relatively by the processor's module
    assert json.loads(remote["config.json"])["auto_map"]["AutoModelForImageTextToText"]


@pytest.mark.slow
def test_fresh_processes_download_and_load_it_with_and_without_the_package(hub, pushed, llava_checkpoint, tmp_path):
    """Both processes run at once (each pays for importing torch); each starts from an empty HF_HOME, no token."""
    image_path = tmp_path / "image.png"
    random_image(3).save(image_path)
    runs, sent = {}, len(hub.requests)
    for mode, script in [("package", PACKAGE_SCRIPT), ("remote", REMOTE_SCRIPT)]:
        (tmp_path / f"{mode}.py").write_text(textwrap.dedent(script))
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / f"home-{mode}"), "PATH": "/usr/bin:/bin"}
        if mode == "package":
            env["PYTHONPATH"] = str(REPOSITORY)
        arguments = [pushed["checkpoint"], str(image_path), json.dumps(QUESTION), json.dumps(GREEDY)]
        command = [sys.executable, str(tmp_path / f"{mode}.py"), *arguments, str(tmp_path / f"{mode}.safetensors")]
        runs[mode] = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    logits, tokens = reference_outputs(llava_checkpoint, image_path)
    for mode, process in runs.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{mode}: {stderr.decode()[-3000:]}"
        outputs = load_file(tmp_path / f"{mode}.safetensors")
        torch.testing.assert_close(outputs["logits"], logits, atol=1e-5, rtol=0)
        assert torch.equal(outputs["tokens"], tokens), mode
    requests = hub.requests[sent:]
    assert f"GET /{pushed['checkpoint']}/resolve/" in "\n".join(requests)  # it did download from the server
    assert not any(request.startswith("POST") for request in requests)


def test_private_push_to_a_new_branch(hub, folders):
    llava(["push", str(folders["projector"]), "tester/branched", "--private", "--revision", "v1"])
    assert hub.repos["tester/branched"].private
    assert set(hub.repos["tester/branched"].branches) == {"main", "v1"}
    assert set(hub.files("tester/branched", "v1")) == {"README.md", *files_to_push(folders["projector"])}
    assert hub.files("tester/branched", "main") == {}  # the branch starts from main, which only has its first commit


def test_without_a_token_nothing_is_sent(hub, folders, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    before, sent = folder_hashes(folders["checkpoint"]), len(hub.requests)
    message = refused(capsys, ["push", str(folders["checkpoint"]), "tester/no-token"])
    assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in message
    assert len(hub.requests) == sent and "tester/no-token" not in hub.repos
    assert folder_hashes(folders["checkpoint"]) == before


@pytest.mark.parametrize(
    ("token", "status", "hint"),
    [("hf_not_a_token", 401, "the token was not accepted"), ("hf_test_read", 403, "the token may not write there")],
)
def test_a_refused_token_is_named_with_the_repo_and_status(hub, folders, pushed, token, status, hint):
    before = folder_hashes(folders["projector"])
    with pytest.raises(PushError) as refused:
        push_to_hub(folders["projector"], pushed["projector"], token=token)
    message = str(refused.value)
    assert f"to '{pushed['projector']}': HTTP {status}, {hint}" in message
    assert "The local folder is unchanged." in message
    assert folder_hashes(folders["projector"]) == before
    assert len(hub.repos[pushed["projector"]].trees) == 2  # its first commit and the push: nothing new


def test_a_checkpoint_without_its_code_or_auto_map_is_refused(tmp_path, llava_checkpoint, hub):
    missing_code = tmp_path / "missing-code"
    shutil.copytree(llava_checkpoint, missing_code)
    (missing_code / "chat_templates.py").unlink()
    with pytest.raises(PushError, match=r"auto_map names code the folder lacks \(chat_templates\.py\)"):
        push_to_hub(missing_code, "tester/refused")

    no_auto_map = tmp_path / "no-auto-map"
    shutil.copytree(llava_checkpoint, no_auto_map)
    config = json.loads((no_auto_map / "config.json").read_text())
    del config["auto_map"]
    (no_auto_map / "config.json").write_text(json.dumps(config))
    with pytest.raises(PushError, match="no auto_map for AutoModelForImageTextToText.*Re-save it"):
        push_to_hub(no_auto_map, "tester/refused")

    with pytest.raises(PushError, match="none of what this project saves"):
        push_to_hub(tmp_path, "tester/refused")
    assert "tester/refused" not in hub.repos


# What a Trainer checkpoint holds besides the model (DeepSpeed adds global_stepN/ and `latest`).
TRAINING_STATE = [
    "optimizer.pt", "scheduler.pt", "rng_state.pth", "rng_state_1.pth", "trainer_state.json", "training_args.bin",
    COMPLETE_NAME, "latest", "global_step500.pt", "zero_to_fp32.py",
]  # fmt: skip


def test_a_training_output_goes_up_without_its_intermediate_checkpoints(tmp_path, folders):
    output_dir = tmp_path / "run"
    shutil.copytree(folders["adapter"], output_dir)
    shutil.copytree(folders["adapter"], output_dir / "checkpoint-500")
    for junk in ["__pycache__/x.cpython-311.pyc", "_scratch.json", "upload.tmp", FINGERPRINT_NAME]:
        (output_dir / junk).parent.mkdir(exist_ok=True)
        (output_dir / junk).write_text("junk")
    assert set(files_to_push(output_dir)) == set(files_to_push(folders["adapter"]))
    # A checkpoint-N folder pushed on its own leaves its training state behind.
    for state in TRAINING_STATE:
        (output_dir / "checkpoint-500" / state).write_text("state")
    assert set(files_to_push(output_dir / "checkpoint-500")) == set(files_to_push(folders["adapter"]))


@pytest.mark.slow
def test_training_with_push_to_hub_pushes_loadable_described_checkpoints(hub, checkpoints, stage1_data, tmp_path):
    args = run_args(
        checkpoints, stage1_data, tmp_path / "run", "--save_strategy", "steps", "--save_steps", "1",
        "--push_to_hub", "true", "--hub_model_id", "tester/stage1-run", "--hub_revision", "run-1",
    )  # fmt: skip
    train("stage1", args)
    repo = hub.repos["tester/stage1-run"]
    pushes = list(repo.trees.values())[1:]  # commit order; the first commit is the new repo's empty one
    assert len(pushes) >= 2  # at least one push during training (Trainer skips one while another is running)
    needed = {"config.json", "model.safetensors", "modeling_llava_plugin.py", "configuration_llava_plugin.py"}
    needed |= {"README.md", RUN_INFO_NAME, "mm_projector.safetensors", "projector_config.json"}
    for tree in pushes:
        assert needed <= set(tree), needed - set(tree)
        assert not set(tree) & {*TRAINING_STATE, FINGERPRINT_NAME}, set(tree) & {*TRAINING_STATE, FINGERPRINT_NAME}
    final = hub.files("tester/stage1-run", "run-1")
    assert ModelCard(final["README.md"].decode()).data.pipeline_tag == "image-text-to-text"
    assert json.loads(final[RUN_INFO_NAME])["progress"]["steps done"] == 2
    assert "config.json" not in hub.files("tester/stage1-run", "main")  # everything went to the branch


def test_push_sends_a_card_with_every_result_and_keeps_one_edited_by_hand(hub, llava_checkpoint, tmp_path):
    """Train -> eval -> push: the pushed card is rendered from the folder as it is now, results included."""
    folder = tmp_path / "trained"
    shutil.copytree(llava_checkpoint, folder)
    write_model_card(folder)  # what training leaves: a generated card, no results yet
    results = {"split": "test", "accuracy": 0.625, "columns": {"NAT": 0.5, "Average": 0.625}}
    (folder / SCIENCEQA_RESULTS).write_text(json.dumps(results))  # what `llava eval scienceqa` adds

    llava(["push", str(folder), "tester/with-results"])
    card = hub.files("tester/with-results")["README.md"].decode()
    assert card == card_text(render_model_card(folder, repo_id="tester/with-results"))
    assert [(r.dataset_name, r.metric_value) for r in ModelCard(card).data.eval_results] == [("ScienceQA", 62.5)]

    edited = (folder / "README.md").read_text().replace("## ", "## Edited by hand: ", 1)
    (folder / "README.md").write_text(edited)
    llava(["push", str(folder), "tester/edited"])
    assert hub.files("tester/edited")["README.md"].decode() == edited
    llava(["push", str(folder), "tester/overwritten", "--overwrite-card"])
    expected = card_text(render_model_card(folder, repo_id="tester/overwritten"))
    assert hub.files("tester/overwritten")["README.md"].decode() == expected
    assert (folder / "README.md").read_text() == edited  # pushing never writes the local folder


@pytest.mark.slow
def test_a_hub_token_is_never_written_nor_uploaded(hub, checkpoints, stage1_data, tmp_path, monkeypatch):
    """`--hub_token` reaches the pushes, and no file written or received holds it (Trainer pickles its arguments)."""
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_one")  # the pushes work only with the token given on the command line
    secret = hub.token
    args = run_args(
        checkpoints, stage1_data, tmp_path / "run", "--save_strategy", "steps", "--save_steps", "1",
        "--push_to_hub", "true", "--hub_model_id", "tester/token-run", "--hub_token", secret,
    )  # fmt: skip
    train("stage1", args)
    written = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in written)
    assert [path for path in written if secret.encode() in path.read_bytes()] == []
    uploaded = hub.files("tester/token-run")
    assert "config.json" in uploaded
    assert [name for name, content in uploaded.items() if secret.encode() in content] == []

    llava(["push", str(tmp_path / "run"), "tester/token-run-again"])  # `llava push` leaves training_args.bin home
    assert "training_args.bin" not in hub.files("tester/token-run-again")
