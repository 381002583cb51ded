// streamcad view: one panel per stream, fed by the server's WebSocket (/ws).
// Messages are the wire messages as JSON (docs/PROTOCOL.md): score, status, preview (its JPEG
// and its saliency cells base64). Overlays are drawn from the preview's data, never burnt in.
"use strict";

const panels = new Map();  // stream -> panel state
let texts = { state: {}, state_words: {}, flag: {} };
let traceS = 30;
const STAGES = ["grab", "preprocess", "queue", "infer", "smooth", "publish", "total"];
const toggles = {
  roi: document.getElementById("show-roi"),
  saliency: document.getElementById("show-saliency"),
  lesion: document.getElementById("show-lesion"),
};

function b64bytes(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function heat(v) {  // 0..255 -> [r, g, b, a]: transparent blue .. opaque red-yellow
  const t = v / 255;
  return [Math.round(255 * Math.min(1, 2 * t)), Math.round(255 * Math.max(0, 2 * t - 1)),
          Math.round(255 * Math.max(0, 1 - 2 * t)), Math.round(200 * t)];
}

function panelFor(stream) {
  let p = panels.get(stream);
  if (p) return p;
  document.getElementById("waiting")?.remove();
  const node = document.getElementById("panel-template").content.firstElementChild.cloneNode(true);
  node.dataset.stream = stream;
  node.querySelector(".stream-name").textContent = stream;
  document.getElementById("streams").appendChild(node);
  const q = (sel) => node.querySelector(sel);
  p = { node, q, img: null, preview: null, score: null, status: null, trace: [], lat: {}, lastSeen: 0,
        salCanvas: document.createElement("canvas") };
  for (const s of STAGES) p.lat[s] = [];
  panels.set(stream, p);
  return p;
}

function fmt(v, digits = 3) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }

function pct(arr, q) {
  if (!arr.length) return null;
  const a = [...arr].sort((x, y) => x - y);
  return a[Math.min(a.length - 1, Math.floor(q / 100 * a.length))];
}

function onScore(p, m) {
  p.score = m;
  p.trace.push([m.t_capture_ns, m.malignancy, m.state]);
  const cut = m.t_capture_ns - traceS * 1e9;
  while (p.trace.length && p.trace[0][0] < cut) p.trace.shift();
  for (const s of STAGES) {
    const v = m.latency_ms[s];
    if (v !== undefined) { p.lat[s].push(v); if (p.lat[s].length > 300) p.lat[s].shift(); }
  }
  const box = p.q(".state-box");
  box.className = "state-box state-" + m.state;
  box.dataset.state = m.state;
  p.q(".state-words").textContent = texts.state_words[m.state] || m.state;
  p.q(".state-text").textContent = texts.state[m.state] || "";
  const flags = p.q(".flags");
  flags.replaceChildren(...m.flags.map((f) => {
    const li = document.createElement("li");
    li.dataset.flag = f;
    li.textContent = texts.flag[f] || f;
    return li;
  }));
  const mal = p.q(".malignancy");
  mal.textContent = fmt(m.malignancy);
  mal.dataset.frame = m.frame_index;
  p.q(".probs").textContent = m.probs
    ? `this frame: normal ${fmt(m.probs.normal, 2)} · benign ${fmt(m.probs.benign, 2)} · malignant ${fmt(m.probs.malignant, 2)}`
    : "this frame: not scored";
  const rows = STAGES.filter((s) => m.latency_ms[s] !== undefined).map((s) => {
    const tr = document.createElement("tr");
    for (const t of [s, fmt(m.latency_ms[s], 2), fmt(pct(p.lat[s], 50), 2), fmt(pct(p.lat[s], 99), 2)]) {
      const td = document.createElement("td"); td.textContent = t; tr.appendChild(td);
    }
    return tr;
  });
  p.q(".latency tbody").replaceChildren(...rows);
  drawTrace(p);
  drawMeta(p);
}

function onStatus(p, m) {
  p.status = m;
  const badge = p.q(".source-state");
  const state = m.source ? m.source.state : "?";
  badge.textContent = "source " + state;
  badge.className = "badge source-state" + (state === "live" ? " live" : "");
  drawTrace(p);
  drawMeta(p);
}

function drawMeta(p) {
  const s = p.status, m = p.score;
  const parts = [];
  if (s) parts.push(`fps in ${fmt(s.fps_in, 1)} · out ${fmt(s.fps_out, 1)}`,
                    `model ${s.model || "?"} (${s.backend || "?"})`,
                    `frames ${s.counters.frames_in}/${s.counters.frames_out}, flagged ${s.counters.flagged}, dropped ${s.counters.dropped_publish}`);
  if (m) parts.push(`frame ${m.frame_index} · seq ${m.seq}`);
  if (p.preview) parts.push(`preview ${p.preview.width}x${p.preview.height}, skipped ${p.preview.skipped}`);
  p.q(".meta").textContent = parts.join(" | ");
}

