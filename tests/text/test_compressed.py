"""Compressed JSON, JSONL and CSV inputs (gzip, bz2, xz, zstd), recognised by their extension as fsspec and
`datasets` recognise them, read as streams, one scan task per file."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import pytest
import zstandard

from raymerge import api, storage
from raymerge.text.sources import open_source
from tests.helpers import assert_rejected

CODECS = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
}
ROWS = [{"instruction": f"do {i}", "input": "", "output": f"done {i}"} for i in range(5)]


def _plain(fmt: str) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    if fmt == "json":
        return json.dumps(ROWS, indent=1).encode()
    lines = ["instruction,input,output", *(f"{r['instruction']},,{r['output']}" for r in ROWS)]
    return ("\n".join(lines) + "\n").encode()


def _write(folder: Path, fmt: str, ext: str) -> Path:
    path = folder / f"rows.{fmt}.{ext}"
    path.write_bytes(CODECS[ext](_plain(fmt)))
    return path


@pytest.mark.parametrize("ext", sorted(CODECS))
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_each_codec_and_format_reads_like_the_plain_file(ray_address, tmp_path, fmt, ext):
    compressed = _write(tmp_path, fmt, ext)
    plain = tmp_path / f"plain.{fmt}"
    plain.write_bytes(_plain(fmt))
    fs, p = storage.resolve(str(compressed))
    src = open_source(fs, p)
    assert len(src.chunks) == 1 and src.chunks[0].compression == {"gz": "gzip", "zst": "zstd"}.get(ext, ext)
    info = api.inspect(str(compressed))
    assert (
        info["kind"] == "text"
        and info["rows"] == 5
        and info["mapping"] == "instruction + input -> output"
        and info["compression"]
    )
    cfg = {"kind": "text", "operation": "concat", "inputs": [{"path": str(compressed)}]}
    api.run({**cfg, "output": {"path": str(tmp_path / "a.jsonl")}})
    api.run({**cfg, "inputs": [{"path": str(plain)}], "output": {"path": str(tmp_path / "b.jsonl")}})
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_text().splitlines()[0] == '{"input":"do 0","output":"done 0"}'


def test_format_given_with_a_compressed_name_still_decompresses(ray_address, tmp_path):
    path = _write(tmp_path, "jsonl", "gz")
    cfg = {"kind": "text", "operation": "concat", "inputs": [{"path": str(path), "format": "jsonl"}]}
    report = api.run({**cfg, "output": {"path": str(tmp_path / "o.jsonl")}})
    assert report.rows_out == 5


def test_hub_folder_with_compressed_data_files(ray_address, tmp_path):
    data = tmp_path / "repo" / "data"
    data.mkdir(parents=True)
    (data / "train-00000-of-00002.jsonl.gz").write_bytes(gzip.compress(_plain("jsonl")))
    (data / "train-00001-of-00002.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_plain("jsonl")))
    (data / "test-00000-of-00001.jsonl.gz").write_bytes(gzip.compress(_plain("jsonl")))
    fs, p = storage.resolve(str(tmp_path / "repo"))
    src = open_source(fs, p)
    assert src.kind == "hf" and len(src.chunks) == 2  # one task per compressed file
    report = api.run(
        {
            "kind": "text",
            "operation": "concat",
            "inputs": [{"path": str(tmp_path / "repo")}],
            "output": {"path": str(tmp_path / "o.jsonl")},
        }
    )
    assert report.rows_out == 10


def test_a_line_that_is_not_json_is_named(ray_address, tmp_path):
    path = tmp_path / "bad.jsonl.bz2"
    path.write_bytes(bz2.compress(b'{"input": "a", "output": "b"}\n{"input": "c", "output": }\n'))
    output = tmp_path / "out" / "o.jsonl"
    cfg = {"kind": "text", "operation": "concat", "inputs": [{"path": str(path)}], "output": {"path": str(output)}}
    assert_rejected(cfg, r"bad.jsonl.bz2: line 2: not valid JSON", [path], output)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("cut.jsonl.gz", gzip.compress(_plain("jsonl"))[:-12], r"cut.jsonl.gz: not readable gzip data"),
        ("junk.json.xz", b"not xz at all", r"junk.json.xz: not readable xz data"),
        ("rows.parquet.gz", gzip.compress(b"PAR1"), r"rows.parquet.gz: a compressed parquet file; only JSON"),
        ("rows.zip", b"PK\x03\x04", r"rows.zip: zip archives are not read; compress with gzip"),
        ("rows.gz", gzip.compress(b"{}"), r"rows.gz: unknown file type \(no extension\) inside gzip"),
    ],
)
def test_bad_compressed_input_is_refused(ray_address, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    output = tmp_path / "out" / "o.jsonl"
    cfg = {"kind": "text", "operation": "concat", "inputs": [{"path": str(path)}], "output": {"path": str(output)}}
    assert_rejected(cfg, message, [path], output)


def test_a_stream_cut_short_is_refused_while_it_is_read(ray_address, tmp_path):
    """Past the first block: the error comes from the scan task reading the stream, not from format detection."""
    data = "".join(json.dumps({"input": f"q{i}", "output": "x" * 40}) + "\n" for i in range(20_000)).encode()
    path = tmp_path / "in" / "cut.jsonl.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(data)[:-4000])
    output = tmp_path / "out" / "o.jsonl"
    cfg = {"kind": "text", "operation": "concat", "inputs": [{"path": str(path)}], "output": {"path": str(output)}}
    assert_rejected(cfg, r"cut.jsonl.gz: not readable gzip data: Compressed file ended", [path], output)
