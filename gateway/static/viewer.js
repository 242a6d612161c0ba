// agui-gateway viewer: list a project's sessions, replay one, then follow it live (PROTOCOL §4).
// No build step and no dependencies. The page keeps the cursor of the last event it rendered and
// reconnects with after=<cursor>, so a drop or a gateway restart never shows anything twice.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const RETRY_CODES = new Set([1001, 1006, 1011, 1012, 1013, 4408]);

function withToken(url) {
  return token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
}

function setStatus(state, text) {
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text;
}

// ---- sessions list (paged with the API's continue token) ----

let nextPage = null;

async function loadSessions(more) {
  const project = $("project").value.trim() || "default";
  const list = $("sessions");
  if (!more) { list.replaceChildren(); nextPage = null; }
  const params = new URLSearchParams({ limit: "20" });
  if (more && nextPage) params.set("continue", nextPage);
  $("sessions-error").hidden = true;
  try {
    const resp = await fetch(withToken(`/v1/projects/${encodeURIComponent(project)}/sessions?${params}`));
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
    for (const item of body.items) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.session = item.session;
      button.textContent = item.displayName || item.session;
      button.addEventListener("click", () => { location.hash = `#/${project}/${item.session}`; });
      const li = document.createElement("li");
      li.append(button);
      list.append(li);
    }
    nextPage = body.continue;
    $("more").hidden = !nextPage;
    markCurrent();
  } catch (err) {
    $("sessions-error").textContent = "Cannot list sessions: " + err.message;
    $("sessions-error").hidden = false;
  }
}

function markCurrent() {
  for (const b of document.querySelectorAll("#sessions button")) {
    b.setAttribute("aria-current", String(current !== null && b.dataset.session === current.session));
  }
}

// ---- conversation model: AG-UI events merged by message id and tool call id ----

class Conversation {
  constructor(root) {
    this.root = root;
    this.clear();
  }

  clear() {
    this.root.replaceChildren();
    this.root.dataset.events = "0";
    this.count = 0;              // events applied; written to the page once per frame (flush)
    this.state = undefined;      // the last STATE_SNAPSHOT, drawn once per frame
    this.messages = new Map();   // messageId -> {el, body}
    this.tools = new Map();      // toolCallId -> {el, args, result, name}
    this.lastChunkId = null;
    $("state").hidden = true;
  }

  message(id, role) {
    let m = this.messages.get(id);
    if (!m) {
      const el = document.createElement("div");
      el.dataset.messageId = id;
      const label = document.createElement("span");
      label.className = "role";
      const body = document.createElement("span");
      body.className = "body";
      el.append(label, body);
      this.root.append(el);
      m = { el, label, body };
      this.messages.set(id, m);
    }
    if (role) {
      m.el.className = "msg " + role;
      m.label.textContent = role;
    } else if (!m.el.className) {
      m.el.className = "msg assistant";
      m.label.textContent = "assistant";
    }
    return m;
  }

  tool(id, name, parentId) {
    let t = this.tools.get(id);
    if (!t) {
      const el = document.createElement("div");
      el.className = "tool-call";
      el.dataset.toolCallId = id;
      const call = document.createElement("span");
      call.className = "call";
      const result = document.createElement("span");
      result.className = "result";
      el.append(call, result);
      const parent = parentId && this.messages.get(parentId);
      if (parent) parent.el.after(el); else this.root.append(el);
      t = { el, call, result, name: name || "tool", args: "" };
      this.tools.set(id, t);
    }
    if (name) t.name = name;
    return t;
  }

  drawTool(t) {
    let args = t.args;
    try { args = JSON.stringify(JSON.parse(t.args)); } catch (_) { /* still streaming */ }
    t.call.textContent = `${t.name}(${args})`;
  }

  marker(text, cls) {
    const el = document.createElement("div");
    el.className = cls;
    el.textContent = text;
    this.root.append(el);
  }

