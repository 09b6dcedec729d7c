"""``seedx run chat|image|edit|variation``: one request on the reference, no server."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch
from PIL import Image

from engine import flows
from engine.image_output import encode_image
from engine.runner import default_dtype, load_detokenizer_stage, load_reference
from engine.sampling import SamplingOptions

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match:
        raise ValueError(f"--size must look like 1024x1024, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _options(args: argparse.Namespace) -> SamplingOptions:
    width, height = _parse_size(args.size)
    options = SamplingOptions(height, width, args.steps, args.scheduler)
    options.validate()
    return options


def _open_image(path: str) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def _save(image: Image.Image, out: str) -> None:
    suffix = Path(out).suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"--out must end in one of {sorted(_FORMATS)}, got {out!r}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(encode_image(image, _FORMATS[suffix]))
    print(f"wrote {out} ({image.width}x{image.height})")


def run_command(args: argparse.Namespace) -> int:
    root = Path(args.model)
    dtype = _DTYPES[args.dtype] if args.dtype else default_dtype(args.device)
    dump = flows.TensorDump() if args.dump else None
    started = time.perf_counter()
    if args.task == "chat":
        reference = load_reference(root, args.llm, dtype, args.device)
        images = [_open_image(p) for p in args.image]
        result = flows.chat(reference, images, args.prompt, args.max_new_tokens, dump)
        print(f"text: {result.text}")
        raw = reference.tokenizer.decode(result.generation.output_ids)
        print(f"raw:  {raw if len(raw) <= 400 else raw[:400] + '...'}")
        for box in result.boxes:
            p = box.pixels
            print(
                f"box: x1={p.x1} y1={p.y1} x2={p.x2} y2={p.y2} "
                f"(image {box.image_size[0]}x{box.image_size[1]}, loc {list(box.loc)})"
            )
    elif args.task == "image":
        options = _options(args)
        reference = load_reference(root, args.llm, dtype, args.device)
        pipeline = load_detokenizer_stage(root, reference.folder.detokenizer, dtype, args.device)
        image = flows.text_to_image(
            reference,
            pipeline,
            args.prompt,
            options,
            seed=args.seed,
            guidance_scale=args.guidance,
            max_new_tokens=args.max_new_tokens,
            dump=dump,
        )
        _save(image, args.out)
    elif args.task == "edit":
        options = _options(args)
        reference = load_reference(root, "seed-x-edit", dtype, args.device)
        pipeline = load_detokenizer_stage(root, reference.folder.detokenizer, dtype, args.device)
        image = flows.edit(
            reference,
            pipeline,
            _open_image(args.image),
            args.prompt,
            options,
            seed=42 if args.seed is None else args.seed,
            guidance_scale=args.guidance,
            image_guidance_scale=args.image_guidance,
            max_new_tokens=args.max_new_tokens,
            dump=dump,
        )
        _save(image, args.out)
    else:
        options = _options(args)
        pipeline = load_detokenizer_stage(root, "first_stage", dtype, args.device)
        image = flows.variation(
            pipeline,
            _open_image(args.image),
            options,
            seed=args.seed,
            guidance_scale=args.guidance,
            dump=dump,
        )
        _save(image, args.out)
    if dump is not None:
        print(f"dumped {len(dump.tensors)} tensors to {dump.save(Path(args.dump), args.task)}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0
