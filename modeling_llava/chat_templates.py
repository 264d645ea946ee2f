"""The two prompt formats of LLaVA, as Jinja chat templates.

`VICUNA_V1` renders byte for byte what the original repository's `conv_vicuna_v1.get_prompt()` renders (system
prompt, ` USER: ... ASSISTANT: ...</s>` turns, generation prompt `ASSISTANT:`); `PLAIN` is stage 1's format: the
image, then the caption and a newline, the user's words dropped as the original's `preprocess_plain` does. Both wrap
assistant text in `{% generation %}` so that `return_assistant_tokens_mask` (TRL's `assistant_only_loss`) leaves
loss on the answers and their end-of-sequence token only.

Message content may be a string (LLaVA JSON, with `<image>` written in it) or a list of `{"type": "image"}` /
`{"type": "text", "text": ...}` items (the Hugging Face format), each image item rendering as `<image>\n`.
"""

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

_RENDER_CONTENT = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item.type == 'image' -%}{{- '<image>\\n' -}}{%- elif item.type == 'text' -%}{{- item.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

VICUNA_V1 = (
    _RENDER_CONTENT + "{%- set system = '" + VICUNA_V1_SYSTEM.replace("'", "\\'") + "' -%}"
    "{%- if messages[0].role == 'system' -%}"
    "{%- set system = render(messages[0].content) -%}{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{- bos_token + system + ' ' -}}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}{{- 'USER: ' + render(message.content) + ' ' -}}"
    "{%- elif message.role == 'assistant' -%}"
    "{{- 'ASSISTANT:' -}}{%- generation -%}{{- ' ' + render(message.content) + eos_token -}}{%- endgeneration -%}"
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