function drawTrace(p) {
  const c = p.q(".trace"), ctx = c.getContext("2d");
  const W = c.width, H = c.height;
  ctx.clearRect(0, 0, W, H);
  ctx.strokeStyle = "#333";
  for (const v of [0, 0.25, 0.5, 0.75, 1]) { ctx.beginPath(); ctx.moveTo(0, H - v * H); ctx.lineTo(W, H - v * H); ctx.stroke(); }
  const s = p.status;
  if (s && s.on_threshold !== null && s.on_threshold !== undefined) {
    ctx.strokeStyle = "#c44"; ctx.setLineDash([4, 3]);
    ctx.beginPath(); ctx.moveTo(0, H - s.on_threshold * H); ctx.lineTo(W, H - s.on_threshold * H); ctx.stroke();
    ctx.setLineDash([]);
  }
  if (!p.trace.length) return;
  const tEnd = p.trace[p.trace.length - 1][0], tStart = tEnd - traceS * 1e9;
  ctx.strokeStyle = "#6cf"; ctx.lineWidth = 2;
  let pen = false;
  ctx.beginPath();
  for (const [t, v] of p.trace) {
    const x = (t - tStart) / (traceS * 1e9) * W;
    if (v === null) { pen = false; continue; }  // no lesion track: a gap in the line
    const y = H - v * H;
    if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    pen = true;
  }
  ctx.stroke(); ctx.lineWidth = 1;
  p.q(".trace-caption").textContent = `smoothed p(malignant), last ${traceS} s` +
    (s && s.on_threshold != null ? `; dashed: 'suspicious' threshold ${fmt(s.on_threshold)}` : "");
}

function onPreview(p, m) {
  const img = new Image();
  img.onload = () => { p.img = img; p.preview = m; drawImage(p); drawMeta(p); };
  img.src = "data:image/jpeg;base64," + m.image;
}

function drawImage(p) {
  const m = p.preview, img = p.img;
  if (!m || !img) return;
  p.q(".no-preview").hidden = true;
  const c = p.q(".image");
  if (c.width !== m.width || c.height !== m.height) { c.width = m.width; c.height = m.height; }
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const k = m.width / m.frame_width;  // frame pixels -> image pixels
  const r = m.roi;
  if (toggles.saliency.checked && m.saliency && r) {
    const sm = m.saliency, data = b64bytes(sm.data), off = p.salCanvas;
    off.width = sm.width; off.height = sm.height;
    const octx = off.getContext("2d"), id = octx.createImageData(sm.width, sm.height);
    for (let i = 0; i < data.length; i++) id.data.set(heat(data[i]), 4 * i);
    octx.putImageData(id, 0, 0);
    ctx.save();
    ctx.beginPath(); ctx.rect(r[0] * k, r[1] * k, r[2] * k, r[3] * k); ctx.clip();
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(off, sm.box[0] * k, sm.box[1] * k, sm.box[2] * k, sm.box[3] * k);
    ctx.restore();
  }
  if (toggles.roi.checked && r) {
    ctx.strokeStyle = "#3cf"; ctx.lineWidth = 2;
    ctx.strokeRect(r[0] * k, r[1] * k, r[2] * k, r[3] * k);
  }
  if (toggles.lesion.checked && m.lesion) {
    const b = m.lesion.box;
    ctx.strokeStyle = "#fc3"; ctx.lineWidth = 2;
    ctx.strokeRect(b[0] * k, b[1] * k, b[2] * k, b[3] * k);
    ctx.fillStyle = "#fc3"; ctx.font = "12px sans-serif";
    ctx.fillText(`lesion ${Math.round(100 * m.lesion.confidence)}%`, b[0] * k, Math.max(12, b[1] * k - 4));
  }
}

function handle(m) {
  if (m.type === "hello") {
    texts = m.texts; traceS = m.trace_s;
    for (const [name, s] of Object.entries(m.streams)) {
      const p = panelFor(name);
      if (s.status) onStatus(p, s.status);
      p.trace = s.trace.slice(0, -1);  // the last one comes back with the score below
      if (s.score) onScore(p, s.score);
      if (s.preview) onPreview(p, s.preview);
      p.lastSeen = Date.now();
    }
    return;
  }
  if (m.type === "viewer") { document.getElementById("conn").textContent = `live (this page fell behind: ${m.dropped} messages skipped)`; return; }
  const p = panelFor(m.stream);
  p.lastSeen = Date.now();
  if (m.type === "score") onScore(p, m);
  else if (m.type === "status") onStatus(p, m);
  else if (m.type === "preview") onPreview(p, m);
}

function connect() {
  const conn = document.getElementById("conn");
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.onopen = () => { conn.textContent = "live"; conn.className = "conn ok"; };
  ws.onmessage = (ev) => handle(JSON.parse(ev.data));
  ws.onclose = () => { conn.textContent = "viewer server gone: reconnecting…"; conn.className = "conn bad"; setTimeout(connect, 1000); };
}

for (const t of Object.values(toggles)) t.addEventListener("change", () => panels.forEach(drawImage));
setInterval(() => {  // a stream that went quiet for 3 s (3 heartbeats) is marked
  const now = Date.now();
  panels.forEach((p) => { p.q(".stale").hidden = now - p.lastSeen < 3000; });
}, 500);
connect();
