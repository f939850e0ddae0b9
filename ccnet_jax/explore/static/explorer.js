// The explorer's page: plain JavaScript over the server's /model, /predict and /attention.
// The image's bytes stay in the page and go with each request; the server keeps the image's
// analysis, so a click asks only for the maps of one pixel. Everything drawn comes from the
// server's answers, kept in window.explorer for whoever wants to read them back.
"use strict";

const state = {
  meta: null,
  blob: null,       // The current image file.
  name: "",
  width: 0,
  height: 0,
  labels: null,     // Uint8Array (height * width) of class ids from /predict.
  attention: null,  // The last /attention answer shown.
  busy: false,
  imageToken: 0,
  clickToken: 0,
};
window.explorer = state;

const $ = (id) => document.getElementById(id);
const STACKS = ["stack-prediction", "stack-loop1", "stack-effective"];
const MARKER = "rgb(0, 255, 255)";  // As the command-line figure's circle.

function say(text, isError = false) {
  const message = $("message");
  message.textContent = text;
  message.classList.toggle("error", isError);
}

async function answerOf(response) {
  if (response.ok) return response;
  let text = `${response.status} ${response.statusText}`;
  try {
    text = (await response.json()).error || text;
  } catch (_) { /* Not JSON: keep the status line. */ }
  throw new Error(text);
}

function color(id) {
  const [r, g, b] = state.meta.classes[id].color;
  return `rgb(${r}, ${g}, ${b})`;
}

function swatch(id) {
  const span = document.createElement("span");
  span.className = "swatch";
  span.style.background = color(id);
  return span;
}

function modeQuery() {
  return `mode=${encodeURIComponent($("mode").value)}`;
}

// ---- The model, the demo scenes, the folder ----

async function start() {
  state.meta = await (await answerOf(await fetch("/model"))).json();
  const meta = state.meta;
  const loops = meta.recurrence;
  $("model-line").textContent =
    `${meta.source} · ${meta.name} · ${meta.num_classes} ${meta.dataset} classes · ` +
    (loops ? `criss-cross attention, R=${loops}` : "no criss-cross attention");
  $("effective-title").textContent = loops > 1 ? `Loops 1–${loops}` : "All loops";
  const superscript = (text) => [...text].map((c) => "⁰¹²³⁴⁵⁶⁷⁸⁹⁻."["0123456789-.".indexOf(c)] || c);
  $("scale-low").textContent = `10${superscript(`-${meta.heat_decades}`).join("")} of it`;
  for (const mode of meta.modes) {
    const option = new Option(
      mode === "sliding" ? `sliding ${meta.crop_size.join("x")}` : mode, mode);
    $("mode").add(option);
  }
  $("mode").value = meta.default_mode;
  for (let index = 0; index < meta.demo_scenes; index++) {
    const button = document.createElement("button");
    button.type = "button";
    button.title = `demo scene ${index}`;
    button.dataset.index = index;
    const thumb = document.createElement("img");
    thumb.src = `/demo/${index}`;
    thumb.alt = `demo scene ${index}`;
    button.append(thumb);
    button.addEventListener("click", () => loadDemo(index));
    $("demos").append(button);
  }
  if (meta.images.length) {
    $("folder-group").hidden = false;
    for (const name of meta.images) $("folder").add(new Option(name, name));
  }
  drawLegend();
}

async function loadDemo(index) {
  document.querySelectorAll("#demos button").forEach(
    (b) => b.classList.toggle("chosen", Number(b.dataset.index) === index));
  const blob = await (await answerOf(await fetch(`/demo/${index}`))).blob();
  await loadImage(blob, `demo scene ${index}`);
}

async function loadFolderImage(name) {
  const path = name.split("/").map(encodeURIComponent).join("/");
  const blob = await (await answerOf(await fetch(`/images/${path}`))).blob();
  await loadImage(blob, name);
}

// ---- An image: show it, predict it ----

function displayScale(width, height) {
  const scale = Math.min(4, 520 / height, 560 / width);
  return scale >= 1 ? Math.floor(scale) : scale;
}

