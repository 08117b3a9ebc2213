"""What a Megatron-Energon 7.4 user does for a key join, timed: `energon prepare` of each input, `energon prepare` of
a metadataset that joins them (Energon builds its join index in SQLite), then iterating the joined dataset and
writing the samples into new shards (webdataset's `ShardWriter`, `maxcount` samples each).

Run by `bench/webdataset_scale.py` in a fresh process:

    python bench/webdataset_energon.py PRIMARY SECONDARY OUT NONMATCH [MAXCOUNT]

Prints one JSON line: samples written and seconds per step. The inputs are left as they were (the prepare
files it adds are removed afterwards).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

JOINER = """
def join(primary, secondary):
    \"\"\"One sample with the members of both inputs (none of the secondary's where it has no match).\"\"\"
    out = {k: v for k, v in primary.items() if not k.startswith("__") or k in ("__key__", "__restore_key__")}
    if secondary is not None:
        out.update({k: v for k, v in secondary.items() if not k.startswith("__")})
    return out
"""


def prepare(path: Path, env: dict[str, str] | None = None) -> None:
    """`energon prepare` as its users run it without prompts: one split, the crude sample type."""
    subprocess.run(
        [
            str(Path(sys.executable).with_name("energon")),
            "prepare",
            str(path),
            "--non-interactive",
            "--split-ratio",
            "1,0,0",
            "--sample-type",
            "CrudeWebdataset",
            "--force-overwrite",
            "--no-progress",
            "--num-workers",
            "2",
        ],
        check=True,
        capture_output=True,
        env=env,
    )


def run(primary: Path, secondary: Path, out: Path, nonmatch: str, maxcount: int, meta: Path, times: dict) -> int:
    """The user's steps, timed into `times`; the samples written."""
    t0 = time.perf_counter()
    for path in (primary, secondary):
        prepare(path)
    times["prepare_inputs"] = time.perf_counter() - t0

    (out.parent / "energon_bench_joiner.py").write_text(JOINER)  # the joiner must be importable by name
    sys.path.insert(0, str(out.parent))
    env = {**os.environ, "PYTHONPATH": str(out.parent)}
    meta.write_text(
        "__module__: megatron.energon\n__class__: MetadatasetV2\nsplits:\n  train:\n    join:\n"
        f"      - path: {primary}\n      - path: {secondary}\n        nonmatch: {nonmatch}\n"
        "    joiner:\n      __module__: energon_bench_joiner\n      __function__: join\n"
    )
    t0 = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).with_name("energon")), "prepare", str(meta)], check=True, capture_output=True, env=env
    )
    times["prepare_join"] = time.perf_counter() - t0

    import webdataset as wds
    from megatron.energon import Cooker, DefaultTaskEncoder, WorkerConfig, get_loader, get_val_dataset, stateless

    class Raw(DefaultTaskEncoder):
        """Undecoded bytes per member, as the shards hold them."""

        decoder = None
        cookers: ClassVar = [Cooker(stateless(lambda sample: dict(sample)))]

        def encode_sample(self, sample: Any) -> Any:
            return sample

        def batch(self, samples: Any) -> Any:
            return samples

    t0 = time.perf_counter()
    worker = WorkerConfig(rank=0, world_size=1, num_workers=0)
    ds = get_val_dataset(meta, split_part="train", worker_config=worker, batch_size=None, task_encoder=Raw())
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=maxcount, verbose=0) as sink:
        for sample in get_loader(ds):
            sink.write({k: v for k, v in sample.items() if k == "__key__" or isinstance(v, (bytes, str))})
            n += 1
    subprocess.run(["sync"], check=True)
    times["iterate_and_write"] = time.perf_counter() - t0
    return n


def main() -> None:
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]  # bench/webdataset.py is not webdataset
    primary, secondary, out, nonmatch = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    maxcount = int(sys.argv[5]) if len(sys.argv) > 5 else 10_000
    times: dict[str, float] = {}
    meta = out.parent / "join.yaml"
    try:
        n = run(primary, secondary, out, nonmatch, maxcount, meta, times)
    finally:  # the inputs as they were, whether or not Energon got through
        for path in (primary, secondary):
            shutil.rmtree(path / ".nv-meta", ignore_errors=True)
            for idx in path.glob("*.tar.idx"):
                idx.unlink()
        shutil.rmtree(meta.parent / f"{meta.name}.cache", ignore_errors=True)
        meta.unlink(missing_ok=True)
        (out.parent / "energon_bench_joiner.py").unlink(missing_ok=True)
    print(json.dumps({"samples": n, **times}))


if __name__ == "__main__":
    main()
