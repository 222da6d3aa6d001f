"""Checkpoints: everything a killed run needs to continue bit for bit, written so a crash never
leaves a half-written one that looks complete.

A checkpoint is a directory ``RUN_DIR/checkpoints/step_00001234/``:

* ``model.pgtc`` (rank 0): the model's state dict, the EMA averages, and in its JSON meta the loop's
  position (step, last loss, training seconds so far, looping/QAT switches);
* ``rank_00000.pgtc`` (one per rank): that rank's optimizer states (a sharded optimizer keeps
  different state on each rank), its loader position and its RNG states (torch, CUDA, NumPy, Python);
* ``manifest.json`` (rank 0, written last): step, world size, file sizes, the run's config and preset.

Every file is a pgolf tensor container (JSON header + raw bytes + sha256; never pickle), written to a
temporary name, fsynced and renamed. The files go into ``step_00001234.partial/``; after every rank has
written its file (a barrier), rank 0 writes the manifest and renames the directory to its final name.
Only a directory with a final name and a manifest counts as complete, so a process killed at any
moment leaves at worst a ``.partial`` directory, which is ignored and later deleted. The newest
``CHECKPOINT_KEEP`` complete checkpoints are kept; an older one loses its manifest before its files.

Checkpoints are written off the training clock, every ``CHECKPOINT_EVERY`` steps and/or every
``CHECKPOINT_EVERY_SECONDS`` of training time, and once more on Ctrl-C (see ``CheckpointManager``).
"""

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pgolf.artifact.container import pack_tensor_container
from pgolf.config import Config, TrainConfig, config_to_json
from pgolf.dist import DistContext, barrier, broadcast_object_from_main
from pgolf.errors import ConfigError, PgolfError, TrainingError
from pgolf.fsutil import (free_disk_bytes, fsync_directory, remove_tree, write_bytes_atomic,
                          write_text_atomic)
from pgolf.log import RunLogger
from pgolf.train.checkpoint_state import (capture_rng_states, load_checkpoint_container, load_optimizer_states,
                                          optimizer_state_parts, restore_rng_states)
from pgolf.train.ema import WeightEMA

CHECKPOINTS_DIR_NAME = "checkpoints"
CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_MODEL_FILE = "model.pgtc"
CHECKPOINT_MANIFEST_FILE = "manifest.json"
PARTIAL_CHECKPOINT_SUFFIX = ".partial"


@dataclass
class TrainingPosition:
    """Where the training loop stands: what a checkpoint stores besides the tensors."""

    step: int = 0
    last_finite_loss: float = math.nan
    train_seconds: float = 0.0
    looping_step: int | None = None
    qat_step: int | None = None
    graph_state: dict[str, bool] = field(default_factory=lambda: {"looping": False, "qat": False})

    def as_json(self) -> dict:
        fields = asdict(self)
        fields["last_finite_loss"] = None if math.isnan(self.last_finite_loss) else self.last_finite_loss
        return fields

    @classmethod
    def from_json(cls, fields: dict) -> "TrainingPosition":
        loss = fields.get("last_finite_loss")
        return cls(**{**fields, "last_finite_loss": math.nan if loss is None else float(loss)})


def checkpoint_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file_name(rank: int) -> str:
    return f"rank_{rank:05d}.pgtc"


