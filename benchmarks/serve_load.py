"""`python -m benchmarks.serve_load CHECKPOINT`: `llava serve` under concurrent clients, on 127.0.0.1 only.

The server runs in this process (API only) on a free loopback port. First each (client, request) pair is asked alone,
one after another: those greedy answers are the reference, and their timing the sequential throughput. Then
`--clients` threads each send `--requests` requests at once (every other one streamed), each with its own image and
question (scenes of the demo's world), through the official `openai` client. Reported: requests/s, p50/p99 latency,
errors, and crossed answers (a concurrent answer that differs from the same request's answer alone; `distinct_answers`
says how telling that is). The run is bounded: clients x requests requests, each with a timeout.
"""

import argparse
import json
import threading
import time

import numpy as np
import openai
from PIL import Image

from processing.generation import load_llava
from serving.server import ServeSettings, create_app, serving_in_thread
from trainers.demo.world import COLOURS, POSITIONS, SHAPES, Scene, render


def _data_url(image: Image.Image) -> str:
    import base64
    import io

    png = io.BytesIO()
    image.save(png, format="PNG")
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()


def _request(client: int, number: int, max_tokens: int, size: int) -> dict:
    """A scene of the demo's world and one of its questions: a demo checkpoint answers them differently."""
    rng = np.random.default_rng(1000 * client + number)
    scene = Scene(*(str(rng.choice(list(values))) for values in (COLOURS, SHAPES, POSITIONS)))
    image = render(scene, rng, size)
    question = scene.questions()[(client + number) % 3][0]
    content = [{"type": "image_url", "image_url": {"url": _data_url(image)}}, {"type": "text", "text": question}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}


def _ask(client: openai.OpenAI, request: dict, stream: bool) -> str:
    if not stream:
        return client.chat.completions.create(model="served", **request).choices[0].message.content
    chunks = client.chat.completions.create(model="served", stream=True, **request)
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def run(checkpoint: str, clients: int, requests: int, max_tokens: int, image_size: int, device: str | None) -> dict:
    model, processor = load_llava(checkpoint, device)
    app = create_app(model, processor, "served", ServeSettings(max_queue=clients * requests, page=False))
    jobs = {(c, n): _request(c, n, max_tokens, image_size) for c in range(clients) for n in range(requests)}
    with serving_in_thread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        _ask(client, jobs[0, 0], False)  # warm-up
        started = time.perf_counter()
        alone = {key: _ask(client, request, False) for key, request in jobs.items()}
        sequential_s = time.perf_counter() - started

        answers, latencies, errors = {}, [], []
        lock = threading.Lock()

        def one_client(c: int) -> None:
            for n in range(requests):
                begin = time.perf_counter()
                try:
                    answer = _ask(client, jobs[c, n], stream=bool((c + n) % 2))
                except openai.OpenAIError as error:
                    with lock:
                        errors.append(f"{c},{n}: {error}")
                    continue
                with lock:
                    answers[c, n] = answer
                    latencies.append(time.perf_counter() - begin)

        threads = [threading.Thread(target=one_client, args=(c,)) for c in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        concurrent_s = time.perf_counter() - started
    crossed = sum(answers[key] != alone[key] for key in answers)
    return {
        "checkpoint": checkpoint,
        "clients": clients,
        "requests_per_client": requests,
        "max_tokens": max_tokens,
        "requests": len(jobs),
        "requests_per_s": round(len(answers) / concurrent_s, 2),
        "sequential_requests_per_s": round(len(jobs) / sequential_s, 2),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
        "latency_p99_s": round(float(np.percentile(latencies, 99)), 3) if latencies else None,
        "errors": len(errors),
        "crossed_answers": crossed,
        "distinct_answers": len(set(alone.values())),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="any checkpoint `llava serve` reads, e.g. a demo's stage2 folder")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device")
    args = parser.parse_args(argv)
    result = run(args.checkpoint, args.clients, args.requests, args.max_tokens, args.image_size, args.device)
    print(json.dumps(result, indent=2))
    if result["errors"] or result["crossed_answers"]:
        raise SystemExit("errors or crossed answers: see above")


if __name__ == "__main__":
    main()