async function loadImage(blob, name) {
  const token = ++state.imageToken;
  state.clickToken++;
  state.blob = blob;
  state.name = name;
  state.labels = null;
  state.attention = null;
  clearPixel();
  const url = URL.createObjectURL(blob);
  for (const id of STACKS) {
    $(id).style.width = $(id).style.height = "";
    $(id).querySelector(".base").src = url;
  }
  await predict(token);
}

function sizeStacks() {
  // The server's decoding sets the size (the page shows the file upright, as the server reads
  // it: with its EXIF orientation applied, see the CSS).
  const scale = displayScale(state.width, state.height);
  for (const id of STACKS) {
    $(id).style.width = `${Math.round(state.width * scale)}px`;
    $(id).style.height = `${Math.round(state.height * scale)}px`;
  }
}

async function predict(token) {
  say(`${state.name}: predicting…`);
  try {
    const response = await answerOf(await fetch(`/predict?format=png&${modeQuery()}`,
                                                { method: "POST", body: state.blob }));
    const bitmap = await createImageBitmap(await response.blob(), {
      colorSpaceConversion: "none", premultiplyAlpha: "none" });
    if (token !== state.imageToken) return;  // Another image was chosen meanwhile.
    state.width = bitmap.width;
    state.height = bitmap.height;
    sizeStacks();
    const canvas = document.createElement("canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    const grey = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
    state.labels = new Uint8Array(bitmap.width * bitmap.height);
    for (let i = 0; i < state.labels.length; i++) state.labels[i] = grey[4 * i];
    drawPrediction();
    drawLegend();
    say(`${state.name} (${state.height}x${state.width}): click a pixel to see where it looks.`);
  } catch (error) {
    if (token === state.imageToken) say(`${state.name}: ${error.message}`, true);
  }
}

function drawPrediction() {
  const canvas = $("prediction");
  canvas.width = state.width;
  canvas.height = state.height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(state.width, state.height);
  const palette = state.meta.classes.map((c) => c.color);
  for (let i = 0; i < state.labels.length; i++) {
    const rgb = palette[state.labels[i]] || [0, 0, 0];
    pixels.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * i);
  }
  context.putImageData(pixels, 0, 0);
  setOpacity();
}

function drawLegend() {
  const legend = $("legend");
  legend.replaceChildren();
  const counts = new Array(state.meta.num_classes).fill(0);
  if (state.labels) for (const id of state.labels) counts[id] += 1;
  const total = state.labels ? state.labels.length : 0;
  state.meta.classes.forEach((item) => {
    const li = document.createElement("li");
    li.append(swatch(item.id), ` ${item.name} `);
    if (total) {
      const share = document.createElement("span");
      share.className = "share";
      share.textContent = `${(100 * counts[item.id] / total).toFixed(1)}%`;
      li.append(share);
    }
    legend.append(li);
  });
}

// ---- A pixel: its attention and probabilities ----

function pixelAt(event, stack) {
  const box = stack.getBoundingClientRect();
  const x = Math.floor((event.clientX - box.left) * state.width / box.width);
  const y = Math.floor((event.clientY - box.top) * state.height / box.height);
  return [Math.min(Math.max(y, 0), state.height - 1), Math.min(Math.max(x, 0), state.width - 1)];
}

async function showPixel(y, x) {
  if (!state.blob) return;
  const token = ++state.clickToken;
  const started = performance.now();
  state.busy = true;
  try {
    const response = await answerOf(await fetch(`/attention?y=${y}&x=${x}&${modeQuery()}`,
                                                { method: "POST", body: state.blob }));
    const answer = await response.json();
    if (token !== state.clickToken) return;  // A later click wins.
    const loop1 = $("heat-loop1");
    const effective = $("heat-effective");
    loop1.src = answer.heat.loop1;
    effective.src = answer.heat.effective;
    await Promise.all([loop1.decode(), effective.decode()]);
    if (token !== state.clickToken) return;
    state.attention = answer;
    drawMarkers(y, x);
    drawProbabilities(answer);
    const elapsed = performance.now() - started;
    $("timing").textContent = `answered and drawn in ${elapsed.toFixed(0)} ms`;
    say(`${state.name}: pixel (${y}, ${x}), grid cell (${answer.grid_pixel.join(", ")}) of ` +
        `${answer.grid_size.join("x")}.`);
  } catch (error) {
    if (token === state.clickToken) say(error.message, true);
  } finally {
    if (token === state.clickToken) state.busy = false;
  }
}

