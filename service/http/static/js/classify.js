// Classify page: drop a video, get its top-5 labels as a bar chart (nothing is stored).

import { request } from "./api.js";
import { dropZone, h, labelChart, message } from "./dom.js";

export function renderClassify(root) {
  const status = h("p", { class: "message", hidden: true, "data-testid": "classify-status" });
  const chart = h("div", { class: "chart", "data-testid": "classify-chart" });

  async function classify(file) {
    chart.replaceChildren();
    message(status, `Classifying ${file.name}…`);
    const form = new FormData();
    form.append("file", file);
    form.append("k", "5");
    try {
      const res = await request("POST", "v1/classify", { form });
      message(status, `Top ${res.labels.length} labels for ${file.name}`);
      chart.replaceChildren(labelChart(res.labels, "classify"));
    } catch (err) {
      message(status, err, "error");
    }
  }

  root.append(
    h("h1", {}, "Classify a video"),
    h("p", { class: "muted" }, "The video is classified now and not stored."),
    dropZone({ label: "Video to classify", onFiles: ([f]) => classify(f), testId: "classify-file" }),
    status,
    chart,
  );
}
