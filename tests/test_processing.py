"""LlavaPluginProcessor and LLaVA's chat templates against independent references.

The references are written out here: the original LLaVA repository's `expand2square`, `Conversation.get_prompt()`
for `conv_vicuna_v1` and `preprocess_plain`, CLIP's resize / center crop / normalise in PIL and numpy, and `<image>`
expansion as "each image token id of the unexpanded text, repeated".
"""

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from modeling_llava import LlavaPluginProcessor
from modeling_llava.chat_templates import CHAT_TEMPLATES
from tests.conftest import (
    A1,
    A2,
    A3,
    CAPTION,
    ORIGINAL_VICUNA_V1_SYSTEM,
    Q1,
    Q2,
    Q3,
    random_image,
    unmasked_text,
    vicuna_v1_get_prompt,
)

OPENAI_CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
OPENAI_CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])
IMAGE = random_image(0)


def user(content: str | list[dict]) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str | list[dict]) -> dict:
    return {"role": "assistant", "content": content}


# Three turns, the image in the first; list content (the Hugging Face format) and plain strings mixed.
THREE_TURNS = [
    user([{"type": "image", "image": IMAGE}, {"type": "text", "text": Q1}]),
    assistant([{"type": "text", "text": A1}]),
    user(Q2),
    assistant(A2),
    user(Q3),
    assistant(A3),
]


