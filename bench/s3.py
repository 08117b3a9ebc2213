"""What runs to s3:// cost in bytes and requests, against the floor: a plain s3fs `put` of the same output bytes.

Starts its own S3 server (moto's server mode) on loopback and counts every request between the client and
the server with the tests' recording proxy (`tests/s3proxy.py`), so the figures do not rely on raymerge's
own counters. For a WebDataset join, a LeRobot merge and a text concat, read from and written to s3://:

- uploaded / output: object data sent by PutObject and UploadPart (pending records, scratch, manifest
  included) over the bytes of the output's objects;
- read / input: object data received by GetObject of input keys over the inputs' bytes (metadata included);
- copied: bytes copied server-side (CopyObject, UploadPartCopy);
- output requests per output object: every request that is not about an input (the output, its pending
  records, staging and scratch, the clean-up), and the requests by type on each side.

    python bench/s3.py                 # about a minute
    python bench/s3.py --scale 4       # four times the data
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the recording proxy lives with the tests

from tests.s3proxy import COPIES, S3Proxy, moto_server  # noqa: E402

for _key, _value in {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ.setdefault(_key, _value)


def make_inputs(root: Path, scale: float) -> None:
    from raymerge.lerobot import samples as lerobot_samples
    from raymerge.text import samples as text_samples
    from raymerge.webdataset import samples as wds_samples

    keys = wds_samples.keys(int(800 * scale))
    wds_samples.write_shards(root / "images", wds_samples.image_samples(keys, 30_000), 8)
    wds_samples.write_shards(root / "captions", wds_samples.caption_samples(wds_samples.shuffled(keys)), 3)
    text_samples.write_jsonl(root / "a.jsonl", text_samples.pairs("a", int(60_000 * scale)))
    text_samples.write_jsonl(root / "b.jsonl", text_samples.pairs("b", int(30_000 * scale)))
    for name, version, seed in (("robot-a", "v3.0", 0), ("robot-b", "v2.1", 1)):
        lerobot_samples.make(
            None,
            str(root / name),
            version=version,
            lengths=(60,) * max(2, int(6 * scale)),
            cameras=2,
            height=120,
            width=160,
            grain=40,
            seed=seed,
        )


def configs(bucket: str, options: dict) -> dict[str, tuple[dict, list[str]]]:
    """name -> (config, its input prefixes)."""

    def loc(path: str, **extra) -> dict:
        return {"path": f"s3://{bucket}/{path}", "storage_options": options, **extra}

    return {
        "webdataset join": (
            {
                "kind": "webdataset",
                "operation": "join",
                "inputs": [loc("in/images"), loc("in/captions")],
                "output": loc("out/wds", maxcount=200),
            },
            ["in/images", "in/captions"],
        ),
        "lerobot merge": (
            {"kind": "lerobot", "inputs": [loc("in/robot-a"), loc("in/robot-b")], "output": loc("out/robot")},
            ["in/robot-a", "in/robot-b"],
        ),
        "text concat": (
            {
                "kind": "text",
                "operation": "concat",
                "inputs": [loc("in/a.jsonl"), loc("in/b.jsonl")],
                "output": loc("out/merged.jsonl"),
            },
            ["in/a.jsonl", "in/b.jsonl"],
        ),
    }


def sizes(fs, prefix: str) -> dict[str, int]:
    fs.invalidate_cache()
    if fs.isfile(prefix):
        return {prefix: fs.size(prefix)}
    return {p: int(i["size"]) for p, i in fs.find(prefix, detail=True).items()}


def _reads_input(r) -> bool:
    return (r.key or (r.query.get("prefix") or [""])[0]).startswith("in/")


def line(name: str, objects: int, output: int, proxy: S3Proxy, bucket: str, input_bytes: int, took: float) -> str:
    seen = proxy.recorded(bucket)
    writes = Counter(r.op for r in seen if not _reads_input(r))
    reads = Counter(r.op for r in seen if _reads_input(r))
    read = sum(r.response_bytes for r in seen if r.op == "GetObject" and _reads_input(r))
    copied = sum(r.payload for r in seen if r.op in COPIES)
    read_part = f"read {read / input_bytes:4.2f}x" if input_bytes else "read    - "
    return (
        f"{name:<28} {objects:>3} objects {output / 2**20:6.1f} MiB  uploaded {proxy.uploaded(bucket) / output:5.3f}x  "
        f"{read_part}  copied {copied} B  {sum(writes.values()) / objects:4.1f} output requests/object  {took:4.1f}s\n"
        f"{'':<30}output side: {', '.join(f'{op} {n}' for op, n in writes.most_common())}\n"
        + (f"{'':<30}input side:  {', '.join(f'{op} {n}' for op, n in reads.most_common())}\n" if reads else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--executor", choices=["in-process", "ray"], default="in-process")
    args = parser.parse_args()

    import s3fs

    from raymerge import api

    with (
        moto_server() as port,
        tempfile.TemporaryDirectory(prefix="raymerge-bench-s3-") as tmp,
        S3Proxy(port) as proxy,
    ):
        local = Path(tmp)
        make_inputs(local / "in", args.scale)
        plain = s3fs.S3FileSystem(endpoint_url=f"http://127.0.0.1:{port}", skip_instance_cache=True)
        plain.mkdir("bench")
        plain.put(f"{local / 'in'}/", "bench/in/", recursive=True)
        print(f"S3 server: moto on 127.0.0.1, requests counted by a proxy; executor {args.executor}\n")
        for name, (cfg, inputs) in configs("bench", {"endpoint_url": proxy.endpoint}).items():
            out = cfg["output"]["path"].removeprefix("s3://")
            input_bytes = sum(sum(sizes(plain, f"bench/{p}").values()) for p in inputs)
            for overwrite in (False, True):
                proxy.reset()
                t0 = time.perf_counter()
                api.run(cfg, overwrite=overwrite, executor=args.executor)
                took = time.perf_counter() - t0
                objects = sizes(plain, out)
                label = f"{name}{' --overwrite' if overwrite else ''}"
                print(line(label, len(objects), sum(objects.values()), proxy, "bench", input_bytes, took))

            # The floor: the same output bytes put by plain s3fs, one request per object below 100 MiB.
            copy = local / "floor" / Path(out).name
            plain.get(out, str(copy), recursive=True)
            floor = s3fs.S3FileSystem(endpoint_url=proxy.endpoint, skip_instance_cache=True)
            proxy.reset()
            t0 = time.perf_counter()
            target = f"bench/floor/{Path(out).name}"
            floor.put(
                str(copy) + ("/" if copy.is_dir() else ""), target + ("/" if copy.is_dir() else ""), recursive=True
            )
            took = time.perf_counter() - t0
            objects = sizes(plain, target)
            print(line("  floor: plain s3fs put", len(objects), sum(objects.values()), proxy, "bench", 0, took))


if __name__ == "__main__":
    main()
