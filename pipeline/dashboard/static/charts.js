// Draws the overview's two charts from the figures the page also lists in its per-day table.
(function () {
  const source = document.getElementById("chart-data");
  if (!source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  const colours = { telephony: "#98a2b3", stt: "#7f9cf5", llm: "#f6ad55", tts: "#68d391", realtime: "#f687b3", compute: "#b794f4" };
  const money = (value) => "$" + Number(value).toFixed(4);
  new Chart(document.getElementById("spend-chart"), {
    type: "bar",
    data: {
      labels: data.days,
      datasets: Object.entries(data.legs).map(([leg, values]) => ({
        label: leg, data: values.map(Number), backgroundColor: colours[leg] || "#ccc",
      })),
    },
    options: {
      animation: false, responsive: true,
      scales: { x: { stacked: true }, y: { stacked: true, ticks: { callback: money } } },
    },
  });
  const rate = [{ label: "$/min", data: data.per_minute.map((v) => (v === null ? null : Number(v))), borderColor: "#2f6fde" }];
  if (data.floor !== null) {
    rate.push({ label: "margin floor", data: data.days.map(() => Number(data.floor)), borderColor: "#c4320a", borderDash: [6, 4],
      // one day is one point: a dash marks the floor where no line can be drawn
      pointRadius: data.days.length > 1 ? 0 : 12, pointStyle: "line" });
  }
  new Chart(document.getElementById("rate-chart"), {
    type: "line",
    data: { labels: data.days, datasets: rate },
    options: { animation: false, responsive: true, scales: { y: { beginAtZero: true, ticks: { callback: money } } } },
  });
  document.body.dataset.chartsDrawn = "yes";
})();
