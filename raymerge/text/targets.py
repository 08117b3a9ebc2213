"""The files and folders a text run writes (the output, then each export), checked before anything runs.

Every target may be replaced with `overwrite`; an export without its own `overwrite` follows the output's,
so `--overwrite` (and `--set output.overwrite=true`) covers every target of a run. Each refusal says which
key or flag would allow it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raymerge import storage
from raymerge.errors import InvalidInput
from raymerge.text import finefoundry
from raymerge.text.config import Config, Target


@dataclass
class TargetPlan:
    """One file or dataset folder the run writes: the main output or an export."""

    url: str
    path: str
    storage_options: dict[str, Any]
    format: str
    overwrite: bool
    session: finefoundry.SessionSpec | None = None
    existing_db: bool = False
    split: str = "train"
    max_shard_size: int = 0

    @property
    def is_folder(self) -> bool:
        return self.format in ("hf", "save_to_disk")

    def staging(self, run_id: str | None = None) -> storage.Staging:
        """Where an export is staged until the commit (the core stages the main output)."""
        return storage.Staging(
            self.path,
            self.storage_options,
            overwrite=self.overwrite,
            is_file=not self.is_folder,
            allow_existing=self.format == "sqlite",
            run_id=run_id,
        )


def _advice(cfg: Config, index: int) -> str:
    """What makes a refused target writable, for the target it is (`--overwrite` only where it applies)."""
    if index == 0:
        return "set output.overwrite: true or pass --overwrite"
    own = cfg.exports[index - 1].overwrite
    if own is False:
        return f"set exports[{index - 1}].overwrite: true (it is false)"
    return f"set output.overwrite: true or pass --overwrite (or exports[{index - 1}].overwrite: true for it alone)"


def check_targets(cfg: Config) -> list[TargetPlan]:
    """Main output then exports; check each is new (or a database that may gain the session)."""
    specs: list[tuple[Target, str, dict[str, Any], bool]] = [
        (cfg.output, cfg.output.path, cfg.output.storage_options, cfg.output.overwrite)
    ]
    specs += [(e, e.path, e.storage_options, cfg.export_overwrite(e)) for e in cfg.exports]
    targets: list[TargetPlan] = []
    seen: set[str] = set()
    for i, (t, path, options, overwrite) in enumerate(specs):
        fmt = t.resolved_format()
        tp = TargetPlan("", path, options, fmt, overwrite, split=t.split or "train", max_shard_size=t.shard_bytes())
        stage = tp.staging(run_id="check")
        tp.url = stage.target_url
        if stage.target_url in seen:
            raise InvalidInput(f"{stage.target_url}: written twice (output and exports must differ)")
        seen.add(stage.target_url)
        what = "output" if i == 0 else f"export {stage.target_url}"
        if i > 0:
            if fmt != "sqlite" and not overwrite and storage.exists(stage.fs, stage.target):
                raise InvalidInput(f"{what} already exists; {_advice(cfg, i)} to replace it")
            stage.check()
        if fmt == "sqlite":
            assert t.session_name is not None
            tp.existing_db = storage.exists(stage.fs, stage.target)
            if tp.existing_db:
                db = finefoundry.local_sqlite(stage.fs, stage.target)
                clash = finefoundry.session_conflict(db, t.session_name)
                if clash and not overwrite:
                    raise InvalidInput(
                        f"{'output ' + stage.target_url if i == 0 else what} already has a session named "
                        f"{t.session_name!r} (id {', '.join(map(str, clash))}); {_advice(cfg, i)} to replace "
                        "that session"
                    )
            tp.session = finefoundry.SessionSpec(t.session_name, cfg.operation, len(cfg.inputs), replace=overwrite)
        targets.append(tp)
    return targets