def read_checkpoint_manifest(checkpoint_dir: Path) -> dict:
    """The manifest of a complete checkpoint; a clear error naming the file if it is unreadable."""
    path = Path(checkpoint_dir) / CHECKPOINT_MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise TrainingError(f"checkpoint manifest {path} is unreadable ({error}); delete {checkpoint_dir} to "
                            "resume from the checkpoint before it.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT_VERSION:
        raise TrainingError(f"{path} is not a pgolf checkpoint manifest of format {CHECKPOINT_FORMAT_VERSION}.")
    return manifest


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoint directories, oldest first (``.partial`` ones never count)."""
    root = Path(run_dir) / CHECKPOINTS_DIR_NAME
    if not root.is_dir():
        return []
    found = [path for path in root.glob("step_*") if not path.name.endswith(PARTIAL_CHECKPOINT_SUFFIX)
             and path.name[5:].isdigit() and (path / CHECKPOINT_MANIFEST_FILE).is_file()]
    return sorted(found, key=lambda path: int(path.name[5:]))


def newest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def state_dict_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def estimate_checkpoint_bytes(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], world_size: int,
                              ema_enabled: bool) -> int:
    """About how large one checkpoint will be: model + fp32 EMA + two state tensors per optimized
    parameter on every rank (Adam keeps two, Muon one: an upper bound before the state exists)."""
    model_bytes = state_dict_bytes(model.state_dict())
    float_numel = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    param_bytes = sum(p.numel() * p.element_size() for opt in optimizers for g in opt.param_groups for p in g["params"])
    return model_bytes + (4 * float_numel if ema_enabled else 0) + 2 * param_bytes * world_size


def disk_space_problem(run_dir: Path, needed_bytes: int, what: str) -> str | None:
    """A message if the filesystem of ``run_dir`` has less than ``needed_bytes`` free, else None."""
    free = free_disk_bytes(run_dir)
    if free >= needed_bytes:
        return None
    return (f"not enough disk space in {run_dir}: {what} need about {needed_bytes / 1e6:,.1f} MB but only "
            f"{free / 1e6:,.1f} MB are free. Free some space, point RUNS_DIR at a larger volume, or lower "
            "CHECKPOINT_KEEP / turn checkpoints off (CHECKPOINT_EVERY=0, CHECKPOINT_EVERY_SECONDS=0).")


def check_room_for_run(run_dir: Path, cfg: Config, ctx: DistContext, model: torch.nn.Module,
                       optimizers: list[torch.optim.Optimizer]) -> None:
    """ConfigError before training when the disk cannot hold what the run will write: the final
    weights and artifact, plus CHECKPOINT_KEEP checkpoints and the one being written (agreed across ranks)."""
    problem = None
    if ctx.is_main:
        t = cfg.train
        needed, what = 2 * state_dict_bytes(model.state_dict()), "the final weights and the artifact"
        if t.checkpoint_every > 0 or t.checkpoint_every_seconds > 0:
            one = estimate_checkpoint_bytes(model, optimizers, ctx.world_size, t.ema_decay > 0)
            needed += one * (t.checkpoint_keep + 1)
            what = (f"{t.checkpoint_keep + 1} checkpoints of ~{one / 1e6:,.1f} MB (CHECKPOINT_KEEP={t.checkpoint_keep} "
                    f"plus the one being written), the final weights and the artifact")
        problem = disk_space_problem(run_dir, needed, what)
    problem = broadcast_object_from_main(problem)
    if problem:
        raise ConfigError(problem)


class CheckpointManager:
    """Saves and restores the training state of one run (every rank holds one; they act together).

    ``resume_from``: a complete checkpoint directory to continue from, or None for a fresh start.
    ``run_info``: JSON fields stored in every manifest (the preset name); the config is added here.
    """

    def __init__(self, run_dir: Path, cfg: Config, ctx: DistContext, logger: RunLogger, *,
                 resume_from: Path | None = None, run_info: dict | None = None, loss_scaler=None,
                 on_checkpoint_written: Callable[[Path], None] | None = None):
        self.root = Path(run_dir) / CHECKPOINTS_DIR_NAME
        # fp16 training's loss scale (pgolf.runtime.Runtime.loss_scaler); its state is plain numbers, kept as JSON.
        self.loss_scaler = loss_scaler
        self.train_cfg: TrainConfig = cfg.train
        self.ctx = ctx
        self.logger = logger
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self.run_info = {**(run_info or {}), "config": json.loads(config_to_json(cfg))}
        self.last_saved: Path | None = self.resume_from
        self.last_saved_seconds = 0.0
        # Called on rank 0 with each complete checkpoint's directory (the tooling's mirror to a remote store);
        # it must return quickly (the mirror copies in the background) and never raise.
        self.on_checkpoint_written = on_checkpoint_written

    def time_due(self, train_seconds: float) -> bool:
        """This rank's view of the seconds trigger (the loop agrees it across ranks)."""
        every = self.train_cfg.checkpoint_every_seconds
        return every > 0 and train_seconds - self.last_saved_seconds >= every

    def step_due(self, step: int) -> bool:
        every = self.train_cfg.checkpoint_every
        return every > 0 and step % every == 0

    # ----- saving -----

    def save(self, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], loader, ema: WeightEMA | None,
             position: TrainingPosition) -> Path | None:
        """Write a complete checkpoint of the current state (collective: every rank calls it).

        Returns its directory, or None if the weights are not finite (the last good checkpoint stays)."""
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            self.logger.line(f"checkpoint:skipped step:{position.step} (non-finite weights; keeping {self.last_saved})")
            return None
        started = time.perf_counter()
        final = self.root / checkpoint_dir_name(position.step)
        partial = final.with_name(final.name + PARTIAL_CHECKPOINT_SUFFIX)
        files = self._pack_files(model, optimizers, loader, ema, position)
        barrier()
        if self.ctx.is_main:
            self._remove_partials()
            partial.mkdir(parents=True)
        barrier()
        try:
            for name, data in files.items():
                self._write_file(partial / name, data)
        except BaseException:
            if self.ctx.is_main:
                remove_tree(partial)  # never leave a partial checkpoint behind
            raise
        barrier()
        if self.ctx.is_main:
            self._complete(partial, final, position)
            self._prune()
        barrier()
        self.last_saved, self.last_saved_seconds = final, position.train_seconds
        self._log_saved(final, position, time.perf_counter() - started)
        if self.ctx.is_main and self.on_checkpoint_written is not None:
            self.on_checkpoint_written(final)
        return final

    def _pack_files(self, model, optimizers, loader, ema, position) -> dict[str, bytes]:
        """This rank's file(s) as container bytes: its rank file, plus the model file on rank 0."""
        tensors, optimizer_meta = {}, []
        for index, optimizer in enumerate(optimizers):
            optimizer_tensors, meta = optimizer_state_parts(optimizer, f"optimizer/{index}")
            tensors.update(optimizer_tensors)
            optimizer_meta.append(meta)
        rng_tensors, rng_meta = capture_rng_states(self.ctx.device)
        rank_meta = {"kind": "pgolf_checkpoint_rank", "step": position.step, "rank": self.ctx.rank,
                     "optimizers": optimizer_meta, "loader": loader.position_state(), "rng": rng_meta,
                     "loss_scaler": self.loss_scaler.state_dict() if self.loss_scaler is not None else {}}
        files = {rank_file_name(self.ctx.rank): pack_tensor_container({**tensors, **rng_tensors}, rank_meta)}
        if self.ctx.is_main:
            model_tensors = {f"model/{name}": t for name, t in model.state_dict().items()}
            if ema is not None:
                model_tensors.update({f"ema/{name}": t for name, t in ema.state_tensors().items()})
            model_meta = {"kind": "pgolf_checkpoint_model", "step": position.step, "position": position.as_json(),
                          "ema": ema is not None}
            files[CHECKPOINT_MODEL_FILE] = pack_tensor_container(model_tensors, model_meta)
        return files

    def _write_file(self, path: Path, data: bytes) -> None:
        problem = disk_space_problem(path.parent, len(data) + (1 << 20), f"checkpoint file {path.name}")
        try:
            if problem:
                raise PgolfError(problem)
            write_bytes_atomic(path, data)
        except PgolfError as error:
            raise TrainingError(f"could not write checkpoint {path.parent.name} ({error}). Training stopped; "
                                f"the last complete checkpoint ({self.last_saved}) is kept.") from error

    def _complete(self, partial: Path, final: Path, position: TrainingPosition) -> None:
        """Rank 0, after every rank wrote its file: manifest, then the rename that makes it complete."""
        names = [CHECKPOINT_MODEL_FILE] + [rank_file_name(rank) for rank in range(self.ctx.world_size)]
        missing = [name for name in names if not (partial / name).is_file()]
        if missing:
            raise TrainingError(f"checkpoint {partial} lacks {missing} after every rank wrote; is RUNS_DIR on a "
                                "filesystem every node shares?")
        manifest = {"format": CHECKPOINT_FORMAT_VERSION, "step": position.step, "world_size": self.ctx.world_size,
                    "train_seconds": position.train_seconds, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "files": {name: (partial / name).stat().st_size for name in names}, **self.run_info}
        write_text_atomic(partial / CHECKPOINT_MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True))
        if final.exists():  # left by an earlier attempt of this run that got further than the resume point
            retire_checkpoint(final)
        os.rename(partial, final)
        fsync_directory(self.root)

    def _remove_partials(self) -> None:
        for stale in self.root.glob(f"step_*{PARTIAL_CHECKPOINT_SUFFIX}"):
            remove_tree(stale)

    def _prune(self) -> None:
        for old in complete_checkpoints(self.root.parent)[:-self.train_cfg.checkpoint_keep]:
            retire_checkpoint(old)

    def _log_saved(self, final: Path, position: TrainingPosition, seconds: float) -> None:
        size = sum(path.stat().st_size for path in final.iterdir()) if self.ctx.is_main else 0
        self.logger.line(f"checkpoint:saved step:{position.step} path:{final} bytes:{size} "
                         f"write_time:{seconds * 1000:.0f}ms")
        self.logger.event("checkpoint", step=position.step, path=str(final), bytes=size, seconds=seconds)

    # ----- restoring -----

    def restore(self, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], loader,
                ema: WeightEMA | None) -> TrainingPosition:
        """Load ``resume_from`` into the live objects (every rank its own rank file); the loop's position."""
        source = self.resume_from
        manifest = read_checkpoint_manifest(source)
        if manifest.get("world_size") != self.ctx.world_size:
            raise ConfigError(f"checkpoint {source} was written by {manifest.get('world_size')} processes but this "
                              f"run has {self.ctx.world_size}; resume with the same number of processes.")
        model_tensors, model_meta = self._load_file(source, CHECKPOINT_MODEL_FILE, manifest, "pgolf_checkpoint_model")
        rank_tensors, rank_meta = self._load_file(source, rank_file_name(self.ctx.rank), manifest,
                                                  "pgolf_checkpoint_rank")
        model.load_state_dict({k[6:]: t for k, t in model_tensors.items() if k.startswith("model/")}, strict=True)
        self._restore_ema(ema, model_tensors, model_meta, source)
        load_optimizer_states(optimizers, rank_tensors, rank_meta["optimizers"], source)
        loader.restore_position(rank_meta["loader"])
        restore_rng_states(rank_tensors, rank_meta["rng"], self.ctx.device)
        if self.loss_scaler is not None and rank_meta.get("loss_scaler"):
            self.loss_scaler.load_state_dict(rank_meta["loss_scaler"])
        position = TrainingPosition.from_json(model_meta["position"])
        self.last_saved_seconds = position.train_seconds
        self.logger.line(f"resume:from {source} step:{position.step} train_time:{position.train_seconds * 1000:.0f}ms "
                         f"looping:{position.graph_state['looping']} qat:{position.graph_state['qat']}")
        self.logger.event("resume", step=position.step, path=str(source), train_seconds=position.train_seconds)
        return position

    def _load_file(self, source: Path, name: str, manifest: dict, kind: str) -> tuple[dict, dict]:
        path = source / name
        expected = manifest.get("files", {}).get(name)
        tensors, meta = load_checkpoint_container(path, expected)
        if meta.get("kind") != kind or meta.get("step") != manifest["step"]:
            raise TrainingError(f"checkpoint file {path} does not belong to the checkpoint of step "
                                f"{manifest['step']} (kind {meta.get('kind')!r}, step {meta.get('step')!r}).")
        return tensors, meta

    @staticmethod
    def _restore_ema(ema: WeightEMA | None, tensors: dict, meta: dict, source: Path) -> None:
        if (ema is not None) != bool(meta.get("ema")):
            raise ConfigError(f"checkpoint {source} {'has' if meta.get('ema') else 'has no'} EMA weights but this "
                              "run's EMA_DECAY says otherwise; resume with the run's own configuration.")
        if ema is not None:
            ema.load_state_tensors({k[4:]: t for k, t in tensors.items() if k.startswith("ema/")})

    def describe_last(self) -> str:
        """A sentence about the newest checkpoint, for error messages."""
        if self.last_saved is None:
            return "No checkpoint was written yet."
        return f"The last good checkpoint is kept: {self.last_saved}."


def retire_checkpoint(checkpoint_dir: Path) -> None:
    """Delete a checkpoint so that a crash midway never leaves something that looks complete."""
    manifest = checkpoint_dir / CHECKPOINT_MANIFEST_FILE
    if manifest.exists():
        manifest.unlink()
        fsync_directory(checkpoint_dir)
    remove_tree(checkpoint_dir)
