"""Where text rows come from: format detection and the chunks a source is cut into (`readers` reads them).

The driver only lists files and reads footers/headers to cut a source into `Chunk`s (plain
values); tasks read the chunks. Hugging Face folders (hub snapshots, the hub cache,
`save_to_disk`) resolve to their data files; a FineFoundry database resolves to one session.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from fsspec import AbstractFileSystem

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.text import codecs, finefoundry

FILE_FORMATS = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".arrow": "arrow",
    ".db": "sqlite",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
}
SPLIT_WORDS = {
    "train": {"train", "training"},
    "validation": {"validation", "valid", "dev", "val"},
    "test": {"test", "testing", "eval"},
}
CHUNK_ROWS = 131_072  # parquet row groups / SQLite ids per read task
CHUNK_BYTES = 32 << 20  # JSONL bytes per read task


@dataclass(frozen=True)
class Chunk:
    """One read task's share of a source. Ranges: parquet row groups, JSONL bytes, SQLite ids; a compressed
    file is read whole, decompressing as it streams."""

    format: str
    path: str
    start: int = 0
    stop: int = -1
    session_id: int | None = None
    compression: str | None = None
    size: int | None = None  # the file's bytes, from the listing: a read need not ask for it


Listing = dict[str, dict[str, Any]]  # path -> listing entry (size, ETag or mtime), files only


@dataclass
class Source:
    """A resolved input: its filesystem, what it is, and its chunks (metadata only)."""

    url: str
    fs: AbstractFileSystem
    kind: str
    chunks: list[Chunk] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    listing: Listing = field(default_factory=dict)  # every file at or below the input's path


# -- resolving ------------------------------------------------------------------------------
def list_input(fs: AbstractFileSystem, path: str) -> Listing:
    """Every file at or below `path`, with its size: on S3 one listing of the keys starting with the path's name
    answers whether it is a file or a folder and gives every size a read needs, without a HEAD per file."""
    if storage.is_s3(fs) and "/" in path:
        found = fs.find(storage.parent(path), prefix=storage.basename(path), detail=True)
        return {k: v for k, v in found.items() if (k == path or k.startswith(path + "/")) and v["type"] == "file"}
    if not storage.exists(fs, path):
        return {}
    return fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}


def has(listing: Listing, path: str) -> bool:
    """`path` is a file or a folder in the listing."""
    return path in listing or any(k.startswith(path + "/") for k in listing)


def _size(listing: Listing, path: str) -> int | None:
    entry = listing.get(path)
    return None if entry is None else int(entry.get("size") or 0)


def fingerprint(src: Source) -> dict[str, Any]:
    """`storage.fingerprint` of the source's path, from the listing it was opened with: no second listing."""
    path = src.fs._strip_protocol(src.url).rstrip("/")
    entries = {k: v for k, v in src.listing.items() if k == path or k.startswith(path + "/")}
    return storage.fingerprint(_Listed(src.fs, entries, path not in entries), path)


class _Listed:
    """A filesystem whose listing calls answer from a listing already made; anything else goes to `fs`."""

    def __init__(self, fs: AbstractFileSystem, entries: Listing, is_dir: bool) -> None:
        self._fs, self._entries, self._is_dir = fs, entries, is_dir

    def isdir(self, path: str) -> bool:
        return self._is_dir

    def find(self, path: str, detail: bool = True) -> Listing:
        return self._entries

    def info(self, path: str) -> dict[str, Any]:
        return self._entries[path]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)


def open_source(
    fs: AbstractFileSystem,
    path: str,
    fmt: str = "auto",
    split: str | None = None,
    config: str | None = None,
    session: str | int | None = None,
    listing: Listing | None = None,
) -> Source:
    """Resolve an input to its chunks from one listing (`listing`, when already made) and headers only, so
    every problem a path can have (missing, unknown format, no such split or session, unreadable footer) shows
    before any task runs."""
    where = storage.url(fs, path)
    listing = list_input(fs, path) if listing is None else listing
    if not listing:
        raise InvalidInput(f"{where}: no such file or folder")
    if path not in listing:
        src = _open_folder(fs, path, fmt, split, config, listing)
    else:
        src = _open_file(fs, path, fmt, session, listing)
    src.listing = listing
    return src


def _open_file(fs: AbstractFileSystem, path: str, fmt: str, session: str | int | None, listing: Listing) -> Source:
    where = storage.url(fs, path)
    fmt = file_format(fs, path, _size(listing, path)) if fmt in ("auto", "hf", "save_to_disk") else fmt
    codec = codecs.codec_of(path)
    if codec is not None:
        codecs.check_codec(fs, path, codec, fmt)
    if fmt == "sqlite":
        return _open_sqlite(fs, path, session)
    if session is not None:
        raise InvalidInput(f"{where}: session is only for FineFoundry databases, and this is a {fmt} file")
    src = Source(where, fs, fmt, _file_chunks(fs, [path], fmt, listing))
    if codec is not None:
        src.details["compression"] = codec
    return src


