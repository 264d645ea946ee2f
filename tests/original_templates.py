"""The LLaVA-1.6 prompt formats as the original renders and masks them, written from its code: the reference that the
`mistral_instruct` and `chatml_direct` tests compare this project's prompts, ids and labels with.

Rendering follows `Conversation.get_prompt()` of haotian-liu/LLaVA's `llava/conversation.py` at the 1.6 release
(0a16dea, January 2024; LLaVA-VL/LLaVA-NeXT's copy is the same for both): `conv_mistral_instruct` is
`SeparatorStyle.LLAMA_2` with an empty system prompt, sep `""` and sep2 `</s>`; `conv_chatml_direct` is
`SeparatorStyle.MPT` with the system `<|im_start|>system\\nAnswer the questions.`, the roles `<|im_start|>user\\n` /
`<|im_start|>assistant\\n` and sep `<|im_end|>`. Each `<image>` is first moved to the start of its turn
(`preprocess_multimodal`). Masking follows LLaVA-NeXT's `llava/train/train.py`, which `preprocess` dispatches to by
the template's style: `preprocess_llama_2` for LLAMA_2 and `preprocess_mpt` for version `mpt`, each walking the
rounds by the lengths of their parts tokenized alone (`tokenizer_image_token`), and masking the whole sample when
the lengths do not add up to the ids (`tokenization mismatch`). The ids are the reference's `tokenizer_image_token`
(`tests/original_llava.py`), on SentencePiece itself.

Both were checked once against the original's own `conversation.py`, run from the mirror on the same conversations:
equal prompts.
"""

from tests.original_llava import IGNORE, OriginalLlava

MISTRAL_ROLES = ("USER", "ASSISTANT")
CHATML_SYSTEM = "<|im_start|>system\nAnswer the questions."
CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")
CHATML_SEP = "<|im_end|>"


def turns(conversations: list[dict], generation_prompt: bool) -> list[str | None]:
    """The turns' values, each image moved to the start of its turn, and `None` for the generation prompt's empty
    assistant turn (`conv.append_message(roles[1], None)`)."""
    values = [OriginalLlava.multimodal(turn["value"]) for turn in conversations]
    return values + [None] if generation_prompt else values


def mistral_instruct_prompt(conversations: list[dict], generation_prompt: bool = False, system: str = "") -> str:
    """`conv_mistral_instruct.get_prompt()` (`SeparatorStyle.LLAMA_2`)."""
    ret = ""
    for index, message in enumerate(turns(conversations, generation_prompt)):
        if index == 0:
            assert message, "first message should not be none"
        if message:
            if index == 0 and system:
                message = f"<<SYS>>\n{system}\n<</SYS>>\n\n" + message
            ret += f"[INST] {message} [/INST]" if index % 2 == 0 else " " + message + " </s>"
    return ret


def chatml_direct_prompt(
    conversations: list[dict], generation_prompt: bool = False, system: str = "Answer the questions."
) -> str:
    """`conv_chatml_direct.get_prompt()` (`SeparatorStyle.MPT`)."""
    ret = "<|im_start|>system\n" + system + CHATML_SEP
    for index, message in enumerate(turns(conversations, generation_prompt)):
        role = CHATML_ROLES[index % 2]
        ret += role + message + CHATML_SEP if message else role
    return ret


def preprocess_llama_2(original: OriginalLlava, conversation: str) -> tuple[list[int], list[int]]:
    """Ids and labels of LLaVA-NeXT's `preprocess_llama_2` for a rendered `conversation`: per round (split at `</s>`),
    the instruction up to `[/INST] ` is masked but for 2 tokens (its BOS and the `▁` that merges into the answer),
    and the round counted with a BOS standing for its `</s>`."""
    ids = original.tokenizer_image_token(conversation)
    target = list(ids)
    cur_len = 1
    target[:cur_len] = [IGNORE] * cur_len
    for rou in conversation.split("</s>"):
        if rou == "":
            break
        parts = rou.split("[/INST] ")
        if len(parts) != 2:
            break
        parts[0] += "[/INST] "
        round_len = len(original.tokenizer_image_token(rou))
        instruction_len = len(original.tokenizer_image_token(parts[0])) - 2
        target[cur_len : cur_len + instruction_len] = [IGNORE] * len(target[cur_len : cur_len + instruction_len])
        cur_len += round_len
    target[cur_len:] = [IGNORE] * len(target[cur_len:])
    if cur_len != len(ids):
        target = [IGNORE] * len(ids)
    return ids, target


def preprocess_mpt(original: OriginalLlava, conversation: str) -> tuple[list[int], list[int]]:
    """Ids and labels of LLaVA-NeXT's `preprocess_mpt`: rounds are split at `<|im_end|>` (the system prompt, the
    first question and its answer, then each question with its answer), each instruction up to
    `<|im_end|><|im_start|>assistant\\n` is masked but for one token, the first position is masked, and a legacy
    tokenizer (`tokenizers` >= 0.14, as 1.6 had) counts one more token in every round after the first."""
    ids = original.tokenizer_image_token(conversation)
    target = list(ids)
    sep = CHATML_SEP + CHATML_ROLES[1]
    rounds = conversation.split(CHATML_SEP)
    re_rounds = [CHATML_SEP.join(rounds[:3])]
    for index in range(3, len(rounds), 2):
        re_rounds.append(CHATML_SEP.join(rounds[index : index + 2]))
    cur_len = 1
    target[:cur_len] = [IGNORE] * cur_len
    for index, rou in enumerate(re_rounds):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(original.tokenizer_image_token(rou))
        instruction_len = len(original.tokenizer_image_token(parts[0])) - 1
        if index != 0 and original.legacy:
            round_len += 1
            instruction_len += 1
        target[cur_len : cur_len + instruction_len] = [IGNORE] * len(target[cur_len : cur_len + instruction_len])
        cur_len += round_len
    target[cur_len:] = [IGNORE] * len(target[cur_len:])
    if cur_len != len(ids):
        target = [IGNORE] * len(ids)
    return ids, target


def answer_segments(template: str, conversations: list[dict]) -> list[tuple[str, bool]]:
    """The rendering of `template` cut into (text, supervised) segments with every non-empty answer and its end token
    supervised (` answer </s>`, `answer<|im_end|>`): what the loss is meant to hold, for the samples the original's
    arithmetic masks whole. Cuts fall before a space, at a special token or after a newline byte, where SentencePiece
    never merges across."""
    render = mistral_instruct_prompt if template == "mistral_instruct" else chatml_direct_prompt
    segments, done = [], 0
    for index in range(1, len(conversations), 2):
        if not conversations[index]["value"]:
            continue
        before, upto = render(conversations[:index], True), render(conversations[: index + 1])
        segments += [(before[done:], False), (upto[len(before) :], True)]
        done = len(upto)
    whole = render(conversations)
    return [*segments, (whole[done:], False)] if whole[done:] else segments


__all__ = [
    "answer_segments",
    "chatml_direct_prompt",
    "mistral_instruct_prompt",
    "preprocess_llama_2",
    "preprocess_mpt",
]
