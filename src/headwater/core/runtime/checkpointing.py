"""Checkpoint and resume wiring of a run: loading (and checking) the checkpoint to resume
from, the checkpointer that places markers, the positions sources report, the states of
stateful steps, and the commit of each marker by every sink.

:mod:`headwater.core.commit` holds the protocol itself (markers, acknowledgements).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..channels import BatchChannel
from ..checkpoints import Checkpoint, CheckpointError
from ..commit import Checkpointer, Marker
from ..components import Capability, Component
from ..context import StreamContext
from ..events import ErrorEvent, Status
from ..fusion import FusedStep
from ..join import Position
from ..pipeline import ResolvedStage
from .tasks import _Stop

if TYPE_CHECKING:
    from .run import _Run
    from .sinks import _SinkRuntime


class _Checkpointing:
    """What a run does about checkpoints; inert (``checkpointer`` None) without a store."""

    def __init__(self, run: _Run, *, resume: bool, force: bool) -> None:
        self.run: _Run = weakref.proxy(run)  # no reference cycle: see _Run
        self.resume = resume
        self.force = force
        self.checkpointer: Checkpointer | None = None
        """Set once the sinks are open, when the pipeline has a checkpoint store."""
        self.resuming = False
        """True when the run continues from a checkpoint."""
        self.resume_note: str | None = None
        self._stored: Checkpoint | None = None
        """The checkpoint found in the store at start (even when not resuming)."""
        self._completed_at: Checkpoint | None = None
        """Set when a resumed run found its pipeline already completed."""
        self.stopping = False
        """The run was cancelled cleanly (:meth:`stop`): its sources stopped, and what
        they produced goes on to the sinks, to be committed as a final checkpoint."""
        self._sources: set[anyio.CancelScope] = set()
        self.branch_states: set[str] = set()
        """Stages of sink branches that snapshot a state into every marker: a sink
        commits a marker's checkpoint only once all of them did (see :meth:`acknowledge`)."""
        self._snapshotted = anyio.Event()
        """The scopes of the sources running now (see :meth:`source_scope`)."""

    # -- before the stages start -----------------------------------------------------------

    async def load(self, stage: ResolvedStage) -> tuple[Any, Checkpoint | None]:
        """Instantiate the checkpoint store; with ``resume``, load and check the checkpoint."""
        run = self.run
        comp = stage.component
        store = comp.obj(*(() if stage.params is None else (stage.params,)))
        start: Checkpoint | None = await anyio.to_thread.run_sync(store.load, run.spec.name)
        self._stored = start
        if not self.resume:
            if start is not None:
                run.events.emit(
                    Status(
                        "running",
                        None,
                        f"starting over: checkpoint {start.seq} of {run.spec.name} will be "
                        "replaced (resume to continue from it instead)",
                    )
                )
            return store, None
        if start is not None:
            try:
                self._check_fingerprint(start)
            except CheckpointError:
                await anyio.to_thread.run_sync(store.close)
                raise
        self.resuming = start is not None
        return store, start

    def _check_fingerprint(self, checkpoint: Checkpoint) -> None:
        """Refuse (unless ``force``) a checkpoint taken by a different definition."""
        spec = self.run.spec
        if checkpoint.fingerprint != spec.fingerprint() and not self.force:
            raise CheckpointError(
                f"pipeline {spec.name!r} changed since its checkpoint {checkpoint.seq} "
                "was taken (its sources or steps differ), so the committed positions and "
                "states may not fit it any more; resume with force (headwater run --resume "
                "--force) to use them anyway, or reset the checkpoint (headwater checkpoints "
                f"reset {spec.name}) to start over"
            )

    def failed(self, exc: CheckpointError) -> None:
        """The checkpoint cannot be used: the run fails before any item moved."""
        self.run.errors.append(exc)
        self.run.events.emit(
            ErrorEvent(
                "checkpoint",
                {"error": "CheckpointError", "message": str(exc)},
                handled=False,
            )
        )

    async def begin(self, store: Any, start: Checkpoint | None, sinks: list[_SinkRuntime]) -> bool:
        """With the sinks open, settle where the run starts and create the checkpointer.

        Returns False when the stages must not run: the pipeline already completed, or
        the checkpoint cannot be used (then the run fails).
        """
        spec = self.run.spec
        try:
            start = await self._newest_checkpoint(start, sinks)
            if start is not None and start.completed:
                self._skipped_completed(start)
                return False
            if start is None:
                start = await self._fresh_start(store, sinks)
        except CheckpointError as exc:
            self.failed(exc)
            return False
        self.checkpointer = Checkpointer(
            pipeline=spec.name,
            fingerprint=spec.fingerprint(),
            store=store,
            every_items=spec.checkpoint.every_items if spec.checkpoint else None,
            every_seconds=spec.checkpoint.every_seconds if spec.checkpoint else None,
            start=start,
            sinks=[s.spec.stage for s in sinks],
        )
        return True

    async def _newest_checkpoint(
        self, start: Checkpoint | None, sinks: list[_SinkRuntime]
    ) -> Checkpoint | None:
        """A transactional sink may hold a newer checkpoint than the store (it commits the
        checkpoint with its data, before every sink acknowledged it): prefer the newest.

        Only when the store has a checkpoint: every run saves one before its first item
        (see :meth:`_fresh_start`), so a store without one was reset (or lost), and a
        checkpoint a sink still holds is stale: the run starts over.
        """
        if not self.resume or start is None:
            return start
        for sink in sinks:
            held = await sink.load_checkpoint()
            if held is None or held.pipeline != self.run.spec.name or held.seq <= start.seq:
                continue
            self._check_fingerprint(held)
            start = held
        return start

    async def _fresh_start(self, store: Any, sinks: list[_SinkRuntime]) -> Checkpoint:
        """Save the empty checkpoint a run that starts over begins from.

        Its number follows every checkpoint of the pipeline still around (in the store or
        held by a transactional sink), so that a stale checkpoint of an earlier run never
        looks newer than this run's, and a crash before this run's first commit resumes
        from the start rather than from an earlier run's positions.
        """
        spec = self.run.spec
        seqs = [self._stored.seq if self._stored is not None else 0]
        for sink in sinks:
            held = await sink.load_checkpoint()
            if held is not None and held.pipeline == spec.name:
                seqs.append(held.seq)
        fresh = Checkpoint(pipeline=spec.name, fingerprint=spec.fingerprint(), seq=max(seqs) + 1)
        await anyio.to_thread.run_sync(store.save, fresh)
        return fresh

    def _skipped_completed(self, start: Checkpoint) -> None:
        name = self.run.spec.name
        self.run.events.emit(
            Status(
                "running",
                None,
                f"pipeline {name} already completed (checkpoint {start.seq}); nothing to resume",
            )
        )
        self.resume_note = f"already completed at checkpoint {start.seq}"
        self._completed_at = start

    # -- while the stages run ------------------------------------------------------------

    def source_scope(self) -> anyio.CancelScope:
        """A scope for one source to run in, which :meth:`stop` cancels; hand it back to
        :meth:`source_ended` when the source ended."""
        scope = anyio.CancelScope()
        if self.stopping:
            scope.cancel()
        self._sources.add(scope)
        return scope

    def source_ended(self, scope: anyio.CancelScope) -> None:
        """The source of ``scope`` ended."""
        self._sources.discard(scope)

    def stop(self) -> bool:
        """A clean cancellation: stop the sources, so that every item they produced goes
        on through the stages to the sinks, followed by a stop marker (see
        :meth:`end_marker`) whose checkpoint is committed once every sink acknowledged it.

        False when that does not apply (no checkpoints, or no source running): the run
        is then cancelled at once. Stateful steps keep what they hold in the checkpoint
        rather than flushing it (:meth:`complete`).
        """
        if self.stopping:
            return True
        if self.checkpointer is None or not self._sources:
            return False
        self.stopping = True
        for scope in self._sources:
            scope.cancel()
        return True

    def end_marker(self, produced: int) -> Marker:
        """The marker after a source's last item (``produced`` items into its channel so
        far): the final one, or the stop marker once the run is stopping."""
        ckpt = self.checkpointer
        assert ckpt is not None
        return ckpt.stopped(produced) if self.stopping else ckpt.final(produced)

    def wire_source(
        self, ctx: StreamContext, comp: Component, name: str, out: BatchChannel
    ) -> None:
        """Give a source's context its resume position and its ``checkpoint`` and
        ``on_commit`` callbacks. A reported position becomes a marker in ``out`` (right
        after the items put so far) whenever the checkpointer says one is due."""
        ckpt = self.checkpointer
        assert ckpt is not None
        if ckpt.committed is not None:
            ctx.resume_position = ckpt.committed.positions.get(name)

        compose = self.run.spec.compose

        def report(position: Any) -> None:
            marker = ckpt.report(name, position, out.taken + len(out.items))
            if marker is not None:
                out.put_marker(marker)

        def report_to_join(position: Any) -> None:
            # every position, right after the items it covers: the join cuts there
            out.put_marker(Position(name, position))

        if compose is not None and compose.mode == "join":
            report = report_to_join

        def report_from_thread(position: Any) -> None:
            raise RuntimeError(
                f"action {comp.name!r} is a sync generator: sources running in a worker "
                "thread cannot report checkpoint positions yet; write it as an async "
                "generator to make it resumable"
            )

        ctx._position = report_from_thread if comp.shape == "sync_gen" else report

        def on_commit(callback: Callable[[Any], Any]) -> None:
            ckpt.listeners.append(lambda cp: callback(cp.positions.get(name)))

        ctx._on_commit = on_commit

    def restore_states(self, steps: list[FusedStep]) -> None:
        """Before a fused stage's first batch: restore its steps' states from the
        checkpoint resumed from; refuse a stateful step that cannot snapshot."""
        ckpt = self.checkpointer
        if ckpt is None:
            return
        for step in steps:
            restore = getattr(step.state, "restore", None)
            stateful = Capability.STATEFUL in step.component.capabilities
            if stateful and (restore is None or not hasattr(step.state, "snapshot")):
                raise CheckpointError(
                    f"stage {step.stage}: transformer {step.component.name!r} is stateful "
                    "but cannot snapshot its state, so the pipeline cannot be checkpointed"
                )
            if restore is not None and step.stage in ckpt.states:
                try:
                    restore(ckpt.states[step.stage])
                except Exception as exc:
                    raise CheckpointError(
                        f"stage {step.stage}: cannot restore the state of transformer "
                        f"{step.component.name!r} from the checkpoint: {exc}; reset "
                        f"the checkpoint (headwater checkpoints reset {self.run.spec.name}) "
                        "to start over"
                    ) from exc

    async def snapshot_states(self, steps: list[FusedStep], marker: Marker) -> None:
        """Store in ``marker`` the state of each step that can snapshot, as it is once
        every item before the marker went through. The caller forwards the marker only
        after this returned; a failing snapshot fails the run (:class:`_Stop`)."""
        run = self.run
        for step in steps:
            snapshot = getattr(step.state, "snapshot", None)
            if snapshot is not None:
                try:
                    marker.states[step.stage] = snapshot()
                except Exception as exc:
                    await run.fail(run.stage_error(step.spec, None, exc))
                    raise _Stop from exc
        if self.branch_states:
            self._snapshotted.set()
            self._snapshotted = anyio.Event()

    def branch_ended(self, steps: list[FusedStep]) -> None:
        """A stage ended: sinks no longer wait for its states (a branch that stopped
        early, e.g. with ``take``, snapshots nothing more)."""
        if self.branch_states and any(s.stage in self.branch_states for s in steps):
            self.branch_states.difference_update(s.stage for s in steps)
            self._snapshotted.set()
            self._snapshotted = anyio.Event()

    def complete(self, held: list[Marker]) -> None:
        """A stage that ended normally without the source's final marker (``take`` got
        enough, a stream transformer stopped reading) marks the end of the run itself:
        otherwise what it emitted after the last checkpoint would never be committed.

        A stopping run did not complete: the final markers of sources that had ended are
        dropped (the stop markers, later ones, went ahead of them)."""
        if self.stopping:
            held.clear()
            return
        ckpt = self.checkpointer
        if ckpt is not None and not any(m.final for m in held):
            held.append(ckpt.final(self.run.produced()))

    async def acknowledge(self, sink: _SinkRuntime, marker: Marker) -> None:
        """The sink wrote every item before ``marker``: let it commit, then acknowledge.

        Called by the sink's task between two writes, so the sink's commit never
        overlaps a write. The checkpoint is saved once every sink acknowledged it. A
        failing commit fails the run (:class:`_Stop`); the dead-letter sink and runs
        without a checkpoint store acknowledge nothing.
        """
        ckpt = self.checkpointer
        if ckpt is None or sink.spec.stage == "dead_letter":
            return
        run = self.run
        # every branch's state first: a transactional sink commits the checkpoint it
        # may resume from, which must hold the states of the other sinks' branches too
        while not self.branch_states <= marker.states.keys():
            await self._snapshotted.wait()
        try:
            await sink.commit_checkpoint(ckpt.checkpoint_for(marker))
        except Exception as exc:
            await run.fail(run.stage_error(sink.spec, sink.stats.items_out, exc))
            raise _Stop from exc
        await ckpt.ack(marker, sink.spec.stage)

    # -- after the run ---------------------------------------------------------------------

    def summary(self) -> dict[str, Any] | None:
        """The ``checkpoint`` part of the run's summary (None without checkpoints)."""
        ckpt = self.checkpointer
        note = self.resume_note
        if ckpt is None and self._completed_at is not None:
            done = self._completed_at
            return {
                "resumed": True,
                "committed_seq": done.seq,
                "committed_items": done.items,
                "saved": 0,
                "note": note,
            }
        if ckpt is None:
            return {"note": note} if note else None
        committed = ckpt.committed
        return {
            "resumed": self.resuming,
            "committed_seq": committed.seq if committed else None,
            "committed_items": committed.items if committed else None,
            "saved": ckpt.saved,
            "note": note,
        }
