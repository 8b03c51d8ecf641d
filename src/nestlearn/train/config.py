"""Typed training configs (style guide 4.4): ``TrainConfig`` holding ``ModelConfig``,
``DataConfig`` and ``OptimConfig``, validated in ``__post_init__`` with ``ValueError``.

Dotted overrides (``train.steps=20``, ``optim.lr=1e-3``, ``data.seq_len=128``,
``model.family=titans``, ``model.hidden_size=128``) are applied by :func:`apply_overrides`:
values are parsed as Python literals (``ast.literal_eval``, never ``exec``) and checked against
the field's type. ``model.<name>`` for a name that is not a ``ModelConfig`` field goes into
``ModelConfig.overrides`` (keyword arguments of the HF model config, checked when the model is
built).
"""

from __future__ import annotations

import ast
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
]

Precision = Literal["auto", "fp32", "bf16", "fp64"]
DataMode = Literal["random", "stream"]
Parallel = Literal["auto", "none", "ddp", "fsdp"]
Compile = Literal["none", "model"]
Schedule = Literal["cosine", "linear", "constant"]
Device = Literal["auto", "cpu", "cuda"]
OPTIMIZERS = ("adamw", "sgd", "associative_momentum", "delta_momentum", "deep_momentum", "m3")


def _choice(section: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{section}.{name} must be one of {list(allowed)}, got {value!r}")


def _positive(section: str, name: str, value: Any, *, zero: bool = False) -> None:
    ok = (isinstance(value, int) and not isinstance(value, bool)
          and (value >= 0 if zero else value > 0))
    if not ok:
        kind = "a non-negative" if zero else "a positive"
        raise ValueError(f"{section}.{name} must be {kind} integer, got {value!r}")


def _real(section: str, name: str, value: Any, *, low: float = 0.0, high: float = math.inf) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not low <= value <= high):
        raise ValueError(f"{section}.{name} must be a finite number in [{low}, {high}], got "
                         f"{value!r}")


