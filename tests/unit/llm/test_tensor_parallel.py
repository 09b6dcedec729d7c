"""Tensor parallelism and fp8 for the LLM worker (issue 23 items 3-4), without an engine:
settings -> engine arguments, the start-up refusals, the encoder kept out of fp8, and the row
capture read by one rank. The TP=2 vs TP=1 engine comparison is
``tests/integration/llm/test_tensor_parallel.py``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from engine.vllm_plugin import capture
from engine.vllm_plugin.capture import (
    SeedXWorkerExtension,
    capture_args,
    reader_answer,
    unpack_tensor,
)
from workers.llm.startup_checks import (
    TrunkShape,
    check_devices,
    check_engine,
    check_quantization,
    check_tensor_parallel,
)
from workers.startup import EXIT_STARTUP, StartupError

SEEDX_17B = TrunkShape(
    num_attention_heads=40,
    num_key_value_heads=40,
    intermediate_size=13824,
    vocab_size=32330,
    torch_dtype="bfloat16",
)


class FakePlatform:
    """The part of vLLM's ``current_platform`` the checks read."""

    def __init__(
        self, kind: str = "cuda", capability: tuple[int, int] | None = (9, 0), count: int = 8
    ) -> None:
        self.kind, self.capability, self.count = kind, capability, count
        self.device_name = kind

    def is_cpu(self) -> bool:
        return self.kind == "cpu"

    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def device_count(self) -> int:
        return self.count

    def get_device_capability(self, device_id: int = 0) -> Any:
        if self.capability is None:
            return None
        return SimpleNamespace(major=self.capability[0], minor=self.capability[1])

    def get_device_name(self, device_id: int = 0) -> str:
        return {(8, 0): "NVIDIA A100-SXM4-80GB", (8, 9): "NVIDIA L40S"}.get(
            self.capability or (0, 0), "NVIDIA H100 80GB HBM3"
        )


def _serving_folder(path: Path, **llama: Any) -> Path:
    """A config.json as ``seedx convert`` writes it (LLaMA sizes + the seedx section)."""
    from engine.arch import tiny_arch

    path.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["SeedXForCausalLM"],
        "hidden_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 256,
        "vocab_size": 32330,
        "torch_dtype": "float32",
        **llama,
        "seedx": {
            "model": "seed-x-i",
            "arch": tiny_arch().to_dict(),
            "detokenizer": "first_stage",
        },
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


# -- settings -> engine arguments ----------------------------------------------------------------
def test_settings_defaults_env_and_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from workers.llm.worker import LLMWorkerSettings

    default = LLMWorkerSettings(model=tmp_path)
    assert (default.tensor_parallel_size, default.quantization) == (1, None)
    monkeypatch.setenv("SEEDX_LLM_TENSOR_PARALLEL_SIZE", "4")
    monkeypatch.setenv("SEEDX_LLM_QUANTIZATION", "fp8")
    from_env = LLMWorkerSettings(model=tmp_path)
    assert (from_env.tensor_parallel_size, from_env.quantization) == (4, "fp8")
    for field in ("tensor_parallel_size", "quantization"):
        assert LLMWorkerSettings.model_fields[field].description
    with pytest.raises(ValidationError):
        LLMWorkerSettings(model=tmp_path, quantization="int8")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        LLMWorkerSettings(model=tmp_path, tensor_parallel_size=0)


def test_engine_args_carry_tp_and_online_fp8(tmp_path: Path) -> None:
    from workers.llm.engine import EngineConfig, vllm_quantization

    plain = EngineConfig(tmp_path).engine_args()
    assert plain.tensor_parallel_size == 1
    assert plain.quantization is None
    args = EngineConfig(tmp_path, tensor_parallel_size=2, quantization="fp8").engine_args()
    assert args.tensor_parallel_size == 2
    # Online fp8 by its own name: vLLM 0.32 takes "fp8" on a 16-bit checkpoint as deprecated.
    assert args.quantization == "fp8_per_tensor"
    with pytest.raises(ValueError, match="unknown quantization"):
        vllm_quantization("int4")


