"""`make demo`: make small sample datasets of every family, run real merges on an embedded local Ray, print the reports.

Everything lands under ./demo-data; running it again replaces the previous demo output.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from raymerge import api
from raymerge.cli import render_records
from raymerge.report import Progress
from raymerge.runtime import ray_session

ROOT = Path("demo-data")
CONFIGS = ("configs/text-interleave.yaml", "configs/webdataset-join.yaml", "configs/lerobot-merge.yaml")


def make_samples(root: Path) -> None:
    from raymerge.lerobot.samples import demo as lerobot_demo
    from raymerge.text.samples import make_samples as text_samples
    from raymerge.webdataset.samples import demo as webdataset_demo

    text_samples(root / "text")
    webdataset_demo(root / "webdataset")
    lerobot_demo(str(root))


def main() -> int:
    shutil.rmtree(ROOT, ignore_errors=True)
    t0 = time.perf_counter()
    make_samples(ROOT)
    print(f"sample datasets written to {ROOT}/ in {time.perf_counter() - t0:.1f}s\n", flush=True)
    progress = Progress()
    t0 = time.perf_counter()
    with ray_session():
        print(f"Ray started locally in {time.perf_counter() - t0:.1f}s\n", flush=True)
        for config in CONFIGS:
            print(f"$ raymerge run {config}", flush=True)
            report = api.run(config, progress=progress)
            print(report.render() + "\n", flush=True)
            print(f"$ raymerge preview {report.output} -n 5")
            print(render_records(api.preview(report.output, 5)) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
