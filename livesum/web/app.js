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
  const focused = document.activeElement;
  const live = mode === "recording";
  $("record").disabled = mode !== "idle";
  $("stop").disabled = !live;
  $("question").disabled = !live;
  $("ask-button").disabled = !live;
  $("mic").disabled = mode !== "idle";
  for (const button of document.querySelectorAll("#watch-form button, #session-list button")) button.disabled = mode !== "idle";
  // A keyboard user whose button was just disabled (Record once recording, Stop once stopped) keeps a place.
  if (focused && focused.disabled) (live ? $("stop") : $("record")).focus();
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
  page.lag = null;
  page.latencies = [];
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
  const list = $("finals");
  const following = list.scrollHeight - list.scrollTop - list.clientHeight < 40;  // the reader is at the newest line
  list.append(item);
  const captured = page.mode === "recording" || page.mode === "finishing" ? captureTime(segment.end) : null;
  if (captured != null) {
    // The page's own clock: from the capture of the segment's last sample to this line on the page.
    const latency = (performance.now() - captured) / 1000;
    item.dataset.latency = latency.toFixed(3);
    page.latencies.push(latency);
    item.title = `on the page ${latency.toFixed(2)} s after its last word was captured` +
      (segment.latency != null ? ` (the server emitted it ${segment.latency.toFixed(2)} s after receiving that audio)` : "");
  } else if (segment.latency != null) {
    item.title = `emitted ${segment.latency.toFixed(2)} s after its last sample reached the server`;
  }
  // Only the list scrolls to the new line (when its reader was at the end): the document never moves
  // by itself, so the question box or a button with the keyboard's focus stays where the user is.
  if (following) list.scrollTop = list.scrollHeight;
}

