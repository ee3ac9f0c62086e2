// The livesum page: record from a microphone, watch a running session, ask, read the notes.
// It speaks the server's native protocol (/v1/stream, docs/server.md) and its HTTP API (/api/...).
import { microphones, startCapture } from "./capture.js";

const $ = (id) => document.getElementById(id);
const FILES = ["notes.md", "transcript.srt", "transcript.vtt", "transcript.txt", "events.jsonl"];
const page = { socket: null, capture: null, session: null, lastSeq: 0, mode: "idle", answers: new Map(), asked: new Map() };

// -- token: typed once, kept for this tab only, sent as a header (never in a page URL) ---------------
const tokenInput = $("token");
tokenInput.value = sessionStorage.getItem("livesum-token") || "";
tokenInput.addEventListener("change", () => { sessionStorage.setItem("livesum-token", tokenInput.value); loadSessions(); });
const token = () => tokenInput.value.trim();

async function api(path) {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const reply = await fetch(path, { headers, cache: "no-store" });
  if (reply.status === 401) throw new Error("the server wants a token: type it at the top");
  if (!reply.ok) throw new Error(`${path}: HTTP ${reply.status} ${(await reply.text()).trim()}`);
  return reply;
}

// -- small helpers -------------------------------------------------------------------------------
function clock(seconds) {
  const total = Math.max(0, Math.floor(seconds || 0));
  const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
  const mm = String(m).padStart(2, "0"), ss = String(s).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}
function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
function speakerColour(name) {
  let hash = 0;
  for (const char of name) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  return `hsl(${Math.round((hash * 137.508) % 360)} 65% 35%)`;  // golden angle: "Speaker 1" and "Speaker 2" far apart
}
function setState(text) { $("state").textContent = text; }
function showError(message) {
  $("errors").hidden = false;
  const item = element("li", "", message);
  $("error-list").append(item);
}
function setBusy(mode) {
  page.mode = mode;
  const live = mode === "recording";
  $("record").disabled = mode !== "idle";
  $("stop").disabled = !live;
  $("question").disabled = !live;
  $("ask-button").disabled = !live;
  $("mic").disabled = mode !== "idle";
  for (const button of document.querySelectorAll("#watch-form button, #session-list button")) button.disabled = mode !== "idle";
}

function resetView(sessionId) {
  page.session = sessionId;
  page.lastSeq = 0;
  page.answers.clear();
  page.asked.clear();
  $("finals").replaceChildren();
  $("partial").textContent = "";
  $("answers").replaceChildren();
  $("summary-text").textContent = "No summary yet.";
  $("summary-text").className = "muted";
  $("notes").hidden = true;
  $("error-list").replaceChildren();
  $("errors").hidden = true;
  $("session-id").textContent = `session ${sessionId}`;
  $("lag").textContent = "lag: –";
}

// -- events (livesum/events.py), wrapped by the server as {session, seq, event} --------------------
function onEvent(event) {
  switch (event.type) {
    case "segment": return onSegment(event);
    case "status": return onStatus(event);
    case "summary":
      $("summary-text").textContent = event.text;
      $("summary-text").className = "";
      $("summary-text").title = `${event.final ? "final summary" : "rolling summary"} up to ${clock(event.end)}`;
      return;
    case "answer_part": return onAnswer(event, false);
    case "answer": return onAnswer(event, true);
    case "notes": return showNotes(event);
    case "error":
      showError(`${event.source}: ${event.message}`);
      if (event.fatal) setState(`Stopped: ${event.message}`);
      return;
  }
}

function onSegment(segment) {
  if (!segment.final) {
    $("partial").textContent = segment.text.trim();
    return;
  }
  $("partial").textContent = "";
  const item = element("li");
  item.append(element("span", "time", clock(segment.start)));
  if (segment.speaker) {
    const who = element("span", "speaker", `${segment.speaker}:`);
    who.style.setProperty("color", speakerColour(segment.speaker));
    item.append(who);
  }
  item.append(element("span", "text", segment.text.trim()));
  if (segment.latency != null) item.title = `shown ${segment.latency.toFixed(2)} s after its last sample was captured`;
  $("finals").append(item);
  item.scrollIntoView({ block: "nearest" });
}

