"""YAML -> typed, validated config; every error names the offending key path.

The shared part (kind, operation, inputs, output, ray) lives here; each family subclasses
`BaseConfig` with its own inputs, output and options, so unknown keys are caught per family.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from raymerge.errors import InvalidInput

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEY = re.compile(r"(^key$|secret|password|token|credential|^aws_)", re.IGNORECASE)


class Model(BaseModel):
    """Strict base: an unknown key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Location(Model):
    path: str = Field(min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    shared: bool = Field(
        default=False,
        description="a local path every cluster node mounts at the same place (NFS, EFS, Lustre): "
        "`raymerge submit` accepts it for a cluster",
    )


class InputConfig(Location):
    name: str | None = None


class OutputConfig(Location):
    overwrite: bool = False


class RayConfig(Model):
    address: str | None = None
    num_cpus: int | None = Field(default=None, gt=0)
    object_store_memory: int | None = Field(default=None, gt=0, description="bytes")
    dashboard: bool = False
    executor: Literal["auto", "ray", "in-process"] = Field(
        default="auto", description="auto: in this process for small inputs, Ray otherwise"
    )


class BaseConfig(Model):
    kind: str
    operation: str
    # A Sequence, not a list: each family narrows it to its own input type, which a list (invariant) forbids.
    inputs: Sequence[InputConfig] = Field(min_length=1)
    output: OutputConfig
    ray: RayConfig = Field(default_factory=RayConfig)
    _raw: dict = PrivateAttr(default_factory=dict)

    def output_is_file(self) -> bool:
        """True when the output is one file rather than a folder (staged and committed as a file)."""
        return False

    def output_allow_existing(self) -> bool:
        """True when the family adds to an existing output itself (e.g. a new session in a database)."""
        return False

    def input_names(self) -> list[str]:
        """A unique, readable name per input (explicit `name`, else the path's last part)."""
        names: list[str] = []
        for i, inp in enumerate(self.inputs):
            base = inp.name or Path(inp.path.rstrip("/")).name or f"input{i}"
            name, n = base, 1
            while name in names:
                n += 1
                name = f"{base}-{n}"
            names.append(name)
        return names


C = TypeVar("C", bound=BaseConfig)


def key_path(loc: Iterable[str | int]) -> str:
    """('inputs', 0, 'path') -> 'inputs[0].path'."""
    out = ""
    for part in loc:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<config>"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"]
        got = e.get("input")
        shown = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key_path(loc)}: {msg}{shown}")
    return "\n".join(lines)


def interpolate(value: Any, environ: Mapping[str, str], loc: tuple = ()) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string, so secrets stay out of config files."""
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise InvalidInput(f"config {key_path(loc)}: environment variable ${{{name}}} is not set")

        return _ENV_PATTERN.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate(v, environ, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ, (*loc, i)) for i, v in enumerate(value)]
    return value


def apply_override(data: dict, assignment: str) -> None:
    """`--set output.path=/x` or `--set inputs.0.episodes=0:5`; the value is parsed as YAML."""
    if "=" not in assignment:
        raise InvalidInput(f"--set {assignment!r}: expected KEY.PATH=VALUE")
    dotted, raw = assignment.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise InvalidInput(f"--set {assignment!r}: empty key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise InvalidInput(f"--set {dotted}: {key_path(parts[: i + 1])} is not an item of the list")
            node = node[int(part)]
        else:
            if part not in node or node[part] is None:
                node[part] = [] if nxt.isdigit() else {}
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise InvalidInput(f"--set {dotted}: {key_path(parts)} is not an item of the list")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise InvalidInput(f"--set {dotted}: {key_path(parts[:-1])} is not a mapping")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"config {path}: file not found")
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except UnicodeDecodeError as e:
        raise InvalidInput(f"config {path}: not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise InvalidInput(f"config {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"config {path}: the top level must be a mapping with kind, operation, inputs, output")
    return data


def read_config(
    source: str | Path | Mapping[str, Any],
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> tuple[dict, dict, str]:
    """Read, override and interpolate a config: (values as written, values to validate, label for messages)."""
    if isinstance(source, Mapping):
        raw, label = dict(source), "<dict>"
    else:
        raw, label = read_yaml(source), str(source)
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain values
    for assignment in overrides:
        apply_override(raw, assignment)
    return raw, interpolate(raw, os.environ if environ is None else environ), label


def validate(cls: type[C], raw: dict, data: dict, label: str) -> C:
    """Check `data` against a family's schema; every error names its key path."""
    try:
        cfg = cls.model_validate(data)
    except ValidationError as e:
        raise InvalidInput(format_validation_error(e, label)) from None
    cfg._raw = raw  # pre-interpolation values: what the manifest may show
    return cfg


def redact(value: Any) -> Any:
    """Drop anything that looks like a credential before a config is shown or saved."""
    if isinstance(value, dict):
        return {
            k: ("***" if _SECRET_KEY.search(str(k)) and not isinstance(v, (dict, list)) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
