// Search page: a text query (kept in the URL, #/?q=...) or a video query (drop / pick a file), results as a
// grid of matched segments; without a query, the library of stored videos.

import { request } from "./api.js";
import { dropZone, formatTime, h, message, thumbnail, videoName } from "./dom.js";

const K = 24;
const PAGE = 48;

// The last video query's results, so "back" from a video page shows them again (a file cannot go in a URL).
let lastVideoSearch = null;

export function forgetVideo(videoId) {
  if (lastVideoSearch) lastVideoSearch.hits = lastVideoSearch.hits.filter((x) => x.video_id !== videoId);
}

// A video query's hit is a copy (`match`: its match score reaches the threshold) or only similar
// (docs/api.md#copies).
function verdict(hit, threshold) {
  if (hit.match == null) return null; // a text query: no copy decision
  const decidedOn = hit.match_score ?? hit.score;
  const title = threshold
    ? `${hit.match ? "a copy" : "not a copy"}: match score ${decidedOn.toFixed(3)} ${hit.match ? "≥" : "<"} ${threshold.min_score} (${threshold.source === "request" ? "the request's min_score" : "the checkpoint's threshold"})`
    : "no match threshold: the checkpoint has none";
  return h("span", { class: `badge verdict ${hit.match ? "copy" : "similar"}`, "data-testid": "verdict", title },
    hit.match ? "copy" : "similar");
}

// The copied spans of a copy, "query 0:08–0:16 → 0:04–0:12" (query time, then the hit's own time).
function spansLine(hit) {
  if (!hit.spans || !hit.spans.length) return null;
  const text = hit.spans.map((s) => `${formatTime(s.query_start)}–${formatTime(s.query_end)} → ${formatTime(s.start)}–${formatTime(s.end)}`);
  return h("div", { class: "card-spans", "data-testid": "hit-spans",
    title: "copied spans: in the query → in this video" }, `copied: ${text.join(", ")}`);
}

function hitCard(hit, rank, isVideoQuery, threshold) {
  const copied = hit.spans && hit.spans.length ? hit.spans[0] : null;
  const start = copied ? copied.start : hit.start ?? 0;
  const end = copied ? copied.end : hit.end;
  const mid = end != null ? (start + end) / 2 : start;
  const name = hit.external_id || `Video ${hit.video_id}`;
  return h(
    "a",
    { class: `card${hit.match ? " is-copy" : ""}`, href: `#/video/${hit.video_id}?t=${start.toFixed(1)}`,
      "data-testid": "hit", dataset: { videoId: hit.video_id } },
    h(
      "div",
      { class: "thumb" },
      thumbnail(hit.video_id, mid, `${name}, ${formatTime(start)}`),
      h("span", { class: "badge rank" }, `#${rank}`),
      isVideoQuery ? verdict(hit, threshold) : null,
      end != null ? h("span", { class: "badge time" }, `${formatTime(start)}–${formatTime(end)}`) : null,
    ),
    h(
      "div",
      { class: "card-body" },
      h("div", { class: "card-title", "data-testid": "hit-title", title: name }, name),
      h(
        "div",
        { class: "card-meta" },
        h("span", { class: "score", title: "score (comparable within one query)" }, `score ${hit.score.toFixed(3)}`),
        isVideoQuery && hit.query_start != null
          ? h("span", {}, `query ${formatTime(hit.query_start)}–${formatTime(hit.query_end)}`)
          : h("span", {}, `id ${hit.video_id}`),
        isVideoQuery && hit.view && hit.view !== "original"
          ? h("span", { title: "the view of the query that matched (docs/api.md#views)" },
              hit.view === "inner" ? "inner picture" : hit.view)
          : null,
      ),
      isVideoQuery ? spansLine(hit) : null,
    ),
  );
}

