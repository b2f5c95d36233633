"""Which files of a Hub dataset are one config's split, as the `datasets` library decides it (pure).

A dataset card's `configs:` is the Hub's own mapping from a config and split to file globs. This
module reads it by `datasets`' rules (datasets/utils/metadata.py and data_files.py, 5.x): the
default config is the only one, the one named `default`, or the one marked `default: true`;
`data_files` is a glob, a list of globs (both the `train` split) or a list of `{split, path}`;
globs are relative to the config's `data_dir`. A card without configs falls back on the
layout conventions, tried in order, the first that matches winning: `data/<split>-NNNNN-of-
NNNNN*`, a folder named for the split, a file named for it, and, for `train` only, every file.
Reading the card's rules differently would read another split's documents, or none. Which file
names a source's format reads (compressed jsonl included) is decided here too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SPLIT_KEYWORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "dev", "val"),
                  "test": ("test", "testing", "eval", "evaluation")}
"""Names `datasets` takes for a split in a folder or file name."""
_SEP = "[-._ 0-9]"
"""Characters that may sit beside a split's name in a file or folder name (`datasets`' NON_WORDS_CHARS)."""
JSONL_CODECS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2", ".lz4": "lz4"}
"""A jsonl file compressed as its name says (`part-0.jsonl.zst`, as Hub corpora often are) ->
the pyarrow codec that reads it."""
FORMAT_SUFFIXES = {"parquet": (".parquet",), "jsonl": (".jsonl", *(".jsonl" + s for s in JSONL_CODECS))}
"""A source's `format` -> the file names it reads."""
REPO_FILES = {"README.md", "config.json", "dataset_info.json", "dataset_infos.json", "dataset_dict.json",
              "dummy_data.zip"}
"""A dataset repo's own files, never data (`datasets`' FILES_TO_IGNORE)."""


class LayoutError(ValueError):
    """The card or the layout names no files for the source's config and split; says what it has."""


@dataclass(frozen=True)
class PatternGroups:
    """Globs relative to the dataset's root, as groups tried in order: the first group that
    matches any file of the source's format is the split's files."""

    groups: tuple[tuple[str, ...], ...]
    origin: str
    """Where they came from, for messages: "the card's config 'x'" or "the layout conventions"."""
    by_conventions: bool = False
    """The card names no configs, so no config was chosen unless the source names one."""


def split_patterns(card: dict, config: str | None, split: str, source: str) -> PatternGroups:
    """The globs for `config`'s `split` of a dataset whose card front matter is `card` ({} for none).
    Raises LayoutError naming the configs or splits there are and the setting to change."""
    configs = _card_configs(card)
    if not configs:
        base = config or ""
        return PatternGroups(layout_groups(base, split), f"the layout conventions{f' under {base}/' if base else ''}",
                             by_conventions=True)
    chosen = _chosen_config(configs, config, source)
    name = chosen.get("config_name", "default")
    base = str(chosen.get("data_dir") or "").strip("/")
    data_files = chosen.get("data_files")
    if data_files is None:  # `datasets` infers the splits under data_dir, as for a card without configs
        return PatternGroups(layout_groups(base, split), f"the card's config {name!r} (data_dir {base!r})")
    splits = _splits_of(data_files)
    if split not in splits:
        raise LayoutError(f"the card's config {name!r} has no split {split!r} (its splits: {', '.join(splits)}); "
                          f"fix: sources.{source}.split")
    return PatternGroups((tuple(_join(base, p) for p in splits[split]),), f"the card's config {name!r}")


def layout_groups(base: str, split: str) -> tuple[tuple[str, ...], ...]:
    """`datasets`' conventions for a split in a folder without card configs (get_data_patterns),
    most specific first."""
    keywords = SPLIT_KEYWORDS.get(split, (split,))
    groups = [
        (f"data/{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]*.*",),
        tuple(p for kw in keywords for p in (f"**/{kw}/**", f"**/{kw}{_SEP}*/**", f"**/*{_SEP}{kw}/**",
                                             f"**/*{_SEP}{kw}{_SEP}*/**")),
        tuple(p for kw in keywords for p in (f"**/{kw}{_SEP}*", f"**/*{_SEP}{kw}{_SEP}*")),
    ]
    if split == "train":
        groups.append(("**",))
    return tuple(tuple(_join(base, p) for p in group) for group in groups)


_CONVERSION_FILE = re.compile(r"([^/]+)/(?:partial-)?[^/]+/[0-9]{4}\.parquet")


def conversion_configs(relative_paths) -> list[str]:
    """The config folders of files laid out as the Hub's parquet copy of a dataset (its
    refs/convert/parquet branch: `<config>/<split>/NNNN.parquet`, or `<config>/partial-<split>/`
    where only a split's first gigabytes were converted), sorted; [] where any file is laid out
    otherwise. That branch has no card, so the layout conventions find one split's folder in
    every config: read together, a source would train on all of them, at a mix the run never set."""
    matches = [_CONVERSION_FILE.fullmatch(p) for p in relative_paths]
    if not matches or not all(matches):
        return []
    return sorted({m.group(1) for m in matches})


