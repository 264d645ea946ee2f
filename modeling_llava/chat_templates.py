"""The prompt formats of LLaVA, as Jinja chat templates.

`VICUNA_V1` renders byte for byte what the original repository's `conv_vicuna_v1.get_prompt()` renders (system
prompt, ` USER: ... ASSISTANT: ...</s>` turns, an empty turn as a bare `USER:` / `ASSISTANT:`, generation prompt
`ASSISTANT:`); `LLAVA_V1` is the same format with the system prompt of `conv_llava_v1`, the original's inference
template for LLaVA v1 checkpoints (`--conv-mode llava_v1`: "a curious human", "the human's questions"). `PLAIN` is
stage 1's format: the image, then the caption and a newline, the user's words dropped as the original's
`preprocess_plain` does.

`V0` is the paper's format (LLaVA v1, April 2023), as the original's code of its first release (commit 8959d5c,
`llava/train/train.py` and `llava/conversation.py`; the text and masking unchanged for `--version v0` up to 053c284,
August 2023) renders it, which differs between training and answering. An image is one `<image>` token run, its
neighbours tokenized as `tokenizer_image_token` does (053c284's v0 path): 8959d5c wrote `<im_start>`, the patch
tokens and `<im_end>` into the text instead, which the processor of a converted paper checkpoint writes around each
image's run (`image_start_token`, `image_end_token`).

- training (no generation prompt) renders as `preprocess` with `_add_speaker_and_signal`: the system prompt of
  `default_conversation` (`conv_vicuna_v0`'s, "a curious human"), a blank line, every turn as
  `### Human: ...\n` / `### Assistant: ...\n`, and a closing `### `. Its `_mask_targets` leaves the loss on every
  assistant turn with its `### Assistant: ` header and newline, on the `###` that opens each human turn (the first
  two tokens of the turn, which on Llama's tokenizer are `##` and `#`: a human turn follows an answer, so the model
  learns to end an answer with `###`) and on the closing `### `;
- answering (`add_generation_prompt=True`) renders as `conv_vicuna_v0.get_prompt()`, the paper's evaluation prompt:
  the system prompt, `###`, the template's one-shot example exchange (renewable energy), then `Human: ...###` /
  `Assistant: ...###` turns and `Assistant:`. The model ends its answer with `###` (`STOP_STRINGS`).

`SIMPLE` is the conversation the paper's ScienceQA evaluation answered in (`conv_templates["simple"]`, the
`--conv-mode simple` of its April-May 2023 `model_vqa_science.py` commands; the same text from 8959d5c to 9fffc4f): a
LLaVA system prompt, `###`, a "Hi!" exchange, then `Human: ...###` turns; the prompt ends at the human turn's `###`
(no generation prompt: the model writes `Assistant: ` itself, as the paper's released predictions show), and the
answer ends with `###`. It was never a training format; rendered for training, its assistant turns carry the loss.

LLaVA-1.6's `MISTRAL_INSTRUCT` and `CHATML_DIRECT` (the 34B's) render what the original's `conv_mistral_instruct`
and `conv_chatml_direct` render at the 1.6 release, with the loss of LLaVA-NeXT's `preprocess_llama_2` and
`preprocess_mpt` (each answer with its end token). `template: backbone` is the language model's own chat template
(Llama-3's, Qwen2's...), wrapped so that each answer and its end of turn carry the loss (see `_BACKBONE_TURNS`).

All wrap the supervised text in `{% generation %}` so that `return_assistant_tokens_mask` (TRL's
`assistant_only_loss`) gives the original's labels.

Message content may be a string (LLaVA JSON, with `<image>` written in it) or a list of `{"type": "image"}` /
`{"type": "text", "text": ...}` items (the Hugging Face format). A turn's images render first, each as `<image>`
followed by a newline when anything follows, then its text: the original's `preprocess_multimodal` (from v1.0.0,
July 2023) moves the image to the start of the turn that wrote it (`<image>\n` + text, stripped). The paper's code
kept `<image>` where the data wrote it (its instruction data put it before or after the question at random):
`chat_template(name, image_in_place=True)` renders list content in its order instead, for rows read with the image
kept in place (`processing.llava_data`, `image_in_place`).
"""

