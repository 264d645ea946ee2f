"""The two prompt formats of LLaVA, as Jinja chat templates.

`VICUNA_V1` renders byte for byte what the original repository's `conv_vicuna_v1.get_prompt()` renders (system
prompt, ` USER: ... ASSISTANT: ...</s>` turns, an empty turn as a bare `USER:` / `ASSISTANT:`, generation prompt
`ASSISTANT:`); `PLAIN` is stage 1's format: the image, then the caption and a newline, the user's words dropped as the
original's `preprocess_plain` does. Both wrap assistant text in `{% generation %}` so that
`return_assistant_tokens_mask` (TRL's `assistant_only_loss`) leaves loss on the answers and their end-of-sequence
token only.

Message content may be a string (LLaVA JSON, with `<image>` written in it) or a list of `{"type": "image"}` /
`{"type": "text", "text": ...}` items (the Hugging Face format). A turn's images render first, each as `<image>`
followed by a newline when anything follows, then its text: the original's `preprocess_multimodal` moves the image to
the start of the turn that wrote it (`<image>\n` + text, stripped).
"""

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

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

VICUNA_V1 = (
    _RENDER_CONTENT + "{%- set system = '" + VICUNA_V1_SYSTEM.replace("'", "\\'") + "' -%}"
    "{%- if messages[0].role == 'system' -%}"
    "{%- set system = render(messages[0].content) -%}{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{- bos_token + system + ' ' -}}"
    "{%- for message in messages -%}"
    "{%- set content = render(message.content) -%}"
    "{%- if message.role == 'user' -%}"
    "{%- if content -%}{{- 'USER: ' + content + ' ' -}}{%- else -%}{{- 'USER:' -}}{%- endif -%}"
    "{%- elif message.role == 'assistant' -%}"
    "{{- 'ASSISTANT:' -}}"
    "{%- if content -%}{%- generation -%}{{- ' ' + content + eos_token -}}{%- endgeneration -%}{%- endif -%}"
    "{%- else -%}{{- raise_exception('vicuna_v1 knows the roles system, user and assistant, not ' + message.role) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

PLAIN = (
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

CHAT_TEMPLATES = {"vicuna_v1": VICUNA_V1, "plain": PLAIN}

__all__ = ["CHAT_TEMPLATES", "PLAIN", "VICUNA_V1", "VICUNA_V1_SYSTEM"]