function captureTime(streamSeconds) {
  // performance.now() when the sample at `streamSeconds` was captured: stream frame i holds seconds
  // [i/10, (i+1)/10) and reached the page when its last sample was captured.
  const audio = page.audio;
  const index = Math.max(0, Math.ceil(streamSeconds / FRAME_SECONDS - 1e-6) - 1);
  const at = audio.times[index];
  return index < audio.sent && at !== undefined ? at - ((index + 1) * FRAME_SECONDS - streamSeconds) * 1000 : null;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

function onStatus(status) {
  if (status.level_db != null) $("level").value = Math.max(-60, Math.min(0, status.level_db));
  const parts = [];
  if (status.asr_lag != null) parts.push(`ASR lag ${status.asr_lag.toFixed(1)} s`);
  if (status.llm_lag != null) parts.push(`LM lag ${status.llm_lag.toFixed(1)} s`);
  if (status.dropped_seconds) parts.push(`dropped ${status.dropped_seconds.toFixed(1)} s`);
  if (parts.length) page.lag = parts;  // a status without lag figures (started, finished) keeps the last ones
  const shown = [...(page.lag || [])];
  if (page.latencies.length) shown.push(`captions ${median(page.latencies).toFixed(1)} s after speech (median)`);
  if (shown.length) $("lag").textContent = shown.join(" · ");
  if (status.state === "finished") {
    setState(`Session ${page.session} finished.`);
    if (page.audio.sent && (page.mode === "recording" || page.mode === "finishing")) {
      // End to end: the server's stream holds what the page sent, or says how much a broken connection lost.
      const sent = page.audio.sent * FRAME_SECONDS, missing = sent - status.position;
      page.received = missing < 0.05 ? `the server got all ${sent.toFixed(1)} s of audio the page sent`
        : `the server got ${status.position.toFixed(1)} s of the ${sent.toFixed(1)} s the page sent: ` +
          `${missing.toFixed(1)} s were lost with a broken connection`;
    }
  }
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

// -- the websocket, and coming back after a drop ----------------------------------------------------
// Every captured 100 ms frame gets a place in the stream in order: sent at once while the socket is up,
// kept in a bounded backlog while it is down (or opening), and sent after the `resume` (the server
// replays the events after the last seq this page saw, and its stream clock goes on from the audio it
// has). Control messages (ask, stop) wait in the same backlog, so they follow the audio said before them.
const FRAME_SECONDS = 0.1;     // worklet.js posts 100 ms frames
const BACKLOG_FRAMES = 200;    // 20 s kept while disconnected (the server queues 30 s by default); past it the oldest go
const RESEND_ITEMS = 120;      // the last messages sent, for those the browser had not transmitted when the socket broke
const STALL_BYTES = 10 * 32000;  // 10 s of audio the browser could not hand to the network: a dead connection
const RETRY_SECONDS = [0.5, 1, 2, 4, 5];  // before reconnect attempts 1, 2, 3, 4, then every 5 s
const GIVE_UP_SECONDS = 120;   // the server keeps a dropped session for resume_grace_seconds (30 s by default)
const FINAL_CLOSES = new Map([
  [4400, "the server refused a message"], [4401, "wrong resume secret"], [4409, "another connection took the session over"],
]);

function freshAudio() {
  // times[i]: performance.now() when stream frame i (stream seconds i/10 .. (i+1)/10) reached the page
  return { captured: 0, sent: 0, dropped: 0, backlog: [], backlogFrames: 0, recent: [], times: [] };
}
page.audio = freshAudio();
page.latencies = [];

const linked = () => page.socket !== null && page.linked && page.socket.readyState === WebSocket.OPEN;
const seconds = (frames) => (frames * FRAME_SECONDS).toFixed(1);

function counters() {
  // What the page captured, sent and dropped, as data attributes for tests and benchmarks.
  const link = $("link"), audio = page.audio;
  link.dataset.capturedSeconds = seconds(audio.captured);
  link.dataset.sentSeconds = seconds(audio.sent);
  link.dataset.droppedSeconds = seconds(audio.dropped);
}
function showLink(text) {
  $("link").textContent = text;
  counters();
}

function transmit(item) {
  const audio = page.audio;
  if (item.data) {
    page.socket.send(item.data);
    audio.times[audio.sent] = item.at;
    audio.sent += 1;
  } else {
    page.socket.send(item.text);
  }
  audio.recent.push(item);
  if (audio.recent.length > RESEND_ITEMS) audio.recent.shift();
}

function keep(item, front = false) {
  const audio = page.audio;
  if (front) audio.backlog.unshift(item); else audio.backlog.push(item);
  if (!item.data) return;
  audio.backlogFrames += 1;
  while (audio.backlogFrames > BACKLOG_FRAMES) {  // the oldest audio goes; control messages stay
    audio.backlog.splice(audio.backlog.findIndex((kept) => kept.data), 1);
    audio.backlogFrames -= 1;
    audio.dropped += 1;
  }
}

function flushBacklog() {
  const audio = page.audio;
  while (audio.backlog.length && linked()) {
    const item = audio.backlog.shift();
    if (item.data) audio.backlogFrames -= 1;
    transmit(item);
  }
}

function onFrame(data) {
  page.audio.captured += 1;
  const item = { data, at: performance.now() };
  if (!page.audio.backlog.length && linked()) transmit(item); else keep(item);
  if (page.audio.captured % 10 === 0) counters();
}

function sendControl(message) {
  const item = { text: JSON.stringify(message) };
  if (!page.audio.backlog.length && linked()) transmit(item); else keep(item);
}

function takeBackUnsent(socket) {
  // bufferedAmount: bytes given to send() that the browser never handed to the network (it does not
  // reset when the socket closes). The messages they belong to go back to the front of the backlog.
  const audio = page.audio;
  let unsent = socket.bufferedAmount;
  const back = [];
  while (unsent > 0 && audio.recent.length) {
    const item = audio.recent.pop();
    unsent -= item.data ? item.data.byteLength : new TextEncoder().encode(item.text).length;
    back.unshift(item);
  }
  for (const item of back.reverse()) {
    if (item.data) audio.sent -= 1;  // its place in the stream is taken again when it is sent
    keep(item, true);
  }
  audio.recent = [];
}

function connect(sessionId, first) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // A browser websocket cannot send headers: the token goes in the query, as the native path accepts.
  const query = new URLSearchParams({ session: sessionId });
  if (token()) query.set("token", token());
  const socket = new WebSocket(`${scheme}://${location.host}/v1/stream?${query}`);
  socket.binaryType = "arraybuffer";
  page.socket = socket;
  page.linked = false;
  socket.onopen = () => {
    socket.send(JSON.stringify(first));
    page.linked = true;
    if (page.outage) {
      Object.assign(page.outage, { openedAt: performance.now(), kept: page.audio.backlogFrames, sentAtOpen: page.audio.sent });
      showLink(`reconnected to session ${sessionId}; resuming…`);
    }
    flushBacklog();
  };
  socket.onmessage = (message) => {
    if (page.socket !== socket) return;
    let envelope;
    try { envelope = JSON.parse(message.data); } catch { return showError("unreadable message from the server"); }
    if (envelope.resume_secret) page.secret = envelope.resume_secret;
    if (envelope.seq == null && envelope.event?.type === "error") {
      // A connection-level refusal, right before the close: the close decides what it means (4404 on a
      // resume is the session having ended meanwhile, not an error to show).
      page.refusal = envelope.event.message;
      return;
    }
    // Established: a start answered with its resume secret, a watch with the session's first event.
    if (!page.established && (envelope.resume_secret || (page.mode === "watching" && envelope.seq != null))) established(sessionId);
    if (page.outage) resumed();
    if (envelope.seq != null) {
      if (envelope.seq <= page.lastSeq) return;  // already shown (a replay overlapping what came before the drop)
      if (envelope.seq > page.lastSeq + 1) showError(`events ${page.lastSeq + 1}-${envelope.seq - 1} never arrived`);
      page.lastSeq = envelope.seq;
    }
    onEvent(envelope.event);
  };
  socket.onclose = (close) => lost(socket, close.code, close.reason);
  return socket;
}

function established(sessionId) {
  page.established = true;
  if (page.mode === "recording") setState(`Recording session ${sessionId}.`);
  showLink("connected");
}

function lost(socket, code, reason) {
  if (page.socket !== socket) return;
  page.socket = null;
  page.linked = false;
  socket.onopen = socket.onmessage = socket.onclose = null;
  if (page.mode === "recording" || page.mode === "finishing") takeBackUnsent(socket);
  const sessionId = page.session;
  if (code === 1000) return ended(`Session ${sessionId} finished.`);
  if (!page.established) {
    return ended(page.refusal ? `Refused: ${page.refusal}` : "Could not connect: a wrong or missing token, or the server is unreachable.");
  }
  if (FINAL_CLOSES.has(code)) return ended(`Connection closed: ${FINAL_CLOSES.get(code)} (${reason || code}).`);
  if (code === 4404) return catchUp(sessionId);  // the session finished meanwhile (or was not resumed in time)
  reconnect(sessionId);
}

function reconnect(sessionId) {
  if (!page.outage) {
    page.outage = { since: performance.now(), attempts: 0, droppedBefore: page.audio.dropped, timer: null };
    setState(`Connection lost; reconnecting to session ${sessionId}…`);
  }
  const outage = page.outage;
  if ((performance.now() - outage.since) / 1000 > GIVE_UP_SECONDS) {
    return ended(`Could not reconnect to session ${sessionId} within ${GIVE_UP_SECONDS} s; ` +
      `${seconds(page.audio.backlogFrames)} s of audio recorded since were not sent (the server keeps what it got).`);
  }
  const delay = RETRY_SECONDS[Math.min(outage.attempts, RETRY_SECONDS.length - 1)];
  outage.attempts += 1;
  showLink(`reconnecting… (attempt ${outage.attempts} in ${delay} s; ${seconds(page.audio.backlogFrames)} s of audio kept)`);
  outage.timer = setTimeout(() => {
    outage.timer = null;
    if (page.outage !== outage || page.session !== sessionId) return;
    const first = page.mode === "watching"
      ? { type: "watch", last_seq: page.lastSeq }
      : { type: "resume", last_seq: page.lastSeq, secret: page.secret };
    const socket = connect(sessionId, first);
    // A socket that never opens (server or network still away) closes with 1006: the next attempt follows.
    socket.onclose = (close) => { if (page.socket === socket && !page.linked) { page.socket = null; reconnect(sessionId); } else lost(socket, close.code, close.reason); };
  }, delay * 1000);
}

function resumed() {
  const outage = page.outage;
  page.outage = null;
  const away = (((outage.openedAt ?? performance.now()) - outage.since) / 1000).toFixed(1);
  const dropped = page.audio.dropped - outage.droppedBefore;
  const kept = `${seconds(outage.kept ?? 0)} s of audio kept meanwhile and sent`;
  const what = page.mode === "watching" ? "" : dropped
    ? `; ${kept}, ${seconds(dropped)} s more were dropped (the page keeps ${seconds(BACKLOG_FRAMES)} s while disconnected)`
    : `, nothing lost (${kept})`;
  showLink(`resumed after ${away} s${what}`);
  if (page.mode === "recording") setState(`Recording session ${page.session}.`);
  else if (page.mode === "watching") setState(`Watching session ${page.session} (read-only).`);
  else setState("Stopped; the server is writing the notes…");
}

async function catchUp(sessionId) {
  // The session is no longer running: what it said after the last event shown is in its event log
  // (line n = event n). Audio sent behind a resume that the server refused was never taken: however
  // much of it the browser had already handed to the network, it counts as not sent.
  const refused = page.outage?.sentAtOpen == null ? 0 : page.audio.sent - page.outage.sentAtOpen;
  page.audio.sent -= refused;
  const unsent = page.audio.backlogFrames + refused;
  try {
    const text = await (await api(`/api/sessions/${encodeURIComponent(sessionId)}/events.jsonl`)).text();
    text.split("\n").forEach((line, index) => {
      if (index + 1 <= page.lastSeq || !line.trim()) return;
      try { onEvent(JSON.parse(line)); page.lastSeq = index + 1; } catch { /* a torn last line of a killed server */ }
    });
  } catch (error) {
    showError(`could not load the end of session ${sessionId}: ${error.message}`);
  }
  const lostAudio = unsent ? `; ${seconds(unsent)} s of audio recorded since the drop could not be sent` : "";
  ended(`Session ${sessionId} ended while the page was disconnected; its events were loaded from the server${lostAudio}.`);
}

async function ended(message) {
  if (page.outage?.timer) clearTimeout(page.outage.timer);
  page.outage = null;
  page.socket = null;
  await stopCapture();
  setState(message);
  showLink(page.received || "");  // with the counters: everything captured, sent and dropped
  setBusy("idle");
  loadSessions();
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

function beginSession(sessionId) {
  resetView(sessionId);
  page.audio = freshAudio();
  page.secret = null;
  page.refusal = null;
  page.received = null;
  page.established = false;
  page.outage = null;
  showLink("connecting…");
}

async function record() {
  const sessionId = newSessionId();
  beginSession(sessionId);
  setBusy("recording");
  setState("Opening the microphone…");
  try {
    page.capture = await startCapture($("mic").value, onFrame);  // frames wait in the backlog while the socket opens
    await fillMicrophones();
    connect(sessionId, { type: "start", sample_rate: page.capture.rate, encoding: "pcm_s16le", channels: 1, live: true });
  } catch (error) {
    await stopCapture();
    setBusy("idle");
    setState(`Cannot record: ${error.message}`);
  }
}

async function stop() {
  if (document.activeElement === $("stop")) $("state").focus();  // the keyboard's place, where the progress is said
  $("stop").disabled = true;
  await stopCapture();
  sendControl({ type: "stop" });  // after the audio still waiting, if the socket is down
  page.mode = "finishing";
  $("question").disabled = $("ask-button").disabled = true;
  counters();
  setState(page.outage ? "Stopped; the stop is sent once the page has reconnected…" : "Stopped; the server is writing the notes…");
}

// A connection the browser does not see break (a network that went away without a reset) shows up as
// audio the browser cannot transmit: past STALL_BYTES it is closed and the session resumed.
setInterval(() => {
  const socket = page.socket;
  if (socket && page.linked && socket.readyState === WebSocket.OPEN && socket.bufferedAmount > STALL_BYTES) {
    lost(socket, 1006, "stalled");
    socket.close(4000, "stalled");
  }
}, 1000);

function watch(sessionId) {
  beginSession(sessionId);
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
  if (!question || page.mode !== "recording") return;
  sendControl({ type: "ask", question });  // waits with the audio while the page reconnects
  onAnswer({ id: null, question, text: "…" }, false);
  $("question").value = "";
});
fillMicrophones().catch(() => {});
loadSessions();
setBusy("idle");
document.body.dataset.ready = "1";
