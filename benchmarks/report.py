"""The benchmark's record: results merged across runs on one device, and the Markdown table the README quotes."""

import json
from pathlib import Path
from typing import Any

RATIOS = ("samples_per_s", "tokens_per_s", "peak_memory_gib")


def with_ratios(case: dict[str, Any]) -> dict[str, Any]:
    """The case with `ratio`: ours / baseline for throughput and peak memory (where both were measured)."""
    if "error" in case:
        return case
    ratio = {}
    for key in RATIOS:
        ours, baseline = case["ours"].get(key), case["baseline"].get(key)
        ratio[key] = None if ours is None or not baseline else ours / baseline
    return {**case, "ratio": ratio}


def merge_results(
    path: Path, run: dict[str, Any], cases: dict[str, dict], drop: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The record at `path` with `cases` replaced or added, when it is of the same device and mode; else a new one.

    The rows named in `drop` go first (the "started" mark of a case whose rows have other names). The GPU run is split
    into several commands (one case each); they add up in one record.
    """
    record = {"device": run["device"], "mode": run["mode"], "cases": {}}
    if path.is_file():
        earlier = json.loads(path.read_text())
        if (earlier.get("device"), earlier.get("mode")) == (run["device"], run["mode"]):
            record = earlier
    run_info = {key: value for key, value in run.items() if key not in ("device", "mode")}
    for name in drop:
        record["cases"].pop(name, None)
    for name, case in cases.items():
        record["cases"][name] = {**with_ratios(case), **run_info}
    return record


def _number(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _setting(settings: dict[str, Any], key: str) -> str:
    value = settings.get(key)
    if value is None:
        return "n/a"
    return {True: "yes", False: "no"}.get(value, str(value)) if isinstance(value, bool) else str(value)


def settings_table(record: dict[str, Any]) -> list[str]:
    """One row per side and case: the settings each side ran with, as its trainer and model reported them."""
    lines = [
        "| case | side | workers | sampler | loss tokens | attention | padding-free | cache | gradient checkpointing "
        "| dtype |",
        "| --- | --- | ---: | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, case in record["cases"].items():
        if "error" in case:
            continue
        for side in ("baseline", "ours"):
            settings, result = case[side].get("settings", {}), case[side]
            loss = _setting(settings, "loss_tokens")
            if result.get("loss_token_fraction") is not None:
                loss += f" ({_percent(result['loss_token_fraction'])} of tokens)"
            cache = _setting(settings, "cache")
            if settings.get("compiled"):
                cache += ", compiled"
            lines.append(
                f"| {name if side == 'baseline' else ''} | {side} | {_setting(settings, 'dataloader_num_workers')} | "
                f"{_setting(settings, 'sampler')} | {loss} | {_setting(settings, 'attn_implementation')} | "
                f"{_setting(settings, 'padding_free')} | {cache} | {_setting(settings, 'gradient_checkpointing')} | "
                f"{_setting(settings, 'dtype')} |"
            )
    return lines


def image_tokens_table(record: dict[str, Any]) -> list[str]:
    """One row per side and training case: the image tokens of its timed samples with an image (a LLaVA-1.5 image is
    always 576; a LLaVA-NeXT image's depend on its grid)."""
    lines = [
        "| case | side | min | median | mean | max |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, case in record["cases"].items():
        if "error" in case:
            continue
        for side in ("baseline", "ours"):
            spread = case[side].get("image_tokens_per_sample")
            if spread is None:
                continue
            values = " | ".join(_number(spread[key], digits=0) for key in ("min", "median", "mean", "max"))
            lines.append(f"| {name if side == 'baseline' else ''} | {side} | {values} |")
    return lines if len(lines) > 2 else []


def markdown_table(record: dict[str, Any]) -> str:
    """One row per side and case, then each side's settings; the ratio column is ours / baseline.

    A case that failed or was killed gives one row with its error.
    """
    lines = [
        f"Device: {record['device']} ({record['mode']} shapes)",
        "",
        "| case | side | samples/s | non-padding tokens/s | MFU | padding | peak memory | ours / baseline |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, case in record["cases"].items():
        versions = ", ".join(f"{package} {version}" for package, version in case["versions"].items())
        if "error" in case:
            lines.append(f"| {name} | failed | | | | | | {case['error'].splitlines()[0][:200]} |")
            continue
        label = f"{name} ({case['llm']}, batch {case['batch_size']})"
        ratio = case["ratio"]
        summary = f"**{_number(ratio['samples_per_s'], '×', 2)}** samples/s"
        if ratio["peak_memory_gib"] is not None:
            summary += f", {_number(ratio['peak_memory_gib'], '×', 2)} memory"
        if ratio["tokens_per_s"] is not None and ratio["tokens_per_s"] != ratio["samples_per_s"]:
            summary += f", {_number(ratio['tokens_per_s'], '×', 2)} non-padding tokens/s"
        if "same_tokens_fraction" in case:
            summary += f", same tokens: {_percent(case['same_tokens_fraction'])}"
        for side in ("baseline", "ours"):
            result = case[side]
            lines.append(
                f"| {label if side == 'baseline' else ''} | {side} | {_number(result['samples_per_s'], digits=2)} | "
                f"{_number(result['tokens_per_s'], digits=0)} | {_percent(result['mfu'])} | "
                f"{_percent(result['padding_fraction'])} | {_number(result['peak_memory_gib'], ' GiB')} | "
                f"{summary if side == 'ours' else ''} |"
            )
        lines.append(f"| | | | | | | | {case['date']}; {versions} |")
    lines += ["", "Settings of each side:", "", *settings_table(record)]
    image_tokens = image_tokens_table(record)
    if image_tokens:
        lines += ["", "Image tokens per sample with an image (timed steps):", "", *image_tokens]
    return "\n".join(lines) + "\n"


__all__ = ["image_tokens_table", "markdown_table", "merge_results", "settings_table"]