async def test_worker_passes_the_settings_into_the_engine_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.llm import engine as engine_module
    from workers.llm import worker
    from workers.metrics_http import LateLiveness

    folder = _serving_folder(tmp_path / "llm")
    seen: list[Any] = []

    async def start(config: Any, stat_loggers: Any = None) -> Any:
        seen.append(config)
        raise StartupError("stop here")

    monkeypatch.setattr(engine_module.SeedXLLMEngine, "start", start)
    settings = worker.LLMWorkerSettings(
        model=folder, tensor_parallel_size=2, quantization="fp8", metrics_port=0
    )
    with pytest.raises(StartupError, match="stop here"):
        await worker._serve(settings, LateLiveness())
    assert (seen[0].tensor_parallel_size, seen[0].quantization) == (2, "fp8")


def test_cli_flag_reaches_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from seedx import cli
    from workers.llm import worker

    seen: dict[str, Any] = {}

    def fake_main(model: Any, **kwargs: Any) -> int:
        seen.update(kwargs, model=model)
        return 0

    monkeypatch.setattr(worker, "main", fake_main)
    assert cli.main(["worker", "llm", "--model", "m", "--tensor-parallel-size", "2"]) == 0
    assert seen["tensor_parallel_size"] == 2
    assert cli.main(["worker", "llm", "--model", "m"]) == 0
    assert seen["tensor_parallel_size"] is None


