// Video page: the stored video (starting at ?t= when we come from a search), metadata, top-5 labels,
// ingestion status, segments, and delete with a confirmation.

import { contentPath, mediaUrl, request } from "./api.js";
import { formatTime, h, labelChart, message, videoName } from "./dom.js";
import { forgetVideo } from "./search.js";

const STATUS_WORDS = {
  pending: "queued for ingestion",
  processing: "being ingested",
  indexed: "indexed: searchable",
  failed: "ingestion failed",
};

function labelBars(labels) {
  if (!labels.length) return h("p", { class: "muted" }, "No labels yet (they come with ingestion).");
  return labelChart(labels, "labels");
}

function facts(video) {
  const rows = [
    ["Video id", String(video.video_id)],
    ["External id", video.external_id || "–"],
    ["File name", video.source_name || "–"],
    ["Duration", video.duration ? `${formatTime(video.duration)} (${video.duration.toFixed(2)} s)` : "–"],
    ["Uploaded", new Date(video.created_at * 1000).toLocaleString()],
    ["SHA-256", video.sha256],
  ];
  for (const [key, value] of Object.entries(video.metadata || {})) {
    rows.push([key, typeof value === "string" ? value : JSON.stringify(value)]);
  }
  return h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", { title: v }, v)]));
}

export function renderVideo(root, videoId, params) {
  const start = Number(params.get("t") || 0);
  let timer = null;
  let blobUrl = null;
  let stopped = false;
  const status = h("p", { class: "message", hidden: true });
  root.append(h("p", {}, h("a", { href: "#/", class: "back" }, "← Search")), status);

  function renderStatus(video) {
    const word = STATUS_WORDS[video.status] || video.status;
    return h(
      "p",
      { class: `status-line ${video.status}`, "data-testid": "video-status" },
      h("span", { class: `badge status ${video.status}` }, video.status),
      " ",
      video.error ? `${word}: ${video.error}` : word,
    );
  }

  function segmentList(video, player) {
    if (!video.segments.length) return null;
    return h(
      "div",
      { class: "segments" },
      h("h3", {}, "Indexed segments"),
      video.segments.map((seg) =>
        h(
          "button",
          { class: `chip${Math.abs(seg.start - start) < 0.05 && params.has("t") ? " matched" : ""}`, type: "button",
            onclick: () => {
              player.currentTime = seg.start;
              player.play().catch(() => {});
            } },
          `${formatTime(seg.start)}–${formatTime(seg.end)}`,
        ),
      ),
    );
  }

  function confirmDelete(video) {
    const dialog = h(
      "dialog",
      { class: "confirm", "data-testid": "confirm-delete" },
      h("form", { method: "dialog" },
        h("h3", {}, `Delete “${videoName(video)}”?`),
        h("p", {}, "This removes the video, its vectors and its stored file. It cannot be undone."),
        h("div", { class: "actions" },
          h("button", { value: "cancel", class: "secondary" }, "Cancel"),
          h("button", { value: "delete", class: "danger", "data-testid": "confirm-delete-button" }, "Delete"))),
    );
    dialog.addEventListener("close", async () => {
      dialog.remove();
      if (dialog.returnValue !== "delete") return;
      try {
        await request("DELETE", `v1/videos/${video.video_id}`);
        forgetVideo(video.video_id);
        location.hash = "#/";
      } catch (err) {
        message(status, err, "error");
      }
    });
    document.body.append(dialog);
    dialog.showModal();
  }

  async function load(firstTime) {
    let video;
    try {
      video = await request("GET", `v1/videos/${videoId}`);
    } catch (err) {
      message(status, err, "error");
      return;
    }
    if (firstTime) await build(video);
    else update(video);
    if (stopped) return;
    if (video.status === "pending" || video.status === "processing") timer = setTimeout(() => load(false), 1000);
  }

  let side;
  async function build(video) {
    const player = h("video", { controls: true, preload: "metadata", playsinline: true, "data-testid": "player" });
    player.addEventListener("loadedmetadata", () => {
      if (start > 0 && start < player.duration) player.currentTime = start;
    }, { once: true });
    player.addEventListener("error", () => {
      message(status, "This browser cannot play this file's format; the search and labels still work.", "info");
    });
    side = h("div", { class: "side" });
    root.append(
      h("h1", { "data-testid": "video-title" }, videoName(video)),
      h("div", { class: "video-layout" },
        h("div", { class: "player-col" },
          player,
          params.has("t") ? h("p", { class: "muted" }, `Starts at ${formatTime(start)}, the matched segment.`) : null,
          segmentList(video, player)),
        side),
    );
    update(video);
    try {
      const url = await mediaUrl(contentPath(video.video_id));
      if (url.startsWith("blob:")) blobUrl = url;
      if (stopped) {
        if (blobUrl) URL.revokeObjectURL(blobUrl);
        return;
      }
      player.src = url;
    } catch (err) {
      message(status, err, "error");
    }
  }

  function update(video) {
    side.replaceChildren(
      h("h3", {}, "Ingestion"), renderStatus(video),
      h("h3", {}, "Top labels"), labelBars(video.labels),
      h("h3", {}, "Details"), facts(video),
      h("button", { class: "danger", type: "button", "data-testid": "delete", onclick: () => confirmDelete(video) },
        "Delete video…"),
    );
  }

  load(true);
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (blobUrl) URL.revokeObjectURL(blobUrl);
  };
}
