// GAS dashboard: draws the per-epoch curves (uPlot) from the JSON the server put in [data-curves].
// Everything else is server-rendered HTML/SVG updated by htmx (SSE or polling).
(function () {
  "use strict";
  var CHARTS = [
    { title: "Loss", series: [["w_loss", "train loss (weights)", "#2563eb"], ["a_ce", "CE on Dα (arch step)", "#9333ea"]] },
    { title: "Supernet mIoU (Dα)", series: [["supernet_miou", "supernet mIoU", "#15803d"]] },
    { title: "Expected latency LAT(α′), ms", series: [["expected_latency_ms", "LAT(α′)", "#0891b2"], ["budget_ms", "budget", "#c2410c", true]] },
    { title: "Latency penalty", series: [["latency_penalty", "λ·f(LAT/T)", "#b45309"]] },
    { title: "Retrain loss", series: [["loss", "train loss (epoch mean)", "#2563eb"]] },
    { title: "mIoU (eval split)", series: [["miou", "mIoU", "#15803d"]] }
  ];

  function draw(el) {
    if (!window.uPlot || el.dataset.drawn) return;
    var data;
    try { data = JSON.parse(el.dataset.curves); } catch (e) { return; }
    el.dataset.drawn = "1";
    el.textContent = "";
    var width = Math.max(260, Math.min(420, (el.clientWidth || 900) / 2 - 24));
    CHARTS.forEach(function (c) {
      var cols = [data.epoch], series = [{ label: "epoch" }];
      c.series.forEach(function (s) {
        if (!data[s[0]] || !data[s[0]].some(function (v) { return v !== null && v !== undefined; })) return;
        cols.push(data[s[0]]);
        series.push({ label: s[1], stroke: s[2], width: 2, dash: s[3] ? [6, 4] : undefined, spanGaps: true,
                      points: { show: data.epoch.length < 40 } });
      });
      if (cols.length < 2) return;
      var box = document.createElement("div");
      box.className = "chart";
      box.setAttribute("data-chart", c.title);
      el.appendChild(box);
      new window.uPlot({ title: c.title, width: width, height: 190, series: series,
                         scales: { x: { time: false } },
                         axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, {}] }, cols, box);
    });
  }

  function drawAll(root) {
    (root || document).querySelectorAll(".curves[data-curves]").forEach(draw);
  }

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:afterSettle", function (e) { drawAll(e.target); });
  document.addEventListener("htmx:sseMessage", function (e) { drawAll(e.target); });
})();