function drawMarkers(y, x) {
  for (const id of STACKS) {
    const stack = $(id);
    const canvas = stack.querySelector(".marker");
    const box = stack.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(box.width * ratio);
    canvas.height = Math.round(box.height * ratio);
    const context = canvas.getContext("2d");
    const cx = (x + 0.5) * canvas.width / state.width;
    const cy = (y + 0.5) * canvas.height / state.height;
    context.strokeStyle = MARKER;
    context.lineWidth = 2 * ratio;
    context.beginPath();
    context.arc(cx, cy, 6 * ratio, 0, 2 * Math.PI);
    context.stroke();
  }
}

function clearPixel() {
  for (const id of STACKS) {
    const canvas = $(id).querySelector(".marker");
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  }
  $("heat-loop1").src = "";
  $("heat-effective").src = "";
  $("prediction").width = 0;
  $("pixel-title").textContent = "No pixel yet";
  $("probabilities").tBodies[0].replaceChildren();
  $("timing").textContent = "";
}

function drawProbabilities(answer) {
  const [y, x] = answer.pixel;
  $("pixel-title").textContent =
    `Pixel (${y}, ${x}): ${state.meta.classes[answer.label].name}`;
  const order = answer.probabilities.map((p, id) => [p, id]).sort((a, b) => b[0] - a[0]);
  const body = $("probabilities").tBodies[0];
  body.replaceChildren();
  for (const [p, id] of order.slice(0, 10)) {
    const row = body.insertRow();
    row.dataset.classId = id;
    if (id === answer.label) row.className = "top";
    row.insertCell().append(swatch(id));
    row.insertCell().textContent = state.meta.classes[id].name;
    const bar = document.createElement("span");
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    const barCell = row.insertCell();
    barCell.className = "bar";
    barCell.append(bar);
    const value = row.insertCell();
    value.className = "value";
    value.textContent = p.toFixed(3);
  }
}

// ---- Controls ----

function setOpacity() {
  $("prediction").style.opacity = $("prediction-opacity").value / 100;
  for (const id of ["heat-loop1", "heat-effective"]) {
    $(id).style.opacity = $("heat-opacity").value / 100;
  }
}

function wire() {
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) loadImage(file, file.name);
  });
  // The whole page takes a dropped file; the drop zone lights up meanwhile.
  const drop = $("drop");
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", () => drop.classList.remove("over"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) loadImage(file, file.name);
  });
  $("folder").addEventListener("change", (event) => {
    if (event.target.value) loadFolderImage(event.target.value).catch((e) => say(e.message, true));
  });
  $("mode").addEventListener("change", async () => {
    if (!state.blob) return;
    const pixel = state.attention && state.attention.pixel;
    await predict(++state.imageToken);
    if (pixel) await showPixel(pixel[0], pixel[1]);
  });
  for (const id of STACKS) {
    const stack = $(id);
    stack.addEventListener("click", (event) => {
      if (state.labels) showPixel(...pixelAt(event, stack));
    });
    stack.addEventListener("mousemove", (event) => {
      if (!state.labels) return;
      const [y, x] = pixelAt(event, stack);
      const id = state.labels[y * state.width + x];
      $("hover").textContent = `(${y}, ${x}) ${state.meta.classes[id].name}`;
    });
  }
  for (const id of ["prediction-opacity", "heat-opacity"]) {
    $(id).addEventListener("input", setOpacity);
  }
  setOpacity();
}

wire();
start().catch((error) => say(`cannot reach the explorer's server: ${error.message}`, true));
