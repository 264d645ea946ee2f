"""lmms-eval's model `llava_plugin`: any checkpoint `llava predict` reads (a plugin checkpoint, a LoRA folder, an
original LLaVA checkpoint, a Hub id), asked as the original LLaVA-1.5 asks its benchmarks.

    pip install 'llava-plugin[lmms-eval]'
    lmms-eval --model llava_plugin --model_args pretrained=CHECKPOINT --tasks pope --batch_size 8

lmms-eval's own `llava_hf` loads transformers' built-in format only, one question at a time, and its chat template
drops the Vicuna system line. Here the question goes through `llava predict`'s engine (`processing.generation`):
batched, the checkpoint's image preprocessing (LLaVA-1.5's padding to a square included), and the conversation
template of the original's `--conv-mode vicuna_v1` with its system line ("A chat between a curious user and an
artificial intelligence assistant. ..."), the image before the text as the original's `<image>\\n`. `template=NAME`
in `--model_args` picks another of `modeling_llava.chat_templates.CHAT_TEMPLATES` ("checkpoint": the one saved with
it); `device`, `dtype`, `vision_tower` and `batch_size` are taken as `llava predict` takes them.

lmms-eval finds the model through the entry point group `lmms_eval.models` (pyproject.toml: `llava_plugin =
"evaluation.lmms_eval_model:manifest"`), which loads this module; nothing else of the package imports it, so the
package works without lmms-eval installed.

Only generation tasks are answered (`output_type: generate_until`, as POPE, MME, TextVQA, GQA, VQAv2, MMBench,
SEED and the others of LLaVA-1.5's table are in lmms-eval); a task that scores by log-likelihood, or by several rounds,
stops with a message naming it.
"""

import json
from collections import defaultdict

from lmms_eval.api.model import lmms

from processing.generation import generate_answers, load_llava

from .sharding import process_device, process_share

MODEL_ID = "llava_plugin"
TEMPLATE = "vicuna_v1"  # scripts/v1_5/eval/*.sh: --conv-mode vicuna_v1
MAX_NEW_TOKENS = 128  # model_vqa_loader.py's default, where a task sets none


def manifest():
    """The entry point lmms-eval loads: `llava_plugin` is `LlavaPlugin`, a model that takes the task's text."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.LlavaPlugin")


class LlavaPlugin(lmms):
    """A LLaVA checkpoint answering lmms-eval's `generate_until` requests in batches (see the module docstring)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        batch_size: int | str = 8,
        device: str | None = None,
        dtype: str = "auto",
        template: str = TEMPLATE,
        vision_tower: str | None = None,
        max_batch_size: int | None = None,
        **unused,
    ) -> None:
        super().__init__()
        if unused:
            raise ValueError(f"llava_plugin takes no model argument {', '.join(sorted(unused))}.")
        if str(batch_size).startswith("auto"):
            raise ValueError("llava_plugin needs a number as --batch_size (no 'auto').")
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError("llava_plugin: --batch_size must be at least 1.")
        self._rank, self._world_size = process_share()
        # lmms-eval's default device is "cuda"; as `llava predict`, each process takes its own GPU, or the CPU.
        device = None if device in (None, "cuda") else device
        self.model, self.processor = load_llava(
            pretrained,
            process_device(device),
            vision_tower,
            dtype,
            template=None if template == "checkpoint" else template,
        )

    def generate_until(self, requests) -> list[str]:
        """Each request's answer, in the requests' order: requests with the same generation settings are answered
        together, `batch_size` at a time; an answer is cut at the first of the task's `until` strings."""
        groups = defaultdict(list)
        for index, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(index)
        answers: list[str | None] = [None] * len(requests)
        for indices in groups.values():
            settings = dict(requests[indices[0]].args[1])
            until = settings.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            conversations, images = [], []
            for index in indices:
                context, _, doc_to_visual, doc_id, task, split = requests[index].args
                visuals = [
                    visual for visual in doc_to_visual(self.task_dict[task][split][doc_id]) if visual is not None
                ]
                if len(visuals) > 1:
                    raise ValueError(
                        f"lmms-eval task {task!r}, document {doc_id}: {len(visuals)} images; llava_plugin asks about "
                        "one image (or none), as LLaVA-1.5 does."
                    )
                content = [{"type": "image"}] if visuals else []
                conversations.append([{"role": "user", "content": [*content, {"type": "text", "text": context}]}])
                images.append(visuals[0].convert("RGB") if visuals else None)
            batches = generate_answers(
                self.model,
                self.processor,
                conversations,
                images,
                self.batch_size,
                int(settings.get("max_new_tokens", MAX_NEW_TOKENS)),
                ids=[f"{requests[index].args[4]}/{requests[index].args[3]}" for index in indices],
                temperature=float(settings.get("temperature", 0.0)) if settings.get("do_sample", True) else 0.0,
                top_p=float(settings.get("top_p") or 1.0),
            )
            texts = [text for batch in batches for text in batch]
            for index, text in zip(indices, texts, strict=True):
                for stop in until:
                    text = text.split(stop, 1)[0] if stop else text
                answers[index] = text
                self.cache_hook.add_partial("generate_until", requests[index].args[:2], text)
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "llava_plugin answers generation tasks (output_type: generate_until), as LLaVA-1.5's benchmarks are "
            "asked; this task scores by log-likelihood."
        )

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("llava_plugin answers single-round generation tasks; this task has several rounds.")


__all__ = ["LlavaPlugin", "manifest"]
