// The web app's entry point: hash routes (#/, #/video/3?t=8, #/upload, #/classify) and the API key field.

import { apiKey, onApiError, setApiKey } from "./api.js";
import { renderClassify } from "./classify.js";
import { renderSearch } from "./search.js";
import { renderUpload } from "./upload.js";
import { renderVideo } from "./video.js";

const view = document.getElementById("view");
const banner = document.getElementById("banner");

function parseRoute() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  return { parts: path.split("/").filter(Boolean), params: new URLSearchParams(query) };
}

// Each page renders into a fresh container; `cleanup` lets a page stop its timers when we leave it.
let cleanup = () => {};

function route() {
  cleanup();
  cleanup = () => {};
  banner.hidden = true;
  const { parts, params } = parseRoute();
  const container = document.createElement("div");
  container.className = "page";
  view.replaceChildren(container);
  const page = parts[0] || "search";
  document.querySelectorAll("[data-nav]").forEach((a) => {
    a.classList.toggle("active", a.dataset.nav === page);
  });
  let stop;
  if (page === "video" && /^\d+$/.test(parts[1] || "")) {
    stop = renderVideo(container, Number(parts[1]), params);
  } else if (page === "upload") {
    stop = renderUpload(container);
  } else if (page === "classify") {
    stop = renderClassify(container);
  } else {
    stop = renderSearch(container, params);
  }
  if (typeof stop === "function") cleanup = stop;
}

const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("api-key");
keyInput.value = apiKey();
keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  setApiKey(keyInput.value.trim());
  route(); // reload the page's data with the new key
});

onApiError((err) => {
  if (err.status === 401) {
    banner.textContent = apiKey()
      ? "The API key was not accepted. Check it and press “Use”."
      : "This server needs an API key: enter it at the top right and press “Use”.";
    banner.hidden = false;
    keyInput.focus();
  }
});

window.addEventListener("hashchange", route);
route();
