"""`llava push DIR REPO_ID`: upload a checkpoint, a LoRA adapter or a stage-1 projector to the Hub, with its card.

Everything goes up in one commit through `huggingface_hub.HfApi.create_commit`, so a repo never holds half a push.
A folder is checked before anything is sent: it must be one of the three things this project saves, and a full
checkpoint must carry `auto_map` and its code, without which it would not load with `trust_remote_code=True` on the
Hub. The card goes up freshly rendered from the run record and every evaluation result in the folder (in memory:
pushing never writes, moves or deletes anything in the local folder), unless the folder's README.md was edited by
hand: that one goes up as it is, unless `overwrite_card`.
"""

import json
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from .model_card import (
    CARD_NAME,
    COMPLETE_NAME,
    FINGERPRINT_NAME,
    card_is_generated,
    card_text,
    folder_kind,
    render_model_card,
)

# The one list of what never goes to the Hub, for `llava push` and for the trainer's pushes during training (which
# upload what `files_to_push` selects of each checkpoint): what transformers' `Trainer.push_to_hub` leaves out of a
# training output folder (intermediate `checkpoint-N` folders, `_`-prefixed scratch), a checkpoint's training state
# (optimizer, scheduler, RNG, DeepSpeed shards, completion marker), and what no model repo wants.
# `training_args.bin` is Trainer's pickle of its arguments, which may hold a Hub token (this project's trainer keeps
# it out, other runs may not); no loader needs it, and it is never unpickled to check.
IGNORE_PATTERNS = [
    *DEFAULT_IGNORE_PATTERNS,
    "checkpoint-*",
    "_*",
    "*__pycache__*",
    "*.pyc",
    "*.tmp",
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "trainer_state.json",
    "global_step*",
    "latest",
    "zero_to_fp32.py",
    COMPLETE_NAME,
    FINGERPRINT_NAME,
]
CODE_CONFIGS = ("config.json", "processor_config.json", "tokenizer_config.json", "preprocessor_config.json")
HTTP_HINTS = {
    401: "the token was not accepted: check HF_TOKEN or run `hf auth login`",
    403: "the token may not write there: use a token with write access to that namespace",
    404: "the repository or revision was not found",
}


class PushError(ValueError):
    """A push refused before or during the upload; the message says what and what to do, the local folder is intact."""


def files_to_push(folder: str | Path) -> dict[str, Path]:
    """The folder's files that go to the Hub, by their path in the repo (sorted, as `upload_folder` orders them)."""
    folder = Path(folder)
    files = {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}
    return {name: files[name] for name in filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS)}


def missing_remote_code(folder: Path) -> list[str]:
    """The `.py` files that `auto_map` names (and those they import relatively) but the folder lacks."""
    from transformers.dynamic_module_utils import get_relative_imports

    modules = set()
    for name in CODE_CONFIGS:
        path = folder / name
        auto_map = json.loads(path.read_text()).get("auto_map", {}) if path.is_file() else {}
        for references in auto_map.values():
            for reference in references if isinstance(references, list) else [references]:
                # `other/repo--module.Class` points at code in another repo, which needs nothing here.
                if reference and "--" not in reference:
                    modules.add(f"{reference.rsplit('.', 1)[0]}.py")
    missing, seen = [], set()
    while modules:
        module = modules.pop()
        seen.add(module)
        if not (folder / module).is_file():
            missing.append(module)
            continue
        modules |= {f"{name}.py" for name in get_relative_imports(folder / module)} - seen
    return sorted(missing)


def check_folder(folder: Path) -> str:
    """What the folder is (`checkpoint`, `adapter` or `projector`); raises `PushError` if it would not load."""
    if not folder.is_dir():
        raise PushError(f"{str(folder)!r} is not a folder.")
    try:
        kind = folder_kind(folder)
    except ValueError as error:
        raise PushError(str(error)) from error
    resave = (
        "Re-save it with this package imported (`import modeling_llava`, then `from_pretrained(DIR)` and "
        "`save_pretrained(NEW_DIR)` for the model and the processor), which writes auto_map and copies the code."
    )
    if kind == "checkpoint":
        auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
        if "AutoModelForImageTextToText" not in auto_map:
            raise PushError(
                f"{str(folder)!r}: config.json has no auto_map for AutoModelForImageTextToText, so the checkpoint "
                f"would not load with trust_remote_code=True from the Hub. {resave}"
            )
        if missing := missing_remote_code(folder):
            raise PushError(
                f"{str(folder)!r}: auto_map names code the folder lacks ({', '.join(missing)}), so the checkpoint "
                f"would not load with trust_remote_code=True from the Hub. {resave}"
            )
        if not any(folder.glob("model*.safetensors")):
            raise PushError(f"{str(folder)!r} has a config.json but no weights (model*.safetensors).")
    if kind == "adapter" and not (folder / "adapter_model.safetensors").is_file():
        raise PushError(f"{str(folder)!r} has an adapter_config.json but no adapter_model.safetensors.")
    return kind


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    overwrite_card: bool = False,
) -> str:
    """Uploads a saved folder to the model repo `repo_id` in one commit and returns the commit's URL.

    Args:
        folder (`str` or `Path`):
            A full checkpoint, a LoRA adapter (`llava train lora`) or a stage-1 projector artifact. Intermediate
            `checkpoint-N` folders, `_*`, `__pycache__` and `*.tmp` are left out.
        repo_id (`str`):
            `namespace/name`; the repo is created if missing (private if `private`), and kept if it exists.
        private (`bool`):
            Visibility of a repo created here; an existing repo keeps its own.
        revision (`str`, *optional*):
            A branch to commit to, created from `main` if missing. Default: `main`.
        token (`str`, *optional*):
            Default: `HF_TOKEN`, else the token saved by `hf auth login`.
        commit_message (`str`, *optional*):
            Default: "Upload {kind} with llava push".
        overwrite_card (`bool`):
            Upload a freshly rendered card even where the folder's README.md was edited by hand.
    """
    folder = Path(folder)
    kind = check_folder(folder)
    files = files_to_push(folder)
    token = token or get_token()
    if token is None:
        raise PushError(f"Cannot push to {repo_id!r}: no Hugging Face token: set HF_TOKEN or run `hf auth login`.")
    if overwrite_card or card_is_generated(folder):
        files.pop(CARD_NAME, None)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=path) for name, path in files.items()]
    if CARD_NAME not in files:
        card = card_text(render_model_card(folder, repo_id=repo_id))
        operations.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card.encode()))

    api = HfApi(token=token)
    target = f"{repo_id!r}" + (f" (branch {revision!r})" if revision else "")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload {kind} with llava push",
            revision=revision,
        )
    except HfHubHTTPError as error:
        status = error.response.status_code
        hint = HTTP_HINTS.get(status, "see the server's answer")
        raise PushError(
            f"The Hub refused the push of {str(folder)!r} to {target}: HTTP {status}, {hint}. "
            f"Server: {error.server_message or error}. The local folder is unchanged."
        ) from error
    return commit.commit_url


__all__ = ["IGNORE_PATTERNS", "PushError", "check_folder", "files_to_push", "missing_remote_code", "push_to_hub"]