def file_format(fs: AbstractFileSystem, path: str, size: int | None = None) -> str:
    """A file's format from its first bytes and its name (without a compression suffix): a database or JSON
    lines may carry another name. `size`, from a listing, spares asking for it."""
    codec = codecs.codec_of(path)
    ext = _extension(path)
    fmt = FILE_FORMATS.get(ext)
    if codec is not None:
        codecs.check_codec(fs, path, codec, fmt)
    head = codecs.read_head(fs, path, codec, size)
    if codec is None and head.startswith(finefoundry.SQLITE_MAGIC):
        return "sqlite"
    if fmt is None:
        inside = f" inside {codec}" if codec else ""
        raise InvalidInput(
            f"{storage.url(fs, path)}: unknown file type {ext or '(no extension)'}{inside}; "
            f"expected one of {', '.join(sorted(FILE_FORMATS))} (JSON, JSONL and CSV may end in "
            ".gz, .bz2, .xz or .zst) or set format"
        )
    if fmt == "json" and head.lstrip()[:1] == b"{":
        return "jsonl"  # one object per line, despite the .json name
    return fmt


def _open_folder(
    fs: AbstractFileSystem, path: str, fmt: str, split: str | None, config: str | None, listing: Listing
) -> Source:
    where = storage.url(fs, path)
    if storage.join(path, "refs", "main") in listing:
        sha = fs.cat_file(storage.join(path, "refs", "main")).decode().strip()
        snap = storage.join(path, "snapshots", sha)
        if not has(listing, snap):
            raise InvalidInput(f"{where}: refs/main points to {sha}, but snapshots/{sha} is missing")
        src = _open_folder(fs, snap, fmt, split, config, listing)
        src.details["revision"] = sha
        return src
    if storage.join(path, "dataset_dict.json") in listing:
        splits = json.loads(fs.cat_file(storage.join(path, "dataset_dict.json")))["splits"]
        chosen = choose_split(list(splits), split, where)
        src = _open_folder(fs, storage.join(path, chosen), fmt, None, config, listing)
        src.details.update(split=chosen, splits=list(splits))
        return src
    if storage.join(path, "state.json") in listing:
        state = json.loads(fs.cat_file(storage.join(path, "state.json")))
        files = [storage.join(path, f["filename"]) for f in state.get("_data_files", [])]
        return Source(where, fs, "save_to_disk", _file_chunks(fs, files, "arrow", listing))
    files, details = hub_files(fs, path, split, config, listing)
    formats = {FILE_FORMATS[_extension(f)] for f in files}
    if len(formats) > 1:
        raise InvalidInput(f"{where}: split mixes file formats {sorted(formats)}")
    fmt = formats.pop()
    if fmt == "json":
        fmt = file_format(fs, files[0], _size(listing, files[0]))
        if fmt == "sqlite":
            raise InvalidInput(f"{storage.url(fs, files[0])}: a SQLite database named .json; expected JSON text")
    return Source(where, fs, "hf", _file_chunks(fs, files, fmt, listing), details)


def choose_split(splits: list[str], split: str | None, where: str) -> str:
    """The split HF would load: the one asked for, else train, else the only one; never a guess among several."""
    if split is not None:
        if split not in splits:
            raise InvalidInput(f"{where}: no split {split!r}; splits found: {', '.join(splits)}")
        return split
    if "train" in splits:
        return "train"
    if len(splits) == 1:
        return splits[0]
    raise InvalidInput(f"{where}: several splits ({', '.join(splits)}); choose one with split")


def readme_configs(fs: AbstractFileSystem, root: str, listing: Listing | None = None) -> list[dict[str, Any]]:
    """The `configs:` list of a hub README's YAML header, or []: where present it, not the file names, says
    which files form each config and split. `listing`: the folder's, when already made."""
    readme = storage.join(root, "README.md")
    if not (readme in listing if listing is not None else storage.exists(fs, readme)):
        return []
    text = fs.cat_file(readme).decode("utf-8", "replace")
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not m:
        return []
    try:
        header = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as e:
        raise InvalidInput(f"{storage.url(fs, readme)}: the YAML header is not valid: {e}") from None
    configs = header.get("configs") if isinstance(header, dict) else None
    return configs if isinstance(configs, list) else []


def _config_splits(entry: dict[str, Any]) -> dict[str, list[str]]:
    data = entry.get("data_files", [])
    if isinstance(data, str):
        return {"train": [data]}
    out: dict[str, list[str]] = {}
    for item in data:
        if isinstance(item, str):
            out.setdefault("train", []).append(item)
        else:
            paths = item["path"] if isinstance(item["path"], list) else [item["path"]]
            out.setdefault(item.get("split", "train"), []).extend(paths)
    return out


