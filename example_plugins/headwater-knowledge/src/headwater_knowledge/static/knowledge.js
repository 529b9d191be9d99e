// The knowledge page: run a query over the WebSocket protocol v1 and render its stream.
//
// Messages are applied to a model as they arrive (cheap), and the DOM is brought up to
// date once per animation frame, within a time budget, so a burst of thousands of
// events never blocks typing or scrolling. A query belongs to this tab's session (kept
// in sessionStorage): a new query cancels the previous one on the server, and after a
// reconnection (or a reload) the page resubscribes to its stream with `since`.
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  const url = new URLSearchParams(location.search);
  const PIPELINE = url.get("pipeline") || "knowledge";
  const TOKEN = url.get("token");
  const FRAME_BUDGET_MS = 8;
  const store = window.sessionStorage;

  const el = {
    app: $("#app"), conn: $("#conn"), form: $("#search"), q: $("#q"),
    providers: $("#providers"), summary: $("#summary"), notice: $("#notice"),
    answer: $("#answer"), results: $("#results"), count: $("#count"),
  };

  // -- the model ------------------------------------------------------------------------

  const session = store.getItem("knowledge.session") || randomId();
  store.setItem("knowledge.session", session);

  let model = emptyModel();
  let stream = store.getItem("knowledge.stream");      // the query's stream, once started
  let epoch = store.getItem("knowledge.epoch");
  let seq = 0;                                          // last chunk applied to the model
  const queue = [];                                     // chunks not yet applied
  let scheduled = false;
  let pendingRun = null;                                // id of the run request in flight
  let requestId = 0;
  const marks = (window.__knowledgeTimes = {});         // first render of each kind (tests)

  function emptyModel() {
    return {
      query: "", order: [], byId: new Map(), providers: new Map(), deltas: [],
      sentences: 0, complete: null, state: "idle", dirty: new Set(), removed: [],
      changedIds: new Set(), freshIds: new Set(),
    };
  }

  function randomId() {
    const bytes = new Uint8Array(8);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function apply(item) {
    switch (item.type) {
      case "query":
        model.query = item.query;
        for (const name of item.providers) model.providers.set(name, { state: "started", hits: 0 });
        model.dirty.add("providers");
        break;
      case "status":
        model.providers.set(item.provider, item);
        model.dirty.add("providers");
        break;
      case "result":
        applyResult(item);
        break;
      case "enrichment": {
        const result = model.byId.get(item.id);
        if (result && item.ok && !item.duplicate_of && item.passages.length) {
          result.passage = item.passages[0].text;
          model.changedIds.add(item.id);
        }
        break;
      }
      case "answer":
        model.deltas.push(item);
        model.sentences += 1;
        model.dirty.add("answer");
        break;
      case "complete":
        model.complete = item;
        model.state = item.cancelled ? "cancelled" : "complete";
        model.dirty.add("summary");
        break;
      case "error":
        showNotice(`${item.where}: ${item.message}`);
        break;
      default:
        break; // hits of a pipeline without a ranker, and types this page does not know
    }
  }

  function applyResult(item) {
    const order = model.order;
    const at = order.indexOf(item.id);
    if (at >= 0) order.splice(at, 1);
    if (item.change === "removed") {
      model.byId.delete(item.id);
      model.removed.push(item.id);
    } else {
      const known = model.byId.get(item.id);
      model.byId.set(item.id, { ...(known || {}), data: item });
      order.splice(item.position - 1, 0, item.id);
      if (!known) model.freshIds.add(item.id);
      model.changedIds.add(item.id);
    }
    model.dirty.add("results");
  }

  // -- rendering, once per frame --------------------------------------------------------

  function schedule() {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(frame);
    }
  }

  function frame() {
    scheduled = false;
    const stop = performance.now() + FRAME_BUDGET_MS;
    let n = 0;
    while (n < queue.length && (n % 64 !== 0 || performance.now() < stop)) apply(queue[n++]);
    queue.splice(0, n);
    render();
    if (queue.length) schedule();
  }

  function render() {
    const dirty = model.dirty;
    if (dirty.has("providers")) renderProviders();
    if (dirty.has("results") || model.changedIds.size) renderResults();
    if (dirty.has("answer")) renderAnswer();
    if (dirty.size || model.changedIds.size) renderSummary();
    el.app.dataset.state = model.state;
    dirty.clear();
  }

  function mark(kind) {
    if (!(kind in marks)) marks[kind] = performance.now();
  }

  function renderProviders() {
    const items = [];
    for (const [name, s] of model.providers) {
      const li = document.createElement("li");
      li.dataset.provider = name;
      li.dataset.state = s.state;
      const state = s.state.replace("_", " ");
      const time = s.elapsed ? ` · ${s.elapsed.toFixed(2)} s` : "";
      li.textContent = `${name}: ${state} · ${s.hits || 0} hits${time}`;
      if (s.message) li.title = s.message;
      items.push(li);
    }
    el.providers.replaceChildren(...items);
    if (items.length) mark("status");
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function resultElement(id) {
    const result = model.byId.get(id);
    let li = result.el;
    if (!li) {
      li = result.el = document.createElement("li");
      li.id = `r-${id}`;
      li.innerHTML =
        '<a class="title"></a><div class="url"></div><p class="snippet"></p>' +
        '<p class="passage" hidden></p><div class="meta"></div>';
    }
    const d = result.data;
    if (result.shown !== d) {
      // only what changed is written: a moved result changes its score line alone
      const before = result.shown || {};
      const a = li.firstChild;
      if (before.title !== d.title) a.textContent = d.title;
      if (before.url !== d.url) {
        a.href = /^https?:/.test(d.url) ? d.url : "#";
        li.children[1].textContent = d.url;
      }
      if (before.snippet !== d.snippet) li.children[2].textContent = d.snippet;
      const providers = Object.entries(d.providers).map(([p, r]) => `${p} #${r}`).join(" · ");
      setText(li.lastChild, `${providers} · score ${d.score.toFixed(4)}`);
      result.shown = d;
    }
    const passage = li.children[3];
    if (result.passage && passage.textContent !== result.passage) {
      passage.textContent = result.passage;
      passage.hidden = false;
    }
    return li;
  }

  function renderResults() {
    const list = el.results;
    for (const id of model.removed) document.getElementById(`r-${id}`)?.remove();
    model.removed.length = 0;
    for (const id of model.changedIds) if (model.byId.has(id)) resultElement(id);
    model.changedIds.clear();
    const order = model.order;
    const children = list.children;
    for (let i = 0; i < order.length; i++) {
      const li = model.byId.get(order[i]).el;
      if (children[i] !== li) list.insertBefore(li, children[i] || null);
    }
    while (children.length > order.length) children[children.length - 1].remove();
    for (const id of model.freshIds) model.byId.get(id)?.el?.classList.add("fresh");
    model.freshIds.clear();
    el.count.textContent = String(order.length);
    if (order.length) mark("result");
  }

  function renderAnswer() {
    const fragment = document.createDocumentFragment();
    for (const delta of model.deltas) {
      const cited = new Map(delta.citations.map((c) => [String(c.n), c]));
      let last = 0;
      for (const m of delta.delta.matchAll(/\[(\d+)\]/g)) {
        const c = cited.get(m[1]);
        if (!c) continue;
        fragment.append(delta.delta.slice(last, m.index));
        const a = document.createElement("a");
        a.className = "cite";
        a.href = `#r-${c.id}`;
        a.title = c.title;
        a.textContent = m[0];
        fragment.append(a);
        last = m.index + m[0].length;
      }
      fragment.append(delta.delta.slice(last));
    }
    model.deltas.length = 0;
    el.answer.append(fragment);
    el.answer.dataset.sentences = String(model.sentences);
    if (model.sentences) mark("answer");
  }

  function renderSummary() {
    const c = model.complete;
    if (c) {
      const first = c.timings.first_result;
      const parts = [
        `${c.counts.results} results from ${Object.keys(c.providers).length} providers`,
        `in ${c.timings.total.toFixed(2)} s`,
      ];
      if (first !== null) parts.push(`first result after ${first.toFixed(2)} s`);
      if (c.counts.duplicates) parts.push(`${c.counts.duplicates} duplicates merged`);
      if (c.cancelled) parts.push("stopped");
      el.summary.textContent = parts.join(" · ");
    } else if (model.query) {
      el.summary.textContent = `Searching for “${model.query}”… ${model.order.length} results so far`;
    }
  }

  function showNotice(text) {
    el.notice.textContent = text;
    el.notice.hidden = !text;
  }

  // -- the connection -------------------------------------------------------------------

  let ws = null;
  let backoff = 250;
  const outbox = [];

  function send(message) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
    else outbox.push(message);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const token = TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : "";
    ws = new WebSocket(`${scheme}//${location.host}/ws${token}`);
    el.conn.dataset.state = "connecting";
    el.conn.textContent = "connecting…";
    ws.onopen = () => {
      backoff = 250;
      el.conn.dataset.state = "open";
      el.conn.textContent = "connected";
      if (stream && !pendingRun) {
        const message = { type: "subscribe", stream, since: seq, id: `resume-${++requestId}` };
        if (epoch) message.epoch = epoch;
        ws.send(JSON.stringify(message));
      }
      while (outbox.length) ws.send(JSON.stringify(outbox.shift()));
    };
    ws.onmessage = (event) => receive(JSON.parse(event.data));
    ws.onclose = () => {
      el.conn.dataset.state = "closed";
      el.conn.textContent = "reconnecting…";
      ws = null;
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 5000);
    };
  }

  function receive(m) {
    switch (m.type) {
      case "run_started":
        if (m.ref === pendingRun) {
          pendingRun = null;
          stream = m.stream;
          store.setItem("knowledge.stream", stream);
        }
        break;
      case "subscribed":
        if (m.stream === stream) {
          epoch = m.epoch;
          store.setItem("knowledge.epoch", epoch);
        }
        break;
      case "replay_gap":
        if (m.stream === stream) showNotice("Some updates of this query were lost; run it again for a complete view.");
        break;
      case "stream_update":
        if (m.stream === stream && m.seq > seq) {
          seq = m.seq;
          queue.push(m.data);
          schedule();
        }
        break;
      case "stream_complete":
        if (m.stream === stream) {
          if (m.reason === "cancelled" && model.state === "running") model.state = "cancelled";
          if (m.reason === "failed") model.state = "failed";
          if (m.reason === "failed" || m.reason === "error") showNotice("The query failed on the server.");
          model.dirty.add("summary");
          schedule();
        }
        break;
      case "stream_error":
        if (m.stream === stream) showNotice(m.error.message || "the query failed");
        break;
      case "error":
        if (m.ref && (m.ref === pendingRun || String(m.ref).startsWith("resume-"))) {
          pendingRun = null;
          if (String(m.ref).startsWith("resume-")) forget();
          model.state = "failed";
          model.dirty.add("summary");
          schedule();
        }
        showNotice(m.message);
        break;
      default:
        break;
    }
  }

  function forget() {
    stream = epoch = null;
    for (const key of ["stream", "epoch", "query"]) store.removeItem(`knowledge.${key}`);
  }

  // -- what the user does ---------------------------------------------------------------

  function search(query) {
    query = query.trim();
    if (!query) return;
    forget();
    queue.length = 0;
    seq = 0;
    model = emptyModel();
    model.state = "running";
    model.query = query;
    for (const key of Object.keys(marks)) delete marks[key];
    el.providers.replaceChildren();
    el.results.replaceChildren();
    el.answer.replaceChildren();
    el.answer.dataset.sentences = "0";
    el.count.textContent = "0";
    showNotice("");
    store.setItem("knowledge.query", query);
    pendingRun = `run-${++requestId}`;
    send({ type: "run", pipeline: PIPELINE, params: { query, session }, id: pendingRun });
    model.dirty.add("summary");
    schedule();
  }

  function stop() {
    if (stream && model.state === "running") send({ type: "cancel", stream });
  }

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    search(el.q.value);
  });

  document.addEventListener("keydown", (event) => {
    const typing = event.target === el.q;
    if (event.key === "/" && !typing) {
      event.preventDefault();
      el.q.focus();
      el.q.select();
    } else if (event.key === "Escape") {
      stop();
    } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      const links = Array.from(el.results.querySelectorAll("a.title"));
      if (!links.length) return;
      const at = links.indexOf(document.activeElement);
      if (typing && event.key === "ArrowDown") links[0].focus();
      else if (at >= 0) {
        const next = at + (event.key === "ArrowDown" ? 1 : -1);
        if (next < 0) el.q.focus();
        else links[Math.min(next, links.length - 1)].focus();
      } else return;
      event.preventDefault();
    }
  });

  // for tests and the curious: drop the connection as a network failure would
  window.__knowledge = { drop: () => ws && ws.close(4000, "dropped"), session };

  // a reload resumes this tab's last query from the start of its stream
  if (stream) {
    model.state = "running";
    el.q.value = store.getItem("knowledge.query") || "";
  }
  connect();
})();