def test_cli_refuses_an_impossible_split_with_exit_78(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``seedx worker llm --tensor-parallel-size 3`` on a 2-head model: one line, exit 78, and
    vLLM is never started."""
    from seedx import cli

    def no_engine(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("vLLM must not start")

    import vllm.v1.engine.async_llm as async_llm

    monkeypatch.setattr(async_llm.AsyncLLM, "from_engine_args", no_engine)
    monkeypatch.setenv("SEEDX_LLM_METRICS_PORT", "0")
    folder = _serving_folder(tmp_path / "llm")
    code = cli.main(["worker", "llm", "--model", str(folder), "--tensor-parallel-size", "3"])
    assert code == EXIT_STARTUP
    err = capsys.readouterr().err
    assert "SEEDX_LLM_TENSOR_PARALLEL_SIZE=3 does not divide the model's 2 attention heads" in err


# -- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_seedx_17b_splits_over_1_2_4_8(size: int) -> None:
    check_tensor_parallel(size, SEEDX_17B)


@pytest.mark.parametrize(
    ("size", "shape", "message"),
    [
        (3, SEEDX_17B, "=3 does not divide the model's 40 attention heads"),
        (5, SEEDX_17B, "=5 does not divide the model's MLP width 13824"),
        (16, SEEDX_17B, "=16 does not divide the model's 40 attention heads"),
        (
            4,
            TrunkShape(8, 6, 1024, 32000),
            "=4 neither divides nor is a multiple of the model's 6 KV heads",
        ),
        (
            3,
            TrunkShape(24, 24, 3072, 31990),  # padded to 32000 rows, not a multiple of 3
            "=3 does not divide the model's vocabulary of 32000 rows",
        ),
    ],
)
def test_impossible_splits_are_startup_errors(size: int, shape: TrunkShape, message: str) -> None:
    with pytest.raises(StartupError, match=message):
        check_tensor_parallel(size, shape)


def test_kv_heads_fewer_than_ranks_are_replicated() -> None:
    check_tensor_parallel(8, TrunkShape(32, 4, 14336, 32000))  # 8 % 4 == 0: vLLM replicates


def test_too_few_gpus() -> None:
    with pytest.raises(StartupError, match="=4 needs 4 GPUs; 2 visible"):
        check_devices(4, FakePlatform(count=2))
    check_devices(2, FakePlatform(count=2))


def test_cpu_ranks_need_numa_nodes_or_a_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.llm import startup_checks

    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.delenv("VLLM_CPU_SIM_MULTI_NUMA", raising=False)
    monkeypatch.setattr(startup_checks, "_numa_nodes", lambda: 1)
    with pytest.raises(StartupError, match="VLLM_CPU_OMP_THREADS_BIND"):
        check_devices(2, FakePlatform("cpu"))
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    check_devices(2, FakePlatform("cpu"))


@pytest.mark.parametrize(
    ("platform", "message"),
    [
        (FakePlatform("cpu"), "QUANTIZATION=fp8 needs an NVIDIA GPU .* CPU backend"),
        (FakePlatform("rocm"), "QUANTIZATION=fp8 needs an NVIDIA GPU .* platform is 'rocm'"),
        (FakePlatform(capability=(8, 0)), r"GPU 0 \(NVIDIA A100-SXM4-80GB\) is 8\.0"),
        (FakePlatform(capability=(8, 6)), r"compute capability 8\.9 or newer .* is 8\.6"),
        (FakePlatform(capability=None), "is unknown"),
    ],
)
def test_fp8_refused_off_ada_and_hopper(platform: FakePlatform, message: str) -> None:
    with pytest.raises(StartupError, match=message):
        check_quantization("fp8", "auto", SEEDX_17B, 2, platform)


def test_fp8_accepted_on_ada_and_hopper_in_16_bit() -> None:
    for capability in ((8, 9), (9, 0), (10, 0)):
        check_quantization("fp8", "auto", SEEDX_17B, 8, FakePlatform(capability=capability))
    check_quantization(None, "float32", SEEDX_17B, 1, FakePlatform("cpu"))  # off: no check
    with pytest.raises(StartupError, match="dtype is float32"):
        check_quantization("fp8", "float32", SEEDX_17B, 1, FakePlatform())
    fp32_folder = TrunkShape(40, 40, 13824, 32330, torch_dtype="float32")
    with pytest.raises(StartupError, match=r"dtype is float32 \(SEEDX_LLM_DTYPE=auto\)"):
        check_quantization("fp8", "auto", fp32_folder, 1, FakePlatform())
    check_quantization("fp8", "bfloat16", fp32_folder, 1, FakePlatform())


def test_check_engine_reads_config_json(tmp_path: Path) -> None:
    folder = _serving_folder(tmp_path / "llm", num_attention_heads=40, num_key_value_heads=40)
    with pytest.raises(StartupError, match="=3 does not divide the model's 40 attention heads"):
        check_engine(folder, 3, None, "auto", FakePlatform())
    with pytest.raises(StartupError, match="QUANTIZATION=fp8"):
        check_engine(folder, 1, "fp8", "auto", FakePlatform("cpu"))
    check_engine(folder, 2, None, "auto", FakePlatform())
    with pytest.raises(StartupError, match="cannot read"):
        check_engine(tmp_path / "missing", 1, None, "auto", FakePlatform())


# -- fp8 never reaches the encoder ---------------------------------------------------------------
def test_online_fp8_quantizes_trunk_linears_and_no_encoder_module() -> None:
    """vLLM's online fp8 picks its layers by class (``LinearBase``); the ViT, the input and
    output resamplers and the tile embedding are plain torch modules, so none is picked."""
    from vllm.config.quantization import resolve_quantization_config
    from vllm.model_executor.layers.linear import (
        LinearBase,
        MergedColumnParallelLinear,
        QKVParallelLinear,
        RowParallelLinear,
    )
    from vllm.model_executor.layers.quantization.online.base import OnlineQuantizationConfig
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )

    from engine.agent import PictureEncoder, SeedXAgent
    from engine.arch import tiny_arch
    from engine.vit import QwenViT

    args = resolve_quantization_config("fp8_per_tensor", None)
    assert args is not None
    config = OnlineQuantizationConfig(args)
    trunk = "language_model.model.layers.0"
    for layer in (QKVParallelLinear, RowParallelLinear, MergedColumnParallelLinear):
        assert config.resolve_quant_method_cls(layer, f"{trunk}.x") is not None, layer
    for table in (VocabParallelEmbedding, ParallelLMHead):  # embedding and lm_head: 16-bit
        assert config.resolve_quant_method_cls(table, "language_model.lm_head") is None

    arch = tiny_arch()
    encoder = PictureEncoder(QwenViT(arch.vit), SeedXAgent(arch, 128))
    modules = list(encoder.named_modules(prefix="encoder"))
    assert len(modules) > 20
    for name, module in modules:
        assert not isinstance(module, LinearBase), name
        assert config.resolve_quant_method_cls(type(module), name) is None, name


# -- the capture reads the rows on one rank ------------------------------------------------------
class FakeRunner:
    """The parts of vLLM's model runner the capture reads, for one request."""

    def __init__(self, hidden: torch.Tensor, key: str) -> None:
        self.hidden = hidden
        self.input_batch = SimpleNamespace(req_ids=["r"], num_reqs=1)
        self.query_start_loc = SimpleNamespace(np=[0, hidden.shape[0]])
        params = SimpleNamespace(extra_args=capture_args(key, 0))
        self.requests = {"r": SimpleNamespace(sampling_params=params)}
        self.model = SimpleNamespace(
            parameters=lambda: iter([torch.zeros(1)]),
            visual_embedding=lambda rows: rows[..., :4] * 2,
        )

    def _model_forward(self, *, positions: torch.Tensor) -> torch.Tensor:
        return self.hidden

    def get_model(self) -> Any:
        return self.model


class Worker(SeedXWorkerExtension):
    def __init__(self, runner: FakeRunner) -> None:
        self.model_runner = runner


def _rank(
    monkeypatch: pytest.MonkeyPatch, reader: bool, hidden: torch.Tensor, every: bool = False
) -> Worker:
    monkeypatch.setattr(capture, "is_row_reader", lambda: reader)
    worker = Worker(FakeRunner(hidden, "k"))
    assert worker.seedx_install_capture(8, every)
    worker.model_runner._model_forward(positions=torch.arange(hidden.shape[0]))
    return worker


def test_only_the_reading_rank_keeps_and_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    hidden = torch.randn(70, 8)
    rank0 = _rank(monkeypatch, True, hidden)
    rank1 = _rank(monkeypatch, False, hidden.clone())
    answers = [rank0.seedx_take_images(["k", "other"]), rank1.seedx_take_images(["k", "other"])]
    assert answers[1] is None
    assert rank1.seedx_row_digests() == {}  # nothing kept off the reading rank
    assert rank1.seedx_row_digests(["k"]) == {"k": None}
    found, missing = reader_answer(answers)
    assert missing is None
    assert found is not None
    assert torch.equal(unpack_tensor(found["rows"]), hidden[:64])
    assert torch.equal(unpack_tensor(found["embedding"]), hidden[:64, :4] * 2)


def test_every_rank_mode_shows_the_ranks_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    hidden = torch.randn(64, 8)
    rank0 = _rank(monkeypatch, True, hidden, every=True)
    rank1 = _rank(monkeypatch, False, hidden.clone(), every=True)
    digests = [rank0.seedx_row_digests(), rank1.seedx_row_digests()]
    assert digests[0] == digests[1]
    assert list(digests[0]) == ["k"]
    assert digests[0]["k"] is not None
    assert rank1.seedx_take_images(["k"]) is None  # still read once
    other = _rank(monkeypatch, False, hidden + 1e-3, every=True)
    assert other.seedx_row_digests() != digests[0]


def test_reader_answer_wants_exactly_one() -> None:
    assert reader_answer([None, [None], None]) == [None]
    with pytest.raises(RuntimeError, match="0 of 2 answered"):
        reader_answer([None, None])
    with pytest.raises(RuntimeError, match="2 of 2 answered"):
        reader_answer([[None], [None]])


def test_take_before_install_is_an_error() -> None:
    worker = Worker(FakeRunner(torch.zeros(64, 8), "k"))
    with pytest.raises(RuntimeError, match="seedx_install_capture was not called"):
        worker.seedx_take_images(["k"])
