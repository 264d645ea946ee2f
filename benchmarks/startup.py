"""`python -m benchmarks.startup`: how long `llava train` takes from its start to the first optimizer step on a
LLaVA-665K-sized JSON, and the peak memory on the way, with the lengths cache empty (a first start) and filled (any
later start on the same data and tokenizer).

The data is synthetic and has the real mix's size and shape: 665,298 records in the original's LLaVA JSON format,
with the length mix of `synthetic.stage2_rows` (6% long text-only, the rest one image and 1-10 turns, up to 2,048
tokens with the image's 576). Images are tiny PNGs (start-up never decodes one before the first batch), spread over
the mix's source folders; records share them. The model is CLIP-L/336's geometry (576 image tokens) with tiny widths
and a tiny Llama, so the first step itself costs nothing and the time measured is the data path's: reading and
checking the JSON (every image path is resolved and checked), building the dataset, reading every distinct image
file's header (`processing.data_checks.check_images`), measuring every sample's length, the grouped sampler, the
dataloader workers.

Each start runs `llava train stage2 --config llava-1.5-7b-stage2` in a fresh process (the recipe's 4 dataloader
workers, `group_by_modality_length`, `max_length` 2048), timed by hooks on the functions `trainers.train` calls.
Peak memory is the training process's peak resident set since it started (`VmHWM`), read when the first step ends.
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

RECORDS = 665_298  # llava_v1_5_mix665k.json
IMAGE_FOLDERS = ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K")


def write_backbones(folder: Path) -> tuple[Path, Path]:
    """A CLIP vision tower of CLIP-L/336's geometry and a tiny Llama, both with tiny widths, and the word tokenizer."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.models.llava import LlavaImageProcessorPil

    from .synthetic import IMAGE_SIZE, PATCH_SIZE, SMALL_TEXT, SMALL_VISION, SMALL_VOCAB, word_tokenizer

    vision = folder / "vision"
    CLIPVisionModel(CLIPVisionConfig(**SMALL_VISION, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)).save_pretrained(
        vision
    )
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    LlavaImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=crop).save_pretrained(vision)
    text = word_tokenizer(SMALL_VOCAB, folder / "text")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(text)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **SMALL_TEXT, **special)).save_pretrained(text)
    return vision, text


def as_llava_record(index: int, row: dict, image: str | None) -> dict:
    """A `synthetic.stage2_rows` row in the original's JSON format (`<image>` at the start of the first question)."""
    turns = []
    for message in row["messages"]:
        text = " ".join(item["text"] for item in message["content"] if item["type"] == "text")
        shows_image = any(item["type"] == "image" for item in message["content"])
        turns.append(
            {"from": "human" if message["role"] == "user" else "gpt", "value": "<image>\n" * shows_image + text}
        )
    record = {"id": f"{index:012d}", "conversations": turns}
    if image is not None:
        record["image"] = image
    return record


