"""``seedx make-tiny``, ``convert`` and ``run`` as a user types them (the issue's 'done when')."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from seedx.cli import main


def seedx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seedx.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def wide_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "wide.png"
    Image.new("RGB", (1344, 896), (30, 120, 200)).save(path)
    return path


def test_make_tiny_then_convert_from_the_command_line(tmp_path: Path) -> None:
    made = seedx("make-tiny", str(tmp_path / "t"))
    assert made.returncode == 0, made.stderr
    assert "random" in made.stdout
    converted = seedx(
        "convert", str(tmp_path / "t"), str(tmp_path / "s"), "--model", "seed-x", "--quiet"
    )
    assert converted.returncode == 0, converted.stderr
    assert "seed-x" in converted.stdout
    assert "first_stage" in converted.stdout


def test_run_image_writes_a_decodable_png(serving_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "cube.png"
    dump = tmp_path / "dump"
    done = seedx(
        "run",
        "image",
        "--model",
        str(serving_tree),
        "--prompt",
        "a red cube",
        "--steps",
        "2",
        "--size",
        "128x192",
        "--seed",
        "3",
        "--out",
        str(out),
        "--dump",
        str(dump),
    )
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (128, 192)
    tensors = load_file(dump / "image.safetensors")
    assert tensors["visual_embedding.0"].shape == (64, 128)
    assert tensors["llm_query_hidden.0"].shape == (64, 128)
    assert tensors["unet.time_ids"].tolist()[0] == [192, 128, 0, 0, 192, 128]
    assert tensors["final_latents"].shape == (1, 4, 24, 16)


def test_run_chat_prints_text(serving_tree: Path, wide_image: Path) -> None:
    done = seedx(
        "run",
        "chat",
        "--model",
        str(serving_tree),
        "--image",
        str(wide_image),
        "--prompt",
        "Describe the image.",
        "--max-new-tokens",
        "12",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("text: ")
    assert "raw: " in done.stdout


def test_run_edit_and_variation(serving_tree: Path, wide_image: Path, tmp_path: Path) -> None:
    edit = seedx(
        "run",
        "edit",
        "--model",
        str(serving_tree),
        "--image",
        str(wide_image),
        "--prompt",
        "make it red",
        "--steps",
        "2",
        "--size",
        "128x128",
        "--max-new-tokens",
        "70",
        "--out",
        str(tmp_path / "e.jpg"),
    )
    assert edit.returncode == 0, edit.stderr
    variation = seedx(
        "run",
        "variation",
        "--model",
        str(serving_tree),
        "--image",
        str(wide_image),
        "--steps",
        "2",
        "--size",
        "64x64",
        "--out",
        str(tmp_path / "v.webp"),
    )
    assert variation.returncode == 0, variation.stderr
    with Image.open(tmp_path / "e.jpg") as e, Image.open(tmp_path / "v.webp") as v:
        assert (e.format, e.size, v.format, v.size) == ("JPEG", (128, 128), "WEBP", (64, 64))


def test_bad_arguments_fail_with_a_message(
    serving_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "run",
            "image",
            "--model",
            str(serving_tree),
            "--prompt",
            "x",
            "--size",
            "100x100",
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    assert code == 2
    assert "`height` must be a multiple of 64" in capsys.readouterr().err
    code = main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert code == 2
    assert "source tree not found" in capsys.readouterr().err
