// Small DOM helpers. Text always goes in as text nodes (never innerHTML): ids and titles come from users.

import { describe, mediaUrl, thumbnailPath } from "./api.js";

// h("div", {class: "x", onclick: fn}, "text", child, ...)
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// 75.3 -> "1:15.3"; whole seconds without decimals ("0:08").
export function formatTime(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const total = Math.round(seconds * 10) / 10;
  const m = Math.floor(total / 60);
  const s = Math.round((total - m * 60) * 10) / 10;
  const text = Number.isInteger(s) ? String(s).padStart(2, "0") : s.toFixed(1).padStart(4, "0");
  return `${m}:${text}`;
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 ** 2).toFixed(1)} MB`;
}

export function videoName(video) {
  return video.external_id || video.source_name || `Video ${video.video_id}`;
}

// A status line: message(el, "text") or message(el, err, "error").
export function message(el, text, kind = "info") {
  el.className = `message ${kind}`;
  el.textContent = kind === "error" ? describe(text) : text;
  el.hidden = !text;
}

// An <img> showing the frame of `videoId` at `t` seconds (works in API-key mode too).
export function thumbnail(videoId, t, alt) {
  const img = h("img", { alt, loading: "lazy", class: "thumb-img" });
  img.addEventListener("error", () => img.classList.add("broken"));
  mediaUrl(thumbnailPath(videoId, t)).then(
    (url) => {
      img.src = url;
    },
    () => img.classList.add("broken"),
  );
  return img;
}

// A drop area with a file picker inside. onFiles(File[]) is called on drop or pick.
export function dropZone({ label, multiple = false, accept = "video/*", onFiles, testId }) {
  const input = h("input", { type: "file", accept, multiple, "data-testid": testId, class: "visually-hidden" });
  const zone = h(
    "label",
    { class: "dropzone" },
    input,
    h("span", { class: "dropzone-icon", "aria-hidden": "true" }, "⇪"),
    h("span", {}, label),
    h("span", { class: "dropzone-hint" }, multiple ? "drop files here or click to choose" : "drop a file here or click to choose"),
  );
  input.addEventListener("change", () => {
    if (input.files.length) onFiles([...input.files]);
    input.value = "";
  });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const files = [...e.dataTransfer.files];
    if (files.length) onFiles(multiple ? files : files.slice(0, 1));
  });
  return zone;
}

// Labels as a horizontal bar chart: bar length and number are the probability (a full bar is 100 %).
export function labelChart(labels, testId) {
  return h(
    "ol",
    { class: "bars", "data-testid": testId },
    labels.map((lb) =>
      h(
        "li",
        { "data-testid": `${testId}-bar` },
        h("span", { class: "bar-name", title: lb.name }, lb.name),
        h("span", { class: "bar-track" }, h("span", { class: "bar-fill", style: `width: ${(lb.prob * 100).toFixed(1)}%` })),
        h("span", { class: "bar-value" }, `${(lb.prob * 100).toFixed(1)} %`),
      ),
    ),
  );
}
