"""Server settings: typed and validated, built once in the entry point, then passed down.

Each value comes from, strongest first: a `vidlstm serve` flag, a `VIDLSTM_<NAME>` environment variable,
the YAML/JSON/TOML file named by `--config` (or `VIDLSTM_CONFIG`), the default here.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import DirectoryPath, Field, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = ["ENV_PREFIX", "ServerSettings"]

ENV_PREFIX = "VIDLSTM_"
MiB = 1 << 20
Positive = Annotated[int, Field(gt=0)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_parse_none_str="none", frozen=True, extra="forbid"
    )

    config: Path | None = Field(None, description="YAML, JSON or TOML file of settings (flags and env win)")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for all interfaces)")
    port: int = Field(50051, ge=0, le=65535, description="port to listen on (0 picks a free one)")
    model: Path | None = Field(
        None,
        description="checkpoint: a .safetensors with its spec, a folder with spec + weights, or a .pt"
        " with --spec; unset serves the seeded default model",
    )
    spec: Path | None = Field(
        None, description="model spec (JSON/YAML); alone, serves it with seeded weights"
    )
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    threads: Positive | None = Field(None, description="torch intra-op threads (default: one per core)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="the CNN's arithmetic (LSTM and state stay fp32; weights_hash unchanged)"
    )
    compile: bool = Field(
        False, description="torch.compile the CNN during warm-up, before SERVING (CPU: needs g++)"
    )
    cuda_graphs: bool = Field(
        False,
        description="on CUDA, capture the CNN as a CUDA graph per padded batch size during warm-up (not"
        " with --compile)",
    )
    max_message_bytes: Positive = Field(64 * MiB, description="largest request or response message")
    max_batch_size: Positive = Field(256, description="most frames in one model call")
    max_queue_delay_ms: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="how long a batch may wait for more frames once the model is free",
    )
    max_queued_jobs: Positive = Field(
        4096,
        description="requests waiting for the model before new ones get RESOURCE_EXHAUSTED (an Encode "
        "call, a stream message or a video chunk is one request, whatever its size)",
    )
    max_streams: Positive = Field(1024, description="open EncodeStream calls at once")
    max_streams_per_client: Positive = Field(
        256, description="open streams per client (per bearer token, else per peer address)"
    )
    max_envs_per_stream: Positive = Field(1024, description="envs one stream may hold state for")
    state_capacity: Positive = Field(
        16384, description="envs the state pool holds in all (preallocated on the device)"
    )
    stream_idle_timeout_s: PositiveSeconds = Field(
        300.0, description="a stream that sends nothing this long is closed, its state dropped"
    )
    frontends: Annotated[tuple[Literal["v1", "kserve"], ...], NoDecode] = Field(
        ("v1", "kserve"),
        min_length=1,
        description="protocols served on the port, comma-separated: v1 (vidlstm.v1.Encoder), kserve"
        " (KServe v2 / Triton's inference.GRPCInferenceService)",
    )
    kserve_model_name: str = Field(
        "vidlstm", min_length=1, description="the model name KServe v2 (Triton) clients ask for"
    )
    kserve_input_name: str = Field("FRAMES", min_length=1, description="KServe v2 input tensor: uint8 frames")
    kserve_output_name: str = Field(
        "EMBEDDING", min_length=1, description="KServe v2 output tensor: float32 embeddings"
    )
    max_sequences_per_client: Positive = Field(
        4096,
        description="KServe v2 sequences the server holds state for per client (per bearer token or "
        "client certificate; one count for all when auth is off)",
    )
    sequence_idle_timeout_s: PositiveSeconds = Field(
        300.0, description="a KServe v2 sequence with no request this long is ended, its state dropped"
    )
    max_frames_per_call: Positive = Field(4096, description="frames in one request")
    max_frame_side: Positive = Field(4096, description="largest frame height or width")
    max_image_pixels: Positive = Field(
        16_000_000, description="largest JPEG/PNG (width x height), checked before decoding"
    )
    video_root: DirectoryPath | None = Field(
        None, description="folder EncodeVideo may read files from (by relative path); unset: uploads only"
    )
    max_video_bytes: Positive = Field(2 << 30, description="largest video upload")
    video_chunk_frames: Positive = Field(128, description="frames per EncodeVideo response")
    decoder: Literal["pyav", "opencv"] = Field("pyav", description="video decoder (pyav: exact timestamps)")
    decoder_threads: int = Field(0, ge=0, le=64, description="decoder threads per video (0: FFmpeg picks)")
    video_decoders: int = Field(
        2,
        ge=1,
        le=64,
        description="videos decoding at once, in a pool apart from the frames' (the rest wait)",
    )
    default_deadline_s: PositiveSeconds = Field(120.0, description="deadline for unary calls that set none")
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve TLS")
    tls_key: Path | None = Field(None, description="PEM private key for the TLS certificate")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle: require client certificates signed by it (mutual TLS)"
    )
    auth_tokens_file: Path | None = Field(
        None, description="bearer tokens, one per line (# comments), that calls must send"
    )
    # Never printed (repr=False); from the environment, comma-separated, or from auth_tokens_file.
    auth_tokens: Annotated[tuple[str, ...], NoDecode] = Field((), repr=False, validate_default=True)
    admin_tokens_file: Path | None = Field(
        None,
        description="bearer tokens, one per line, that may push new weights (PushWeights); none of them"
        " an inference token. Unset (and no --admin-client-names): pushing is off",
    )
    # Never printed; from the environment (comma-separated) or from admin_tokens_file.
    admin_tokens: Annotated[tuple[str, ...], NoDecode] = Field((), repr=False, validate_default=True)
    admin_client_names: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="client certificate names (mutual TLS, comma-separated) that may push new weights",
    )
    max_weights_bytes: Positive = Field(1 << 30, description="largest weights upload (PushWeights)")
    watch_weights: Path | None = Field(
        None,
        description="a .safetensors file whose weights are installed whenever it is replaced (write it"
        " beside, then rename over it); a file there at start is installed unless it is --model",
    )
    reset_state_on_swap: bool = Field(
        False, description="at each new weights install, every episode the server holds restarts from zero"
    )
    state_version_window: int = Field(
        100,
        ge=0,
        description="a client-held state is accepted from up to this many weights installs ago (0: only"
        " from the weights serving)",
    )
    grace_period_s: float = Field(
        10.0, ge=0, allow_inf_nan=False, description="on SIGTERM, how long running calls may finish"
    )
    # Must stay below the clients' keepalive_s (30 s by default): pings closer than this on a
    # connection that sends nothing count as abuse, and the third closes it (GOAWAY too_many_pings).
    keepalive_min_ping_interval_s: PositiveSeconds = Field(
        10.0, description="shortest interval between client keepalive pings the server accepts"
    )
    keepalive_permit_without_calls: bool = Field(
        True, description="accept keepalive pings on connections with no call open"
    )
    metrics_port: int | None = Field(
        9090, ge=0, le=65535, description="Prometheus /metrics HTTP port on --host (unset: none)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="least level logged")
    log_format: Literal["text", "json"] = Field("text", description="text lines, or one JSON object a line")

    @field_validator("auth_tokens", "admin_tokens", "admin_client_names", "frontends", mode="before")
    @classmethod
    def _split_comma_list(cls, value: Any) -> Any:
        return value.split(",") if isinstance(value, str) else value

    @field_validator("kserve_output_name")
    @classmethod
    def _distinct_tensor_names(cls, output: str, info: ValidationInfo) -> str:
        if output == info.data.get("kserve_input_name"):
            raise ValueError(f"the KServe input and output tensors need different names, both are {output!r}")
        return output

    @field_validator("auth_tokens")
    @classmethod
    def _add_tokens_from_file(cls, tokens: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        return _tokens(tokens, info.data.get("auth_tokens_file"))

    @field_validator("admin_tokens")
    @classmethod
    def _add_admin_tokens_from_file(cls, tokens: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        admin = _tokens(tokens, info.data.get("admin_tokens_file"))
        if set(admin) & set(info.data.get("auth_tokens", ())):
            raise ValueError(
                "an admin token is also an inference token: every inference client could push weights"
            )
        return admin

    @field_validator("watch_weights")
    @classmethod
    def _watch_a_file(cls, path: Path | None) -> Path | None:
        if path is not None and path.is_dir():
            raise ValueError(f"{path} is a folder: watch the .safetensors file a learner replaces")
        return path

    @field_validator("admin_client_names")
    @classmethod
    def _admin_names_need_client_certificates(
        cls, names: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        names = tuple(n.strip() for n in names if n.strip())
        if names and info.data.get("tls_client_ca") is None:
            raise ValueError("admin client names are client certificate names: they need --tls-client-ca")
        return names

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, ConfigFileSource(settings_cls)


def _tokens(tokens: tuple[str, ...], path: Path | None) -> tuple[str, ...]:
    """Tokens given plus those of `path`, one per line, blank lines and # comments skipped. A file
    with none is refused: it would silently leave calls (or pushes) unguarded (or off)."""
    from_file = _stripped(path.read_text().splitlines()) if path is not None else ()
    if path is not None and not from_file:
        raise ValueError(f"{path} holds no tokens (one per line; # starts a comment)")
    return (*_stripped(tokens), *from_file)


def _stripped(lines: Iterable[str]) -> tuple[str, ...]:
    return tuple(t for t in (line.strip() for line in lines) if t and not t.startswith("#"))


class ConfigFileSource(PydanticBaseSettingsSource):
    """The file named by the `config` setting, which the stronger sources (flags, env) have already read."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("config")
        if path is None:
            return {}
        path = Path(path)
        text = path.read_text()
        values = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text) or {}
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a mapping of setting names to values")
        return {str(name).replace("-", "_"): value for name, value in values.items()}