import re

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# `conv_llava_v1` and `conv_vicuna_v0` (the paper's `conv_v1_2`) share this one: "human" where vicuna_v1 says "user".
HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# The example exchange `conv_vicuna_v0` holds in its `messages` (offset 2), rendered before every question.
V0_EXAMPLE_QUESTION = "What are the key differences between renewable and non-renewable energy sources?"
V0_EXAMPLE_ANSWER = (
    "Renewable energy sources are those that can be replenished naturally in a relatively "
    "short amount of time, such as solar, wind, hydro, geothermal, and biomass. "
    "Non-renewable energy sources, on the other hand, are finite and will eventually be "
    "depleted, such as coal, oil, and natural gas. Here are some key differences between "
    "renewable and non-renewable energy sources:\n"
    "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable "
    "energy sources are finite and will eventually run out.\n"
    "2. Environmental impact: Renewable energy sources have a much lower environmental impact "
    "than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, "
    "and other negative effects.\n"
    "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically "
    "have lower operational costs than non-renewable sources.\n"
    "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
    "locations than non-renewable sources.\n"
    "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
    "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
    "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
    "non-renewable sources are not, and their depletion can lead to economic and social instability.\n"
)


_BACKBONE_REFUSAL = (
    "template backbone: the language model's chat template renders earlier turns differently once later ones "
    "follow, so its answers cannot be cut out for the loss; pick one of the named templates"
)


