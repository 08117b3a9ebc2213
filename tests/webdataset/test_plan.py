"""The orders a plan builds: concat (duplicate-key policies), blend (Hugging Face order), reshard (sizes,
shuffle), gz inputs; and `check`, the part that runs before Ray."""

from __future__ import annotations

import pytest
from datasets import Dataset, interleave_datasets

from raymerge import api
from raymerge.errors import InvalidInput
from raymerge.executor import Executor
from raymerge.webdataset import FAMILY
from raymerge.webdataset import samples as S
from tests.webdataset.util import read_samples


def config(op: str, paths: list, out, **extra) -> dict:
    output = extra.pop("output", {})
    return {
        "kind": "webdataset",
        "operation": op,
        "inputs": [p if isinstance(p, dict) else {"path": str(p)} for p in paths],
        "output": {"path": str(out), **output},
        **extra,
    }


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two image datasets sharing 5 keys."""
    root = tmp_path_factory.mktemp("two")
    a = S.image_samples(S.keys(20), 50)
    b = S.image_samples(S.keys(25)[15:] + S.keys(12, "other/{i:04d}"), 70)
    S.write_shards(root / "a", a, 2)
    S.write_shards(root / "b", b, 3)
    return {"root": root, "a": a, "b": b}


def test_concat_duplicate_keys_error_prefix_renumber(ray_address, two, out, tmp_path):
    with pytest.raises(
        InvalidInput,
        match=r"inputs a, b: 5 sample key\(s\) occur more than once.*'part_a/000016' in a/shard-00001.tar, b/shard-00000.tar",
    ):
        api.run(config("concat", [two["root"] / "a", two["root"] / "b"], out))
    assert not out.exists()

    api.run(config("concat", [two["root"] / "a", two["root"] / "b"], out, on_duplicate_key="prefix"))
    got = read_samples(out)
    want = [(f"a/{k}", m) for k, m in two["a"]] + [(f"b/{k}", m) for k, m in two["b"]]
    assert [(key, dict(ms)) for _, key, ms in got] == [
        (k, {f"{k}.{e}": d for e, d in sorted(m.items())}) for k, m in want
    ]

    out2 = tmp_path / "renumbered"
    api.run(config("concat", [two["root"] / "a", two["root"] / "b"], out2, on_duplicate_key="renumber"))
    got = read_samples(out2)
    assert [key for _, key, _ in got] == [f"{i:06d}" for i in range(len(two["a"]) + len(two["b"]))]
    src = [m for _, m in two["a"] + two["b"]]
    assert [sorted(d for _, d in ms) for _, _, ms in got] == [sorted(m.values()) for m in src]


@pytest.mark.parametrize("strategy", ["first_exhausted", "all_exhausted_without_replacement"])
def test_blend_follows_hugging_face_interleave(ray_address, two, tmp_path, strategy):
    cfg = config(
        "blend",
        [{"path": str(two["root"] / "a"), "weight": 3}, {"path": str(two["root"] / "b"), "weight": 1}],
        tmp_path / "blend",
        seed=11,
        stopping_strategy=strategy,
        on_duplicate_key="prefix",
        output={"maxcount": 7},
    )
    report = api.run(cfg)
    hf = interleave_datasets(
        [Dataset.from_dict({"k": [f"{n}/{k}" for k, _ in two[n]]}) for n in ("a", "b")],
        probabilities=[0.75, 0.25],
        seed=11,
        stopping_strategy=strategy,
    )
    got = read_samples(tmp_path / "blend")
    assert [key for _, key, _ in got] == hf["k"]
    assert report.rows_out == len(hf)
    again = api.run({**cfg, "output": {**cfg["output"], "path": str(tmp_path / "again")}})
    assert read_samples(tmp_path / "again") == got
    assert again.rows_out == report.rows_out


def test_blend_all_exhausted_needs_renumbered_keys(ray_address, two, out):
    cfg = config("blend", [two["root"] / "a", two["root"] / "b"], out, stopping_strategy="all_exhausted")
    with pytest.raises(InvalidInput, match="set on_duplicate_key: renumber"):
        api.run(cfg)
    cfg["on_duplicate_key"] = "renumber"
    report = api.run(cfg)
    assert report.rows_out == 2 * max(len(two["a"]), len(two["b"]))  # round-robin, oversampled


def test_reshard_rolls_over_at_maxcount_and_maxsize(ray_address, wds, tmp_path):
    out = tmp_path / "r"
    api.run(
        config(
            "reshard",
            [wds["root"] / "images"],
            out,
            output={"maxcount": 9, "maxsize": 2000, "pattern": "x/part-%03d.tar"},
        )
    )
    tars = sorted((out / "x").glob("*.tar"))
    counts, total = [], []
    for t in tars:
        samples = [s for s in read_samples(t.parent) if s[0] == t.name]
        counts.append(len(samples))
        total.extend(samples)
        payload = sum(len(d) for _, _, ms in samples for _, d in ms)
        assert len(samples) <= 9 and (payload <= 2000 or len(samples) == 1)
    assert [k for _, k, _ in total] == wds["keys"]
    assert len(tars) > 60 // 9  # maxsize forced more shards than maxcount alone


def test_shuffle_is_a_seeded_permutation(ray_address, wds, tmp_path):
    def run(seed, name):
        api.run(
            config(
                "reshard", [wds["root"] / "images"], tmp_path / name, output={"shuffle": {"seed": seed}, "maxcount": 25}
            )
        )
        return [k for _, k, _ in read_samples(tmp_path / name)]

    first, same, other = run(3, "a"), run(3, "b"), run(4, "c")
    assert first == same and sorted(first) == sorted(wds["keys"])
    assert first != wds["keys"] and first != other


def test_gzip_shards_are_read(ray_address, tmp_path):
    samples = S.image_samples(S.keys(15), 100)
    S.write_shards(tmp_path / "gz", samples, 2, name="s-%d.tar.gz", compressed=True)
    S.write_shards(tmp_path / "gz", S.caption_samples(S.keys(15)), 1, name="c-%d.tgz", compressed=True)
    api.run(
        config(
            "join", [tmp_path / "gz" / "s-{0..1}.tar.gz", {"path": str(tmp_path / "gz" / "c-0.tgz")}], tmp_path / "o"
        )
    )
    got = read_samples(tmp_path / "o")
    assert [k for _, k, _ in got] == S.keys(15)
    assert dict(got[3][2])[f"{got[3][1]}.jpg"] == dict(samples)[got[3][1]]["jpg"]


def test_check_lists_every_shard_and_plan_uses_that_listing(wds, tmp_path):
    cfg = api.load_config(
        config("concat", [wds["root"] / "images", wds["root"] / "captions"], tmp_path / "o", on_duplicate_key="prefix")
    )
    tars = sorted((wds["root"] / "images").glob("*.tar")) + sorted((wds["root"] / "captions").glob("*.tar"))
    assert FAMILY.check(cfg) == sum(p.stat().st_size for p in tars)
    listing = cfg.remembered_listing()
    assert [s.name for s in listing.shards] == [p.name for p in tars]
    with Executor.in_process() as executor:
        the_plan = FAMILY.plan(cfg, executor)
    assert the_plan.shards is listing.shards
    assert the_plan.report.rows_out == len(wds["keys"]) + len(wds["captions"])
    assert not (tmp_path / "o").exists()
    cfg.inputs[1].path = str(wds["root"] / "meta")
    assert cfg.remembered_listing() is None  # inputs changed since the check: listed again


def test_bucket_count_follows_the_data():
    """Enough buckets for the cores, and enough that no bucket holds more than about 2M key rows (bounded from
    the tar bytes: a member takes at least 1 KiB)."""
    from raymerge.webdataset.plan import ROWS_PER_BUCKET, bucket_count
    from raymerge.webdataset.sources import Shard

    def shards(n: int, size: int) -> list[Shard]:
        return [Shard(0, f"/s{i}", f"s{i}", size, False) for i in range(n)]

    assert bucket_count(shards(3, 10_000), 4) == 3  # tiny: no more buckets than shards
    assert bucket_count(shards(100, 10_000), 4) == 4  # the cores
    assert bucket_count(shards(1000, 10 << 20), 4) == -(-1000 * (10 << 20) // 1024 // ROWS_PER_BUCKET)
    assert bucket_count(shards(10**6, 1 << 30), 4) == 4096  # at most MAX_BUCKETS
