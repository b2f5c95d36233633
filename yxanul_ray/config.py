"""A job's config loaded from YAML: `--set` overrides applied, every field built to its Spec's
type, then the rules across fields checked (config_rules).

Every problem is a `ConfigError` naming the file, the field (a dotted path such as
`curriculum.stages[3].mix`) and what would be valid; the CLI turns it into exit code 2 before any
Ray or torch work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal

import yaml

from yxanul_ray.config_rules import validate
from yxanul_ray.presets import ModelShape
from yxanul_ray.specs import ConfigError, JobSpec, ModelSpec
from yxanul_ray.storage import read_text


def load_job(path: str, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Read `path`, apply `--set a.b=value` overrides, and validate everything."""
    raw = read_yaml(path)
    for item in overrides:
        apply_override(raw, item, path)
    return job_from_dict(raw, path)


def scaled_budget_overrides(job: JobSpec, target_tokens: int) -> list[str]:
    """The user's `--target-tokens N` as `--set` overrides: every stage's budget scaled by N / the
    job's target (rounded down; the last stage absorbs the rounding), so the curriculum keeps
    its shape and the run stops exactly at N. [] when N is already the target."""
    stages = job.curriculum.stages
    total = sum(st.tokens for st in stages)
    if target_tokens == total:
        return []
    if target_tokens < len(stages):
        raise ConfigError(f"{job.path}: --target-tokens {target_tokens:,}: each of the {len(stages)} stages needs at "
                          f"least one token; pass at least {len(stages)} (the config's target is {total:,})")
    budgets = scaled_budgets([st.tokens for st in stages], target_tokens)
    if budgets[-1] < 1:
        raise ConfigError(f"{job.path}: --target-tokens {target_tokens:,}: too few to give every stage a token; pass "
                          f"more (the config's target is {total:,})")
    return [f"curriculum.stages.{i}.tokens={n}" for i, n in enumerate(budgets)] + [
        f"curriculum.target_tokens={target_tokens}"]


def scaled_budgets(budgets: list[int], target: int) -> list[int]:
    """Each budget times target / their sum, rounded down and at least 1, the last taking the
    rounding so that they sum to `target` exactly (the last may be left below 1: the caller's
    error to phrase)."""
    total = sum(budgets)
    out = [max(1, b * target // total) for b in budgets[:-1]]
    return out + [target - sum(out)]


def read_yaml(path: str) -> dict:
    """A YAML (or JSON) file, local or at a storage URI (a checkpoint's job.json in a bucket)."""
    try:
        raw = yaml.safe_load(read_text(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a directory, not a config file; fix: the path of a YAML config "
                          "(configs/demo.yaml, say), or --resume for a run's checkpoint") from None
    except PermissionError:
        raise ConfigError(f"{path}: this user may not read it; fix: its permissions, or a copy this user can read") \
            from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}), so not a "
                          "YAML config; fix: the path of the config, or save it as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with keys {_top_keys()}")
    return raw


def apply_override(raw: dict, item: str, path: str) -> None:
    """`a.b.c=value` (value parsed as YAML); list items by index or, for stages, by name."""
    if "=" not in item:
        raise ConfigError(f"{path}: --set {item!r}: expected KEY=VALUE, e.g. run.workers=2")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    # `stages[0].seq_len` as `stages.0.seq_len`: the index form users bring from other tools.
    parts = re.sub(r"\[(-?\d+)\]", r".\1", key.strip()).split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: i + 1]), path)
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key, path)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"{path}: --set {key}: {'.'.join(parts[:-1])} is not a mapping")


