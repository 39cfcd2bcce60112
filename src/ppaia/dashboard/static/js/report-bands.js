/* ppaia report: curves with bands (uPlot), and a legend that names them, shows their values under the
   cursor and hides or shows one on a click. The report draws a comparison with it (one curve per grid
   cell, mean over seeds ± 95% CI band) and a run's loss and other metrics (mean over peers, min–max
   band); a dashboard page can too. Every label is set as text. Needs uPlot and js/dom.js first. */
(function (ppaia) {
  "use strict";

  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
                   "#17becf", "#7f7f7f", "#bcbd22"];

  const ROUND_STEPS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 100000];

  function colour(index) {
    if (index < PALETTE.length) return PALETTE[index];
    return "hsl(" + Math.round((index * 137.508) % 360) + ", 65%, 45%)";  // golden-angle hues beyond
  }

  function withAlpha(css, alpha) {
    if (css.startsWith("#")) {
      const n = parseInt(css.slice(1), 16);
      return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + alpha + ")";
    }
    return css.replace("hsl(", "hsla(").replace(")", ", " + alpha + ")");
  }

  const el = (tag, className, text) => ppaia.dom.el(tag, { class: className || null, text });

  /* Put every line on one x axis (the union of their x values, sorted); null where a line has none. */
  function align(lines) {
    const xs = Array.from(new Set(lines.flatMap((line) => line.x))).sort((a, b) => a - b);
    const at = new Map(xs.map((x, i) => [x, i]));
    const spread = (line, values) => {
      const out = new Array(xs.length).fill(null);
      if (values) line.x.forEach((x, i) => { out[at.get(x)] = values[i]; });
      return out;
    };
    return { xs, spread };
  }

  /* chart(container, spec) draws spec.lines = [{label, x, values, low?, high?, dash?}] against x, each
     with a shaded band between low and high where both are given. spec: title, xlabel, ylabel, log
     (a logarithmic y axis: values ≤ 0 are left out), ylim [min, max], height. Returns {plot, lines}. */
  function chart(container, spec) {
    const lines = spec.lines.filter((line) => line.values.some((v) => v !== null));
    const box = el("figure", "chart");
    box.dataset.lines = String(lines.length);
    if (spec.id) box.dataset.chart = spec.id;
    box.appendChild(el("figcaption", "chart-title", spec.title));
    const canvas = el("div", "chart-plot");
    const legend = el("div", "chart-legend");
    box.append(canvas, legend);
    container.appendChild(box);
    if (!lines.length) {
      canvas.appendChild(el("p", "muted", "no values"));
      return { plot: null, lines: 0 };
    }
    const { xs, spread } = align(lines);
    const keep = spec.log ? (v) => (v !== null && v > 0 ? v : null) : (v) => v;
    const data = [xs];
    const series = [{ label: spec.xlabel || "round" }];
    const bands = [];
    const members = [];  // per line: its series indices (line, then band high and low)
    const shade = Math.max(0.06, 0.25 / Math.sqrt(lines.length));  // fainter bands where many overlap
    lines.forEach((line, k) => {
      const stroke = line.colour || colour(k);
      const own = [data.length];
      data.push(spread(line, line.values).map(keep));
      series.push({ label: line.label, stroke, width: 2, dash: line.dash, ppaia: "line",
                    points: { show: line.x.length < 30 } });
      if (line.low && line.high) {
        const high = data.length;
        data.push(spread(line, line.high).map(keep));
        series.push({ label: line.label + " (band high)", stroke: "transparent", width: 0, ppaia: "band",
                      points: { show: false } });
        const low = data.length;
        data.push(spread(line, line.low).map(keep));
        series.push({ label: line.label + " (band low)", stroke: "transparent", width: 0, ppaia: "band",
                      points: { show: false } });
        bands.push({ series: [high, low], fill: withAlpha(stroke, shade) });
        own.push(high, low);
      }
      members.push({ line, stroke, own });
    });
    let values = [];  // the legend's value fields, once the legend is built
    const width = () => Math.max(320, canvas.clientWidth || container.clientWidth || 600);
    const options = {
      width: width(),
      height: spec.height || 260,
      legend: { show: false },
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: false }, y: spec.log ? { distr: 3 } : (spec.ylim ? { range: spec.ylim } : {}) },
      axes: [{ label: spec.xlabel || "round", incrs: ROUND_STEPS }, { label: spec.ylabel || "", size: 72 }],
      series,
      bands,
      hooks: { setCursor: [(u) => showValues(u.cursor.idx)] },
    };
    const plot = new uPlot(options, data, canvas);
    values = members.map(({ line, stroke, own }, k) => {
      const item = el("button", "legend-item");
      item.type = "button";
      item.title = "show or hide";
      const swatch = el("span", "legend-swatch");
      swatch.style.background = stroke;
      const value = el("span", "legend-value", "");
      item.append(swatch, el("span", "legend-label", line.label), value);
      item.addEventListener("click", () => {
        const show = item.classList.toggle("hidden") === false;
        own.forEach((index) => plot.setSeries(index, { show }));
      });
      legend.appendChild(item);
      return { value, index: own[0], k };
    });
    function showValues(idx) {
      values.forEach(({ value, index }) => {
        value.textContent = idx === null || idx === undefined ? "" : ppaia.dom.number(plot.data[index][idx]);
      });
    }
    new ResizeObserver(() => plot.setSize({ width: width(), height: spec.height || 260 })).observe(canvas);
    return { plot, lines: lines.length };
  }

  ppaia.bands = { chart, colour };
})(window.ppaia = window.ppaia || {});
