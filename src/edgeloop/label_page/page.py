"""The labelling page: one HTML document with its CSS and vanilla JavaScript inlined (a canvas draws
the image and the boxes). No framework and nothing fetched from elsewhere, so it works offline; it
talks only to the JSON API beside it (see :mod:`edgeloop.label_page`)."""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>edgeloop label</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #f6f6f4; }
  header { display: flex; gap: 1.5em; align-items: baseline; padding: .6em 1em; background: #263238; color: #eee; }
  header h1 { font-size: 1.1em; margin: 0; }
  #progress { font-weight: bold; }
  main { display: flex; gap: 1em; padding: 1em; }
  aside { width: 15em; max-height: 85vh; overflow-y: auto; background: #fff; border: 1px solid #ccc; }
  aside div { padding: .25em .5em; cursor: pointer; border-bottom: 1px solid #eee; white-space: nowrap; }
  aside div.current { background: #ffe9a8; }
  aside .mark { display: inline-block; width: 1.4em; }
  section { flex: 1; }
  #info { margin-bottom: .5em; }
  canvas { background: #333; cursor: crosshair; image-rendering: pixelated; display: block; }
  #classes button, #actions button { margin: .2em .2em .2em 0; padding: .3em .7em; font: inherit; }
  #classes button.chosen { background: #1e88e5; color: #fff; border-color: #1565c0; }
  #top, #boxes { margin: .4em 0; }
  #boxes li.selected { font-weight: bold; }
  #message { min-height: 1.4em; margin: .4em 0; }
  #message.error { color: #b71c1c; }
  .help { color: #666; font-size: .9em; }
  .novalue { color: #888; padding: 2em; background: #fff; border: 1px dashed #bbb; width: 30em; }
</style>
</head>
<body>
<header><h1>edgeloop label</h1><span id="store"></span><span id="progress">labelled 0 / 0</span></header>
<main>
  <aside id="list" aria-label="samples"></aside>
  <section>
    <div id="info"></div>
    <canvas id="canvas" width="480" height="360"></canvas>
    <div id="novalue" class="novalue" hidden></div>
    <div id="top"></div>
    <div id="classes" aria-label="classes"></div>
    <ul id="boxes"></ul>
    <div id="actions">
      <button id="prev" title="Previous (Left arrow or P)">&larr; Previous</button>
      <button id="save" title="Accept or save the correction (Enter or A)">Accept / save</button>
      <button id="discard" title="Discard (X)">Discard</button>
      <button id="delete" title="Delete the selected box (Delete)">Delete box</button>
      <button id="next" title="Next (Right arrow or N)">Next &rarr;</button>
    </div>
    <div id="message" role="status"></div>
    <p class="help">Keys: <b>Enter</b>/<b>A</b> accept or save and go on, <b>X</b> discard, <b>&rarr;</b>/<b>N</b> next,
      <b>&larr;</b>/<b>P</b> previous, <b>1</b>-<b>9</b> pick a class (for the selected box, or the sample),
      <b>Delete</b> delete the selected box, <b>Esc</b> deselect.
      Mouse: drag on the image to draw a box, drag a box to move it, click a box to select it.</p>
  </section>
</main>
<script>
"use strict";
const COLORS = ["#e53935", "#43a047", "#1e88e5", "#fb8c00", "#8e24aa", "#00acc1", "#fdd835", "#6d4c41", "#d81b60"];
const MAX_W = 640, MAX_H = 480;
const st = { samples: [], classes: [], cur: -1, boxes: [], sel: -1, chosen: null, img: null, scale: 1,
             drag: null, labelled: 0, total: 0 };
const $ = (id) => document.getElementById(id);
const canvas = $("canvas"), ctx = canvas.getContext("2d");

function say(text, error) { const m = $("message"); m.textContent = text; m.className = error ? "error" : ""; }
function sample() { return st.samples[st.cur]; }
function isDet(s) { return s && s.kind === "detection"; }
function plain(boxes) { return (boxes || []).map(b => ({ label: String(b.label), box: b.box.map(Number) })); }
function same(a, b) { return JSON.stringify(plain(a)) === JSON.stringify(plain(b)); }
function color(label) { const k = st.classes.indexOf(label); return COLORS[(k < 0 ? 0 : k) % COLORS.length]; }

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const r = await fetch(path, opts);
  const doc = await r.json().catch(() => ({ error: "the server answered " + r.status }));
  if (!r.ok) throw new Error(doc.error || ("HTTP " + r.status));
  return doc;
}

async function start() {
  try {
    const doc = await api("GET", "api/samples");
    st.samples = doc.samples; st.classes = doc.classes; st.labelled = doc.labelled; st.total = doc.total;
    $("store").textContent = doc.store;
  } catch (e) { say(e.message, true); return; }
  progress(); list();
  if (!st.samples.length) { say("the capture store holds no samples"); return; }
  const first = st.samples.findIndex(s => !s.label);
  show(first < 0 ? 0 : first);
}

function progress() { $("progress").textContent = "labelled " + st.labelled + " / " + st.total; }

function list() {
  const box = $("list"); box.textContent = "";
  st.samples.forEach((s, i) => {
    const d = document.createElement("div");
    const mark = document.createElement("span"); mark.className = "mark";
    mark.textContent = !s.label ? "\u00b7" : s.label.status === "discarded" ? "\u2717" : s.label.status === "corrected" ? "\u270e" : "\u2713";
    d.append(mark, "#" + s.id + " " + s.reason);
    d.dataset.index = i; d.id = "item-" + s.id;
    if (i === st.cur) d.className = "current";
    d.onclick = () => show(i);
    box.append(d);
  });
}

function show(i) {
  if (i < 0 || i >= st.samples.length) return;
  st.cur = i; st.sel = -1; st.drag = null;
  const s = sample();
  const lab = s.label;
  st.boxes = plain(lab && lab.status !== "discarded" && lab.boxes ? lab.boxes : s.detections);
  st.chosen = (lab && lab.label) || s.predicted || (st.classes.length ? st.classes[0] : null);
  if (isDet(s) && st.boxes.length) st.chosen = st.boxes[0].label;
  const parts = ["sample " + (i + 1) + " of " + st.samples.length, "id " + s.id, "captured because: " + s.reason,
                 "model " + s.model_name + " v" + s.model_version];
  if (s.confidence !== null && s.confidence !== undefined) parts.push((isDet(s) ? "best score " : "confidence ") + s.confidence.toFixed(3));
  if (lab) parts.push("label: " + lab.status);
  $("info").textContent = parts.join(" \u00b7 ");
  const top = $("top"); top.textContent = "";
  if (!isDet(s) && s.top && s.top.length) {
    top.textContent = "model's top classes: " + s.top.map(t => t.label + " " + t.score.toFixed(3)).join(", ");
  } else if (isDet(s)) {
    top.textContent = "model's prediction: " + (s.detections && s.detections.length ?
      s.detections.map(d => d.label + " " + Number(d.score).toFixed(2)).join(", ") : "no boxes");
  }
  say("");
  list(); classes(); boxList();
  st.img = null;
  if (s.image) {
    canvas.hidden = false; $("novalue").hidden = true;
    const img = new Image();
    img.onload = () => {
      if (sample() !== s) return;
      st.img = img;
      st.scale = Math.min(MAX_W / img.naturalWidth, MAX_H / img.naturalHeight);
      canvas.width = Math.round(img.naturalWidth * st.scale);
      canvas.height = Math.round(img.naturalHeight * st.scale);
      canvas.dataset.ready = String(s.id);
      draw();
    };
    img.onerror = () => say("the image of sample " + s.id + " could not be loaded", true);
    delete canvas.dataset.ready;
    img.src = "api/samples/" + s.id + "/image";
  } else {
    canvas.hidden = true; const nv = $("novalue"); nv.hidden = false;
    nv.textContent = s.has_input ? "no picture for this input (shape " + JSON.stringify(s.shape) + ")" :
      "captured in privacy mode: no raw input was stored";
  }
}

function classes() {
  const box = $("classes"); box.textContent = "";
  const s = sample();
  const current = isDet(s) ? (st.sel >= 0 ? st.boxes[st.sel].label : st.chosen) : st.chosen;
  st.classes.forEach((c, k) => {
    const b = document.createElement("button");
    b.textContent = (k < 9 ? (k + 1) + ": " : "") + c;
    b.dataset.label = c;
    if (c === current) b.className = "chosen";
    b.onclick = () => pick(k);
    box.append(b);
  });
}

function boxList() {
  const ul = $("boxes"); ul.textContent = "";
  if (!isDet(sample())) return;
  st.boxes.forEach((b, k) => {
    const li = document.createElement("li");
    li.textContent = b.label + " [" + b.box.map(v => Math.round(v)).join(", ") + "] ";
    if (k === st.sel) li.className = "selected";
    const del = document.createElement("button"); del.textContent = "delete";
    del.onclick = () => { st.sel = k; removeBox(); };
    li.append(del); li.onclick = (e) => { if (e.target !== del) { st.sel = k; classes(); boxList(); draw(); } };
    ul.append(li);
  });
}

function draw() {
  if (!st.img) return;
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(st.img, 0, 0, canvas.width, canvas.height);
  if (!isDet(sample())) return;
  const all = st.boxes.slice();
  if (st.drag && st.drag.mode === "draw" && st.drag.now) all.push({ label: st.chosen, box: rect(st.drag.start, st.drag.now), temp: true });
  all.forEach((b, k) => {
    const [x1, y1, x2, y2] = b.box.map(v => v * st.scale);
    ctx.strokeStyle = color(b.label); ctx.lineWidth = k === st.sel ? 3 : 2;
    ctx.setLineDash(b.temp ? [4, 3] : []);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.setLineDash([]);
    ctx.font = "12px sans-serif";
    const w = ctx.measureText(b.label).width + 6;
    ctx.fillStyle = color(b.label); ctx.fillRect(x1, Math.max(0, y1 - 15), w, 15);
    ctx.fillStyle = "#fff"; ctx.fillText(b.label, x1 + 3, Math.max(11, y1 - 4));
  });
}

function imgPoint(e) {
  const r = canvas.getBoundingClientRect();
  const W = st.img.naturalWidth, H = st.img.naturalHeight;
  const x = (e.clientX - r.left) * (canvas.width / r.width) / st.scale;
  const y = (e.clientY - r.top) * (canvas.height / r.height) / st.scale;
  return [Math.min(W, Math.max(0, x)), Math.min(H, Math.max(0, y))];
}
function rect(a, b) { return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])]; }

canvas.addEventListener("mousedown", (e) => {
  if (!st.img || !isDet(sample())) return;
  e.preventDefault();
  const p = imgPoint(e);
  let hit = -1;
  for (let k = st.boxes.length - 1; k >= 0; k--) {
    const [x1, y1, x2, y2] = st.boxes[k].box;
    if (p[0] >= x1 && p[0] <= x2 && p[1] >= y1 && p[1] <= y2) { hit = k; break; }
  }
  if (hit >= 0) { st.sel = hit; st.drag = { mode: "move", start: p, orig: st.boxes[hit].box.slice() }; }
  else { st.sel = -1; st.drag = { mode: "draw", start: p, now: null }; }
  classes(); boxList(); draw();
});
window.addEventListener("mousemove", (e) => {
  if (!st.drag || !st.img) return;
  const p = imgPoint(e);
  if (st.drag.mode === "move") {
    const W = st.img.naturalWidth, H = st.img.naturalHeight, o = st.drag.orig;
    const dx = Math.min(W - o[2], Math.max(-o[0], p[0] - st.drag.start[0]));
    const dy = Math.min(H - o[3], Math.max(-o[1], p[1] - st.drag.start[1]));
    st.boxes[st.sel].box = [o[0] + dx, o[1] + dy, o[2] + dx, o[3] + dy];
  } else { st.drag.now = p; }
  draw();
});
window.addEventListener("mouseup", (e) => {
  if (!st.drag) return;
  const d = st.drag; st.drag = null;
  if (d.mode === "draw" && d.now) {
    const b = rect(d.start, d.now);
    if (b[2] - b[0] >= 2 && b[3] - b[1] >= 2) {
      st.boxes.push({ label: st.chosen || st.classes[0], box: b });
      st.sel = st.boxes.length - 1;
    }
  }
  classes(); boxList(); draw();
});

function pick(k) {
  if (k < 0 || k >= st.classes.length) return;
  st.chosen = st.classes[k];
  if (isDet(sample()) && st.sel >= 0) st.boxes[st.sel].label = st.chosen;
  classes(); boxList(); draw();
}

function removeBox() {
  if (st.sel < 0 || st.sel >= st.boxes.length) return;
  st.boxes.splice(st.sel, 1); st.sel = -1;
  classes(); boxList(); draw();
}

function round(boxes) { return boxes.map(b => ({ label: b.label, box: b.box.map(v => Math.round(v * 1000) / 1000) })); }

async function save(discard) {
  const s = sample(); if (!s) return;
  let body;
  if (discard) body = { status: "discarded" };
  else if (isDet(s)) body = { status: same(st.boxes, s.detections) ? "accepted" : "corrected", boxes: round(st.boxes) };
  else {
    if (!st.chosen) { say("pick a class first", true); return; }
    body = { status: st.chosen === s.predicted ? "accepted" : "corrected", label: st.chosen };
  }
  try {
    const doc = await api("POST", "api/samples/" + s.id + "/label", body);
    s.label = doc.label; st.labelled = doc.labelled; st.total = doc.total;
    progress();
    const text = "sample " + s.id + ": " + doc.label.status;
    if (st.cur < st.samples.length - 1) show(st.cur + 1); else { list(); }
    say(text + (st.labelled >= st.total ? " \u00b7 every sample is labelled" : ""));
  } catch (e) { say(e.message, true); }
}

$("prev").onclick = () => show(st.cur - 1);
$("next").onclick = () => show(st.cur + 1);
$("save").onclick = () => save(false);
$("discard").onclick = () => save(true);
$("delete").onclick = removeBox;
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  if (k === "ArrowRight" || k === "n") show(st.cur + 1);
  else if (k === "ArrowLeft" || k === "p") show(st.cur - 1);
  else if (k === "Enter" || k === "a") save(false);
  else if (k === "x") save(true);
  else if (k === "Delete" || k === "Backspace") removeBox();
  else if (k === "Escape") { st.sel = -1; classes(); boxList(); draw(); }
  else if (/^[1-9]$/.test(k)) pick(Number(k) - 1);
  else return;
  e.preventDefault();
});
start();
</script>
</body>
</html>
"""