def _string(text: str) -> str:
    """`text` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


_RENDER_CONTENT = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}"
    "{%- set text = content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- for item in content if item.type == 'image' -%}"
    "{{- '<image>' -}}{%- if text or not loop.last -%}{{- '\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- text -}}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)
# The same macro with the items in their order: an image renders as `<image>` where the data wrote it.
_RENDER_IN_PLACE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}"
    "{%- for item in content -%}"
    "{%- if item.type == 'image' -%}{{- '<image>' -}}{%- elif item.type == 'text' -%}{{- item.text -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)
_SYSTEM_MESSAGE = (
    "{%- if messages[0].role == 'system' -%}"
    "{%- set system = render(messages[0].content) -%}{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
)


def _vicuna_style(name: str, system: str) -> str:
    """` USER: ... ASSISTANT: ...</s>` turns after `system` (`SeparatorStyle.TWO`, sep " ", sep2 "</s>")."""
    return (
        "{%- set system = " + _string(system) + " -%}" + _SYSTEM_MESSAGE + "{{- bos_token + system + ' ' -}}"
        "{%- for message in messages -%}"
        "{%- set content = render(message.content) -%}"
        "{%- if message.role == 'user' -%}"
        "{%- if content -%}{{- 'USER: ' + content + ' ' -}}{%- else -%}{{- 'USER:' -}}{%- endif -%}"
        "{%- elif message.role == 'assistant' -%}"
        "{{- 'ASSISTANT:' -}}"
        "{%- if content -%}{%- generation -%}{{- ' ' + content + eos_token -}}{%- endgeneration -%}{%- endif -%}"
        "{%- else -%}{{- raise_exception('" + name + " knows the roles system, user and assistant, not ' + "
        "message.role) -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
    )


_V0 = (
    "{%- set system = " + _string(HUMAN_SYSTEM) + " -%}" + _SYSTEM_MESSAGE + "{%- for message in messages -%}"
    "{%- if message.role not in ('user', 'assistant') -%}"
    "{{- raise_exception('v0 knows the roles system, user and assistant, not ' + message.role) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{- bos_token + system -}}"
    "{%- if add_generation_prompt -%}"
    # conv_vicuna_v0.get_prompt(): SeparatorStyle.SINGLE, sep "###", the example exchange first.
    "{{- '###Human: ' + "
    + _string(V0_EXAMPLE_QUESTION)
    + " + '###Assistant: ' + "
    + _string(V0_EXAMPLE_ANSWER)
    + " + '###' -}}"
    "{%- for message in messages -%}"
    "{%- set content = render(message.content) -%}"
    "{%- set role = 'Human' if message.role == 'user' else 'Assistant' -%}"
    "{%- if content -%}{{- role + ': ' + content + '###' -}}{%- else -%}{{- role + ':' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- 'Assistant:' -}}"
    "{%- else -%}"
    # preprocess: _add_speaker_and_signal's "### Role: value\n" turns, loss as _mask_targets leaves it.
    "{{- '\\n\\n' -}}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}"
    "{%- generation -%}{{- '###' -}}{%- endgeneration -%}{{- ' Human: ' + render(message.content) + '\\n' -}}"
    "{%- else -%}"
    "{%- generation -%}{{- '### Assistant: ' + render(message.content) + '\\n' -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- generation -%}{{- '### ' -}}{%- endgeneration -%}"
    "{%- endif -%}"
)

SIMPLE_SYSTEM = (
    "You are LLaVA, a large language model trained by UW Madison WAIV Lab, based on LLaMA architecture."
    "You are designed to assist human with a variety of tasks using natural language."
    "Follow the instructions carefully."
)
SIMPLE_EXAMPLE = (("Human", "Hi!"), ("Assistant", "Hi there!  How can I help you today?\n"))

_SIMPLE = (
    "{%- set system = " + _string(SIMPLE_SYSTEM) + " -%}" + _SYSTEM_MESSAGE + "{%- for message in messages -%}"
    "{%- if message.role not in ('user', 'assistant') -%}"
    "{{- raise_exception('simple knows the roles system, user and assistant, not ' + message.role) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    # Conversation.get_prompt() of SeparatorStyle.SINGLE, sep "###": system + sep, then "Role: message" + sep.
    "{{- bos_token + system + '###' -}}"
    + "".join("{{- " + _string(f"{role}: {text}###") + " -}}" for role, text in SIMPLE_EXAMPLE)
    + "{%- for message in messages -%}"
    "{%- set content = render(message.content) -%}"
    "{%- if message.role == 'user' -%}{{- 'Human: ' + content + '###' -}}"
    "{%- else -%}{%- generation -%}{{- 'Assistant: ' + content + '###' -}}{%- endgeneration -%}{%- endif -%}"
    "{%- endfor -%}"
)

_PLAIN = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}"
    "{%- if message.content is string -%}{{- '<image>' * message.content.count('<image>') -}}"
    "{%- else -%}{%- for item in message.content if item.type == 'image' -%}{{- '<image>' -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- elif message.role == 'assistant' -%}"
    "{%- generation -%}"
    "{%- if message.content is string -%}{{- message.content -}}"
    "{%- else -%}{%- for item in message.content if item.type == 'text' -%}{{- item.text -}}{%- endfor -%}"
    "{%- endif -%}{{- '\\n' -}}"
    "{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# `conv_mistral_instruct` (`SeparatorStyle.LLAMA_2`, system "", sep "", sep2 "</s>"): `[INST] question [/INST]` and
# ` answer </s>`, the first user turn opened by the system prompt in `<<SYS>>` when there is one; an empty turn writes
# nothing and the generation prompt is empty. The loss is `preprocess_llama_2`'s: each answer, its spaces and `</s>`.
_MISTRAL_INSTRUCT = (
    "{%- set system = '' -%}" + _SYSTEM_MESSAGE + "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- set content = render(message.content) -%}"
    "{%- if loop.first and (message.role != 'user' or not content) -%}"
    "{{- raise_exception('mistral_instruct: the conversation must open with a non-empty user turn') -}}"
    "{%- endif -%}"
    "{%- if message.role == 'user' -%}"
    "{%- if loop.first and system -%}"
    "{%- set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content -%}"
    "{%- endif -%}"
    "{%- if content -%}{{- '[INST] ' + content + ' [/INST]' -}}{%- endif -%}"
    "{%- elif message.role == 'assistant' -%}"
    "{%- if content -%}{%- generation -%}{{- ' ' + content + ' ' + eos_token -}}{%- endgeneration -%}{%- endif -%}"
    "{%- else -%}{{- raise_exception('mistral_instruct knows the roles system, user and assistant, not ' + "
    "message.role) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
# `conv_chatml_direct` (`SeparatorStyle.MPT`, sep `<|im_end|>`): ChatML without newlines between turns, an empty turn
# as its bare header. No BOS: LLaVA-NeXT's `preprocess_mpt` masks as for a tokenizer that adds none (Yi's, of the 34B).
# The loss is its: each answer with its `<|im_end|>`.
_CHATML_DIRECT = (
    "{%- set system = 'Answer the questions.' -%}" + _SYSTEM_MESSAGE + "{{- '<|im_start|>system\\n' + system + "
    "'<|im_end|>' -}}"
    "{%- for message in messages -%}"
    "{%- set content = render(message.content) -%}"
    "{%- if message.role == 'user' -%}"
    "{{- '<|im_start|>user\\n' -}}{%- if content -%}{{- content + '<|im_end|>' -}}{%- endif -%}"
    "{%- elif message.role == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if content -%}{%- generation -%}{{- content + '<|im_end|>' -}}{%- endgeneration -%}{%- endif -%}"
    "{%- else -%}{{- raise_exception('chatml_direct knows the roles system, user and assistant, not ' + "
    "message.role) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
# `template: backbone` wraps the language model's own chat template, which becomes the macro `backbone` (its
# `{% generation %}` markers, if any, dropped: rendering it more than once would record spans of text never written).
# Content renders to text first (`render`: images as `<image>`), then each assistant turn's text is what rendering the
# turns up to it adds to the rendering up to its question with the generation prompt: the answer and the turn's end
# (`<|im_end|>\n`, `<|eot_id|>`), the part the model must write. A template whose earlier renderings are not prefixes
# of the later ones (one that rewrites past turns) cannot be cut so and is refused where it renders.
_BACKBONE_TURNS = (
    "{%- set llava = namespace(messages=[], done='') -%}"
    "{%- for message in messages -%}"
    "{%- set llava.messages = llava.messages + [{'role': message.role, 'content': render(message.content)}] -%}"
    "{%- endfor -%}"
    "{%- for message in llava.messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{%- set before = backbone(llava.messages[:loop.index0], true) -%}"
    "{%- set after = backbone(llava.messages[:loop.index], false) -%}"
    "{%- if not before.startswith(llava.done) or not after.startswith(before) -%}"
    "{{- raise_exception(" + _string(_BACKBONE_REFUSAL) + ") -}}"
    "{%- endif -%}"
    "{{- before[llava.done | length:] -}}{%- generation -%}{{- after[before | length:] -}}{%- endgeneration -%}"
    "{%- set llava.done = after -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set whole = backbone(llava.messages, add_generation_prompt) -%}"
    "{%- if not whole.startswith(llava.done) -%}"
    "{{- raise_exception(" + _string(_BACKBONE_REFUSAL) + ") -}}"
    "{%- endif -%}"
    "{{- whole[llava.done | length:] -}}"
)
_BACKBONE_OPEN = "{%- macro backbone(messages, add_generation_prompt) -%}"
_BACKBONE_CLOSE = "{%- endmacro -%}" + _BACKBONE_TURNS

_BODIES = {
    "vicuna_v1": _vicuna_style("vicuna_v1", VICUNA_V1_SYSTEM),
    "llava_v1": _vicuna_style("llava_v1", HUMAN_SYSTEM),
    "v0": _V0,
    "simple": _SIMPLE,
    "plain": _PLAIN,
    "mistral_instruct": _MISTRAL_INSTRUCT,
    "chatml_direct": _CHATML_DIRECT,
}
# What a model of each template writes after its answer when `eos_token` does not end it: `v0` and `simple` answers
# end with `###` (the original stops on it with its `KeywordsStoppingCriteria` and strips it), `chatml_direct` ones
# with `<|im_end|>`, which is not the EOS of every ChatML tokenizer.
STOP_STRINGS = {"v0": "###", "simple": "###", "chatml_direct": "<|im_end|>"}
# Two exchanges, what `chat_template` renders a backbone's template on to see that it can be cut into turns.
_PROBE = [
    {"role": "user", "content": "Question one?"},
    {"role": "assistant", "content": "Answer one."},
    {"role": "user", "content": "Question two?"},
    {"role": "assistant", "content": "Answer two."},
]
# The template that is the language model's own (its tokenizer's `chat_template`), not one of `CHAT_TEMPLATES`.
BACKBONE = "backbone"
TEMPLATE_NAMES = (*_BODIES, BACKBONE)


def _backbone_template(tokenizer, render: str) -> str:
    """`tokenizer`'s own chat template as the macro `backbone` inside `_BACKBONE_TURNS`, tried on `_PROBE`: a
    tokenizer without one, or a template that cannot be cut into turns, is refused here in one line rather than at
    the first sample."""
    own = getattr(tokenizer, "chat_template", None)
    own = own.get("default") if isinstance(own, dict) else own
    if not own:
        raise ValueError(
            f"Template {BACKBONE!r} is the language model's own chat template, and its tokenizer "
            f"{getattr(tokenizer, 'name_or_path', '')!r} has none: pick one of {', '.join(_BODIES)}."
        )
    if own.endswith(_BACKBONE_CLOSE):  # already wrapped: a checkpoint's tokenizer reads its processor's template
        own = own[own.index(_BACKBONE_OPEN) + len(_BACKBONE_OPEN) : -len(_BACKBONE_CLOSE)]
    own = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", own)
    template = render + _BACKBONE_OPEN + own + _BACKBONE_CLOSE
    from jinja2 import TemplateError  # transformers' chat templates need it; only this renders one here
    from transformers.utils.chat_template_utils import render_jinja_template

    special = getattr(tokenizer, "special_tokens_map", {})  # what `apply_chat_template` gives a template too
    try:
        render_jinja_template([_PROBE], chat_template=template, return_assistant_tokens_mask=True, **special)
    except TemplateError as error:
        raise ValueError(f"{error} (the chat template of {tokenizer.name_or_path!r}).") from error
    return template


def chat_template(name: str, image_in_place: bool = False, tokenizer=None) -> str:
    """The Jinja template `name` (one of `TEMPLATE_NAMES`); with `image_in_place`, list content renders in its order
    (an image where the data wrote it) instead of with the turn's images first. `backbone` wraps `tokenizer`'s own
    chat template (see `_BACKBONE_TURNS`)."""
    if name not in TEMPLATE_NAMES:
        raise ValueError(f"Unknown chat template {name!r}: expected one of {', '.join(TEMPLATE_NAMES)}.")
    if name == "plain":  # renders a turn's images and no user text: placement does not arise
        return _PLAIN
    render = _RENDER_IN_PLACE if image_in_place else _RENDER_CONTENT
    if name == BACKBONE:
        return _backbone_template(tokenizer, render)
    return render + _BODIES[name]


CHAT_TEMPLATES = {name: chat_template(name) for name in _BODIES}


def use_template(processor, name: str, image_in_place: bool = False) -> None:
    """Makes template `name` (`CHAT_TEMPLATES[name]`, or for `backbone` the tokenizer's own, wrapped) the processor's
    default chat template, keeping its other named ones: what a checkpoint trained with `name` answers in, or what
    `--template` asks of a checkpoint at inference. With `image_in_place`, its variant that renders an image where the
    message puts it (`chat_template`)."""
    named = processor.chat_template if isinstance(processor.chat_template, dict) else {}
    processor.chat_template = {
        **named,
        "default": chat_template(name, image_in_place, tokenizer=processor.tokenizer),
    }


def stop_string(processor) -> str | None:
    """The text that ends an answer in the processor's default chat template besides `eos_token` (`STOP_STRINGS`),
    or None."""
    template = processor.chat_template
    template = template.get("default") if isinstance(template, dict) else template
    return next(
        (STOP_STRINGS[name] for name in STOP_STRINGS if template in (chat_template(name), chat_template(name, True))),
        None,
    )


VICUNA_V1, LLAVA_V1, V0, PLAIN = (CHAT_TEMPLATES[name] for name in ("vicuna_v1", "llava_v1", "v0", "plain"))
MISTRAL_INSTRUCT, CHATML_DIRECT = CHAT_TEMPLATES["mistral_instruct"], CHAT_TEMPLATES["chatml_direct"]

__all__ = [
    "BACKBONE",
    "CHATML_DIRECT",
    "CHAT_TEMPLATES",
    "HUMAN_SYSTEM",
    "LLAVA_V1",
    "MISTRAL_INSTRUCT",
    "PLAIN",
    "STOP_STRINGS",
    "TEMPLATE_NAMES",
    "V0",
    "VICUNA_V1",
    "VICUNA_V1_SYSTEM",
    "chat_template",
    "stop_string",
    "use_template",
]