  apply(ev) {
    switch (ev.type) {
      case "TEXT_MESSAGE_START": this.message(ev.messageId, ev.role || "assistant"); break;
      case "TEXT_MESSAGE_CONTENT": this.message(ev.messageId).body.textContent += ev.delta || ""; break;
      case "TEXT_MESSAGE_CHUNK": {
        const id = ev.messageId || this.lastChunkId || "chunk-" + this.count;
        this.lastChunkId = id;
        this.message(id, ev.role).body.textContent += ev.delta || "";
        break;
      }
      case "TOOL_CALL_START": this.drawTool(this.tool(ev.toolCallId, ev.toolCallName, ev.parentMessageId)); break;
      case "TOOL_CALL_ARGS":
      case "TOOL_CALL_CHUNK": {
        const t = this.tool(ev.toolCallId, ev.toolCallName, ev.parentMessageId);
        t.args += ev.delta || "";
        this.drawTool(t);
        break;
      }
      case "TOOL_CALL_END": this.drawTool(this.tool(ev.toolCallId)); break;
      case "TOOL_CALL_RESULT": this.tool(ev.toolCallId).result.textContent = "→ " + text(ev.content); break;
      case "MESSAGES_SNAPSHOT": this.snapshot(ev.messages || []); break;
      case "STATE_SNAPSHOT": this.state = ev.snapshot; break;
      case "RUN_STARTED": this.marker(`run ${ev.runId || ""}`, "run"); break;
      case "RUN_ERROR": this.marker(`run failed: ${ev.message || ev.code || ""}`, "run error"); break;
      default: break;
    }
    this.count += 1;
  }

  flush() {
    this.root.dataset.events = String(this.count);
    if (this.state !== undefined) {
      $("state").hidden = false;
      $("state-json").textContent = JSON.stringify(this.state, null, 2);
      this.state = undefined;
    }
  }

  snapshot(messages) {
    for (const msg of messages) {
      if (msg.role === "tool" && msg.toolCallId) {
        this.tool(msg.toolCallId).result.textContent = "→ " + text(msg.content);
        continue;
      }
      this.message(msg.id, msg.role).body.textContent = text(msg.content);
      for (const call of msg.toolCalls || []) {
        const t = this.tool(call.id, call.function && call.function.name, msg.id);
        t.args = (call.function && call.function.arguments) || "";
        this.drawTool(t);
      }
    }
  }
}

function text(content) {
  if (content == null) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((p) => (p && p.text) || "").join("");
  return JSON.stringify(content);
}

// ---- the stream: replay, live, resume ----

let current = null;   // {project, session, ws, epoch, seq, cursor, attempts, timer, closed}
const conversation = new Conversation($("conversation"));

function seqOf(cursor) { return cursor ? Number(cursor.slice(cursor.lastIndexOf("-") + 1)) : 0; }
function epochOf(cursor) { return cursor ? cursor.slice(0, cursor.lastIndexOf("-")) : null; }

// Sessions open in the compact view (finished runs with their deltas merged, a few events per
// message); the switch reopens the session in the raw view, every stored event.
let view = localStorage.getItem("agui-view") === "raw" ? "raw" : "compact";

const REVEAL_MS = 1500;

function reveal(s) {
  if (s.closed || !$("conversation").hidden) return;
  clearTimeout(s.reveal);
  $("conversation").hidden = false;
  toEnd();
}

// Messages off screen are laid out only when seen (content-visibility), so the end is found by
// scrolling the last element into view, twice: once it is laid out, the ones before it may be too.
function toEnd() {
  const last = $("conversation").lastElementChild;
  if (!last) return;
  last.scrollIntoView({ block: "end" });
  requestAnimationFrame(() => last.scrollIntoView({ block: "end" }));
}

// Following live: a view scrolled to the end stays at the end as messages arrive.
function atEnd() {
  const view = $("view");
  return view.scrollTop + view.clientHeight >= view.scrollHeight - 48;
}

function showView() {
  document.body.dataset.view = view;
  $("view-switch").textContent = view === "compact" ? "Show raw events" : "Show compact view";
}

function open(project, session) {
  close();
  conversation.clear();
  $("title").textContent = `${project} / ${session}`;
  current = { project, session, ws: null, epoch: null, seq: 0, cursor: null, attempts: 0, timer: null,
              closed: false, queue: [], frame: 0, reveal: 0 };
  // The replay is built out of sight (no layout per frame) and shown at its end, scrolled to the
  // last message; a replay that takes longer is shown as it goes after REVEAL_MS.
  $("conversation").hidden = true;
  current.reveal = setTimeout(() => reveal(current), REVEAL_MS);
  markCurrent();
  connect(current);
}

function close() {
  if (!current) return;
  current.closed = true;
  clearTimeout(current.timer);
  if (current.ws) current.ws.close(1000, "viewer switched session");
  cancelAnimationFrame(current.frame);
  clearTimeout(current.reveal);
  current = null;
}