function onStatus(status) {
  if (status.level_db != null) $("level").value = Math.max(-60, Math.min(0, status.level_db));
  const parts = [];
  if (status.asr_lag != null) parts.push(`ASR lag ${status.asr_lag.toFixed(1)} s`);
  if (status.llm_lag != null) parts.push(`LM lag ${status.llm_lag.toFixed(1)} s`);
  if (status.dropped_seconds) parts.push(`dropped ${status.dropped_seconds.toFixed(1)} s`);
  if (parts.length) $("lag").textContent = parts.join(" · ");
  if (status.state === "finished") setState(`Session ${page.session} finished.`);
}

function onAnswer(answer, final) {
  // Parts and the final answer share an id; a question typed here waits under its text until they come.
  let item = answer.id ? page.answers.get(answer.id) : undefined;
  if (!item && (answer.id || final) && page.asked.has(answer.question)) {
    item = page.asked.get(answer.question);
    page.asked.delete(answer.question);
  }
  if (!item) {
    item = element("li");
    item.append(element("div", "q", answer.question), element("div", "a pending"));
    $("answers").append(item);
    if (!answer.id) page.asked.set(answer.question, item);
  }
  if (answer.id) page.answers.set(answer.id, item);
  const text = item.querySelector(".a");
  text.textContent = answer.text.trim();
  if (final) {
    text.className = "a";
    const where = answer.source_at != null ? `, from what was said at ${clock(answer.source_at)}` : "";
    item.append(element("div", "time", `answered at ${clock(answer.at)}${where}`));
  }
}

// -- notes ---------------------------------------------------------------------------------------
function list(title, items, render) {
  if (!items || !items.length) return [];
  const ul = element("ul");
  for (const item of items) ul.append(element("li", "", render(item)));
  return [element("h3", "", title), ul];
}

function showNotes(notes) {
  const body = $("notes-body");
  body.replaceChildren(
    element("h3", "notes-title", notes.title),
    element("p", "", notes.summary),
    ...list("Key points", notes.key_points, (point) => point),
    ...list("Decisions", notes.decisions, (decision) => decision.text),
    ...list("Action items", notes.action_items,
      (item) => `${item.text}${item.owner ? ` (owner: ${item.owner})` : ""}${item.due ? `, due ${item.due}` : ""}`),
    ...list("Answers", notes.answers, (answer) => `${answer.question} ${answer.text}`),
  );
  showDownloads(page.session);
  $("notes").hidden = false;
}

function showDownloads(sessionId, available = FILES) {
  const links = available.map((name) => {
    const link = element("a", "", name);
    link.href = `/api/sessions/${encodeURIComponent(sessionId)}/${name}`;
    link.download = `${sessionId}-${name}`;
    link.addEventListener("click", (click) => { click.preventDefault(); download(link.href, link.download); });
    const item = element("li");
    item.append(link);
    return item;
  });
  $("downloads").replaceChildren(...links);
}

async function download(url, filename) {
  // A plain link cannot carry the Authorization header: fetch the file, then save it from a blob.
  try {
    const blob = await (await api(url)).blob();
    const link = element("a");
    link.href = URL.createObjectURL(blob);
    link.download = filename;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  } catch (error) {
    showError(`download: ${error.message}`);
  }
}

// -- the websocket ---------------------------------------------------------------------------------
function connect(sessionId, first, onOpen) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // A browser websocket cannot send headers: the token goes in the query, as the native path accepts.
  const query = new URLSearchParams({ session: sessionId });
  if (token()) query.set("token", token());
  const socket = new WebSocket(`${scheme}://${location.host}/v1/stream?${query}`);
  socket.binaryType = "arraybuffer";
  let opened = false;
  socket.onopen = () => { opened = true; socket.send(JSON.stringify(first)); if (onOpen) onOpen(socket); };
  socket.onmessage = (message) => {
    let envelope;
    try { envelope = JSON.parse(message.data); } catch { return showError("unreadable message from the server"); }
    if (envelope.seq != null) page.lastSeq = envelope.seq;
    if (envelope.resume_secret) page.secret = envelope.resume_secret;
    onEvent(envelope.event);
  };
  socket.onclose = async (close) => {
    if (page.socket !== socket) return;
    page.socket = null;
    await stopCapture();
    if (!opened) setState("Could not connect: a wrong or missing token, or the server is unreachable.");
    else if (close.code === 1000) setState(`Session ${sessionId} finished.`);
    else if (close.code === 1006 && page.mode !== "idle") setState(`Connection lost (session ${sessionId}).`);
    else setState(`Connection closed: ${close.reason || close.code}`);
    setBusy("idle");
    loadSessions();
  };
  page.socket = socket;
  return socket;
}

