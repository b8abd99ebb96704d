// The fleet page's live chart: polls /ui/fleet/series.json every 2 s (not while the tab is hidden)
// and draws texts/s and mean batch size with uPlot. No inline script: the page's CSP forbids it.
(function () {
  "use strict";
  var PERIOD_MS = 2000;
  var chart = null;
  var box = document.getElementById("chart");
  var now = document.getElementById("chart-now");

  function options() {
    return {
      width: Math.max(320, Math.min(box.clientWidth || 900, 1000)),
      height: 300,
      scales: {
        x: { time: true, range: function (u, min, max) { return [max - 600, max]; } },  // 10 minutes
        rate: { auto: true },
        batch: { auto: true },
      },
      series: [
        {},
        { label: "texts/s", scale: "rate", stroke: "#0b5cad", width: 2 },
        { label: "mean batch size", scale: "batch", stroke: "#b7791f", width: 2, spanGaps: false },
      ],
      axes: [
        {},
        { scale: "rate", label: "texts/s" },
        { scale: "batch", label: "batch size", side: 1, grid: { show: false } },
      ],
    };
  }

  function draw(series) {
    var data = [series.t, series.texts_per_s, series.batch_mean];
    if (chart === null) {
      chart = new uPlot(options(), data, box);
    } else {
      chart.setData(data);
    }
    var n = series.t.length;
    if (n > 0) {
      var batch = series.batch_mean[n - 1];
      now.textContent = "Now: " + series.texts_per_s[n - 1].toFixed(1) + " texts/s, mean batch size " +
        (batch === null ? "-" : batch.toFixed(1)) + ", queue depth " +
        (series.queue_depth[n - 1] === null ? "-" : series.queue_depth[n - 1]) + ".";
    }
  }

  function poll() {
    if (document.hidden) return;
    fetch("/ui/fleet/series.json", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/ui/login"); return null; }
        return r.ok ? r.json() : null;
      })
      .then(function (series) { if (series) draw(series); })
      .catch(function () { now.textContent = "The service does not answer."; });
  }

  poll();
  setInterval(poll, PERIOD_MS);
})();