def write_data(folder: Path, records: int, images: int) -> tuple[Path, Path]:
    """The LLaVA JSON and its image folder (`images` distinct 8x8 PNGs over the mix's source folders)."""
    from PIL import Image

    from .synthetic import stage2_rows

    image_folder = folder / "images"
    names = []
    rng = random.Random(0)
    for index in range(images):
        name = f"{IMAGE_FOLDERS[index % len(IMAGE_FOLDERS)]}/{index:09d}.png"
        (image_folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), tuple(rng.randrange(256) for _ in range(3))).save(image_folder / name)
        names.append(name)
    # The mix's generator can draw a first answer too long to fit beside the image (one in ~40,000): no turn is left,
    # which a real record never has. Such rows are left out and more drawn.
    rows = [row for row in stage2_rows(records + records // 1000 + 10, names) if row["messages"]][:records]
    data = [as_llava_record(index, row, row["images"][0] if row["images"] else None) for index, row in enumerate(rows)]
    path = folder / "llava_v1_5_mix665k_synthetic.json"
    path.write_text(json.dumps(data))
    return path, image_folder


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started: Linux's `VmHWM`, which starts afresh at `exec`.

    `ru_maxrss` does not: a child forked from a parent holding the generated 1 GB file's records would report the
    parent's size (7.1 GiB here, where the child's own peak is 5.4).
    """
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(argv: list[str]) -> None:
    """One `llava train` start with timing hooks; prints one JSON line of phase times (absolute, `time.time()`)."""
    from transformers import TrainerCallback

    import trainers.train as train

    marks: dict[str, float] = {}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            marks[f"{name} start"] = time.time()
            result = function(*args, **kwargs)
            marks[f"{name} end"] = time.time()
            marks[f"peak rss bytes after {name}"] = peak_rss_bytes()
            return result

        return wrapper

    class FirstStep(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks["train begin"] = time.time()
            marks["peak rss bytes at train begin"] = peak_rss_bytes()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                marks["first step"] = time.time()
                marks["peak rss bytes"] = peak_rss_bytes()

    train.read_records = timed("read", train.read_records)
    train.measure_lengths = timed("measure", train.measure_lengths)
    train.rows_to_dataset = timed("dataset", train.rows_to_dataset)
    train.check_images = timed("images", train.check_images)
    train.build_model_and_processor = timed("model", train.build_model_and_processor)
    build = train.LlavaSFTTrainer

    class Timed(build):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(FirstStep())

    train.LlavaSFTTrainer = Timed
    marks["imported"] = time.time()
    train.main(*train.parse(argv))
    print("STARTUP " + json.dumps(marks), flush=True)


def start(workdir: Path, data: Path, images: Path, backbones: tuple[Path, Path], cache: Path, num_proc: int) -> dict:
    """One timed start in a fresh process; times are seconds from the process's launch."""
    output = workdir / f"run-{time.time_ns()}"
    argv = [
        "stage2", "--config", "llava-1.5-7b-stage2", "--vision_tower", str(backbones[0]),
        "--language_model", str(backbones[1]), "--pretrain_projector", "", "--data_path", str(data),
        "--image_folder", str(images), "--output_dir", str(output), "--max_steps", "1",
        "--per_device_train_batch_size", "4", "--global_batch_size", "4", "--use_cpu", "true", "--bf16", "false",
        "--dtype", "float32", "--gradient_checkpointing", "false", "--save_strategy", "no",
        "--dataset_num_proc", str(num_proc), "--disable_tqdm", "true",
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "PYTHONPATH": str(Path(__file__).parent.parent)}
    launched = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.startup", "--child", *argv], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"llava train failed:\n{done.stderr[-4000:]}")
    marks = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("STARTUP "))[8:])
    return {
        "python and imports (s)": round(marks["imported"] - launched, 1),
        "reading and checking the JSON (s)": round(marks["read end"] - marks["read start"], 1),
        "building the dataset (s)": round(marks["dataset end"] - marks["dataset start"], 1),
        "checking the images (s)": round(marks["images end"] - marks["images start"], 1),
        "measuring lengths (s)": round(marks["measure end"] - marks["measure start"], 1),
        "to the first optimizer step (s)": round(marks["first step"] - launched, 1),
        "peak memory (GiB)": round(marks["peak rss bytes"] / 2**30, 2),
        "peak memory by then (GiB)": {
            key.removeprefix("peak rss bytes "): round(value / 2**30, 2)
            for key, value in marks.items()
            if key.startswith("peak rss bytes ")
        },
    }


def markdown(results: dict) -> str:
    columns = [name for name, value in next(iter(results["starts"].values())).items() if not isinstance(value, dict)]
    lines = [
        f"{results['records']:,} records, {results['data size (MB)']:,} MB of JSON, {results['cpus']} CPU cores, "
        f"dataset_num_proc {results['num_proc']} ({results['date']})",
        "",
        "| start | " + " | ".join(columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for name, row in results["starts"].items():
        lines.append(f"| {name} | " + " | ".join(str(row[column]) for column in columns) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=RECORDS)
    parser.add_argument("--images", type=int, default=10_000, help="distinct image files the records share")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count(), help="dataset_num_proc of the runs")
    parser.add_argument("--workdir", type=Path, help="where the data is written (default: a temporary folder)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results-startup"))
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llava-startup-"))
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.time()
    data, images = write_data(workdir, args.records, args.images)
    backbones = write_backbones(workdir)
    print(f"wrote {args.records:,} records ({data.stat().st_size / 1e6:,.0f} MB) in {time.time() - began:.0f} s")
    cache = Path(tempfile.mkdtemp(prefix="lengths-cache-", dir=workdir))
    starts = {}
    for name in ("first start (lengths measured)", "second start (lengths cached)"):
        starts[name] = start(workdir, data, images, backbones, cache, args.num_proc)
        print(name, starts[name], flush=True)
    results = {
        "records": args.records,
        "data size (MB)": round(data.stat().st_size / 1e6),
        "cpus": os.cpu_count(),
        "num_proc": args.num_proc,
        "date": date.today().isoformat(),
        "starts": starts,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output / "results.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main()