async function stopCapture() {
  const capture = page.capture;
  page.capture = null;
  if (capture) await capture.stop();
}

function newSessionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  const stamp = new Date().toISOString().slice(0, 19).replace(/[-:T]/g, "");
  return `web-${stamp}-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

async function record() {
  const sessionId = newSessionId();
  resetView(sessionId);
  setBusy("recording");
  setState("Opening the microphone…");
  try {
    const pending = [];
    page.capture = await startCapture($("mic").value, (frame) => {
      const socket = page.socket;
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(frame);
      else if (pending.length < 50) pending.push(frame);  // the first 5 s while the socket opens
    });
    await fillMicrophones();
    const start = { type: "start", sample_rate: page.capture.rate, encoding: "pcm_s16le", channels: 1, live: true };
    connect(sessionId, start, (socket) => {
      for (const frame of pending.splice(0)) socket.send(frame);
      setState(`Recording session ${sessionId}.`);
    });
  } catch (error) {
    await stopCapture();
    setBusy("idle");
    setState(`Cannot record: ${error.message}`);
  }
}

async function stop() {
  $("stop").disabled = true;
  await stopCapture();
  if (page.socket && page.socket.readyState === WebSocket.OPEN) page.socket.send(JSON.stringify({ type: "stop" }));
  page.mode = "finishing";
  $("question").disabled = $("ask-button").disabled = true;
  setState("Stopped; the server is writing the notes…");
}

function watch(sessionId) {
  resetView(sessionId);
  setBusy("watching");
  setState(`Watching session ${sessionId} (read-only).`);
  connect(sessionId, { type: "watch", last_seq: 0 });
}

async function openFinished(sessionId) {
  // A finished session: its event log replayed through the same view.
  resetView(sessionId);
  try {
    const text = await (await api(`/api/sessions/${encodeURIComponent(sessionId)}/events.jsonl`)).text();
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      try { onEvent(JSON.parse(line)); } catch { /* a torn last line of a killed server */ }
    }
    setState(`Session ${sessionId} (finished).`);
  } catch (error) {
    setState(`Cannot open ${sessionId}: ${error.message}`);
  }
}

// -- sessions list ---------------------------------------------------------------------------------
async function loadSessions() {
  const target = $("session-list");
  try {
    const { sessions } = await (await api("/api/sessions")).json();
    if (!sessions.length) return target.replaceChildren(element("li", "muted", "No sessions yet."));
    target.replaceChildren(...sessions.map((session) => {
      const item = element("li");
      const button = element("button", "", session.running ? "Watch" : "Open");
      button.type = "button";
      button.disabled = page.mode !== "idle";
      button.addEventListener("click", () => (session.running ? watch(session.id) : openFinished(session.id)));
      item.append(button, " ", element("span", "", session.title || session.id));
      if (session.title) item.append(" ", element("span", "muted", session.id));
      if (session.running) item.append(element("span", "badge", "running"));
      return item;
    }));
  } catch (error) {
    target.replaceChildren(element("li", "muted", error.message));
  }
}

async function fillMicrophones() {
  const select = $("mic");
  const chosen = select.value;
  const inputs = await microphones();
  select.replaceChildren(new Option("Default microphone", ""),
    ...inputs.filter((device) => device.deviceId && device.deviceId !== "default")
      .map((device, index) => new Option(device.label || `Microphone ${index + 1}`, device.deviceId)));
  select.value = chosen;
}

$("record").addEventListener("click", record);
$("stop").addEventListener("click", stop);
$("refresh").addEventListener("click", loadSessions);
$("watch-form").addEventListener("submit", (submit) => { submit.preventDefault(); watch($("watch-id").value.trim()); });
$("ask-form").addEventListener("submit", (submit) => {
  submit.preventDefault();
  const question = $("question").value.trim();
  if (!question || !page.socket || page.socket.readyState !== WebSocket.OPEN) return;
  page.socket.send(JSON.stringify({ type: "ask", question }));
  onAnswer({ id: null, question, text: "…" }, false);
  $("question").value = "";
});
fillMicrophones().catch(() => {});
loadSessions();
setBusy("idle");
document.body.dataset.ready = "1";