function videoCard(video) {
  const t = video.duration ? Math.min(video.duration / 2, 2) : 0;
  const name = videoName(video);
  return h(
    "a",
    { class: "card", href: `#/video/${video.video_id}`, "data-testid": "library-video" },
    h(
      "div",
      { class: "thumb" },
      video.status === "failed" ? h("span", { class: "thumb-missing" }, "not a playable video") : thumbnail(video.video_id, t, name),
      h("span", { class: `badge status ${video.status}` }, video.status),
      h("span", { class: "badge time" }, formatTime(video.duration)),
    ),
    h(
      "div",
      { class: "card-body" },
      h("div", { class: "card-title", title: name }, name),
      h("div", { class: "card-meta" }, h("span", {}, (video.metadata && video.metadata.title) || video.source_name || ""),
        h("span", {}, `id ${video.video_id}`)),
    ),
  );
}

export function renderSearch(root, params) {
  const query = params.get("q") || "";
  const input = h("input", { type: "search", name: "q", value: query, placeholder: "Describe what you are looking for",
    "aria-label": "Text query", "data-testid": "search-text" });
  const form = h("form", { class: "searchbar" }, input, h("button", { type: "submit", class: "primary" }, "Search"));
  const status = h("p", { class: "message", hidden: true, "data-testid": "search-status" });
  const results = h("div", { class: "grid", "data-testid": "results" });
  const heading = h("h2", { hidden: true });
  const more = h("button", { hidden: true, class: "secondary" }, "Show more");
  root.append(
    h("section", { class: "search-panel" },
      form,
      dropZone({ label: "…or search with a video: find its near-duplicates", onFiles: ([f]) => searchVideo(f),
        testId: "search-file" })),
    status, heading, results, more,
  );

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = input.value.trim();
    if (!q) return;
    const target = `#/?q=${encodeURIComponent(q)}`;
    if (location.hash === target) searchText(q);
    else location.hash = target; // the router calls us again with the query
  });

  function show(kind, label, hits, threshold = null) {
    heading.hidden = false;
    const copies = hits.filter((x) => x.match).length;
    heading.textContent = `${hits.length} result${hits.length === 1 ? "" : "s"} for ${label}` +
      (kind === "video" ? ` — ${copies} cop${copies === 1 ? "y" : "ies"}` : "");
    results.replaceChildren(...hits.map((hit, i) => hitCard(hit, i + 1, kind === "video", threshold)));
    results.dataset.query = kind;
    message(status, hits.length ? "" : "Nothing indexed matches yet.");
  }

  async function searchText(q) {
    lastVideoSearch = null;
    message(status, "Searching…");
    try {
      const res = await request("POST", "v1/search", { json: { text: q, k: K } });
      show("text", `“${q}”`, res.hits);
    } catch (err) {
      message(status, err, "error");
    }
  }

  async function searchVideo(file) {
    message(status, `Embedding ${file.name} and searching…`);
    heading.hidden = true;
    results.replaceChildren();
    const form = new FormData();
    form.append("file", file);
    form.append("k", String(K));
    try {
      const res = await request("POST", "v1/search", { form });
      lastVideoSearch = { label: file.name, hits: res.hits, threshold: res.match_threshold };
      if (location.hash.includes("q=")) history.replaceState(null, "", "#/");
      input.value = "";
      show("video", file.name, res.hits, res.match_threshold);
    } catch (err) {
      message(status, err, "error");
    }
  }

  async function showLibrary(offset = 0) {
    try {
      const page = await request("GET", `v1/videos?offset=${offset}&limit=${PAGE}`);
      heading.hidden = false;
      heading.textContent = page.total ? `All videos (${page.total})` : "No videos yet";
      const cards = page.videos.map(videoCard);
      if (offset === 0) results.replaceChildren(...cards);
      else results.append(...cards);
      results.dataset.query = "library";
      more.hidden = offset + page.videos.length >= page.total;
      more.onclick = () => showLibrary(offset + PAGE);
      if (!page.total) message(status, "Upload a few videos to search them.");
    } catch (err) {
      message(status, err, "error");
    }
  }

  if (query) searchText(query);
  else if (lastVideoSearch) show("video", lastVideoSearch.label, lastVideoSearch.hits, lastVideoSearch.threshold);
  else showLibrary();
}
