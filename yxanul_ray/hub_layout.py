"""Which files of a Hub dataset are one config's split, decided by the `datasets` library itself.

The card's front matter is parsed by huggingface_hub (`DatasetCard`), its `configs:` by
`datasets` (`MetadataConfigs`: the default config, `data_files` as `sanitize_patterns` reads it,
globs under the config's `data_dir`), and a folder without configs by `datasets`'
`get_data_patterns`, whose conventions pick one layout for all splits at once (a sharded
`data/test-00000-of-00001.parquet` leaves `train/a.parquet` in no split). What stays here is the
project's own: errors that name the setting to change, the Hub's parquet copy told apart by its file
names, and which file names a source's format reads (compressed jsonl included).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

JSONL_CODECS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2", ".lz4": "lz4"}
"""A jsonl file compressed as its name says (`part-0.jsonl.zst`, as Hub corpora often are) ->
the pyarrow codec that reads it."""
FORMAT_SUFFIXES = {"parquet": (".parquet",), "jsonl": (".jsonl", *(".jsonl" + s for s in JSONL_CODECS))}
"""A source's `format` -> the file names it reads."""
REPO_FILES = frozenset({"README.md", "config.json", "dataset_info.json", "dataset_infos.json", "dataset_dict.json",
                        "dummy_data.zip"})
"""A dataset repo's own files, never data (`datasets`' FILES_TO_IGNORE, tested equal; `datasets`
itself is imported only where a Hub layout is read, being a second's import)."""


class LayoutError(ValueError):
    """The card or the layout names no files for the source's config and split; says what it has."""


@dataclass(frozen=True)
class SplitPatterns:
    """Globs relative to the dataset's root whose files (of the source's format) are the split."""

    patterns: tuple[str, ...]
    origin: str
    """Where they came from, for messages: "the card's config 'x'" or "the layout conventions"."""
    by_conventions: bool = False
    """The card names no configs, so no config was chosen unless the source names one."""


Conventions = Callable[[str], dict[str, list[str]]]
"""A folder of the dataset ('' for its root) -> {split: globs relative to it}, as `datasets`'
get_data_patterns finds them there; raises EmptyDatasetError where it holds no data file."""


def card_front_matter(text: str, where: str) -> dict:
    """The dataset card's YAML front matter as huggingface_hub parses it ({} for none)."""
    import yaml
    from huggingface_hub import DatasetCard

    if not text.lstrip().startswith("---"):
        return {}
    try:
        return DatasetCard(text).data.to_dict()
    except (ValueError, yaml.YAMLError) as e:
        raise LayoutError(f"the dataset card's front matter ({where}) is not a YAML mapping ({e})") from None


def split_patterns(card: dict, config: str | None, split: str, source: str,
                   conventions: Conventions) -> SplitPatterns:
    """The globs for `config`'s `split` of a dataset whose card front matter is `card` ({} for
    none), as `datasets` builds that config. Raises LayoutError naming the configs or splits there
    are and the setting to change."""
    from datasets.data_files import sanitize_patterns

    configs = _card_configs(card)
    if not configs:
        base = config or ""
        origin = f"the layout conventions{f' under {base}/' if base else ''}"
        return SplitPatterns(_split_of(_conventions(conventions, base, origin), split, origin, source, base), origin,
                             by_conventions=True)
    name = _chosen_config(configs, config, source)
    chosen = configs[name]
    base = str(chosen.get("data_dir") or "").strip("/")
    data_files = chosen.get("data_files")
    if data_files is None:  # `datasets` infers the splits under data_dir, as for a card without configs
        origin = f"the card's config {name!r} (data_dir {base!r})"
        return SplitPatterns(_split_of(_conventions(conventions, base, origin), split, origin, source, base), origin)
    origin = f"the card's config {name!r}"
    return SplitPatterns(_split_of(sanitize_patterns(data_files), split, origin, source, base), origin)


def _conventions(conventions: Conventions, base: str, origin: str) -> dict[str, list[str]]:
    from datasets.data_files import EmptyDatasetError

    try:
        return conventions(base)
    except EmptyDatasetError:
        raise LayoutError(f"{origin} find no data file") from None


def _split_of(splits: dict, split: str, origin: str, source: str, base: str) -> tuple[str, ...]:
    if split not in splits:
        raise LayoutError(f"{origin} has no split {split!r} (its splits: {', '.join(map(str, splits)) or 'none'}); "
                          f"fix: sources.{source}.split")
    return tuple(_join(base, str(p)) for p in splits[split])


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


def check_one_config(relative_paths, layout: SplitPatterns, config: str | None, split: str, source: str) -> None:
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


def _card_configs(card: dict) -> dict[str, dict]:
    """The card's `configs:` as `datasets` reads them: {name: its settings}."""
    from datasets.utils.metadata import MetadataConfigs

    try:
        return dict(MetadataConfigs.from_dataset_card_data(card if isinstance(card, dict) else {}))
    except (ValueError, TypeError, KeyError) as e:
        raise LayoutError(f"the dataset card's `configs:` is not as `datasets` reads it: {str(e).strip()}") from None


def _chosen_config(configs: dict[str, dict], config: str | None, source: str) -> str:
    names = ", ".join(configs)
    if config is not None:
        if config not in configs:
            raise LayoutError(f"config {config!r} is not in the dataset card (its configs: {names}); "
                              f"fix: sources.{source}.hf_config")
        return config
    from datasets.utils.metadata import MetadataConfigs

    try:
        default = MetadataConfigs(configs).get_default_config_name()
    except ValueError:
        marked = [n for n, c in configs.items() if n == "default" or c.get("default")]
        raise LayoutError(f"the dataset card marks several configs default ({', '.join(marked)}); "
                          f"fix: sources.{source}.hf_config, one of them") from None
    if default is None:
        raise LayoutError(f"the dataset card names no default config (its configs: {names}); "
                          f"fix: sources.{source}.hf_config, one of them")
    return default


def _join(base: str, pattern: str) -> str:
    pattern = pattern[2:] if pattern.startswith("./") else pattern
    return f"{base}/{pattern}" if base else pattern


def is_data_file(relative_path: str, pattern: str) -> bool:
    """Whether a file a glob matched is data as `datasets` resolves a pattern: not the repo's own
    files, and not in a hidden (`.x`) or special (`__x`) folder or name the pattern does not ask for."""
    if relative_path.rsplit("/", 1)[-1] in REPO_FILES:
        return False
    hidden = sum(part.startswith((".", "__")) for part in relative_path.split("/"))
    asked = sum(part.startswith((".", "__")) for part in pattern.split("/"))
    return hidden <= asked