def is_partial_copy(relative_paths) -> bool:
    """Whether the files are a split the Hub's parquet copy holds only in part
    (`<config>/partial-<split>/`): fewer documents than the dataset, so a source runs dry sooner."""
    return bool(conversion_configs(relative_paths)) and all(p.split("/")[1].startswith("partial-")
                                                             for p in relative_paths)


def check_one_config(relative_paths, layout: PatternGroups, config: str | None, split: str, source: str) -> None:
    """Raise LayoutError when the files found for a source that names no config span several
    configs of the parquet copy's layout (conversion_configs), naming them and the setting."""
    if config is not None or not layout.by_conventions:
        return
    configs = conversion_configs(relative_paths)
    if len(configs) > 1:
        raise LayoutError(f"split {split!r} is in {len(configs)} config folders ({', '.join(configs)}), laid out as "
                          "the Hub's parquet copy of a dataset (refs/convert/parquet), one folder per config; read "
                          "together they would train on every config's documents; "
                          f"fix: sources.{source}.hf_config, one of them")


def of_format(paths, fmt: str) -> list[str]:
    """The paths a source of format `fmt` reads, sorted."""
    return sorted(p for p in paths if p.endswith(FORMAT_SUFFIXES[fmt]))


def named_as_other_format(paths, fmt: str) -> str | None:
    """The other format, when every one of `paths` is named as its files (`*.jsonl` read as
    parquet, the default): each would be skipped as unreadable, and the stage would end in
    "ran out" instead of naming the setting."""
    for other, suffixes in FORMAT_SUFFIXES.items():
        if other != fmt and paths and all(p.endswith(suffixes) for p in paths):
            return other
    return None


def data_file_kinds(paths) -> set[str]:
    """The kinds of data file among `paths`, by name (`.parquet`, `.jsonl.zst`, `(no extension)`),
    leaving out the repo's own files and dotfiles: what an error says was found instead."""
    kinds = set()
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if name.startswith(".") or name in REPO_FILES:
            continue
        parts = name.split(".")
        compressed = len(parts) > 2 and "." + parts[-1] in (*JSONL_CODECS, ".xz")
        kinds.add("." + ".".join(parts[-2:] if compressed else parts[-1:]) if len(parts) > 1 else "(no extension)")
    return kinds


def _card_configs(card: dict) -> list[dict]:
    configs = card.get("configs") if isinstance(card, dict) else None
    if configs is None:
        return []
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise LayoutError("the dataset card's `configs:` is not a list of mappings")
    return configs


def _chosen_config(configs: list[dict], config: str | None, source: str) -> dict:
    names = [str(c.get("config_name", "default")) for c in configs]
    if config is not None:
        for name, c in zip(names, configs):
            if name == config:
                return c
        raise LayoutError(f"config {config!r} is not in the dataset card (its configs: {', '.join(names)}); "
                          f"fix: sources.{source}.hf_config")
    defaults = [c for name, c in zip(names, configs) if len(configs) == 1 or name == "default" or c.get("default")]
    if len(defaults) == 1:
        return defaults[0]
    if not defaults:
        raise LayoutError(f"the dataset card names no default config (its configs: {', '.join(names)}); "
                          f"fix: sources.{source}.hf_config, one of them")
    raise LayoutError(f"the dataset card marks several configs default "
                      f"({', '.join(str(c.get('config_name', 'default')) for c in defaults)}); "
                      f"fix: sources.{source}.hf_config, one of them")


def _splits_of(data_files) -> dict[str, list[str]]:
    """`data_files` as {split: globs} (datasets' sanitize_patterns): a glob or a list of globs is
    the train split."""
    if isinstance(data_files, str):
        return {"train": [data_files]}
    if isinstance(data_files, dict):
        return {str(k): [str(p) for p in (v if isinstance(v, list) else [v])] for k, v in data_files.items()}
    if isinstance(data_files, list) and any(isinstance(e, dict) for e in data_files):
        splits: dict[str, list[str]] = {}
        for entry in data_files:
            if not (isinstance(entry, dict) and "split" in entry and isinstance(entry.get("path"), str | list)):
                raise LayoutError(f"the dataset card's data_files entry {entry!r} is not {{split, path}}")
            path = entry["path"]
            splits[str(entry["split"])] = [str(p) for p in (path if isinstance(path, list) else [path])]
        return splits
    if isinstance(data_files, list):
        return {"train": [str(p) for p in data_files]}
    raise LayoutError(f"the dataset card's data_files {data_files!r} is not a glob, a list of globs or a list of "
                      "{split, path}")


def _join(base: str, pattern: str) -> str:
    pattern = pattern[2:] if pattern.startswith("./") else pattern
    return f"{base}/{pattern}" if base else pattern