def _child(node: Any, part: str, dotted: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, dotted, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: --set {dotted}: parent is not a mapping")
    if part not in node or node[part] is None:
        node[part] = {}
    return node[part]


def _list_index(node: list, part: str, dotted: str, path: str) -> int:
    if part.lstrip("-").isdigit():
        i = int(part)
        if -len(node) <= i < len(node):
            return i
        raise ConfigError(f"{path}: --set {dotted}: index {i} out of range (0..{len(node) - 1})")
    for i, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    raise ConfigError(f"{path}: --set {dotted}: no list item named {part!r}; use an index or a name")


def _top_keys() -> str:
    return ", ".join(f.name for f in dataclasses.fields(JobSpec) if f.name != "path")


def job_from_dict(raw: dict, path: str = "<config>", check_files: bool = True) -> JobSpec:
    """Build and validate a JobSpec from plain data (a parsed YAML file). `check_files` False
    leaves this machine's files alone (config_rules.validate): for a job already validated where
    the run started (`validated_job`), or a checkpoint's job.json read for its settings only."""
    raw = dict(raw)
    for key in ("sources", "curriculum"):
        if key not in raw:
            raise ConfigError(f"{path}: {key}: missing required section")
    sources_raw = raw.get("sources")
    if not isinstance(sources_raw, dict) or not sources_raw:
        raise ConfigError(f"{path}: sources: must be a mapping of source name -> source settings")
    raw["sources"] = {
        name: {**(body if isinstance(body, dict) else {"__not_a_mapping__": body}), "name": name}
        for name, body in sources_raw.items()
    }
    job = _build(JobSpec, raw, path, "")
    job = dataclasses.replace(job, path=path, model=_typed_overrides(job.model, path))
    validate(job, check_files)
    return job


def validated_job(d: dict) -> JobSpec:
    """The JobSpec of `job.to_dict()` of a job the driver validated, rebuilt in a Ray process (the
    coordinator, a train worker) without looking at that node's filesystem: its local paths may
    be the driver's only, and the run reads the files the driver listed."""
    return job_from_dict(d, d.get("path") or "<job>", check_files=False)


def _typed_overrides(model: ModelSpec, path: str) -> ModelSpec:
    """model.overrides built to ModelShape's field types by the same rules as every other field
    (finite floats, integers that are not booleans); unknown fields are config_rules' to name."""
    hints = typing.get_type_hints(ModelShape)
    typed = {key: _build(hints[key], value, path, f"model.overrides.{key}") if key in hints else value
             for key, value in model.overrides.items()}
    return dataclasses.replace(model, overrides=typed)


def _build(tp: Any, value: Any, path: str, where: str) -> Any:
    """Convert plain YAML data to `tp`, rejecting unknown keys, missing keys and wrong types."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    label = where or "(top level)"
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict) or "__not_a_mapping__" in value:
            raise ConfigError(f"{path}: {label}: expected a mapping, got {_kind(value)}")
        hints = typing.get_type_hints(tp)
        known = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ConfigError(
                f"{path}: {_join(where, unknown[0])}: unknown key; valid keys here: "
                f"{', '.join(k for k in known if k != 'path')}"
            )
        kwargs = {}
        for name, f in known.items():
            sub = _join(where, name)
            if name in value:
                kwargs[name] = _build(hints[name], value[name], path, sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: {sub}: missing required key")
        return tp(**kwargs)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for i, a in enumerate(inner):  # the first type the value is (int before a pair of ints)
            try:
                return _build(a, value, path, where)
            except ConfigError as e:
                if i == len(inner) - 1:
                    if len(inner) == 1:
                        raise
                    raise ConfigError(f"{path}: {label}: expected an integer or a list of "
                                      f"{len(typing.get_args(inner[-1]))} integers, got {value!r}") from e
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {label}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {label}: expected a list, got {_kind(value)}")
        return [_build(args[0], v, path, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{path}: {label}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_build(a, v, path, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {label}: expected a mapping, got {_kind(value)}")
        return {str(k): _build(args[1], v, path, _join(where, str(k))) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {label}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{path}: {label}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # PyYAML reads `6e-4` (no dot) as a string; accept it as the number it means.
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{path}: {label}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: {label}: {value!r} is not a finite number; fix: a finite value")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {label}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported spec type {tp!r} at {label}")  # a bug in the specs, not the YAML


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


# --------------------------------------------------------------------------------------------
# Cross-field validation
# --------------------------------------------------------------------------------------------