def clip_reference(image: Image.Image, side: int = 30) -> np.ndarray:
    """CLIPImageProcessor: bicubic resize of the shortest edge to `side`, center crop, rescale, normalise (C, H, W)."""
    width, height = image.size
    scale_long = int(side * max(width, height) / min(width, height))
    image = image.resize((side, scale_long) if width < height else (scale_long, side), Image.BICUBIC)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    pixels = np.asarray(image.crop((left, top, left + side, top + side)), dtype=np.float64) / 255
    return ((pixels - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD).transpose(2, 0, 1)


def expand2square(pil_img: Image.Image, background_color: tuple[int, int, int]) -> Image.Image:
    """The original LLaVA's `expand2square` (llava/mm_utils.py), used by `image_aspect_ratio == "pad"`."""
    width, height = pil_img.size
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def pad_reference(image: Image.Image) -> np.ndarray:
    """LLaVA-1.5's `image_aspect_ratio == "pad"`: pad with the mean colour, then CLIP's preprocessing."""
    return clip_reference(expand2square(image, tuple(int(x * 255) for x in OPENAI_CLIP_MEAN)))


@pytest.mark.parametrize(
    "vision, strategy, image_tokens",
    [("clip", None, 25), ("clip", "full", 26), ("siglip", None, 25), ("siglip", "full", 25)],
)
def test_each_image_marker_becomes_image_seq_length_tokens(checkpoints, vision, strategy, image_tokens):
    processor = LlavaPluginProcessor.from_backbones(checkpoints[vision], checkpoints["llama"], strategy)
    texts = [f"USER: <image>\n{Q1} ASSISTANT:", "<image> and <image>\nTwo images.", "No image here."]
    images = [random_image(seed) for seed in range(3)]

    out = processor(text=texts, images=images)

    assert processor.image_seq_length == image_tokens
    assert len(out["pixel_values"]) == 3
    # One run of image tokens per marker; the text ids around them: test_original_tokenization.py.
    for text, ids in zip(texts, out["input_ids"], strict=True):
        runs = "".join("i" if token == processor.image_token_id else "." for token in ids).split(".")
        assert [len(run) for run in runs if run] == [image_tokens] * text.count("<image>")


def test_nested_images_per_sample_expand_like_a_flat_list(processor):
    texts = ["<image>\nOne image.", "<image> and <image>\nTwo images."]
    images = [random_image(seed) for seed in range(3)]
    nested = processor(text=texts, images=[images[:1], images[1:]], padding=True, return_tensors="np")
    flat = processor(text=texts, images=images, padding=True, return_tensors="np")
    assert nested.keys() == flat.keys()
    for key in flat:
        np.testing.assert_array_equal(nested[key], flat[key])


def test_image_paths_are_read_like_images(processor, tmp_path):
    """TRL's collator hands the processor the image paths of each sample, nested per sample."""
    texts = ["<image>\nOne image.", "<image> and <image>\nTwo images."]
    images = [random_image(seed) for seed in range(3)]
    paths = []
    for index, image in enumerate(images):
        image.save(tmp_path / f"{index}.png")
        paths.append(str(tmp_path / f"{index}.png"))
    from_paths = processor(text=texts, images=[paths[:1], paths[1:]], padding=True, return_tensors="np")
    from_images = processor(text=texts, images=[images[:1], images[1:]], padding=True, return_tensors="np")
    for key in from_images:
        np.testing.assert_array_equal(from_paths[key], from_images[key])


def test_text_without_images_is_only_tokenized(processor):
    out = processor(text=[Q1, Q2])
    assert "pixel_values" not in out
    assert out["input_ids"] == [processor.tokenizer(Q1).input_ids, processor.tokenizer(Q2).input_ids]


def test_flat_images_not_matching_markers_raise_with_both_totals(processor):
    with pytest.raises(ValueError, match="Found total 2 <image> tokens and 1 images"):
        processor(text=["<image> first <image>", "second"], images=[IMAGE])


def test_nested_images_not_matching_a_sample_raise_with_its_index_and_counts(processor):
    # Three markers and three images in all, so only the per-sample check can see that sample 0 lacks one.
    with pytest.raises(ValueError, match="Sample 0 has 2 <image> markers but 1 images"):
        processor(text=["<image> <image>", "<image>"], images=[[IMAGE], [IMAGE, IMAGE]])


def test_tokenizer_without_image_token_is_refused(processor, tokenizer):
    assert "<image>" not in tokenizer.get_vocab()
    with pytest.raises(ValueError, match="The tokenizer has no '<image>' token"):
        LlavaPluginProcessor(image_processor=processor.image_processor, tokenizer=tokenizer, image_seq_length=25)


def test_default_preprocessing_is_clip_resize_and_center_crop(processor):
    image = random_image(1, size=(40, 52))
    pixel_values = processor(text="<image>", images=image, return_tensors="np")["pixel_values"]
    assert pixel_values.shape == (1, 3, 30, 30)
    np.testing.assert_allclose(pixel_values[0], clip_reference(image), atol=1e-5)


@pytest.mark.parametrize("size", [(40, 52), (52, 40)], ids=["wide", "tall"])
def test_pad_mode_is_original_expand2square_then_clip(checkpoints, size):
    processor = LlavaPluginProcessor.from_backbones(checkpoints["clip"], checkpoints["llama"], pad_to_square=True)
    image = random_image(2, size=size)
    pixel_values = processor(text="<image>", images=image, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(pixel_values[0], pad_reference(image), atol=1e-5)


def test_pad_mode_survives_save_and_load(checkpoints, tmp_path):
    processor = LlavaPluginProcessor.from_backbones(checkpoints["clip"], checkpoints["llama"], pad_to_square=True)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    image = random_image(3)
    pixel_values = loaded(text="<image>", images=image, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(pixel_values[0], pad_reference(image), atol=1e-5)


@pytest.mark.parametrize(
    "messages, add_generation_prompt, system, original_messages",
    [
        pytest.param(
            [user([{"type": "image"}, {"type": "text", "text": Q1}]), assistant([{"type": "text", "text": A1}])],
            False,
            ORIGINAL_VICUNA_V1_SYSTEM,
            [("USER", f"<image>\n{Q1}"), ("ASSISTANT", A1)],
            id="single-turn-list-content",
        ),
        pytest.param(
            [user(f"<image>\n{Q1}"), assistant(A1)],
            False,
            ORIGINAL_VICUNA_V1_SYSTEM,
            [("USER", f"<image>\n{Q1}"), ("ASSISTANT", A1)],
            id="single-turn-string-content",
        ),
        pytest.param(
            THREE_TURNS,
            False,
            ORIGINAL_VICUNA_V1_SYSTEM,
            [("USER", f"<image>\n{Q1}"), ("ASSISTANT", A1), ("USER", Q2), ("ASSISTANT", A2)]
            + [("USER", Q3), ("ASSISTANT", A3)],
            id="three-turns",
        ),
        pytest.param(
            [user(f"<image>\n{Q1}")],
            True,
            ORIGINAL_VICUNA_V1_SYSTEM,
            [("USER", f"<image>\n{Q1}"), ("ASSISTANT", None)],
            id="generation-prompt",
        ),
        pytest.param(
            [{"role": "system", "content": "You describe images."}, user(f"<image>\n{Q1}"), assistant(A1)],
            False,
            "You describe images.",
            [("USER", f"<image>\n{Q1}"), ("ASSISTANT", A1)],
            id="custom-system",
        ),
    ],
)
def test_vicuna_v1_renders_the_original_prompt(processor, messages, add_generation_prompt, system, original_messages):
    rendered = processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert rendered == processor.tokenizer.bos_token + vicuna_v1_get_prompt(original_messages, system)


@pytest.mark.parametrize(
    "content", [f"<image>\n{Q1}", [{"type": "image"}, {"type": "text", "text": Q1}]], ids=["string", "list"]
)
def test_plain_renders_image_then_caption_dropping_the_user_words(processor, content):
    rendered = processor.apply_chat_template([user(content), assistant(CAPTION)], chat_template="plain")
    # preprocess_plain: the user turn becomes DEFAULT_IMAGE_TOKEN, then caption + conv_llava_plain.sep.
    assert rendered == processor.tokenizer.bos_token + "<image>" + CAPTION + "\n"


def test_vicuna_v1_assistant_mask_covers_answers_and_eos_only(processor):
    short = [user([{"type": "image", "image": random_image(4)}, {"type": "text", "text": Q3}]), assistant(A3)]
    # A padded batch, as TRL's SFT collator asks for it with assistant_only_loss=True.
    out = processor.apply_chat_template(
        [THREE_TURNS, short],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        processor_kwargs={"padding": True, "padding_side": "right", "add_special_tokens": False},
    )
    (long_ids, short_ids), (long_mask, short_mask) = out["input_ids"], out["assistant_masks"]
    assert long_ids.count(processor.image_token_id) == short_ids.count(processor.image_token_id) == 25
    assert unmasked_text(processor, long_ids, long_mask) == f" {A1}</s> {A2}</s> {A3}</s>"
    assert unmasked_text(processor, short_ids, short_mask) == f" {A3}</s>"


def test_plain_assistant_mask_covers_caption_and_newline_only(processor):
    messages = [user([{"type": "image", "image": IMAGE}, {"type": "text", "text": Q1}]), assistant(CAPTION)]
    out = processor.apply_chat_template(
        messages, chat_template="plain", tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    # preprocess_plain's labels: everything up to and including the image ignored, then the tokens of caption + "\n".
    caption_ids = processor.tokenizer(CAPTION + "\n", add_special_tokens=False).input_ids
    assert ids == [processor.tokenizer.bos_token_id] + [processor.image_token_id] * 25 + caption_ids
    assert mask == [0] * 26 + [1] * len(caption_ids)


@pytest.mark.parametrize("chat_template", [None, "plain"])
def test_tokenizing_a_chat_adds_no_second_bos(processor, chat_template):
    messages = [user([{"type": "image", "image": IMAGE}, {"type": "text", "text": Q1}]), assistant(A1)]
    ids = processor.apply_chat_template(messages, chat_template=chat_template, tokenize=True)[0]
    bos = processor.tokenizer.bos_token_id
    assert ids[0] == bos and ids.count(bos) == 1


def test_processor_round_trips_through_save_and_auto_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)

    assert type(loaded) is LlavaPluginProcessor
    assert (loaded.image_seq_length, loaded.image_token_id) == (25, processor.image_token_id)
    assert loaded.chat_template == {"default": CHAT_TEMPLATES["vicuna_v1"], "plain": CHAT_TEMPLATES["plain"]}
    texts = [f"USER: <image>\n{Q1} ASSISTANT:", "<image> and <image>\nTwo images."]
    images = [random_image(seed) for seed in range(3)]
    expected = processor(text=texts, images=images, padding=True, return_tensors="np")
    got = loaded(text=texts, images=images, padding=True, return_tensors="np")
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    for template in (None, "plain"):
        assert loaded.apply_chat_template(THREE_TURNS, chat_template=template) == processor.apply_chat_template(
            THREE_TURNS, chat_template=template
        )
