// Upload page: several files at once, each with an optional external id and title, per-file progress and
// ingestion job status, errors in plain words.

import { describe, postWithProgress, waitForJob } from "./api.js";
import { dropZone, formatBytes, h } from "./dom.js";

const IN_FLIGHT = 2; // uploads at a time

const JOB_WORDS = { queued: "queued", running: "ingesting…", done: "done", failed: "failed" };

export function renderUpload(root) {
  const rows = [];
  const list = h("tbody", {});
  const table = h(
    "table",
    { class: "uploads", hidden: true, "data-testid": "uploads" },
    h("thead", {}, h("tr", {}, ["File", "External id", "Title", "Progress", "Status"].map((t) => h("th", {}, t)))),
    list,
  );
  const start = h("button", { class: "primary", type: "button", disabled: true, "data-testid": "upload-start" },
    "Upload all");
  const summary = h("p", { class: "muted", "data-testid": "upload-summary" });
  let stopped = false;

  function addFiles(files) {
    for (const file of files) {
      const row = {
        file,
        state: "ready",
        externalId: h("input", { type: "text", maxlength: 256, placeholder: "optional, unique", "aria-label": `External id of ${file.name}` }),
        title: h("input", { type: "text", placeholder: "optional, for text search", "aria-label": `Title of ${file.name}` }),
        bar: h("progress", { max: 1, value: 0 }),
        status: h("span", { class: "job-status", "data-testid": "upload-status" }, "ready"),
      };
      row.el = h(
        "tr",
        { "data-testid": "upload-row" },
        h("td", {}, h("div", { class: "file-name", title: file.name }, file.name), h("div", { class: "muted" }, formatBytes(file.size))),
        h("td", {}, row.externalId),
        h("td", {}, row.title),
        h("td", {}, row.bar),
        h("td", {}, row.status),
      );
      rows.push(row);
      list.append(row.el);
    }
    table.hidden = rows.length === 0;
    start.disabled = !rows.some((r) => r.state === "ready");
  }

  function setStatus(row, text, kind = "") {
    row.status.className = `job-status ${kind}`;
    row.status.replaceChildren(...(Array.isArray(text) ? text : [text]));
  }

  async function uploadOne(row) {
    row.state = "uploading";
    row.externalId.disabled = row.title.disabled = true;
    setStatus(row, "uploading…");
    const form = new FormData();
    form.append("file", row.file);
    if (row.externalId.value.trim()) form.append("external_id", row.externalId.value.trim());
    if (row.title.value.trim()) form.append("metadata", JSON.stringify({ title: row.title.value.trim() }));
    try {
      const res = await postWithProgress("v1/videos", form, (f) => {
        row.bar.value = f;
      });
      row.bar.value = 1;
      if (!res.created) setStatus(row, "already uploaded; checking its job…");
      const job = await waitForJob(res.job_id, (j) => {
        if (!stopped) setStatus(row, JOB_WORDS[j.status] || j.status, j.status);
      });
      const link = h("a", { href: `#/video/${res.video_id}` }, "open");
      if (job.status === "done") {
        row.state = "done";
        setStatus(row, ["done · ", link], "done");
      } else {
        row.state = "failed";
        setStatus(row, [`failed: ${job.error || "unknown reason"} · `, link], "failed");
      }
    } catch (err) {
      row.state = "failed";
      setStatus(row, describe(err), "failed");
    }
  }

  async function uploadAll() {
    start.disabled = true;
    const queue = rows.filter((r) => r.state === "ready");
    summary.textContent = `Uploading ${queue.length} file${queue.length === 1 ? "" : "s"}…`;
    const workers = Array.from({ length: Math.min(IN_FLIGHT, queue.length) }, async () => {
      while (queue.length && !stopped) await uploadOne(queue.shift());
    });
    await Promise.all(workers);
    const done = rows.filter((r) => r.state === "done").length;
    const failed = rows.filter((r) => r.state === "failed").length;
    summary.textContent = `${done} ingested, ${failed} failed.`;
    start.disabled = !rows.some((r) => r.state === "ready");
  }

  start.addEventListener("click", uploadAll);
  root.append(
    h("h1", {}, "Upload videos"),
    dropZone({ label: "Videos to ingest", multiple: true, onFiles: addFiles, testId: "upload-files" }),
    table,
    h("div", { class: "actions" }, start, summary),
  );
  return () => {
    stopped = true;
  };
}