def hub_files(
    fs: AbstractFileSystem, root: str, split: str | None, config: str | None, listing: Listing | None = None
) -> tuple[list[str], dict[str, Any]]:
    """The data files of one config and split of a hub snapshot folder, as HF would choose them (`listing`:
    the folder's, when already made)."""
    where = storage.url(fs, root)
    if listing is None:
        listing = list_input(fs, root)
    configs = readme_configs(fs, root, listing)
    if configs:
        names = [c.get("config_name", "default") for c in configs]
        if config is None:
            defaults = [c for c in configs if c.get("default")] or [
                c for c in configs if c.get("config_name", "default") == "default"
            ]
            if not defaults and len(configs) > 1:
                raise InvalidInput(f"{where}: several configs ({', '.join(names)}); choose one with config")
            entry = (defaults or configs)[0]
        elif config in names:
            entry = configs[names.index(config)]
        else:
            raise InvalidInput(f"{where}: no config {config!r}; configs found: {', '.join(names)}")
        splits = _config_splits(entry)
        chosen = choose_split(list(splits), split, where)
        files = sorted({f for pattern in splits[chosen] for f in fs.glob(storage.join(root, pattern))})
        details: dict[str, Any] = {
            "config": entry.get("config_name", "default"),
            "split": chosen,
            "splits": list(splits),
        }
    else:
        base = storage.join(root, config) if config else root
        if config and not any(k.startswith(base + "/") for k in listing):
            raise InvalidInput(f"{where}: no config folder {config!r}")
        if not config and any(k.startswith(storage.join(root, "data") + "/") for k in listing):
            base = storage.join(root, "data")
        below = sorted(k for k in listing if k.startswith(base + "/"))
        found = [f for f in below if _is_data_file(f[len(root) :])]
        by_split: dict[str, list[str]] = {}
        for f in found:
            by_split.setdefault(guess_split(f[len(root) :]), []).append(f)
        if not by_split:
            raise InvalidInput(
                f"{where}: no data files ({', '.join(sorted(FILE_FORMATS))}) and no README configs; not a dataset folder"
            )
        chosen = choose_split(list(by_split), split, where)
        files = by_split[chosen]
        details = {"split": chosen, "splits": list(by_split)}
    if not files:
        raise InvalidInput(f"{where}: split {details['split']!r} lists no files that exist")
    return files, details


def _is_data_file(relative: str) -> bool:
    parts = relative.strip("/").split("/")
    if any(p.startswith(".") for p in parts):
        return False
    ext = _extension(parts[-1])
    return ext in FILE_FORMATS and FILE_FORMATS[ext] != "sqlite"


def _extension(path: str) -> str:
    """The extension that names the format: `.jsonl` for `x.jsonl` and for `x.jsonl.gz`."""
    return os.path.splitext(codecs.inner_path(path))[1].lower()


def guess_split(relative: str) -> str:
    """HF's split guessing from file/folder names; files naming no split are train."""
    tokens = set(re.split(r"[-_./\s]+", relative.lower()))
    for name, words in SPLIT_WORDS.items():
        if tokens & words:
            return name
    return "train"


def _file_chunks(fs: AbstractFileSystem, files: list[str], fmt: str, listing: Listing) -> list[Chunk]:
    chunks: list[Chunk] = []
    for f in files:
        codec = codecs.codec_of(f)
        size = _size(listing, f)
        if codec is not None:  # a compressed stream is read from its start: one chunk
            codecs.check_codec(fs, f, codec, fmt)
            chunks.append(Chunk(fmt, f, compression=codec, size=size))
        elif fmt == "parquet":
            try:
                with codecs.open_stream(fs, f, None, size) as fh:
                    meta = pq.ParquetFile(fh).metadata
            except (pa.ArrowInvalid, OSError) as e:
                raise InvalidInput(f"{storage.url(fs, f)}: not a readable parquet file: {e}") from None
            start, rows = 0, 0
            for g in range(meta.num_row_groups):
                rows += meta.row_group(g).num_rows
                if rows >= CHUNK_ROWS:
                    chunks.append(Chunk(fmt, f, start, g + 1, size=size))
                    start, rows = g + 1, 0
            if start < meta.num_row_groups or not chunks or chunks[-1].path != f:
                chunks.append(Chunk(fmt, f, start, meta.num_row_groups, size=size))
        elif fmt == "jsonl":
            n = int(fs.info(f)["size"]) if size is None else size
            chunks += [Chunk(fmt, f, s, min(s + CHUNK_BYTES, n), size=n) for s in range(0, max(n, 1), CHUNK_BYTES)]
        else:
            chunks.append(Chunk(fmt, f, size=size))
    return chunks


def _open_sqlite(fs: AbstractFileSystem, path: str, session: str | int | None) -> Source:
    where = storage.url(fs, path)
    db = finefoundry.local_sqlite(fs, path)
    chosen = finefoundry.find_session(finefoundry.list_sessions(db, where), session, where)
    ranges = finefoundry.session_id_ranges(db, chosen["id"], CHUNK_ROWS)
    chunks = [Chunk("sqlite", path, first, last, chosen["id"]) for first, last in ranges]
    return Source(where, fs, "sqlite", chunks, {"session": chosen})
