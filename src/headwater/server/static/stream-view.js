// The stream view: a selected stream's chunks, rendered progressively.
//
// Chunks are queued as they arrive and rendered once per animation frame, newest first,
// as one DocumentFragment of one-line rows; at most `maxRows` rows are kept in the page
// (older ones are removed), and at most 2 x maxRows chunks wait for a frame (a hidden tab
// renders no frames), so memory and layout work stay bounded at any rate. Newest first
// means following the stream needs no scrolling (no forced layout), and off-screen rows
// skip layout altogether (`content-visibility: auto`).

import { preview } from "./format.js";
import { progressRow, updateProgressRow } from "./progress.js";

export class StreamView {
  constructor(root, { maxRows = 500 } = {}) {
    this.root = root;
    this.maxRows = maxRows;
    this.rows = root.querySelector("#sv-rows");
    this.name = root.querySelector("#sv-name");
    this.badge = root.querySelector("#sv-state");
    this.count = root.querySelector("#sv-count");
    this.seqText = root.querySelector("#sv-seq");
    this.droppedText = root.querySelector("#sv-dropped");
    this.shown = root.querySelector("#sv-shown");
    this.end = root.querySelector("#sv-end");
    this.progressBox = root.querySelector("#sv-progress");
    this.pauseButton = root.querySelector("#sv-pause");
    root.querySelector("#sv-max").textContent = String(maxRows);
    this.paused = false;
    this.pauseButton.addEventListener("click", () => this.setPaused(!this.paused));
    root.querySelector("#sv-clear").addEventListener("click", () => this.clearRows());
    this.flush = this.flush.bind(this);
    this.stream = null;
    this.reset(null);
  }

  /** Stop (or resume) rendering rows; counters keep going, the newest rows wait. */
  setPaused(on) {
    this.paused = on;
    this.pauseButton.setAttribute("aria-pressed", on ? "true" : "false");
    this.pauseButton.textContent = on ? "Resume" : "Pause";
    this.schedule();
  }

  /** Show `stream` (null: nothing), forgetting the previous one. */
  reset(stream, { run = null } = {}) {
    this.stream = stream;
    this.run = run;
    this.epoch = null;
    this.lastSeq = 0;
    this.total = 0;
    this.droppedCount = 0;
    this.pending = [];
    this.complete = false;
    this.reason = null;
    this.stages = new Map();
    this.lastProgress = new Map();
    this.rows.replaceChildren();
    this.progressBox.replaceChildren();
    this.end.hidden = true;
    this.end.textContent = "";
    delete this.root.dataset.reason;
    this.name.textContent = stream || "none selected";
    this.setState(stream ? "subscribing" : "idle");
    this.renderCounters();
  }

  setState(state) {
    this.state = state;
    this.root.dataset.state = state;
    this.badge.dataset.state = state;
    this.badge.textContent = state;
  }

  subscribed(message) {
    this.epoch = message.epoch;
    if (!this.complete) this.setState("streaming");
  }

  /** One `stream_update`: the hot path, kept to a few assignments. */
  chunk(message) {
    this.total += 1;
    this.lastSeq = message.seq;
    const pending = this.pending;
    pending.push(message);
    if (pending.length > 2 * this.maxRows) pending.splice(0, pending.length - this.maxRows);
    if (!this.scheduled) this.schedule();
  }

  /** A line that is not a chunk (an error of the pipeline), in order with the chunks. */
  note(text) {
    this.pending.push({ note: text });
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(this.flush);
  }

  /** Render the queued chunks, newest first, as one fragment; keep at most maxRows rows. */
  flush() {
    this.scheduled = false;
    if (!this.paused && this.pending.length) {
      let batch = this.pending;
      this.pending = [];
      if (batch.length > this.maxRows) batch = batch.slice(batch.length - this.maxRows);
      const fragment = document.createDocumentFragment();
      for (let i = batch.length - 1; i >= 0; i--) {
        const message = batch[i];
        const row = document.createElement("li");
        if (message.note !== undefined) {
          row.className = "note";
          row.dataset.seq = "!";
          row.textContent = message.note;
        } else {
          row.dataset.seq = message.seq;
          row.textContent = preview(message.data);
        }
        fragment.append(row);
      }
      const rows = this.rows;
      if (batch.length >= this.maxRows) {
        rows.replaceChildren(fragment);
      } else {
        rows.prepend(fragment);
        if (rows.childElementCount > this.maxRows) {
          const range = document.createRange();
          range.setStartBefore(rows.children[this.maxRows]);
          range.setEndAfter(rows.lastElementChild);
          range.deleteContents();
        }
      }
    }
    this.renderCounters();
  }

  renderCounters() {
    this.count.textContent = String(this.total);
    this.seqText.textContent = this.lastSeq ? String(this.lastSeq) : "–";
    this.droppedText.textContent = String(this.droppedCount);
    this.shown.textContent = String(this.rows.childElementCount);
  }

  clearRows() {
    this.pending = [];
    this.rows.replaceChildren();
    this.renderCounters();
  }

  progress(message) {
    let row = this.stages.get(message.stage);
    if (!row) {
      row = progressRow(message.stage);
      this.stages.set(message.stage, row);
      this.progressBox.append(row);
    }
    this.lastProgress.set(message.stage, message);
    updateProgressRow(row, message.done, message.total, message.message, this.complete ? this.reason : "running");
  }

  droppedMessages(message) {
    this.droppedCount += message.count;
    this.renderCounters();
  }

  /** `stream_complete`: render what is queued, then the end marker. */
  completed(message) {
    const paused = this.paused;
    this.paused = false;
    this.flush();
    this.paused = paused;
    this.complete = true;
    this.reason = message.reason;
    this.setState("complete");
    this.badge.textContent = message.reason;
    this.badge.dataset.state = message.reason;
    this.root.dataset.reason = message.reason;
    this.end.hidden = false;
    this.end.dataset.reason = message.reason;
    const items = message.summary && typeof message.summary.items_in === "number"
      ? ` · ${message.summary.items_in} items in` : "";
    const replayed = message.summary && message.summary.history ? " · replayed from the run history" : "";
    this.end.textContent = `Stream complete: ${message.reason} · last seq ${message.last_seq}${items}${replayed}`;
    // the bars say how the run ended: a failed run is never a green 100%
    for (const [stage, row] of this.stages) {
      const p = this.lastProgress.get(stage);
      if (p) updateProgressRow(row, p.done, p.total, p.message, message.reason);
    }
  }

  /** The stream cannot be followed (it ended before, or the server refused): say why. */
  unavailable(code, text) {
    this.flush();
    this.complete = true;
    this.reason = code;
    this.setState("complete");
    this.badge.textContent = code;
    this.badge.dataset.state = "error";
    this.root.dataset.reason = code;
    this.end.hidden = false;
    this.end.dataset.reason = "error";
    this.end.textContent = code === "stream_closed" || code === "unknown_stream"
      ? "This stream has ended and no run of this server recorded it: its chunks are not kept."
      : `Cannot follow this stream: ${text}`;
  }

  /** The subscription ended without completing the stream (`unsubscribed`). */
  detached() {
    this.flush();
    if (!this.complete) this.setState("unsubscribed");
  }
}