function connect(s) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  let url = `${scheme}//${location.host}/v1/projects/${encodeURIComponent(s.project)}` +
            `/sessions/${encodeURIComponent(s.session)}/events`;
  url += "?view=" + view;
  if (s.cursor) url += "&after=" + encodeURIComponent(s.cursor);
  setStatus(s.attempts ? "reconnecting" : "connecting", s.attempts ? "reconnecting…" : "connecting…");
  const ws = new WebSocket(withToken(url));
  s.ws = ws;
  ws.onmessage = (msg) => {
    if (s.closed) return;
    s.queue.push(msg.data);
    if (!s.frame) s.frame = requestAnimationFrame(() => drain(s));
  };
  ws.onclose = (ev) => { if (!s.closed) closed(s, ev); };
}

// Frames are rendered once per animation frame, all that arrived since the last one together:
// a replay of thousands of frames costs a few layouts, not one per frame.
function drain(s) {
  s.frame = 0;
  const frames = s.queue;
  s.queue = [];
  const follow = s.live && !$("conversation").hidden && atEnd();
  for (const data of frames) {
    if (s.closed) return;
    for (const line of data.split("\n")) handle(s, JSON.parse(line));
  }
  conversation.flush();
  progress(s);
  if (follow) toEnd();
}

function handle(s, obj) {
  if (obj.events) {
    const epoch = epochOf(obj.cursor);
    if (epoch !== s.epoch) reset(s, epoch);
    obj.events.forEach((ev, i) => {
      const seq = obj.seqs ? obj.seqs[i] : obj.first + i;   // compact batches list their seqs
      if (seq <= s.seq) return;            // already rendered (never twice)
      conversation.apply(ev);
      s.seq = seq;
    });
    s.cursor = `${epoch}-${s.seq}`;
    document.body.dataset.cursor = s.cursor;
    return;
  }
  switch (obj.control) {
    case "hello":
      s.attempts = 0;
      if (obj.reset || (s.epoch && obj.epoch !== s.epoch)) reset(s, obj.epoch);
      s.epoch = obj.epoch;
      s.head = seqOf(obj.head);
      s.from = s.seq;
      $("replay").hidden = s.head <= s.seq;
      setStatus("replaying", "replaying…");
      progress(s);
      break;
    case "live":
      $("replay").hidden = true;
      setStatus("live", "live");
      s.live = true;
      reveal(s);
      toEnd();   // also when a long replay was shown as it went: live starts at the last message
      break;
    case "reset": reset(s, obj.epoch); break;
    case "skipped":
      s.seq = obj.seq;
      s.cursor = obj.cursor;
      conversation.marker(`event ${obj.seq} could not be shown (${obj.reason})`, "run error");
      break;
    default: break;                        // heartbeat
  }
}

function reset(s, epoch) {
  conversation.clear();
  s.epoch = epoch;
  s.seq = 0;
  s.cursor = null;
  conversation.marker("the session log was restarted", "run");
}

function progress(s) {
  if (!s.head) return;
  const total = Math.max(1, s.head - s.from);
  const done = Math.min(total, s.seq - s.from);
  $("progress").max = total;
  $("progress").value = done;
  $("progress-text").textContent = `${done.toLocaleString()} / ${total.toLocaleString()} stored events`;
}

function closed(s, ev) {
  s.ws = null;
  if (ev.code === 1000) { setStatus("idle", "stream ended"); return; }
  if (!RETRY_CODES.has(ev.code)) { setStatus("error", `closed (${ev.code}): ${ev.reason || "refused"}`); return; }
  s.attempts += 1;
  const ceiling = Math.min(15000, 250 * 2 ** (s.attempts - 1));
  const delay = ceiling / 2 + Math.random() * ceiling / 2;   // jitter: clients don't come back in step
  setStatus("reconnecting", `disconnected (${ev.code}); retrying in ${(delay / 1000).toFixed(1)}s`);
  s.timer = setTimeout(() => connect(s), delay);
}

// ---- wiring ----

function route() {
  const m = location.hash.match(/^#\/([a-z0-9-]+)\/([a-z0-9-]+)$/);
  if (!m) return;
  if ($("project").value !== m[1]) { $("project").value = m[1]; loadSessions(false); }
  if (!current || current.project !== m[1] || current.session !== m[2]) open(m[1], m[2]);
}

$("refresh").addEventListener("click", () => loadSessions(false));
$("view-switch").addEventListener("click", () => {
  view = view === "compact" ? "raw" : "compact";
  localStorage.setItem("agui-view", view);
  showView();
  if (current) open(current.project, current.session);
});
showView();
$("more").addEventListener("click", () => loadSessions(true));
$("project").addEventListener("change", () => loadSessions(false));
window.addEventListener("hashchange", route);
loadSessions(false);
route();