def _check_finite(key: str, value: Any) -> None:
    """``1e999`` parses as infinity: refuse it (and NaN) anywhere in an override's value."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_finite(key, v)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_finite(f"{key}.{k}", v)


@dataclass
class ModelConfig:
    family: str = "hope"
    """One of ``nestlearn.models.presets.FAMILIES``."""
    size: str = "tiny"
    """One of ``nestlearn.models.presets.SIZES``."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the model config (e.g. ``hidden_size``); ``vocab_size`` is taken from
    the tokenizer unless given here."""

    def __post_init__(self) -> None:
        from nestlearn.models.presets import FAMILIES, SIZES

        _choice("model", "family", self.family, FAMILIES)
        _choice("model", "size", self.size, SIZES)
        if not isinstance(self.overrides, dict):
            raise ValueError(f"model.overrides must be a dict, got {self.overrides!r}")  # noqa: TRY004 - user input (house rule)


@dataclass
class DataConfig:
    sources: list[str] = field(default_factory=lambda: ["shakespeare", "wikipedia"])
    """Corpus names or paths (``nestlearn.data.prepare_data``)."""
    tokenizer: str = "bpe"
    """``"bpe"``, ``"byte"`` or a path to a ``tokenizer.json``."""
    vocab_size: int = 4096
    """BPE vocabulary size (ignored by the byte tokenizer)."""
    seq_len: int = 256
    """Tokens per training window."""
    batch_size: int = 8
    """Global batch size in sequences (split across ranks and ``train.grad_accum`` micro-batches).
    """
    mode: DataMode = "random"
    """``"random"``: independent random windows, memory state reset per window. ``"stream"``: each
    batch row is a lane reading the split in document order; the recurrent state is carried from
    one window of a lane to the next (truncated BPTT: detached between steps)."""
    cache_dir: str | None = None
    """Token cache (``None``: ``$NESTLEARN_DATA_CACHE`` or ``./data_cache``)."""
    seed: int = 0
    """Seed of the random windows."""

    def __post_init__(self) -> None:
        if isinstance(self.sources, str):
            self.sources = [self.sources]
        if not self.sources or not all(isinstance(s, str) and s for s in self.sources):
            raise ValueError(f"data.sources must be a non-empty list of names or paths, got "
                             f"{self.sources!r}")
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise ValueError(
                f"data.tokenizer must be 'bpe', 'byte' or a path, got {self.tokenizer!r}")
        _positive("data", "vocab_size", self.vocab_size)
        _positive("data", "seq_len", self.seq_len)
        _positive("data", "batch_size", self.batch_size)
        _positive("data", "seed", self.seed, zero=True)
        _choice("data", "mode", self.mode, typing.get_args(DataMode))


@dataclass
class OptimConfig:
    name: str = "adamw"
    """``adamw`` or a ``nestlearn.optim`` optimizer: ``associative_momentum``,
    ``delta_momentum``, ``deep_momentum``, ``m3`` (also ``sgd``)."""
    lr: float = 4e-4
    """Peak learning rate (Titans default 4e-4)."""
    weight_decay: float = 0.1
    """Decoupled weight decay of matrices (norm weights and biases get none)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 100
    """Linear warmup from 0 to ``lr``."""
    schedule: Schedule = "cosine"
    """Decay after warmup, down to ``lr * min_lr_ratio`` at the last step."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr``."""
    grad_clip: float = 1.0
    """Max global gradient norm (0: no clipping)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the optimizer class."""

    def __post_init__(self) -> None:
        _choice("optim", "name", self.name, OPTIMIZERS)
        _real("optim", "lr", self.lr, high=10.0)
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr!r}")
        _real("optim", "weight_decay", self.weight_decay)
        if (not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        _real("optim", "eps", self.eps)
        _positive("optim", "warmup_steps", self.warmup_steps, zero=True)
        _choice("optim", "schedule", self.schedule, typing.get_args(Schedule))
        _real("optim", "min_lr_ratio", self.min_lr_ratio, high=1.0)
        _real("optim", "grad_clip", self.grad_clip)
        if not isinstance(self.kwargs, dict):
            raise ValueError(f"optim.kwargs must be a dict, got {self.kwargs!r}")  # noqa: TRY004 - user input (house rule)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000
    """Optimizer steps."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (each rank's rows split into this many)."""
    seed: int = 0
    """Seed of the model initialisation."""
    precision: Precision = "auto"
    """``auto`` (bf16 autocast on a GPU that supports it, else
    fp32), ``fp32``, ``bf16`` (autocast) or ``fp64`` (parameters in float64; for tests)."""
    compile: Compile = "none"
    """``model``: ``torch.compile`` the model."""
    activation_checkpointing: bool = False
    """Keep only each block's input and recompute the block in the backward pass (less memory,
    about one more forward pass of time; HOPE's activations are large, see README)."""
    parallel: Parallel = "auto"
    """``auto`` (DDP when launched by ``torchrun`` with several processes), ``none``, ``ddp``,
    ``fsdp`` (FSDP2 ``fully_shard`` per block)."""
    device: Device = "auto"
    """``auto``: CUDA if available, else CPU."""
    out_dir: str = "runs/train"
    """Run directory: resolved config, metrics, checkpoints, plots, final model."""
    log_every: int = 10
    """Steps between metric lines."""
    eval_every: int = 200
    """Steps between validation evaluations (0: only at the end)."""
    eval_batches: int = 8
    """Validation batches per evaluation (0: the whole split)."""
    checkpoint_every: int = 200
    """Steps between checkpoints (0: only at the end)."""
    keep_checkpoints: int = 3
    """Checkpoints kept (the latest N)."""

    def __post_init__(self) -> None:
        for name, cls in (("model", ModelConfig), ("data", DataConfig), ("optim", OptimConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"train.{name} must be a {cls.__name__}")  # noqa: TRY004 - user input (house rule)
        _positive("train", "steps", self.steps)
        _positive("train", "grad_accum", self.grad_accum)
        _positive("train", "seed", self.seed, zero=True)
        _choice("train", "precision", self.precision, typing.get_args(Precision))
        _choice("train", "compile", self.compile, typing.get_args(Compile))
        if not isinstance(self.activation_checkpointing, bool):
            raise ValueError("train.activation_checkpointing must be true or false, got "
                             f"{self.activation_checkpointing!r}")
        _choice("train", "parallel", self.parallel, typing.get_args(Parallel))
        _choice("train", "device", self.device, typing.get_args(Device))
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise ValueError(f"train.out_dir must be a path, got {self.out_dir!r}")
        _positive("train", "log_every", self.log_every)
        _positive("train", "eval_every", self.eval_every, zero=True)
        _positive("train", "eval_batches", self.eval_batches, zero=True)
        _positive("train", "checkpoint_every", self.checkpoint_every, zero=True)
        _positive("train", "keep_checkpoints", self.keep_checkpoints)
        if self.data.batch_size % self.grad_accum:
            raise ValueError(f"data.batch_size ({self.data.batch_size}) must be a multiple of "
                             f"train.grad_accum ({self.grad_accum})")


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig}


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """A JSON-ready dict: ``{"train": {...}, "model": {...}, "data": {...}, "optim": {...}}``."""
    out = {"train": {}}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in _SECTIONS:
            out[f.name] = dataclasses.asdict(value)
        else:
            out["train"][f.name] = value
    out["optim"]["betas"] = list(out["optim"]["betas"])
    return out


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`config_to_dict`; unknown keys are a ``ValueError``."""
    if not isinstance(d, dict):
        raise ValueError("a training config must be a JSON object")  # noqa: TRY004 - user input (house rule)
    unknown = set(d) - {"train", *_SECTIONS}
    if unknown:
        raise ValueError(f"unknown config sections {sorted(unknown)}")
    sections = {}
    for name, cls in _SECTIONS.items():
        _check_keys(name, cls, d.get(name, {}))
        sections[name] = cls(**d.get(name, {}))
    _check_keys("train", TrainConfig, d.get("train", {}))
    return TrainConfig(**sections, **d.get("train", {}))


def _check_keys(section: str, cls: type, values: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)} - set(_SECTIONS)
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {section} fields {sorted(unknown)}; known: {sorted(names)}")


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        if text.lower() in ("none", "null"):
            return None
        return text  # a bare string such as a family name or a path


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation (``int`` accepted for ``float``)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        if value is None and "none" in typing.get_args(annotation):
            return "none"  # `train.parallel=none` parses as None
        return value  # checked by __post_init__, which names the choices
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ValueError as e:
                errors.append(e)
        raise errors[0]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    base = origin or annotation
    if base is list and isinstance(value, (tuple, str)):
        value = [value] if isinstance(value, str) else list(value)
    if base is tuple and isinstance(value, list):
        value = tuple(value)
    if base is Any or isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    raise ValueError(f"override {key}: expected {getattr(base, '__name__', base)}, got {value!r}")


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """A new config with ``section.field=value`` overrides applied (then validated)."""
    d = config_to_dict(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"bad override {item!r}: expected section.field=value, e.g. "
                             f"train.steps=20")
        if section not in d:
            raise ValueError(f"bad override {item!r}: unknown section {section!r} (train, model, "
                             f"data, optim)")
        value = _parse_value(text.strip())
        _check_finite(key, value)
        cls = TrainConfig if section == "train" else _SECTIONS[section]
        hints = typing.get_type_hints(cls)
        fields = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in _SECTIONS}
        if "." in name:
            head, _, sub = name.partition(".")
            if typing.get_origin(fields.get(head)) is dict:
                d[section][head] = {**d[section][head], sub: value}
                continue
        if name in fields:
            d[section][name] = _coerce(key, value, fields[name])
        elif section == "model":
            d["model"]["overrides"] = {**d["model"]["overrides"], name: value}
        else:
            raise ValueError(f"bad override {item!r}: {section} has no field {name!r}; known: "
                             f"{sorted(fields)}")
    return config_from_dict(d)
